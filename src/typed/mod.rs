//! The typed face: cache-aside for application values, named locks and a key builder, on the
//! same engine (store, guard, fill protocol, counters) as the HTTP layer.

mod codec;
mod key_builder;
mod lock;
mod options;

pub use codec::Codec;
pub use key_builder::KeyBuilder;
pub use lock::{LockGuard, LockOptions};
pub use options::GetOrSetOptions;

use crate::engine::fill::{self, Acquire, FillKeys, FillRequest, Judge, Judged};
use crate::engine::flight::{Flights, Leader, Outcome, Role};
use crate::engine::{Engine, FillSettings};
use crate::error::{CacheError, ConfigError, GetOrSetError, LockError};
use crate::stats::{Counters, Stats};
use crate::store::{FillNotice, GuardedStore, Store};
use bytes::Bytes;
use codec::{unix_now_ms, Meta};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// A typed cache-aside API over a [`Store`]: values of any serde type under string keys,
/// loaded once per key across the fleet.
///
/// Cloning is cheap (an `Arc`); every clone shares the store, the in-process coalescing and
/// the counters. Every store call goes through the same fail-open guard as the HTTP layer
/// (timeouts, circuit breaker, counting): the loading calls ([`get_or_set`](Self::get_or_set)
/// and [`get_or_set_with`](Self::get_or_set_with)) never report the store, they load instead;
/// the direct calls (`get`, `set`, `delete`, ...) report it as [`CacheError::Store`].
///
/// Values live under `{prefix}:v:{<key>}` (`%`, `{` and `}` in the key escaped, so the key is
/// one Redis Cluster hash tag) and the fill lock of a key under `{prefix}:f:{<key>}`, in the
/// same slot, apart from the HTTP layer's `{prefix}:{<hash>}:…` keys. Each value is an
/// envelope (see [`Codec`]) carrying its lifetimes and a fingerprint of its Rust type (plus
/// the [schema version](CacheBuilder::schema_version)); a value that does not decode as the
/// asked type, or that the call's validator rejects, is a miss: it is deleted, counted in
/// [`Stats::typed_decode_failures`], and loaded again.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use serde::{Deserialize, Serialize};
/// use tower_redis_cache::{Cache, KeyBuilder, MemoryStore};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Product { id: u32, name: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::new(MemoryStore::new(64 << 20));
/// let key = KeyBuilder::new("product").id(42).build();
///
/// // The loader runs on a miss only; concurrent callers share its one run, and its
/// // error, which is why it is `Clone` (an `Arc` makes any error so).
/// let product = cache
///     .get_or_set(&key, Duration::from_secs(60), || async {
///         Ok::<_, Arc<std::io::Error>>(Product { id: 42, name: "lamp".into() })
///     })
///     .await?;
/// assert_eq!(cache.get::<Product>(&key).await?, Some(product));
/// assert!(cache.delete(&key).await?);
/// assert_eq!(cache.stats().typed_loads, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.inner.prefix)
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

struct Inner {
    engine: Arc<Engine>,
    prefix: String,
    codec: Codec,
    schema: u32,
    /// One load per key in this process; followers get the stored bytes or the error.
    flights: Arc<Flights<Landed>>,
    /// Bounds `delete_prefix`, a walk over the whole keyspace.
    admin_timeout: Duration,
}

/// What a load handed to the callers that waited on it in this process.
#[derive(Clone)]
enum Landed {
    /// The value, as stored (each follower decodes its own copy: `T` need not be `Clone`).
    Value(Bytes),
    /// The loader's error, type-erased (a follower of another error type loads itself).
    Failed(Arc<dyn Any + Send + Sync>),
    /// The loader ran past its hard timeout.
    TimedOut,
    /// The value could not be encoded; followers load themselves.
    Unstored,
}

/// Why a load produced no value; `H` is what a hard timeout reports (`Infallible` where
/// there is none, so the plain `get_or_set` needs no impossible arm).
enum Failure<E, H> {
    Loader(E),
    HardTimeout(H),
}

