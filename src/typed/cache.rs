//! [`Cache`]: the typed face's entry point, the calls that take the value
//! type at each call, namespaces, locks and health.

use super::codec::Codec;
use super::handle::TypedCache;
use super::identity::CacheValue;
use super::inner::{count, escape, escape_key, Inner};
use super::loader::Loader;
use super::lock::{self, HeldLock, LockGuard, LockOptions};
use super::options::{Expiry, GetOrSetOptions, InCaller};
use crate::engine::Engine;
use crate::error::{CacheError, GetOrSetError, LockError};
use crate::stats::Stats;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A typed cache-aside API over a [`Store`](crate::Store): values of serde types under string keys, loaded
/// once per key across the fleet.
///
/// Most code takes a handle per value type, [`typed`](Self::typed), which fixes the type
/// (and its validator) once; the calls here take the type at each call and follow the same
/// rules. Cloning is cheap (an `Arc`); every clone (and every [namespace](Self::namespace))
/// shares the store, the in-process coalescing and the counters. Every store call goes
/// through the same fail-open guard as the HTTP layer (timeouts, circuit breaker, counting):
/// `get_or_set` never reports the store, it loads instead; the direct calls (`get`, `set`,
/// `delete`, ...) report it as [`CacheError::Store`].
///
/// Values live under `{prefix}:v:{<key>}` (`%`, `{` and `}` in the key escaped, so the key is
/// one Redis Cluster hash tag) and the fill lock of a key under `{prefix}:f:{<key>}`, in the
/// same slot, apart from the HTTP layer's `{prefix}:{<hash>}:…` keys. Each value is an
/// envelope carrying its lifetimes and a fingerprint of its identity ([`CacheValue`], plus
/// the [schema version](crate::CacheBuilder::schema_version)).
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::{Cache, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::new(MemoryStore::new(1 << 20));
/// // `&str` and `String` share an identity: what is written is read back.
/// cache.set("greeting", &"hello", Duration::from_secs(60)).await?;
/// assert_eq!(cache.get::<String>("greeting").await?.as_deref(), Some("hello"));
/// // Read as another type, it is a miss, and still there for its own readers.
/// assert_eq!(cache.get::<u64>("greeting").await?, None);
/// assert_eq!(cache.get::<String>("greeting").await?.as_deref(), Some("hello"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .field("namespace", &self.inner.namespace)
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

/// The default options' ttl, unused (a bare ttl brings its own).
pub(super) const DEFAULT_OPTIONS: GetOrSetOptions<InCaller> =
    GetOrSetOptions::builder(Duration::from_secs(60)).options_unchecked();

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
    /// A cache on an existing engine (a layer's, for `CacheLayer::cache()`), sharing its
    /// store, guard, counters and fill settings; `prefix` must already be valid.
    pub(crate) fn from_engine(engine: Arc<Engine>, prefix: &str, name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                prefix: prefix.to_owned(),
                namespace: String::new(),
                name: name.to_owned(),
                codec: Codec::default(),
                schema: 0,
                defaults: DEFAULT_OPTIONS,
                flights: Arc::default(),
                admin_timeout: Duration::from_secs(60),
            }),
        }
    }

    /// A cache whose keys are all under `namespace` (`users:` + key), sharing this one's
    /// engine: store, coalescing, counters, settings. Namespaces nest
    /// (`cache.namespace("a").namespace("b")` keys under `a:b:`), and
    /// `delete_prefix("")` on a namespace deletes only its values.
    pub fn namespace(&self, namespace: impl AsRef<str>) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                engine: Arc::clone(&inner.engine),
                prefix: inner.prefix.clone(),
                namespace: format!("{}{}:", inner.namespace, namespace.as_ref()),
                name: inner.name.clone(),
                codec: inner.codec,
                schema: inner.schema,
                defaults: inner.defaults,
                flights: Arc::clone(&inner.flights),
                admin_timeout: inner.admin_timeout,
            }),
        }
    }

    /// The `cache` label of this cache's metrics.
    pub fn cache_name(&self) -> &str {
        &self.inner.name
    }

    /// The counters so far (shared with a layer on the same engine). The typed face counts
    /// in the `typed_*` fields; `hits`, `misses` and the other unprefixed request counters
    /// are the HTTP face's.
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

    /// Reads a fresh value of `T`; see [`TypedCache::get`].
    pub async fn get<T>(&self, key: impl AsRef<str>) -> Result<Option<T>, CacheError>
    where
        T: CacheValue + DeserializeOwned,
    {
        self.typed::<T>().get(key).await
    }

    /// Reads many fresh values of `T` in one round trip; see [`TypedCache::get_many`].
    pub async fn get_many<T>(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<T>>, CacheError>
    where
        T: CacheValue + DeserializeOwned,
    {
        self.typed::<T>().get_many(keys).await
    }

    /// Stores `value` for `expiry`; see [`TypedCache::set`]. `set(key, &"hello", ttl)` is
    /// read back by `get::<String>`.
    pub async fn set<T>(
        &self,
        key: impl AsRef<str>,
        value: &T,
        expiry: impl Into<Expiry>,
    ) -> Result<(), CacheError>
    where
        T: CacheValue + Serialize + ?Sized,
    {
        self.typed_ref::<T>().set(key, value, expiry).await
    }

    /// Stores `value` with the windows of `options`; see [`TypedCache::set_with`].
    pub async fn set_with<T, M>(
        &self,
        key: impl AsRef<str>,
        value: &T,
        options: &GetOrSetOptions<M>,
    ) -> Result<(), CacheError>
    where
        T: CacheValue + Serialize + ?Sized,
    {
        self.typed_ref::<T>().set_with(key, value, options).await
    }

    /// A handle writing `T`'s identity from a borrowed `&T` (`T` may be unsized: `str`).
    fn typed_ref<T: CacheValue + ?Sized>(&self) -> TypedCache<&T> {
        self.typed::<&T>()
    }

    /// Deletes the value under `key`, whatever its type; `true` when there was one.
    pub async fn delete(&self, key: impl AsRef<str>) -> Result<bool, CacheError> {
        let entry = self.inner.keys(key.as_ref()).entry;
        Ok(self.inner.engine.store.remove(&entry).await?)
    }

    /// Deletes the values under `keys` (the deletes sent together), and returns how many
    /// there were.
    pub async fn delete_many(
        &self,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<u64, CacheError> {
        let entries: Vec<String> = keys
            .into_iter()
            .map(|key| self.inner.keys(key.as_ref()).entry)
            .collect();
        let store = &self.inner.engine.store;
        let removed =
            futures_util::future::try_join_all(entries.iter().map(|key| store.remove(key))).await?;
        Ok(count(
            removed.into_iter().filter(|&removed| removed).count(),
        ))
    }

    /// Drops every value whose key starts with `prefix` (within this cache's namespace),
    /// taken literally (`*`, `?`, `[` are not patterns: `"user:1*"` drops `user:1*a`, not
    /// `user:10`), on every instance sharing the store.
    ///
    /// Cost: one store call, whatever the prefix covers. The purge is recorded, not searched
    /// for (no `SCAN`): every instance treats a value under the prefix whose write or load
    /// began before the purge as missing, and the values leave the store when they expire,
    /// so how many there were is not known. A load still running when the purge lands is
    /// covered too; a value written after it is not.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), CacheError> {
        let inner = &self.inner;
        let literal = format!("{}:v:{{{}", inner.prefix, escape(&inner.full_key(prefix)));
        inner
            .engine
            .purge(crate::engine::purge::Target::KeyPrefix(&literal))
            .await?;
        inner.engine.stats.purges(1);
        Ok(())
    }

    /// Drops every value carrying `tag` ([`Loaded::tags`](crate::Loaded::tags),
    /// [`TypedCache::set_tagged`](crate::TypedCache::set_tagged)), and every HTTP entry
    /// carrying it when this cache shares the layer's engine
    /// ([`CacheLayer::cache`](crate::CacheLayer::cache)), on every instance, in one store
    /// call (see [`delete_prefix`](Self::delete_prefix)).
    pub async fn purge_tag(&self, tag: &str) -> Result<(), crate::PurgeError> {
        if !crate::tags::valid(tag) {
            return Err(crate::PurgeError::InvalidTag(tag.to_owned()));
        }
        let engine = &self.inner.engine;
        engine.purge(crate::engine::purge::Target::Tag(tag)).await?;
        engine.stats.purges(1);
        Ok(())
    }

    /// Answers the value of `T` under `key`, loading it on a miss; see
    /// [`TypedCache::get_or_set`], which this is with `T` named at the call.
    pub async fn get_or_set<T, M, L, E>(
        &self,
        key: impl AsRef<str>,
        options: impl Into<GetOrSetOptions<M>>,
        loader: L,
    ) -> Result<T, GetOrSetError<E>>
    where
        T: CacheValue + Serialize + DeserializeOwned + Send + 'static,
        L: Loader<M, T, E>,
        E: Send + Sync + 'static,
    {
        self.typed::<T>().get_or_set(key, options, loader).await
    }

    /// Takes the distributed lock `name`, waiting for it as `options` say (a [`Duration`]:
    /// that ttl, no wait); see [`with_lock`](Self::with_lock). Locks live under
    /// `{prefix}:lock:{<name>}`, their fencing counters beside them.
    pub async fn lock(
        &self,
        name: &str,
        options: impl Into<LockOptions>,
    ) -> Result<LockGuard, LockError> {
        let name = escape_key(&self.inner.full_key(name));
        let key = format!("{}:lock:{{{name}}}", self.inner.prefix);
        lock::acquire(&self.inner.engine, key, options.into()).await
    }

    /// Runs `work` holding the distributed lock `name`, so no other holder of `name` in any
    /// process sharing the store runs at the same time (while the lock is kept alive: it is
    /// extended every third of its ttl, and released by compare-and-delete when `work`
    /// ends). `work` is handed the [`HeldLock`]: its fencing token, to send with the writes
    /// it protects, and whether it is still held.
    ///
    /// Waits up to the options' wait, with backoff: [`LockError::Busy`] when the options do
    /// not wait and the lock is held, [`LockError::Timeout`] when it stayed held for the
    /// whole wait. [`LockError::Lost`] when the lock was lost while `work` ran (it expired,
    /// as after a stall longer than its ttl): the work's result is dropped, as another
    /// holder may have run meanwhile. A store that cannot be asked is an error here, not
    /// fail-open: running unlocked would break what the lock is for.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{Cache, LockError, LockOptions, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let cache = Cache::new(MemoryStore::new(1 << 20));
    /// let options = LockOptions::new(Duration::from_secs(10)).wait(Duration::from_secs(5));
    /// let token = cache
    ///     .with_lock("nightly-report", &options, |lock| async move { lock.fencing_token() })
    ///     .await?;
    ///
    /// // While one holds it, another caller that does not wait is told it is busy.
    /// let held = cache.lock("nightly-report", Duration::from_secs(10)).await?;
    /// assert!(held.fencing_token() > token);
    /// let busy = cache.lock("nightly-report", Duration::from_secs(10)).await;
    /// assert!(matches!(busy, Err(LockError::Busy)));
    /// held.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<R, F, Fut>(
        &self,
        name: &str,
        options: impl Into<LockOptions>,
        work: F,
    ) -> Result<R, LockError>
    where
        F: FnOnce(HeldLock) -> Fut,
        Fut: Future<Output = R>,
    {
        let guard = self.lock(name, options).await?;
        let result = work(guard.held()).await;
        // A check that cannot reach the store leaves the extender's word: held unless an
        // extension found it gone.
        let checked = match guard.check().await {
            Err(LockError::Lost) => Err(LockError::Lost),
            _ if !guard.is_held() => Err(LockError::Lost),
            _ => Ok(result),
        };
        // The work is done: a failed release only leaves the lock to expire.
        let _ = guard.release().await;
        checked
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
