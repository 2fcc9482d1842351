//! An axum 0.8 app with a different cache TTL per route, a route that opts out, and the
//! cache counters served as JSON.
//!
//! ```text
//! cargo run --example axum                                   # cache in this process
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum  # cache shared through Redis
//! ```
//!
//! Then, on `127.0.0.1:3001`:
//!
//! ```text
//! curl -i localhost:3001/catalog         # x-cache: MISS, then HIT for 10 minutes
//! curl -i localhost:3001/prices/tea      # x-cache: MISS, then HIT for 5 seconds
//! curl -i localhost:3001/prices/tea?live # x-cache: BYPASS: `?live` opts out of the cache
//! curl -i localhost:3001/cart            # no x-cache header: this route has no cache layer
//! curl -s localhost:3001/stats           # the counters of both layers, and origin calls
//! ```
//!
//! Each cached route gets its own [`CacheLayer`] through `route_layer`, so each has its own
//! TTL and counters; the layers share one store (stores are cheap to clone).

use axum::{
    extract::{Path, State},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use std::{
    error::Error,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tower_redis_cache::{CacheLayer, MemoryStore, RedisStore, Stats, Store};

/// What [`app`] shares with its handlers, and hands back so a caller (a test, an admin task)
/// can watch the caches and the origin.
#[derive(Clone)]
pub struct AppState {
    /// The catalog changes on deploys: entries live 10 minutes.
    pub catalog_cache: CacheLayer,
    /// Prices move: entries live 5 seconds, and `?live` skips the cache.
    pub prices_cache: CacheLayer,
    /// How often each handler ran, i.e. how many requests the cache did not answer.
    pub calls: Arc<Calls>,
}

/// Handler invocations, per route.
#[derive(Debug, Default)]
pub struct Calls {
    /// `GET /catalog`.
    pub catalog: AtomicU64,
    /// `GET /prices/{sku}`.
    pub prices: AtomicU64,
    /// `GET /cart`.
    pub cart: AtomicU64,
}

/// Builds the app over `store`. Having a function that builds it lets tests drive the very
/// router `main` serves.
pub fn app(store: impl Store + Clone) -> (Router, AppState) {
    let catalog_cache = CacheLayer::builder(store.clone())
        .key_prefix("axum-example:catalog")
        .ttl(Duration::from_secs(600))
        .build()
        .expect("valid cache settings");
    let prices_cache = CacheLayer::builder(store)
        .key_prefix("axum-example:prices")
        .ttl(Duration::from_secs(5))
        // A custom key replaces the URL-derived one; `None` sends the request past the cache.
        // Here `?live` opts out, and every other query (tracking parameters and the like) is
        // ignored, so `/prices/tea?utm_source=mail` shares the entry of `/prices/tea`.
        .key_fn(|parts| {
            let live = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "live" || p.starts_with("live=")));
            (!live).then(|| parts.uri.path().to_owned())
        })
        .build()
        .expect("valid cache settings");
    let state = AppState {
        catalog_cache,
        prices_cache,
        calls: Arc::default(),
    };

    // `route_layer` on the method router wraps this route's handler only: requests for other
    // routes (and the 405 for other methods) never reach this layer.
    let router = Router::new()
        .route(
            "/catalog",
            get(catalog).route_layer(state.catalog_cache.clone()),
        )
        .route(
            "/prices/{sku}",
            get(price).route_layer(state.prices_cache.clone()),
        )
        // Per-user and the counters: no layer, so never cached.
        .route("/cart", get(cart))
        .route("/stats", get(stats))
        .with_state(state.clone());
    (router, state)
}

async fn catalog(State(state): State<AppState>) -> Json<Value> {
    let call = state.calls.catalog.fetch_add(1, Relaxed) + 1;
    Json(json!({
        "items": ["kettle", "mug", "tea tin"],
        "rendered_by_call": call,
    }))
}

async fn price(State(state): State<AppState>, Path(sku): Path<String>) -> Json<Value> {
    let call = state.calls.prices.fetch_add(1, Relaxed) + 1;
    // A stand-in for a pricing service: any deterministic number will do.
    let price_cents = sku.bytes().map(u64::from).sum::<u64>() * 7;
    Json(json!({ "sku": sku, "price_cents": price_cents, "quoted_by_call": call }))
}

async fn cart(State(state): State<AppState>) -> Json<Value> {
    let call = state.calls.cart.fetch_add(1, Relaxed) + 1;
    Json(json!({ "items": [], "rendered_by_call": call }))
}

/// Both layers' counters (each layer counts only its own route) and the handler calls.
async fn stats(State(state): State<AppState>) -> Json<Value> {
    let calls = &state.calls;
    Json(json!({
        "catalog": stats_json(state.catalog_cache.stats()),
        "prices": stats_json(state.prices_cache.stats()),
        "origin_calls": {
            "catalog": calls.catalog.load(Relaxed),
            "prices": calls.prices.load(Relaxed),
            "cart": calls.cart.load(Relaxed),
        },
    }))
}

fn stats_json(s: Stats) -> Value {
    json!({
        "hits": s.hits,
        "misses": s.misses,
        "bypass": s.bypass,
        "coalesced": s.coalesced,
        "stored": s.stored,
        "not_stored": s.not_stored,
        "store_errors": s.store_errors,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // `app` is generic over the store, so each branch builds its own app.
    let (router, _state) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis");
            app(RedisStore::connect(&url).await?)
        }
        _ => {
            println!("cache store: in-process memory (set REDIS_URL to use Redis)");
            app(MemoryStore::new(64 * 1024 * 1024))
        }
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
