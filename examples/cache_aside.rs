//! The products service with the typed cache-aside API: handlers ask a [`Cache`] for values
//! (`get_or_set`), and a write drops the values it made stale (`delete`, `delete_prefix`).
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
    error::Error,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::sync::RwLock;
use tower_redis_cache::{Cache, KeyBuilder, MemoryStore, RedisStore};

/// How long a product stays cached.
const DETAIL_TTL: Duration = Duration::from_secs(60);
/// Lists change with any product, so they are kept shorter.
const LIST_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub price_cents: u64,
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
    latency: Duration,
}

impl Catalog {
    fn seeded(latency: Duration) -> Self {
        let seed = [(1, "Kettle", 3_499), (2, "Mug", 899), (3, "Tea tin", 1_250)];
        let products = seed
            .into_iter()
            .map(|(id, name, price_cents)| {
                let name = name.to_owned();
                (
                    id,
                    Product {
                        id,
                        name,
                        price_cents,
                    },
                )
            })
            .collect();
        Self {
            products: RwLock::new(products),
            reads: AtomicU64::new(0),
            latency,
        }
    }

    async fn slow_read(&self) -> tokio::sync::RwLockReadGuard<'_, BTreeMap<u32, Product>> {
        self.reads.fetch_add(1, Relaxed);
        tokio::time::sleep(self.latency).await;
        self.products.read().await
    }
}

#[derive(Clone)]
struct App {
    catalog: Arc<Catalog>,
    cache: Cache,
}

/// A data-source failure; `Arc`ed so every caller sharing the load can have it.
type LoadError = Arc<std::io::Error>;

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

async fn get_product(State(app): State<App>, Path(id): Path<u32>) -> Response {
    let catalog = Arc::clone(&app.catalog);
    // `None` (no such product) is cached too, so a missing id does not reach the data source
    // on every request.
    let loaded = app
        .cache
        .get_or_set(&detail_key(id), DETAIL_TTL, move || async move {
            tracing::info!(id, "data source: reading product");
            Ok::<_, LoadError>(catalog.slow_read().await.get(&id).cloned())
        })
        .await;
    match loaded {
        Ok(Some(product)) => Json(product).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no product {id}\n")).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn list_products(State(app): State<App>, Query(page): Query<Page>) -> Response {
    let (number, size) = (
        page.page.unwrap_or(1).max(1),
        page.size.unwrap_or(20).clamp(1, 100),
    );
    let catalog = Arc::clone(&app.catalog);
    let loaded = app
        .cache
        .get_or_set(&list_key(number, size), LIST_TTL, move || async move {
            tracing::info!(number, size, "data source: listing products");
            let skip = usize::try_from((number - 1).saturating_mul(size)).unwrap_or(usize::MAX);
            let take = usize::try_from(size).unwrap_or(usize::MAX);
            let products = catalog.slow_read().await;
            Ok::<_, LoadError>(
                products
                    .values()
                    .skip(skip)
                    .take(take)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        })
        .await;
    match loaded {
        Ok(products) => Json(products).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// Creates or replaces a product, then drops the cached values that now show old data: its
/// detail, and every list page.
async fn put_product(
    State(app): State<App>,
    Path(id): Path<u32>,
    Json(update): Json<ProductUpdate>,
) -> Json<Product> {
    let product = Product {
        id,
        name: update.name,
        price_cents: update.price_cents,
    };
    app.catalog
        .products
        .write()
        .await
        .insert(id, product.clone());
    if let Err(error) = app.cache.delete(&detail_key(id)).await {
        tracing::warn!(%error, id, "could not delete the cached product");
    }
    match app.cache.delete_prefix(LIST_PREFIX).await {
        Ok(pages) => tracing::info!(pages, "deleted the cached list pages"),
        Err(error) => tracing::warn!(%error, "could not delete the cached list pages"),
    }
    Json(product)
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
        cache,
    };
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/stats", get(stats))
        .with_state(app)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing::info!("cache in Redis");
            Cache::new(RedisStore::connect(&url).await?)
        }
        Err(_) => {
            tracing::info!("cache in memory (set REDIS_URL to share it through Redis)");
            Cache::new(MemoryStore::new(64 << 20))
        }
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(cache, Duration::from_millis(150))).await?;
    Ok(())
}
