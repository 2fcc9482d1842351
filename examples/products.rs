//! The "products API": an axum 0.8 app whose slow product reads are cached by [`CacheLayer`].
//!
//! Run it with nothing installed (the cache lives in this process, in a `MemoryStore`):
//!
//! ```text
//! cargo run --example products
//! ```
//!
//! or share the cache through Redis, as several instances behind a load balancer would:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example products
//! ```
//!
//! `PORT` changes the port (default 3000), `RUST_LOG` the log level (default `info`). Then:
//!
//! ```text
//! curl -i localhost:3000/api/products/1    # x-cache: MISS, ~150 ms: the origin was called
//! curl -i localhost:3000/api/products/1    # x-cache: HIT, age: 0, the origin was not called
//! curl -i -X PUT localhost:3000/api/products/1 \
//!      -H 'content-type: application/json' -d '{"name":"Teapot","price_cents":2500}'
//! curl -i localhost:3000/api/products/1    # x-cache: MISS again: the PUT purged its tag
//! curl -s localhost:3000/stats             # cache counters and origin calls
//! ```
//!
//! The data source sleeps 150 ms per read to stand in for a slow database. `GET` responses are
//! cached for 30 s, `404`s for 5 s. Each response is tagged with what it shows (a
//! [`CacheTags`] extension: `product:<id>`, and `products` for the list), and a `PUT` writes the
//! product and purges its tag with [`CacheLayer::purge_tag`], on every instance: the product's
//! page and every list showing it, however many there are (the layer alone would drop only the
//! `PUT`'s own URL).

use axum::{
    extract::{Path, State},
    http::{header::CACHE_CONTROL, HeaderValue, StatusCode},
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
use tower_redis_cache::{CacheLayer, CacheTags, MemoryStore, RedisStore};

/// How long one read of the data source takes.
const ORIGIN_LATENCY: Duration = Duration::from_millis(150);

#[derive(Clone, Debug, Serialize)]
struct Product {
    id: u32,
    name: String,
    price_cents: u64,
}

#[derive(Debug, Deserialize)]
struct ProductUpdate {
    name: String,
    price_cents: u64,
}

/// The slow data source the cache sits in front of.
struct Catalog {
    products: RwLock<BTreeMap<u32, Product>>,
    /// Reads that reached the data source, i.e. that the cache did not answer.
    reads: AtomicU64,
}

impl Catalog {
    fn seeded() -> Self {
        let seed = [(1, "Kettle", 3_499), (2, "Mug", 899), (3, "Tea tin", 1_250)];
        let products = seed
            .into_iter()
            .map(|(id, name, price_cents)| {
                let product = Product {
                    id,
                    name: name.to_owned(),
                    price_cents,
                };
                (id, product)
            })
            .collect();
        Self {
            products: RwLock::new(products),
            reads: AtomicU64::new(0),
        }
    }

    async fn slow_read(&self) -> tokio::sync::RwLockReadGuard<'_, BTreeMap<u32, Product>> {
        self.reads.fetch_add(1, Relaxed);
        tokio::time::sleep(ORIGIN_LATENCY).await;
        self.products.read().await
    }
}

#[derive(Clone)]
struct App {
    catalog: Arc<Catalog>,
    cache: CacheLayer,
}

async fn list_products(State(app): State<App>) -> Response {
    tracing::info!("origin: listing products");
    let products = app.catalog.slow_read().await;
    // The list shows every product: tagged with each, a write to any purges it.
    let tags = products.keys().map(|id| format!("product:{id}"));
    let tags = CacheTags(std::iter::once("products".to_owned()).chain(tags).collect());
    let mut response = Json(products.values().cloned().collect::<Vec<_>>()).into_response();
    response.extensions_mut().insert(tags);
    response
}

async fn get_product(State(app): State<App>, Path(id): Path<u32>) -> Response {
    tracing::info!(id, "origin: reading product");
    let mut response = match app.catalog.slow_read().await.get(&id) {
        Some(product) => Json(product.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no product {id}\n")).into_response(),
    };
    // A 404 is tagged too: creating the product must purge "no product 7".
    response.extensions_mut().insert(CacheTags(vec![
        format!("product:{id}"),
        "products".to_owned(),
    ]));
    response
}

/// Creates or replaces a product, then purges every cached response tagged with it (its page
/// and the list), fleet-wide; a new product also purges the list, which did not show it yet.
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
    let created = app
        .catalog
        .products
        .write()
        .await
        .insert(id, product.clone())
        .is_none();
    let tag = if created {
        "products".to_owned()
    } else {
        format!("product:{id}")
    };
    match app.cache.purge_tag(&tag).await {
        Ok(()) => tracing::info!(tag, "purged"),
        Err(error) => tracing::warn!(tag, %error, "could not purge"),
    }
    Json(product)
}

/// The cache's counters and the data source's reads. Marked `no-store`, so the cache never
/// keeps it.
async fn stats(State(app): State<App>) -> impl IntoResponse {
    let mut body = serde_json::Map::new();
    body.insert(
        "origin_reads".into(),
        app.catalog.reads.load(Relaxed).into(),
    );
    for (name, value) in app.cache.stats().fields() {
        body.insert(name.into(), value.into());
    }
    (
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
}

/// `user:password@host` → `host`, so a password in `REDIS_URL` is not printed.
fn redacted(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, host)| host)
}

/// The products API behind `cache` (the tests reuse it).
pub fn router(cache: CacheLayer) -> Router {
    let app = App {
        catalog: Arc::new(Catalog::seeded()),
        cache: cache.clone(),
    };
    Router::new()
        .route("/api/products", get(list_products))
        .route("/api/products/{id}", get(get_product).put(put_product))
        .route("/stats", get(stats))
        .with_state(app)
        .layer(cache)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let builder = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis at {}", redacted(&url));
            CacheLayer::builder(RedisStore::connect(&url).await?)
        }
        _ => {
            println!("cache store: in-process memory (set REDIS_URL to share it through Redis)");
            CacheLayer::builder(MemoryStore::new(64 * 1024 * 1024))
        }
    };
    let cache = builder
        .ttl(Duration::from_secs(30))
        .negative_ttl(Duration::from_secs(5))
        .build()?;

    let router = router(cache.clone());

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}");
    println!("try:");
    println!("  curl -i {base}/api/products/1      # x-cache: MISS (150 ms), then HIT");
    println!("  curl -i {base}/api/products");
    println!(
        "  curl -i -X PUT {base}/api/products/1 -H 'content-type: application/json' \
         -d '{{\"name\":\"Teapot\",\"price_cents\":2500}}'   # purges its tag, next GET is a MISS"
    );
    println!("  curl -s {base}/stats");

    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Let fills and store writes still running finish before exiting.
    cache.wait_for_writes().await;
    Ok(())
}
