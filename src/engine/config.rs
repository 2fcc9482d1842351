//! The engine's settings, validated once and shared by both faces' builders.
//!
//! [`CacheLayerBuilder`](crate::CacheLayerBuilder) and [`CacheBuilder`](crate::CacheBuilder)
//! each hold one [`EngineConfig`] for what the engine owns (the store and its guard, the near
//! tier, fills, budgets, purge records, the counters' name) and add only their face's own
//! settings, so a rule about the engine is written, checked and defaulted in one place.

use crate::engine::{purge, Engine, FillSettings};
use crate::error::ConfigError;
use crate::stats::Counters;
use crate::store::{GuardedStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// The longest a request may wait for another request's fill before asking the origin itself.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(600);

/// The default of [`CacheLayerBuilder::max_fill_bytes`](crate::CacheLayerBuilder::max_fill_bytes):
/// 256 MiB.
pub const DEFAULT_MAX_FILL_BYTES: u64 = 256 << 20;

/// The near tier's default size: 64 MiB of copies per layer or cache.
pub(crate) const DEFAULT_NEAR_CACHE_BYTES: u64 = 64 << 20;

/// The near tier's default longest life of a copy (it is dropped sooner on any change, and
/// never kept past the value's own freshness).
pub(crate) const DEFAULT_NEAR_CACHE_TTL: Duration = Duration::from_secs(30);

/// The default bound on store writes in flight.
pub(crate) const DEFAULT_PENDING_WRITES: usize = 1024;

/// Which face an engine serves: the two differ in a few defaults and in the names their
/// builders give the same setting (so an error names the method the caller used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Face {
    /// The HTTP layer: a store read sits on every request's path.
    Http,
    /// The typed cache: a read stands in for a load that is usually much slower (a query, a
    /// remote call), and a caller waits for another process's load rather than repeat it.
    Values,
}

/// What the engine is built from; see the module docs.
pub(crate) struct EngineConfig {
    pub(crate) face: Face,
    pub(crate) store: Arc<dyn Store>,
    /// The `cache` label of the counters (and, for the layer, the `Cache-Status` name).
    pub(crate) name: String,
    /// The key prefix: every key, lock and purge record of this engine lives under it.
    pub(crate) prefix: String,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    /// Bytes and longest life of the near tier's copies; `None` is off.
    pub(crate) near_cache: Option<(u64, Duration)>,
    pub(crate) max_pending_writes: usize,
    pub(crate) max_fill_bytes: u64,
    pub(crate) purge_records: usize,
    pub(crate) purge_clock_margin: Duration,
}

impl EngineConfig {
    /// The defaults of `face`. Two differ between the faces, for the reasons on [`Face`]:
    /// the read timeout (50 ms on a request's path, 100 ms in front of a load) and the
    /// longest wait for another process's fill (5 s for a request, whose client is waiting
    /// and can be answered by the origin instead; 10 s for a load, which is the costly part).
    pub(crate) fn new(face: Face, store: Arc<dyn Store>) -> Self {
        let (read_timeout, lock_wait) = match face {
            Face::Http => (Duration::from_millis(50), Duration::from_secs(5)),
            Face::Values => (Duration::from_millis(100), Duration::from_secs(10)),
        };
        Self {
            face,
            store,
            name: "tower-redis-cache".to_owned(),
            prefix: "trc".to_owned(),
            read_timeout,
            write_timeout: Duration::from_millis(500),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(5),
            lock_wait,
            near_cache: Some((DEFAULT_NEAR_CACHE_BYTES, DEFAULT_NEAR_CACHE_TTL)),
            max_pending_writes: DEFAULT_PENDING_WRITES,
            max_fill_bytes: DEFAULT_MAX_FILL_BYTES,
            purge_records: purge::DEFAULT_PURGE_RECORDS,
            purge_clock_margin: purge::DEFAULT_CLOCK_MARGIN,
        }
    }

