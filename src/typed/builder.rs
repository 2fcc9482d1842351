//! [`CacheBuilder`]: the typed face's settings, over the engine configuration both faces share.

use super::cache::{Cache, DEFAULT_OPTIONS};
use super::codec::Codec;
use super::inner::Inner;
use super::options::{GetOrSetOptions, InCaller};
use crate::engine::{EngineConfig, Face};
use crate::error::ConfigError;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

impl Cache {
    /// A cache over `store` with the default settings (see [`CacheBuilder`]).
    pub fn new(store: impl Store) -> Self {
        CacheBuilder::new(Arc::new(store)).assemble()
    }

    /// Starts configuring a cache over `store`.
    pub fn builder(store: impl Store) -> CacheBuilder {
        CacheBuilder::new(Arc::new(store))
    }
}

/// Settings for a [`Cache`]; [`build`](Self::build) checks them.
#[must_use]
pub struct CacheBuilder {
    /// What the engine is built from (store, guard, near tier, fills, budgets, purges).
    engine: EngineConfig,
    codec: Codec,
    schema: u32,
    defaults: GetOrSetOptions<InCaller>,
    admin_timeout: Duration,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.engine.name)
            .field("prefix", &self.engine.prefix)
            .finish_non_exhaustive()
    }
}

impl CacheBuilder {
    fn new(store: Arc<dyn Store>) -> Self {
        CacheBuilder {
            engine: EngineConfig::new(Face::Values, store),
            codec: Codec::default(),
            schema: 0,
            defaults: DEFAULT_OPTIONS,
            admin_timeout: Duration::from_secs(60),
        }
    }

    /// The `cache` label of this cache's metrics (default `tower-redis-cache`), so caches
    /// of one process are told apart on a dashboard.
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.engine.name = name.into();
        self
    }

    /// The prefix of every key (default `trc`, the layer's: typed keys sit apart under
    /// `{prefix}:v:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.engine.prefix = prefix.into();
        self
    }

    /// The format values are written in (default [`Codec::MessagePack`]). Values are read in
    /// the format they were written in.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Mixed into every value's identity (default 0): bump it to make every value written
    /// before a miss (each replaced by its next write), as when a deploy changes many types.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    /// What a bare ttl given to `get_or_set` means besides its ttl: the fail-safe, its
    /// throttle, the hard timeout, the negative ttl of `options` (its ttl is the call's).
    pub fn default_options(mut self, options: GetOrSetOptions<InCaller>) -> Self {
        self.defaults = options;
        self
    }

    /// The longest a read or lock attempt may take before the call goes on without the
    /// cache (default 100 ms).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.engine.read_timeout = timeout;
        self
    }

    /// The longest a write, delete or unlock may take (default 500 ms).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.engine.write_timeout = timeout;
        self
    }

    /// The longest an administrative store call may take (default 60 s).
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    /// How long the fill lock `get_or_set` takes per key lives unless its holder extends it
    /// (default 5 s): a loader that dies delays the fleet's next load of its key by at most
    /// this. (Named locks, [`Cache::lock`], take their ttl from [`LockOptions`](crate::LockOptions).)
    pub fn fill_lock_ttl(mut self, ttl: Duration) -> Self {
        self.engine.lock_ttl = ttl;
        self
    }

    /// The longest `get_or_set` waits for another process's load of its key before loading
    /// itself (default 10 s).
    pub fn fill_wait(mut self, wait: Duration) -> Self {
        self.engine.lock_wait = wait;
        self
    }

    /// Consecutive store failures that open the circuit breaker (default 5), and how long
    /// it stays open (default 1 s).
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.engine.breaker_threshold = threshold;
        self.engine.breaker_cooldown = cooldown;
        self
    }

    /// The near tier: copies of the values this process reads, in process memory (default:
    /// on, 64 MiB, at most 30 s); `Duration::ZERO` as `ttl` turns it off. Coherent with the
    /// fleet as the layer's is (see
    /// [`CacheLayerBuilder::near_cache`](crate::CacheLayerBuilder::near_cache)); a copy never
    /// outlives the value's fresh time.
    pub fn near_cache(mut self, max_bytes: u64, ttl: Duration) -> Self {
        self.engine.near_cache = (!ttl.is_zero()).then_some((max_bytes, ttl));
        self
    }

    /// Checks the settings and builds the cache.
    pub fn build(mut self) -> Result<Cache, ConfigError> {
        self.engine.validate()?;
        if self.admin_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("admin_timeout"));
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> Cache {
        let prefix = self.engine.prefix.clone();
        let name = self.engine.name.clone();
        let engine = Arc::new(self.engine.start());
        Cache {
            inner: Arc::new(Inner {
                engine,
                prefix,
                namespace: String::new(),
                name,
                codec: self.codec,
                schema: self.schema,
                defaults: self.defaults,
                flights: Arc::default(),
                admin_timeout: self.admin_timeout,
            }),
        }
    }
}