/// Settings for a [`Cache`]; [`build`](Self::build) checks them.
#[must_use]
pub struct CacheBuilder {
    store: Arc<dyn Store>,
    prefix: String,
    codec: Codec,
    schema: u32,
    read_timeout: Duration,
    write_timeout: Duration,
    admin_timeout: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl CacheBuilder {
    /// The prefix of every key (default `trc`, the layer's: typed keys sit apart under
    /// `{prefix}:v:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The format values are written in (default [`Codec::MessagePack`]). Values are read in
    /// the format they were written in.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Mixed into every value's type fingerprint (default 0): bump it when a type changes
    /// shape in a way serde would still read, and every value written before is a miss.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    /// The longest a read or lock attempt may take before the call goes on without the
    /// cache (default 100 ms).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The longest a write, delete or unlock may take (default 500 ms).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The longest [`Cache::delete_prefix`] may take (default 60 s).
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    /// How long a fill lock lives unless its holder extends it (default 5 s): a loader that
    /// dies delays the fleet's next load of its key by at most this.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// The longest a caller waits for another process's load before loading itself
    /// (default 10 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Consecutive store failures that open the circuit breaker (default 5), and how long
    /// it stays open (default 1 s).
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Checks the settings and builds the cache.
    pub fn build(self) -> Result<Cache, ConfigError> {
        if self.prefix.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        let reserved = |c: char| "{}*?[]\\%".contains(c) || c.is_whitespace() || c.is_control();
        if self.prefix.chars().any(reserved) {
            return Err(ConfigError::InvalidPrefix(self.prefix));
        }
        for (field, duration) in [
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("admin_timeout", self.admin_timeout),
            ("lock_ttl", self.lock_ttl),
            ("lock_wait", self.lock_wait),
        ] {
            if duration.is_zero() {
                return Err(ConfigError::ZeroDuration(field));
            }
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> Cache {
        let stats = Arc::new(Counters::default());
        let store = GuardedStore::new(
            self.store,
            self.read_timeout,
            self.write_timeout,
            self.breaker_threshold.max(1),
            self.breaker_cooldown,
            Arc::clone(&stats),
        );
        let fills = FillSettings {
            lock_ttl: self.lock_ttl,
            lock_wait: self.lock_wait,
        };
        let engine = Arc::new(Engine::new(store, stats, Arc::default(), fills));
        let mut cache = Cache::from_engine(engine, &self.prefix);
        if let Some(inner) = Arc::get_mut(&mut cache.inner) {
            inner.codec = self.codec;
            inner.schema = self.schema;
            inner.admin_timeout = self.admin_timeout;
        }
        cache
    }
}

/// The state of the store's circuit breaker, in a [`Health`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls go through, but the last ones failed; the breaker opens at its threshold.
    Failing {
        /// Consecutive failures so far.
        consecutive: u32,
    },
    /// Calls are skipped (the cache fails open) until the cool-down ends.
    Open {
        /// Time left before calls are tried again.
        retry_in: Duration,
    },
}

/// What [`Cache::health`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// How long a `PING` took; `None` when it failed (see `error`).
    pub latency: Option<Duration>,
    /// Whether the store reports its connections up.
    pub connected: bool,
    /// The circuit breaker's state after the ping.
    pub breaker: BreakerState,
    /// Why the ping failed, if it did.
    pub error: Option<String>,
}

impl Health {
    /// The store answered and its connections are up.
    pub fn is_healthy(&self) -> bool {
        self.latency.is_some() && self.connected
    }
}

impl Cache {
    /// A cache over `store` with the default settings (see [`CacheBuilder`]).
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).assemble()
    }

    /// Starts configuring a cache over `store`.
    pub fn builder(store: impl Store) -> CacheBuilder {
        CacheBuilder {
            store: Arc::new(store),
            prefix: "trc".to_owned(),
            codec: Codec::default(),
            schema: 0,
            read_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_millis(500),
            admin_timeout: Duration::from_secs(60),
            lock_ttl: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    /// A cache on an existing engine (a layer's, for `CacheLayer::cache()`), sharing its
    /// store, guard, counters and fill settings; `prefix` must already be valid.
    pub(crate) fn from_engine(engine: Arc<Engine>, prefix: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                prefix: prefix.to_owned(),
                codec: Codec::default(),
                schema: 0,
                flights: Arc::default(),
                admin_timeout: Duration::from_secs(60),
            }),
        }
    }

    /// The counters so far (shared with a layer on the same engine).
    pub fn stats(&self) -> Stats {
        self.inner.engine.stats.snapshot()
    }

    /// The store key the value of `key` lives under, for tooling and tests.
    pub fn store_key(&self, key: &str) -> String {
        self.inner.keys(key).entry
    }

    /// Waits until every background load started so far (stale and eager refreshes, loaders
    /// that outlived a soft timeout) has finished: for tests, and before exiting.
    pub async fn wait_for_background(&self) {
        self.inner.engine.background.idle().await;
    }

    /// Reads a fresh value. Missing, expired and undecodable values are `None` (undecodable
    /// ones are deleted and counted).
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>, CacheError>
    where
        T: DeserializeOwned + 'static,
    {
        let entry = self.inner.keys(key).entry;
        let bytes = self.inner.engine.store.get(&entry).await?;
        let found = self.inner.read::<T>(&entry, bytes, None).await;
        Ok(match found {
            Some((meta, value)) if meta.is_fresh(unix_now_ms()) => {
                self.inner.engine.stats.typed_hits(1);
                Some(value)
            }
            _ => {
                self.inner.engine.stats.typed_misses(1);
                None
            }
        })
    }

    /// Reads many fresh values in one round trip (on a Redis Cluster, one `MGET` per hash
    /// slot, sent together), in the order of `keys`. Missing, expired and undecodable values
    /// are `None` (undecodable ones are deleted and counted).
    pub async fn get_many<T, K>(&self, keys: &[K]) -> Result<Vec<Option<T>>, CacheError>
    where
        T: DeserializeOwned + 'static,
        K: AsRef<str>,
    {
        let inner = &self.inner;
        let entries: Vec<String> = keys.iter().map(|k| inner.keys(k.as_ref()).entry).collect();
        let values = inner.engine.store.get_many(&entries).await?;
        let (now, fingerprint) = (unix_now_ms(), inner.fingerprint::<T>());
        let mut undecodable = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        for (entry, bytes) in entries.iter().zip(values) {
            out.push(match bytes.map(|b| codec::open::<T>(&b, fingerprint)) {
                Some(Ok((meta, value))) if meta.is_fresh(now) => Some(value),
                Some(Err(_)) => {
                    undecodable.push(entry.as_str());
                    None
                }
                Some(Ok(_)) | None => None,
            });
        }
        let hits = out.iter().filter(|v| v.is_some()).count();
        inner.engine.stats.typed_hits(count(hits));
        inner.engine.stats.typed_misses(count(out.len() - hits));
        inner
            .engine
            .stats
            .typed_decode_failures(count(undecodable.len()));
        let deletes = undecodable.iter().map(|key| inner.engine.store.delete(key));
        let _ = futures_util::future::join_all(deletes).await;
        Ok(out)
    }

    /// Stores `value` under `key`, fresh for `ttl`. A zero `ttl` deletes the key (a value
    /// that is never fresh).
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), CacheError>
    where
        T: Serialize + 'static,
    {
        let entry = self.inner.keys(key).entry;
        if ttl.is_zero() {
            return Ok(self.inner.engine.store.delete(&entry).await?);
        }
        let now = unix_now_ms();
        let meta = self.inner.meta_for::<T>(now, &GetOrSetOptions::new(ttl));
        let bytes = codec::seal(self.inner.codec, value, &meta).map_err(CacheError::Encode)?;
        Ok(self.inner.engine.store.put(&entry, bytes, ttl).await?)
    }

    /// Deletes the value under `key`; `true` when there was one.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let entry = self.inner.keys(key).entry;
        Ok(self.inner.engine.store.remove(&entry).await?)
    }

    /// Deletes every value whose key starts with `prefix`, taken literally (`*`, `?`, `[`
    /// are not patterns: `"user:1*"` deletes `user:1*a`, not `user:10`), and returns how many.
    ///
    /// Cost: a cursor `SCAN … MATCH` over the whole keyspace of every primary (O(all keys),
    /// in pages of 1,000, not blocking Redis between pages) plus one `UNLINK` per page and
    /// slot, bounded by the [admin timeout](CacheBuilder::admin_timeout). Use it for
    /// invalidations by family after a write, not on every request; a value written while it
    /// runs may or may not be deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let inner = &self.inner;
        let literal = format!("{}:v:{{{}", inner.prefix, escape(prefix));
        Ok(inner
            .engine
            .store
            .delete_prefix(&literal, inner.admin_timeout)
            .await?)
    }

    /// Answers the value under `key`, loading it on a miss with `loader` and storing it,
    /// fresh for `ttl`.
    ///
    /// The loader runs once per key across the fleet: callers in this process share one run
    /// (single flight), and processes sharing the store take the key's fill lock, so the
    /// others wait for the holder's value (woken by its notice; polling as a fallback; taking
    /// the lock over if the holder died), up to the [lock wait](CacheBuilder::lock_wait).
    ///
    /// A loader error reaches every caller that waited on that run in this process (hence
    /// `E: Clone`; wrap an error that is not in an `Arc`), and nothing is stored: the next
    /// call loads again. Other processes waiting on the failed run are told it ended without
    /// a value and run their own loader. A store that is down or slow is never an error: the
    /// loader runs (fail-open). The loader runs in its own task, so a caller that gives up
    /// does not cancel it for the others; if it panics, the panic resumes in its caller.
    ///
    /// A zero `ttl` runs the loader and stores nothing.
    pub async fn get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if ttl.is_zero() {
            self.inner.engine.stats.typed_loads(1);
            return loader().await;
        }
        let options = GetOrSetOptions::new(ttl);
        let hard: Option<(Duration, Infallible)> = None;
        match self.inner.load_path(key, options, hard, loader).await {
            Ok(value) => Ok(value),
            Err(Failure::Loader(error)) => Err(error),
            Err(Failure::HardTimeout(never)) => match never {},
        }
    }

    /// [`get_or_set`](Self::get_or_set) with stale-while-revalidate, fail-safe, loader
    /// timeouts, eager refresh and a validator; see [`GetOrSetOptions`]. Options that cannot
    /// work are reported here as [`GetOrSetError::InvalidOptions`], before anything is read.
    pub async fn get_or_set_with<T, E, F, Fut>(
        &self,
        key: &str,
        options: GetOrSetOptions,
        loader: F,
    ) -> Result<T, GetOrSetError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        options.check().map_err(GetOrSetError::InvalidOptions)?;
        let hard = options.hard_timeout.map(|after| (after, after));
        match self.inner.load_path(key, options, hard, loader).await {
            Ok(value) => Ok(value),
            Err(Failure::Loader(error)) => Err(GetOrSetError::Loader(error)),
            Err(Failure::HardTimeout(after)) => Err(GetOrSetError::HardTimeout(after)),
        }
    }

    /// Takes the distributed lock `name`, waiting for it as `options` say; see
    /// [`with_lock`](Self::with_lock). Locks live under `{prefix}:lock:{<name>}`.
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<LockGuard, LockError> {
        let key = format!("{}:lock:{{{}}}", self.inner.prefix, escape_key(name));
        lock::acquire(&self.inner.engine, key, options).await
    }

    /// Runs `work` holding the distributed lock `name` (token-fenced, extended while held,
    /// released by compare-and-delete when `work` ends), so no other holder of `name` in any
    /// process sharing the store runs at the same time. Waits up to the options' wait, with
    /// backoff, and answers [`LockError::Timeout`] when the lock stayed held. A store that
    /// cannot be asked is an error here, not fail-open: running unlocked would break what the
    /// lock is for.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{Cache, LockOptions, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_redis_cache::LockError> {
    /// let cache = Cache::new(MemoryStore::new(1 << 20));
    /// let options = LockOptions::new(Duration::from_secs(10)).wait(Duration::from_secs(5));
    /// let total = cache.with_lock("nightly-report", options, || async { 6 * 7 }).await?;
    /// assert_eq!(total, 42);
    ///
    /// // While one holds it, another caller cannot take it.
    /// let held = cache.lock("nightly-report", LockOptions::new(Duration::from_secs(10))).await?;
    /// let busy = cache.lock("nightly-report", LockOptions::new(Duration::from_secs(10))).await;
    /// assert!(matches!(busy, Err(tower_redis_cache::LockError::Timeout { .. })));
    /// held.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<R, F, Fut>(
        &self,
        name: &str,
        options: LockOptions,
        work: F,
    ) -> Result<R, LockError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R>,
    {
        let guard = self.lock(name, options).await?;
        let result = work().await;
        // The work is done: a failed release only leaves the lock to expire.
        let _ = guard.release().await;
        Ok(result)
    }

    /// Pings the store and reports its connection and circuit-breaker state.
    pub async fn health(&self) -> Health {
        let store = &self.inner.engine.store;
        let ping = store.ping().await;
        let breaker = match store.breaker_open_for() {
            Some(retry_in) => BreakerState::Open { retry_in },
            None => match store.consecutive_failures() {
                0 => BreakerState::Closed,
                consecutive => BreakerState::Failing { consecutive },
            },
        };
        let (latency, error) = match ping {
            Ok(latency) => (Some(latency), None),
            Err(error) => (None, Some(error.to_string())),
        };
        Health {
            latency,
            connected: store.is_connected(),
            breaker,
            error,
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Escapes `%`, `{` and `}`, so a key is exactly one hash tag; the empty key becomes a lone
/// `%`, which no other key's escape produces.
fn escape_key(key: &str) -> String {
    if key.is_empty() {
        return "%".to_owned();
    }
    escape(key)
}

/// The escape of `escape_key` without the empty-key rule, so prefixes match escaped keys.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A fill's judge for the typed face: a value is usable when it decodes as `T`, is fresh and
/// passes the validator.
struct FreshValue<T> {
    fingerprint: u64,
    options: GetOrSetOptions,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> Judge for FreshValue<T> {
    type Value = (Bytes, T);

    fn judge(&self, value: Bytes) -> impl Future<Output = Judged<(Bytes, T)>> + Send {
        let judged = match codec::open::<T>(&value, self.fingerprint) {
            Ok((meta, decoded))
                if meta.is_fresh(unix_now_ms()) && self.options.accepts(&decoded) =>
            {
                Judged::Usable((value, decoded))
            }
            // An older value: the fill has not landed yet.
            Ok(_) => Judged::Wait,
            // Another type's or a foreign writer's: not worth waiting for.
            Err(_) => Judged::Load,
        };
        std::future::ready(judged)
    }
}

impl Inner {
    fn keys(&self, key: &str) -> FillKeys {
        let tag = escape_key(key);
        let entry = format!("{}:v:{{{tag}}}", self.prefix);
        let flight = xxhash_rust::xxh3::xxh3_128(entry.as_bytes());
        FillKeys {
            lock: format!("{}:f:{{{tag}}}", self.prefix),
            entry,
            flight,
        }
    }

    fn fingerprint<T: ?Sized>(&self) -> u64 {
        codec::fingerprint::<T>(self.schema)
    }

    fn meta_for<T: ?Sized>(&self, now: u64, options: &GetOrSetOptions) -> Meta {
        let fresh_until = now.saturating_add(millis(options.ttl));
        let stale_until = options
            .stale_while_revalidate
            .map_or(fresh_until, |window| {
                fresh_until.saturating_add(millis(window))
            });
        let fail_safe_until = options
            .fail_safe
            .map_or(fresh_until, |max_age| now.saturating_add(millis(max_age)));
        Meta {
            stored_at_ms: now,
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            fail_safe_until_ms: fail_safe_until,
            fingerprint: self.fingerprint::<T>(),
        }
    }

    /// Decodes what a read found; a value that is not a `T` (or that the validator rejects)
    /// is deleted and counted, and reads as missing.
    async fn read<T: DeserializeOwned + 'static>(
        &self,
        entry: &str,
        bytes: Option<Bytes>,
        options: Option<&GetOrSetOptions>,
    ) -> Option<(Meta, T)> {
        let bytes = bytes?;
        match codec::open::<T>(&bytes, self.fingerprint::<T>()) {
            Ok((meta, value)) if options.is_none_or(|o| o.accepts(&value)) => Some((meta, value)),
            Ok(_) => {
                self.discard(entry, "rejected by the validator").await;
                None
            }
            Err(error) => {
                self.discard(entry, &error.to_string()).await;
                None
            }
        }
    }

    async fn discard(&self, entry: &str, why: &str) {
        tracing::debug!(key = entry, why, "typed cache value discarded");
        self.engine.stats.typed_decode_failures(1);
        let _ = self.engine.store.delete(entry).await;
    }

    /// `get_or_set`: a fresh hit (maybe refreshed eagerly), a stale hit (refreshed in the
    /// background), or a load, with the fail-safe value (if any) standing by.
    async fn load_path<T, E, H, F, Fut>(
        self: &Arc<Self>,
        key: &str,
        options: GetOrSetOptions,
        hard: Option<(Duration, H)>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut job = Job {
            keys: self.keys(key),
            seen: None,
            options,
            hard,
        };
        let stats = &self.engine.stats;
        // A store that fails is a miss: the loader runs (fail-open).
        let bytes = self.engine.store.get(&job.keys.entry).await.unwrap_or(None);
        let mut fallback = None;
        let found = self.read::<T>(&job.keys.entry, bytes, Some(&job.options));
        if let Some((meta, value)) = found.await {
            let now = unix_now_ms();
            job.seen = Some(meta.stamp());
            let options = &job.options;
            if meta.is_fresh(now) {
                stats.typed_hits(1);
                let eager = options.eager_refresh;
                if eager.is_some_and(|fraction| meta.past_fraction(now, fraction)) {
                    self.refresh(job, loader);
                }
                return Ok(value);
            }
            if options.stale_while_revalidate.is_some() && now < meta.stale_until_ms {
                stats.typed_stale(1);
                self.refresh(job, loader);
                return Ok(value);
            }
            if options.fail_safe.is_some() && now < meta.fail_safe_until_ms {
                fallback = Some(value);
            }
        }
        stats.typed_misses(1);
        self.load_coalesced(job, fallback, loader).await
    }

    /// Follows this process's load of the key, or leads one.
    async fn load_coalesced<T, E, H, F, Fut>(
        self: &Arc<Self>,
        job: Job<H>,
        fallback: Option<T>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // A flight that ends without an answer for us (its leader was cancelled, or could not
        // encode its value) is joined again once; after that this caller loads on its own.
        let mut fallback = fallback;
        for _ in 0..2 {
            let follower = match self.flights.join(job.keys.flight) {
                Role::Leader(leader) => {
                    return self
                        .lead_and_wait(Some(leader), job, fallback, loader)
                        .await
                }
                Role::Follower(follower) => follower,
            };
            let outcome = match (job.options.soft_timeout, fallback.is_some()) {
                (Some(soft), true) => match tokio::time::timeout(soft, follower.outcome()).await {
                    Ok(outcome) => outcome,
                    Err(_) => match fallback.take() {
                        Some(stale) => {
                            self.engine.stats.typed_stale(1);
                            return Ok(stale);
                        }
                        None => continue,
                    },
                },
                _ => follower.outcome().await,
            };
            match self.followed::<T, E, H>(outcome, &job.hard) {
                Followed::Value(value) => return Ok(value),
                Followed::Failed(failure) => return self.fail_safe(fallback, failure),
                Followed::Rejoin => continue,
                Followed::LoadAlone => break,
            }
        }
        self.lead_and_wait(None, job, fallback, loader).await
    }

    /// What a follower makes of its leader's outcome.
    fn followed<T, E, H>(
        &self,
        outcome: Outcome<Landed>,
        hard: &Option<(Duration, H)>,
    ) -> Followed<T, E, H>
    where
        T: DeserializeOwned + 'static,
        E: Clone + 'static,
        H: Clone,
    {
        let stats = &self.engine.stats;
        match outcome {
            Outcome::Stored(Landed::Value(bytes)) => {
                match codec::open::<T>(&bytes, self.fingerprint::<T>()) {
                    Ok((_, value)) => {
                        stats.typed_hits(1);
                        stats.coalesced(1);
                        Followed::Value(value)
                    }
                    // The leader stored another type under this key.
                    Err(_) => Followed::LoadAlone,
                }
            }
            Outcome::Stored(Landed::Failed(error)) => match error.downcast_ref::<E>() {
                Some(error) => Followed::Failed(Failure::Loader(error.clone())),
                // A caller with another error type: its error cannot be ours.
                None => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::TimedOut) => match hard {
                Some((_, report)) => Followed::Failed(Failure::HardTimeout(report.clone())),
                // The leader had a hard timeout and we have none: load without one.
                None => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::Unstored) => Followed::LoadAlone,
            Outcome::Pending | Outcome::Stale(_) | Outcome::GoToOrigin => Followed::Rejoin,
        }
    }

    /// A failed load answers the fail-safe value when there is one.
    fn fail_safe<T, E, H>(
        &self,
        fallback: Option<T>,
        failure: Failure<E, H>,
    ) -> Result<T, Failure<E, H>> {
        match fallback {
            Some(value) => {
                self.engine.stats.typed_stale(1);
                Ok(value)
            }
            None => Err(failure),
        }
    }

    /// Runs the load in its own task (so a caller that gives up does not cancel it for the
    /// others) and waits for it, answering the fallback at the soft timeout.
    async fn lead_and_wait<T, E, H, F, Fut>(
        self: &Arc<Self>,
        leader: Option<Leader<Landed>>,
        job: Job<H>,
        fallback: Option<T>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let soft = job.options.soft_timeout;
        let inner = Arc::clone(self);
        let mut task = self
            .engine
            .spawn(async move { inner.lead(leader, job, loader).await });
        let (joined, fallback) = match (soft, fallback) {
            (Some(soft), Some(stale)) => tokio::select! {
                joined = &mut task => (joined, Some(stale)),
                () = tokio::time::sleep(soft) => {
                    // The load goes on in the background, and its value is stored.
                    self.engine.stats.typed_stale(1);
                    self.engine.stats.typed_refreshes(1);
                    return Ok(stale);
                }
            },
            (_, fallback) => (task.await, fallback),
        };
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => self.fail_safe(fallback, failure),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The task is never aborted; only a runtime shutting down cancels it, and then
            // this future is about to be dropped too.
            Err(_) => match fallback {
                Some(value) => Ok(value),
                None => std::future::pending().await,
            },
        }
    }

    /// One load: the fleet's fill lock (or another's value), the loader, the store.
    async fn lead<T, E, H, F, Fut>(
        self: Arc<Self>,
        leader: Option<Leader<Landed>>,
        job: Job<H>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let judge = self.judge::<T>(&job.options);
        let request = FillRequest {
            keys: &job.keys,
            wait: Some(self.engine.fills.lock_wait),
            seen: job.seen,
            judge: &judge,
        };
        let lease = match fill::acquire_or_wait(&self.engine, request).await {
            Acquire::Filled((bytes, value)) => {
                if let Some(leader) = &leader {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                }
                self.engine.stats.typed_hits(1);
                self.engine.stats.coalesced(1);
                return Ok(value);
            }
            Acquire::Lead(lease) => Some(lease),
            // Load unlocked: another's load ended without a value, the wait ran out, or the
            // store is down (fail-open; the write is tried anyway).
            Acquire::Load | Acquire::Busy | Acquire::StoreDown => None,
        };
        self.load_and_finish(leader, lease, &job, loader).await
    }

    /// Runs the loader, hands its outcome to this process's followers, and ends the fill:
    /// the value written (or nothing, on an error), the notice, the unlock.
    async fn load_and_finish<T, E, H, F, Fut>(
        &self,
        leader: Option<Leader<Landed>>,
        lease: Option<fill::Lease>,
        job: &Job<H>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let stats = &self.engine.stats;
        stats.typed_loads(1);
        let loaded = match &job.hard {
            Some((after, report)) => match tokio::time::timeout(*after, loader()).await {
                Ok(result) => result.map_err(Failure::Loader),
                Err(_) => Err(Failure::HardTimeout(report.clone())),
            },
            None => loader().await.map_err(Failure::Loader),
        };
        let resolve = |landed: Landed| {
            if let Some(leader) = &leader {
                leader.resolve(Outcome::Stored(landed));
            }
        };
        let entry = job.keys.entry.as_str();
        match loaded {
            Ok(value) => {
                let now = unix_now_ms();
                let meta = self.meta_for::<T>(now, &job.options);
                match codec::seal(self.codec, &value, &meta) {
                    Ok(bytes) => {
                        resolve(Landed::Value(bytes.clone()));
                        let keep = Duration::from_millis(meta.keep_until_ms().saturating_sub(now));
                        let write = Some(fill::FillWrite::value(entry, bytes, keep));
                        let notice = (entry, FillNotice::Stored);
                        let _ = fill::finish(&self.engine, lease, write, notice).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, key = entry, "typed cache value not encodable: not stored");
                        resolve(Landed::Unstored);
                        let notice = (entry, FillNotice::NotStorable);
                        let _ = fill::finish(&self.engine, lease, None, notice).await;
                    }
                }
                // The flight ends after the write, so callers that came meanwhile followed.
                drop(leader);
                Ok(value)
            }
            Err(failure) => {
                stats.typed_load_errors(1);
                resolve(match &failure {
                    Failure::Loader(error) => Landed::Failed(Arc::new(error.clone())),
                    Failure::HardTimeout(_) => Landed::TimedOut,
                });
                // Nothing stored; waiters elsewhere are told to load themselves.
                let notice = (entry, FillNotice::NotStorable);
                let _ = fill::finish(&self.engine, lease, None, notice).await;
                // End the flight before answering, so the next call loads again.
                drop(leader);
                Err(failure)
            }
        }
    }

    /// Starts one background load of the key unless one is running here or elsewhere
    /// (stale-while-revalidate, eager refresh). It only runs if it takes the fill lock at once.
    fn refresh<T, E, H, F, Fut>(self: &Arc<Self>, job: Job<H>, loader: F)
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Role::Leader(leader) = self.flights.join(job.keys.flight) else {
            return;
        };
        let inner = Arc::clone(self);
        let _detached = self.engine.spawn(async move {
            let judge = inner.judge::<T>(&job.options);
            let request = FillRequest {
                keys: &job.keys,
                wait: None,
                seen: job.seen,
                judge: &judge,
            };
            let lease = match fill::acquire_or_wait(&inner.engine, request).await {
                Acquire::Lead(lease) => lease,
                Acquire::Filled((bytes, _)) => {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                    return;
                }
                // Refreshing elsewhere, replaced meanwhile, or the store is down: nothing to do.
                Acquire::Busy | Acquire::Load | Acquire::StoreDown => return,
            };
            inner.engine.stats.typed_refreshes(1);
            let _ = inner
                .load_and_finish::<T, E, H, F, Fut>(Some(leader), Some(lease), &job, loader)
                .await;
        });
    }

    fn judge<T>(&self, options: &GetOrSetOptions) -> FreshValue<T> {
        FreshValue {
            fingerprint: self.fingerprint::<T>(),
            options: options.clone(),
            _type: PhantomData,
        }
    }
}

/// What one load needs besides its loader.
struct Job<H> {
    keys: FillKeys,
    /// The stamp of the stale value this load replaces, if any.
    seen: Option<[u8; 8]>,
    options: GetOrSetOptions,
    /// The hard timeout, and what reaching it reports.
    hard: Option<(Duration, H)>,
}

/// What a follower makes of its leader's outcome.
enum Followed<T, E, H> {
    Value(T),
    Failed(Failure<E, H>),
    /// The flight ended without an outcome (its leader was cancelled): join again.
    Rejoin,
    /// The outcome is not for this caller (another type, another error type): load alone.
    LoadAlone,
}
