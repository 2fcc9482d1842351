//! The typed face: cache-aside for application values, named locks and a key builder, on the
//! same engine (store, guard, fill protocol, counters) as the HTTP layer.
//!
//! [`Cache::typed`] gives a [`TypedCache`] per value type, its identity ([`CacheValue`]: a
//! stable name and version, never the Rust path) fixed once; `get_or_set` takes a loader
//! future that may borrow, options checked once where built ([`GetOrSetOptions`]), and
//! shares a loader's error with every coalesced caller as an `Arc`.

mod builder;
mod cache;
mod codec;
mod handle;
pub(crate) mod identity;
mod inner;
mod key_builder;
mod load;
mod loader;
mod lock;
mod options;
mod usable;

pub use builder::CacheBuilder;
pub use cache::{BreakerState, Cache, Health};
pub use codec::Codec;
pub use handle::TypedCache;
pub use identity::CacheValue;
pub use key_builder::KeyBuilder;
pub use loader::{Detached, Loader};
pub use lock::{HeldLock, LockGuard, LockOptions};
pub use options::{
    Expiry, GetOrSetOptions, GetOrSetOptionsBuilder, InBackground, InCaller, Loaded,
    DEFAULT_FAIL_SAFE_THROTTLE,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CacheError, ConfigError, StoreErrorKind};
    use crate::store::{FillWaiter, Store, StoreFuture};
    use crate::MemoryStore;
    use bytes::Bytes;
    use std::time::Duration;

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
            .get_many::<u32>(["user:1*a", "missing", "user:10", "other"])
            .await
            .unwrap();
        assert_eq!(many, vec![Some(1), None, Some(2), None]);
        let stats = cache.stats();
        assert_eq!(stats.typed_foreign, 1, "the &str read as u32");
        assert_eq!(stats.typed_decode_failures, 0, "and left in place");
        assert_eq!(
            cache.get::<String>("other").await.unwrap().as_deref(),
            Some("x")
        );
        cache.delete_prefix("user:1*").await.unwrap();
        assert_eq!(cache.get::<u32>("user:10").await.unwrap(), Some(2));
        assert!(cache.delete("user:10").await.unwrap());
        assert!(!cache.delete("user:10").await.unwrap());
        assert!(matches!(
            cache.set("gone", &1u8, Duration::ZERO).await,
            Err(CacheError::ZeroTtl)
        ));
        cache.set("kept", &1u8, Expiry::Never).await.unwrap();
        assert_eq!(cache.get::<u8>("kept").await.unwrap(), Some(1));
        let users = cache.namespace("users");
        users
            .set("1", &"ada", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(cache.store_key("users:1"), users.store_key("1"));
        assert_eq!(
            cache.get::<String>("users:1").await.unwrap().as_deref(),
            Some("ada")
        );
        users.delete_prefix("").await.unwrap();
        assert_eq!(cache.get::<String>("users:1").await.unwrap(), None);
        users
            .set("1", &"bob", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get::<String>("users:1").await.unwrap().as_deref(),
            Some("bob"),
            "a write after the purge is not covered by it"
        );
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
        assert_eq!(
            &raw[55..],
            b"[1,2]",
            "the JSON after the 55-byte envelope (no tags)"
        );
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
        let many = cache.get_many::<u8>(["a", "b"]).await.unwrap();
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