    /// Checks every engine setting; the prefix comes back in its checked form.
    pub(crate) fn validate(&mut self) -> Result<(), ConfigError> {
        self.prefix = crate::prefix::check_prefix(std::mem::take(&mut self.prefix))?;
        // One rule for both faces: the name is a Structured Field token, as the layer's
        // `Cache-Status` needs, so a name is valid wherever it is used.
        if !is_sf_token(&self.name) {
            return Err(ConfigError::InvalidCacheName(std::mem::take(
                &mut self.name,
            )));
        }
        let (lock_ttl, lock_wait) = match self.face {
            Face::Http => ("lock_ttl", "lock_wait"),
            Face::Values => ("fill_lock_ttl", "fill_wait"),
        };
        for (field, value) in [
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            (lock_ttl, self.lock_ttl),
            (lock_wait, self.lock_wait),
            ("circuit breaker cooldown", self.breaker_cooldown),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(field));
            }
        }
        if self.lock_wait > MAX_LOCK_WAIT {
            return Err(ConfigError::LockWaitTooLong {
                wait: self.lock_wait,
                max: MAX_LOCK_WAIT,
            });
        }
        if let Some((0, _)) = self.near_cache {
            return Err(ConfigError::ZeroNearCache);
        }
        if self.max_pending_writes == 0 {
            return Err(ConfigError::ZeroPendingWrites);
        }
        if self.max_fill_bytes == 0 {
            return Err(ConfigError::ZeroFillBytes);
        }
        if self.purge_records == 0 {
            return Err(ConfigError::ZeroPurgeRecords);
        }
        Ok(())
    }

    /// Builds the engine from settings [`validate`](Self::validate) accepted (or the
    /// defaults, which it always accepts).
    pub(crate) fn start(self) -> Engine {
        #[cfg(feature = "metrics")]
        crate::stats::describe_metrics();
        let stats = Arc::new(Counters::named(&self.name));
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
        Engine::new(store, stats, Arc::default(), fills)
            .with_budgets(self.max_pending_writes, self.max_fill_bytes)
            .with_purges(
                format!("{{{}}}:purges", self.prefix),
                self.purge_records,
                self.purge_clock_margin,
            )
    }
}

/// Whether `name` is a Structured Field token (RFC 8941 §3.3.4).
fn is_sf_token(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
        && chars.all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn config(face: Face) -> EngineConfig {
        EngineConfig::new(face, Arc::new(MemoryStore::new(1 << 20)))
    }

    #[test]
    fn cache_names_must_be_tokens() {
        assert!(is_sf_token("tower-redis-cache"));
        assert!(is_sf_token("cdn/edge-1"));
        assert!(!is_sf_token("1abc"));
        assert!(!is_sf_token("has space"));
        assert!(!is_sf_token(""));
    }

    #[test]
    fn the_defaults_of_both_faces_are_valid() {
        for face in [Face::Http, Face::Values] {
            assert!(config(face).validate().is_ok(), "{face:?}");
        }
    }

    #[test]
    fn both_faces_refuse_the_same_bad_settings_naming_their_own_methods() {
        let mut http = config(Face::Http);
        http.breaker_cooldown = Duration::ZERO;
        let mut values = config(Face::Values);
        values.breaker_cooldown = Duration::ZERO;
        for mut c in [http, values] {
            assert!(matches!(
                c.validate(),
                Err(ConfigError::ZeroDuration("circuit breaker cooldown"))
            ));
        }
        let mut values = config(Face::Values);
        values.lock_wait = Duration::ZERO;
        assert!(matches!(
            values.validate(),
            Err(ConfigError::ZeroDuration("fill_wait"))
        ));
        let mut values = config(Face::Values);
        values.name = "two words".to_owned();
        assert!(matches!(
            values.validate(),
            Err(ConfigError::InvalidCacheName(_))
        ));
        let mut http = config(Face::Http);
        http.lock_wait = MAX_LOCK_WAIT + Duration::from_secs(1);
        assert!(matches!(
            http.validate(),
            Err(ConfigError::LockWaitTooLong { .. })
        ));
    }
}
