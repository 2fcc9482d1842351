//! The products service with the typed cache-aside API: handlers ask a typed handle
//! (`cache.typed::<T>()`) for values with loaders that borrow the app's state, a write takes a
//! named lock (its fencing token checked by the data source) and drops the values it made
//! stale, and `/health` reports the store.
//!
//! Run it with nothing installed (the cache lives in this process, in a `MemoryStore`):
//!
//! ```text
//! cargo run --example cache_aside
//! ```
//!
//! or share the cache (and the one-load-per-key guarantee) through Redis:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example cache_aside
//! ```
//!
//! `PORT` changes the port (default 3000). Then:
//!
//! ```text
//! curl -s localhost:3000/products/1           # ~150 ms: loaded from the data source
//! curl -s localhost:3000/products/1           # at once: from the cache
//! curl -s 'localhost:3000/products?page=1'    # the list, cached under its own key and ttl
//! curl -s -X PUT localhost:3000/products/1 \
//!      -H 'content-type: application/json' -d '{"name":"Teapot","price_cents":2500}'
//! curl -s localhost:3000/products/1           # loaded again: the PUT deleted it
//! curl -s localhost:3000/health               # the store's ping, connection and breaker
//! curl -s localhost:3000/stats                # cache counters and data-source reads
//! ```
//!
//! Keys come from [`KeyBuilder`]: `product:1:details` for a product, and
//! `products:list?page=1&size=20` for a list page (parameters sorted, every part escaped), so
//! one `delete_prefix("products:list?")` drops every cached page.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    io,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::sync::RwLock;
use tower_redis_cache::{
    Cache, CacheValue, GetOrSetOptions, KeyBuilder, LockOptions, MemoryStore, RedisStore,
    TypedCache,
};

/// A product: fresh for a minute; a missing id is remembered for five seconds only, so a
/// product created elsewhere shows up soon. Checked once, at compile time.
const DETAIL: GetOrSetOptions = match GetOrSetOptions::builder(Duration::from_secs(60))
    .negative_ttl(Duration::from_secs(5))
    .build()
{
    Ok(options) => options,
    Err(_) => panic!("invalid detail options"),
};

/// Lists change with any product, so they are kept shorter.
const LIST_TTL: Duration = Duration::from_secs(30);

/// Writers of one product hold its lock for at most this (extended while they write), and
/// wait for another writer up to five seconds.
const WRITE_LOCK: LockOptions =
    LockOptions::new(Duration::from_secs(10)).wait(Duration::from_secs(5));

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub price_cents: u64,
}

/// The identity products are cached under: stable across refactors, bumped with the shape.
impl CacheValue for Product {
    const NAME: &'static str = "product";
    const VERSION: u32 = 1;
}

#[derive(Debug, Deserialize)]
struct ProductUpdate {
    name: String,
    price_cents: u64,
}

#[derive(Debug, Deserialize)]
struct Page {
    page: Option<u32>,
    size: Option<u32>,
}

/// The slow data source the cache sits in front of.
struct Catalog {
    products: RwLock<BTreeMap<u32, Product>>,
    /// Reads that reached the data source, i.e. that the cache did not answer.
    reads: AtomicU64,
    /// The highest fencing token a write carried: a write with a lower one comes from a
    /// writer whose lock expired meanwhile, and is refused.
    fence: AtomicU64,
    latency: Duration,
}

impl Catalog {
    fn seeded(latency: Duration) -> Self {
        let seed = [(1, "Kettle", 3_499), (2, "Mug", 899), (3, "Tea tin", 1_250)];
        let products = seed
            .into_iter()
            .map(|(id, name, price_cents)| {
                let name = name.to_owned();
                let product = Product {
                    id,
                    name,
                    price_cents,
                };
                (id, product)
            })
            .collect();
        Self {
            products: RwLock::new(products),
            reads: AtomicU64::new(0),
            fence: AtomicU64::new(0),
            latency,
        }
    }

    async fn slow_read(&self) -> tokio::sync::RwLockReadGuard<'_, BTreeMap<u32, Product>> {
        self.reads.fetch_add(1, Relaxed);
        tokio::time::sleep(self.latency).await;
        self.products.read().await
    }

    /// One product, or `None` (cached too, for the negative ttl).
    async fn product(&self, id: u32) -> Result<Option<Product>, io::Error> {
        tracing::info!(id, "data source: reading product");
        Ok(self.slow_read().await.get(&id).cloned())
    }

    async fn page(&self, number: u32, size: u32) -> Result<Vec<Product>, io::Error> {
        tracing::info!(number, size, "data source: listing products");
        let skip = usize::try_from((number - 1).saturating_mul(size)).unwrap_or(usize::MAX);
        let take = usize::try_from(size).unwrap_or(usize::MAX);
        let products = self.slow_read().await;
        Ok(products.values().skip(skip).take(take).cloned().collect())
    }

    /// Stores `product` if `fence` is not older than the last write's.
    async fn write(&self, product: Product, fence: u64) -> Result<(), io::Error> {
        if self.fence.fetch_max(fence, Relaxed) > fence {
            return Err(io::Error::other("stale writer: its lock expired"));
        }
        self.products.write().await.insert(product.id, product);
        Ok(())
    }
}

