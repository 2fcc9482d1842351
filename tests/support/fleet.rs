//! A fleet: several instances of one service, each a layer with its own handle on one store and
//! the same key prefix, and a storm of concurrent requests spread over them. Used by
//! `tests/http` (on the store `Backend` picks) and `tests/redis` (on a real Redis).

use super::{get, redis_store, send, unique_prefix, RedisServer, Reply, ReqBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::Layer;
use tower_redis_cache::{CacheLayer, CacheLayerBuilder, RedisStore, Store};

pub type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, Infallible>;
pub type Cached = tower_redis_cache::CacheService<Origin>;

/// Where a fleet's instances get their stores: every call is a new handle (what one instance
/// would hold), and every handle reaches the same data.
pub trait StoreFactory {
    type Store: Store;

    fn new_store(&self) -> impl Future<Output = Self::Store>;
}

/// A Redis server: every handle has its own connections, as separate instances do.
impl StoreFactory for RedisServer {
    type Store = RedisStore;

    fn new_store(&self) -> impl Future<Output = RedisStore> {
        redis_store(self)
    }
}

/// `count` layers with their own handles on the store and the same prefix: a fleet.
pub async fn fleet(
    stores: &impl StoreFactory,
    test: &str,
    count: usize,
    origin: &Origin,
    configure: impl Fn(CacheLayerBuilder) -> CacheLayerBuilder,
) -> (Vec<CacheLayer>, Vec<Cached>) {
    let prefix = unique_prefix(test);
    let mut layers = Vec::new();
    let mut services = Vec::new();
    for _ in 0..count {
        let builder = super::builder(stores.new_store().await, test).key_prefix(&prefix);
        let layer = configure(builder).build().expect("valid config");
        services.push(layer.layer(origin.clone()));
        layers.push(layer);
    }
    (layers, services)
}

/// Sends `per_key` requests for each of `paths` concurrently, round-robin over `services`.
pub async fn storm(services: &[Cached], paths: &[String], per_key: usize) -> Vec<(String, Reply)> {
    let mut set = JoinSet::new();
    let mut i = 0;
    for _ in 0..per_key {
        for path in paths {
            let svc = services[i % services.len()].clone();
            i += 1;
            let path = path.clone();
            set.spawn(async move {
                let reply = send(&svc, get(&format!("http://example.test{path}"))).await;
                (path, reply)
            });
        }
    }
    let mut replies = Vec::new();
    while let Some(reply) = set.join_next().await {
        replies.push(reply.expect("request task"));
    }
    replies
}
