//! The store the HTTP behaviour tests run on: an in-process [`MemoryStore`] by default, so the
//! HTTP face is tested without Redis; a real `redis-server` (started per test, or `REDIS_URL`)
//! with `TRC_TEST_STORE=redis`, which `scripts/test.sh` runs too, so the Redis store keeps
//! every one of these behaviours covered.

use crate::support::fleet::StoreFactory;
use crate::support::{redis_store, RedisServer};
use std::future::Future;
use std::sync::Arc;
use tower_redis_cache::{MemoryStore, Store};

/// One test's store. Every [`store`](Backend::store) handle reaches the same data: several
/// layers built on it are instances sharing a store, as a fleet shares Redis.
pub enum Backend {
    /// One `MemoryStore`, shared by every handle (its clones share entries, locks and notices).
    Memory(MemoryStore),
    /// A Redis server; every handle has its own connections, as separate instances do.
    Redis(Box<RedisServer>),
}

impl Backend {
    /// The store `TRC_TEST_STORE` names (`memory`, the default, or `redis`).
    pub async fn start() -> Self {
        match std::env::var("TRC_TEST_STORE").as_deref() {
            Ok("redis") => Self::Redis(Box::new(RedisServer::start().await)),
            Ok("memory") | Ok("") | Err(_) => Self::memory(),
            Ok(other) => panic!("TRC_TEST_STORE={other}: expected `memory` or `redis`"),
        }
    }

    /// An in-process store, whatever `TRC_TEST_STORE` says.
    pub fn memory() -> Self {
        Self::Memory(MemoryStore::new(256 << 20))
    }

    /// A new handle on the store: what one instance of a service would hold.
    pub async fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Memory(store) => Arc::new(store.clone()),
            Self::Redis(server) => Arc::new(redis_store(server).await),
        }
    }
}

/// A fleet's instances each take a [`store`](Backend::store) handle.
impl StoreFactory for Backend {
    type Store = Arc<dyn Store>;

    fn new_store(&self) -> impl Future<Output = Arc<dyn Store>> {
        self.store()
    }
}
