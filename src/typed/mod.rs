//! The typed face: cache-aside for application values, named locks and a key builder, on the
//! same engine (store, guard, fill protocol, counters) as the HTTP layer.

mod codec;
mod inner;
mod key_builder;
mod load;
mod lock;
mod options;

pub use codec::Codec;
pub use key_builder::KeyBuilder;
pub use lock::{LockGuard, LockOptions};
pub use options::GetOrSetOptions;

use crate::engine::{Engine, FillSettings};
use crate::error::{CacheError, ConfigError, GetOrSetError, LockError};
use crate::stats::{Counters, Stats};
use crate::store::{GuardedStore, Store};
use codec::unix_now_ms;
use inner::{count, escape, escape_key, Inner};
use load::Failure;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
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
    near_cache: Option<(u64, Duration)>,
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

    /// The near tier: copies of the values this process reads, in process memory (default:
    /// on, 64 MiB, at most 30 s); `Duration::ZERO` as `ttl` turns it off. Coherent with the
    /// fleet as the layer's is (see
    /// [`CacheLayerBuilder::near_cache`](crate::CacheLayerBuilder::near_cache)); a copy never
    /// outlives the value's fresh time.
    pub fn near_cache(mut self, max_bytes: u64, ttl: Duration) -> Self {
        self.near_cache = (!ttl.is_zero()).then_some((max_bytes, ttl));
        self
    }

    /// Checks the settings and builds the cache.
    pub fn build(mut self) -> Result<Cache, ConfigError> {
        if let Some((0, _)) = self.near_cache {
            return Err(ConfigError::ZeroNearCache);
        }
        self.prefix = crate::config::check_prefix(self.prefix)?;
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
        let store = match self.near_cache {
            Some((max_bytes, ttl)) => {
                store.with_near_tier(max_bytes, ttl, crate::engine::fresh_until)
            }
            None => store,
        };
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
            near_cache: Some((
                crate::engine::DEFAULT_NEAR_CACHE_BYTES,
                crate::engine::DEFAULT_NEAR_CACHE_TTL,
            )),
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
    /// does not cancel it for the others, which is why it must be `'static` (move clones of
    /// what it needs into it); if it panics, the panic resumes in its caller.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreErrorKind;
    use crate::store::{FillWaiter, StoreFuture};
    use crate::MemoryStore;
    use bytes::Bytes;

    fn memory() -> Cache {
        Cache::new(MemoryStore::new(1 << 20))
    }

    #[test]
    fn keys_are_one_hash_tag_apart_from_the_layers_and_the_empty_key_is_its_own() {
        let cache = memory();
        assert_eq!(cache.store_key("user:1"), "trc:v:{user:1}");
        assert_eq!(cache.store_key("a{b}c%"), "trc:v:{a%7Bb%7Dc%25}");
        assert_eq!(cache.store_key(""), "trc:v:{%}");
        assert_ne!(cache.store_key(""), cache.store_key("%"));
        let keys = cache.inner.keys("user:1");
        assert_eq!(keys.lock, "trc:f:{user:1}");
    }

    #[test]
    fn prefixes_that_would_break_the_layout_are_refused() {
        let build = |prefix: &str| {
            Cache::builder(MemoryStore::new(1024))
                .key_prefix(prefix)
                .build()
        };
        assert!(matches!(build(""), Err(ConfigError::EmptyPrefix)));
        for bad in ["a{b", "a*", "a b", "a%"] {
            assert!(
                matches!(build(bad), Err(ConfigError::InvalidPrefix(_))),
                "{bad}"
            );
        }
        assert!(build("app-1").is_ok());
    }

    #[tokio::test]
    async fn the_memory_store_answers_every_call() {
        let cache = memory();
        cache
            .set("user:1*a", &1u32, Duration::from_secs(60))
            .await
            .unwrap();
        cache
            .set("user:10", &2u32, Duration::from_secs(60))
            .await
            .unwrap();
        cache
            .set("other", &"x", Duration::from_secs(60))
            .await
            .unwrap();
        let many = cache
            .get_many::<u32, _>(&["user:1*a", "missing", "user:10", "other"])
            .await
            .unwrap();
        assert_eq!(many, vec![Some(1), None, Some(2), None]);
        assert_eq!(
            cache.stats().typed_decode_failures,
            1,
            "the &str read as u32"
        );
        assert_eq!(cache.delete_prefix("user:1*").await.unwrap(), 1);
        assert_eq!(cache.get::<u32>("user:10").await.unwrap(), Some(2));
        assert!(cache.delete("user:10").await.unwrap());
        assert!(!cache.delete("user:10").await.unwrap());
        cache.set("gone", &1u8, Duration::ZERO).await.unwrap();
        assert_eq!(cache.get::<u8>("gone").await.unwrap(), None);
        let health = cache.health().await;
        assert!(health.is_healthy());
        assert_eq!(health.breaker, BreakerState::Closed);
    }

    #[cfg(feature = "json")]
    #[tokio::test]
    async fn json_values_are_plain_json_after_the_envelope_and_read_back() {
        let store = MemoryStore::new(1 << 20);
        let cache = Cache::builder(store.clone())
            .codec(Codec::Json)
            .build()
            .unwrap();
        cache
            .set("k", &vec![1u8, 2], Duration::from_secs(60))
            .await
            .unwrap();
        let raw = store.get(&cache.store_key("k")).await.unwrap().unwrap();
        assert_eq!(&raw[45..], b"[1,2]");
        // Read in the format written, whatever the reader's own.
        let msgpack = Cache::new(store);
        assert_eq!(msgpack.get::<Vec<u8>>("k").await.unwrap(), Some(vec![1, 2]));
    }

    /// A store that keeps the trait's defaults for the typed face's extras.
    struct Minimal(MemoryStore);

    impl Store for Minimal {
        fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
            self.0.get(key)
        }
        fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
            self.0.put(key, value, ttl)
        }
        fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
            self.0.delete(key)
        }
        fn try_lock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> StoreFuture<'a, bool> {
            self.0.try_lock(key, token, ttl)
        }
        fn extend_lock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> StoreFuture<'a, bool> {
            self.0.extend_lock(key, token, ttl)
        }
        fn unlock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            entry_key: Option<&'a str>,
        ) -> StoreFuture<'a, ()> {
            self.0.unlock(key, token, entry_key)
        }
        fn publish_fill<'a>(
            &'a self,
            entry_key: &'a str,
            notice: crate::store::FillNotice,
        ) -> StoreFuture<'a, ()> {
            self.0.publish_fill(entry_key, notice)
        }
        fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
            self.0.subscribe_fill(entry_key)
        }
    }

    #[tokio::test]
    async fn a_store_with_the_defaults_works_and_reports_what_it_lacks() {
        let cache = Cache::new(Minimal(MemoryStore::new(1 << 20)));
        cache.set("a", &1u8, Duration::from_secs(60)).await.unwrap();
        let many = cache.get_many::<u8, _>(&["a", "b"]).await.unwrap();
        assert_eq!(many, vec![Some(1), None]);
        assert!(cache.delete("a").await.unwrap());
        for _ in 0..10 {
            match cache.delete_prefix("a").await {
                Err(CacheError::Store(error)) => {
                    assert_eq!(error.kind(), StoreErrorKind::Unsupported)
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        // Not a failure of the store: the breaker stays closed.
        assert_eq!(cache.health().await.breaker, BreakerState::Closed);
        assert_eq!(cache.stats().store_errors, 0);
    }
}
