//! The cache in a tonic 0.14 server: one [`CacheLayer`] on the whole server, in front of the
//! gRPC health service (`tonic-health`) and a plain HTTP `GET` route served next to it.
//!
//! gRPC calls are `POST`s, so they pass through the cache untouched (`x-cache: BYPASS` in
//! their response metadata); the `GET` route is cached.
//!
//! ```text
//! cargo run --example tonic                                   # cache in this process
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tonic  # cache shared through Redis
//! ```
//!
//! Then, on `127.0.0.1:3003`:
//!
//! ```text
//! curl -i localhost:3003/hello/ferris   # x-cache: MISS, then HIT with the same body
//! ```
//!
//! and a gRPC health check by hand (five zero bytes frame an empty `HealthCheckRequest`):
//!
//! ```text
//! printf '\0\0\0\0\0' | curl -si --http2-prior-knowledge -H 'content-type: application/grpc' \
//!     -H 'te: trailers' --data-binary @- localhost:3003/grpc.health.v1.Health/Check
//! # HTTP/2 200, x-cache: BYPASS, grpc-status: 0
//! ```

use axum::{
    extract::{Path, State},
    routing::get,
};
use std::{
    error::Error,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{server::TcpIncoming, Server},
};
use tower_redis_cache::{CacheLayer, MemoryStore, RedisStore, Store};

/// The cache settings of this example: entries live 60 seconds.
pub fn cache_layer(store: impl Store) -> CacheLayer {
    CacheLayer::builder(store)
        .key_prefix("tonic-example")
        .ttl(Duration::from_secs(60))
        .build()
        .expect("valid cache settings")
}

/// The health service and `GET /hello/{name}`; `greetings` counts the greeting handler's runs.
pub fn routes(greetings: Arc<AtomicU64>) -> Routes {
    // The reporter starts with the whole server ("") marked serving.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let http = axum::Router::new()
        .route("/hello/{name}", get(hello))
        .with_state(greetings);
    Routes::from(http).add_service(health)
}

async fn hello(State(greetings): State<Arc<AtomicU64>>, Path(name): Path<String>) -> String {
    let call = greetings.fetch_add(1, Relaxed) + 1;
    format!("Hello, {name}! (greeting #{call})\n")
}

/// Serves `routes` behind `cache` on every connection `listener` accepts.
pub async fn serve(
    listener: TcpListener,
    cache: CacheLayer,
    routes: Routes,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        // gRPC needs HTTP/2; HTTP/1.1 lets plain clients (curl, browsers) use the GET route.
        .accept_http1(true)
        // Every request, gRPC or not, goes through the layer. The layer's response body
        // (`CacheBody<tonic::body::Body>`) is accepted as is: no mapping needed.
        .layer(cache)
        .add_routes(routes)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis");
            cache_layer(RedisStore::connect(&url).await?)
        }
        _ => {
            println!("cache store: in-process memory (set REDIS_URL to use Redis)");
            cache_layer(MemoryStore::new(64 * 1024 * 1024))
        }
    };

    let listener = TcpListener::bind("127.0.0.1:3003").await?;
    println!("listening on http://{}", listener.local_addr()?);
    tokio::select! {
        served = serve(listener, cache.clone(), routes(Arc::default())) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    cache.wait_for_writes().await;
    Ok(())
}