#[derive(Clone)]
struct App {
    catalog: Arc<Catalog>,
    cache: Cache,
    /// One handle per value type: the type (and its identity) is fixed here, once.
    products: TypedCache<Option<Product>>,
    lists: TypedCache<Vec<Product>>,
}

/// Any failure, as a `503` (the handlers use `?` on the cache's errors).
struct Failure(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        // `{:#}` prints the chain: the cache's error, then the data source's.
        (StatusCode::SERVICE_UNAVAILABLE, format!("{:#}\n", self.0)).into_response()
    }
}

fn detail_key(id: u32) -> String {
    KeyBuilder::new("product").id(id).field("details").build()
}

fn list_key(page: u32, size: u32) -> String {
    KeyBuilder::new("products")
        .field("list")
        .param("page", page)
        .param("size", size)
        .build()
}

/// Every cached list page starts with this (`?` ends the escaped path, so nothing else does).
const LIST_PREFIX: &str = "products:list?";

async fn get_product(State(app): State<App>, Path(id): Path<u32>) -> Result<Response, Failure> {
    // The loader borrows the catalog: it runs in this handler's task.
    let product = app
        .products
        .get_or_set(detail_key(id), DETAIL, app.catalog.product(id))
        .await?;
    Ok(match product {
        Some(product) => Json(product).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no product {id}\n")).into_response(),
    })
}

async fn list_products(
    State(app): State<App>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<Product>>, Failure> {
    let (number, size) = (
        page.page.unwrap_or(1).max(1),
        page.size.unwrap_or(20).clamp(1, 100),
    );
    let loader = app.catalog.page(number, size);
    let products = app
        .lists
        .get_or_set(list_key(number, size), LIST_TTL, loader)
        .await?;
    Ok(Json(products))
}

/// Creates or replaces a product under its write lock, then drops the cached values that now
/// show old data: its detail, and every list page.
async fn put_product(
    State(app): State<App>,
    Path(id): Path<u32>,
    Json(update): Json<ProductUpdate>,
) -> Result<Json<Product>, Failure> {
    let product = Product {
        id,
        name: update.name,
        price_cents: update.price_cents,
    };
    let catalog = &app.catalog;
    let written = app
        .cache
        .with_lock(&format!("product:{id}"), WRITE_LOCK, |lock| async move {
            catalog.write(product.clone(), lock.fencing_token()).await?;
            Ok::<_, io::Error>(product)
        })
        .await??;
    app.products.delete(detail_key(id)).await?;
    app.cache.delete_prefix(LIST_PREFIX).await?;
    tracing::info!("purged the cached list pages");
    Ok(Json(written))
}

/// The store's health: `200` when it answers, `503` when the cache is failing open.
async fn health(State(app): State<App>) -> Response {
    let health = app.cache.health().await;
    let status = match health.is_healthy() {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({
        "healthy": health.is_healthy(),
        "latency_ms": health.latency.map(|l| l.as_secs_f64() * 1e3),
        "breaker": format!("{:?}", health.breaker),
        "error": health.error,
    });
    (status, Json(body)).into_response()
}

/// The cache's counters and the data source's reads.
async fn stats(State(app): State<App>) -> impl IntoResponse {
    let mut body = serde_json::Map::new();
    body.insert(
        "source_reads".into(),
        app.catalog.reads.load(Relaxed).into(),
    );
    for (name, value) in app.cache.stats().fields() {
        body.insert(name.into(), value.into());
    }
    Json(body)
}

/// The products service on `cache`, its data source answering after `latency` (the tests
/// reuse it with none).
pub fn router(cache: Cache, latency: Duration) -> Router {
    let app = App {
        catalog: Arc::new(Catalog::seeded(latency)),
        products: cache.typed(),
        lists: cache.typed(),
        cache,
    };
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(app)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let store: Arc<dyn tower_redis_cache::Store> = match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing::info!("cache in Redis");
            Arc::new(RedisStore::connect(&url).await?)
        }
        Err(_) => {
            tracing::info!("cache in memory (set REDIS_URL to share it through Redis)");
            Arc::new(MemoryStore::new(64 << 20))
        }
    };
    let cache = Cache::builder(store).cache_name("products").build()?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(cache, Duration::from_millis(150))).await?;
    Ok(())
}
