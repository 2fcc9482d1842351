//! The cache in front of a plain hyper 1 service: a `tower::service_fn` wrapped in a
//! [`CacheLayer`], served by hyper-util's `TowerToHyperService` and auto (HTTP/1 + HTTP/2)
//! connection builder. No framework involved.
//!
//! ```text
//! cargo run --example hyper                                   # cache in this process
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example hyper  # cache shared through Redis
//! ```
//!
//! Then, on `127.0.0.1:3002`:
//!
//! ```text
//! curl -i localhost:3002/report   # x-cache: MISS ("render #1"), then HIT with the same body
//! curl -i localhost:3002/now      # x-cache: MISS every time: the origin says `no-store`
//! curl -i -X POST localhost:3002/report   # x-cache: BYPASS: only GET and HEAD are cached
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::{Body, Incoming},
    header::{CACHE_CONTROL, CONTENT_TYPE},
    Method, Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use std::{
    convert::Infallible,
    error::Error,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::net::TcpListener;
use tower::{service_fn, Layer, Service};
use tower_redis_cache::{BoxError, CacheBody, CacheLayer, MemoryStore, RedisStore, Store};

/// The cache settings of this example: entries live 30 seconds.
pub fn cache_layer(store: impl Store) -> CacheLayer {
    CacheLayer::builder(store)
        .key_prefix("hyper-example")
        .ttl(Duration::from_secs(30))
        .build()
        .expect("valid cache settings")
}

/// The origin wrapped in `cache`. `origin_calls` counts the requests that reached the origin.
pub fn service(
    cache: &CacheLayer,
    origin_calls: Arc<AtomicU64>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<CacheBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    cache.layer(service_fn(move |request: Request<Incoming>| {
        origin(request, Arc::clone(&origin_calls))
    }))
}

/// The service being cached: a slow-to-render report, and a clock that must never be cached.
async fn origin(
    request: Request<Incoming>,
    calls: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let call = calls.fetch_add(1, Relaxed) + 1;
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD | &Method::POST, "/report") => Response::builder()
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::from(format!("quarterly report, render #{call}\n"))),
        // The origin opts this response out of every cache, this one included.
        (&Method::GET | &Method::HEAD, "/now") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Response::builder()
                .header(CONTENT_TYPE, "text/plain")
                .header(CACHE_CONTROL, "no-store")
                .body(Full::from(format!(
                    "{} ms since the epoch\n",
                    now.as_millis()
                )))
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::from("not found\n")),
    };
    Ok(response.expect("a valid response"))
}

/// Serves `service` on every connection `listener` accepts, until the task is dropped.
pub async fn serve<S, B>(listener: TcpListener, service: S) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = connection {
                eprintln!("connection error: {error}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The layer hides the store's type, so choosing a store at run time is one `match`.
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
    let service = service(&cache, Arc::default());

    let listener = TcpListener::bind("127.0.0.1:3002").await?;
    println!("listening on http://{}", listener.local_addr()?);
    tokio::select! {
        served = serve(listener, service) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Let entries still being written reach the store before exiting.
    cache.wait_for_writes().await;
    Ok(())
}
