//! The examples' wiring, tested in process with each example's own app or service and a
//! `MemoryStore` (what is under test is how the layer is plugged in, not Redis).
//!
//! Each example is compiled in as a module; its `main` is then just an unused function.

#[allow(dead_code)]
#[path = "../../examples/axum.rs"]
mod axum_example;
#[allow(dead_code)]
#[path = "../../examples/hyper.rs"]
mod hyper_example;
#[allow(dead_code)]
#[path = "../../examples/products.rs"]
mod products_example;
#[allow(dead_code)]
#[path = "../../examples/tonic.rs"]
mod tonic_example;

use bytes::Bytes;
use http::{header::HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};
use tokio::net::TcpListener;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower::ServiceExt;
use tower_redis_cache::{BoxError, MemoryStore, Stats};

type TestResult = Result<(), BoxError>;

/// A response with its body read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    async fn read<B>(response: Response<B>) -> Result<Self, BoxError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(Into::into)?.to_bytes();
        Ok(Self {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The `x-cache` header, `None` when the response did not go through a cache layer.
    fn x_cache(&self) -> Option<&str> {
        self.headers
            .get("x-cache")
            .map(|v| v.to_str().expect("an ASCII x-cache value"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

fn store() -> MemoryStore {
    MemoryStore::new(1 << 20)
}

/// A client over plain TCP, HTTP/1.1.
fn http_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: Method,
    addr: SocketAddr,
    path: &str,
) -> Result<Reply, BoxError> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())?;
    Reply::read(client.request(request).await?).await
}

mod axum_app {
    use super::*;
    use axum::{body::Body, Router};

    /// One request through the router itself, no server, as axum's testing example does.
    async fn get(router: &Router, path: &str) -> Reply {
        let request = Request::get(path)
            .body(Body::empty())
            .expect("a valid request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        Reply::read(response).await.expect("a readable body")
    }

    #[tokio::test]
    async fn each_route_layer_caches_its_route() {
        let (router, state) = axum_example::app(store());

        let first = get(&router, "/catalog").await;
        let second = get(&router, "/catalog").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.x_cache(), Some("MISS"));
        assert_eq!(second.x_cache(), Some("HIT"));
        assert_eq!(first.body, second.body);
        assert_eq!(state.calls.catalog.load(Relaxed), 1);

        // The prices key ignores the query, so a tracking parameter shares the entry.
        let first = get(&router, "/prices/tea").await;
        let second = get(&router, "/prices/tea?utm_source=mail").await;
        assert_eq!(first.x_cache(), Some("MISS"));
        assert_eq!(second.x_cache(), Some("HIT"));
        assert_eq!(first.body, second.body);
        assert_eq!(state.calls.prices.load(Relaxed), 1);

        // Each layer counts its own route only.
        let catalog = state.catalog_cache.stats();
        let prices = state.prices_cache.stats();
        assert_eq!((catalog.hits, catalog.misses), (1, 1));
        assert_eq!((prices.hits, prices.misses), (1, 1));
    }

    #[tokio::test]
    async fn opted_out_requests_always_reach_the_handler() {
        let (router, state) = axum_example::app(store());

        // `?live` makes the prices key function return `None`: the layer steps aside.
        let first = get(&router, "/prices/tea?live").await;
        let second = get(&router, "/prices/tea?live").await;
        assert_eq!(first.x_cache(), Some("BYPASS"));
        assert_eq!(second.x_cache(), Some("BYPASS"));
        assert_ne!(first.body, second.body, "each quote comes from the handler");
        assert_eq!(state.calls.prices.load(Relaxed), 2);
        // ...and did not fill the entry a plain request uses.
        assert_eq!(get(&router, "/prices/tea").await.x_cache(), Some("MISS"));

        // `/cart` has no layer at all.
        for _ in 0..2 {
            let reply = get(&router, "/cart").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.x_cache(), None);
        }
        assert_eq!(state.calls.cart.load(Relaxed), 2);
        assert_eq!(state.prices_cache.stats().hits, 0);
        assert_eq!(state.catalog_cache.stats(), Stats::default());
    }

    #[tokio::test]
    async fn the_stats_endpoint_reports_the_hit() {
        let (router, state) = axum_example::app(store());
        get(&router, "/catalog").await;
        get(&router, "/catalog").await;
        get(&router, "/prices/tea?live").await;
        // The entry is written after the MISS was answered; `stored` counts once it is.
        state.catalog_cache.wait_for_writes().await;

        let reply = get(&router, "/stats").await;
        assert_eq!(reply.x_cache(), None, "the stats route is never cached");
        let stats = reply.json();
        assert_eq!(stats["catalog"]["hits"], 1);
        assert_eq!(stats["catalog"]["misses"], 1);
        assert_eq!(stats["catalog"]["stored"], 1);
        assert_eq!(stats["prices"]["hits"], 0);
        assert_eq!(stats["prices"]["bypass"], 1);
        assert_eq!(stats["origin_calls"]["catalog"], 1);
        assert_eq!(stats["origin_calls"]["prices"], 1);
    }
}

mod hyper_service {
    use super::*;

    #[tokio::test]
    async fn a_service_fn_served_by_hyper_is_cached() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cache = hyper_example::cache_layer(store());
        let calls = Arc::new(AtomicU64::new(0));
        let service = hyper_example::service(&cache, Arc::clone(&calls));
        let server = tokio::spawn(hyper_example::serve(listener, service));
        let client = http_client();

        let first = send(&client, Method::GET, addr, "/report").await?;
        let second = send(&client, Method::GET, addr, "/report").await?;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.x_cache(), Some("MISS"));
        assert_eq!(second.x_cache(), Some("HIT"));
        assert_eq!(first.body, second.body);
        assert_eq!(first.body, "quarterly report, render #1\n");
        assert_eq!(calls.load(Relaxed), 1);

        // The origin marks `/now` `no-store`: it is never kept, so never a hit.
        for _ in 0..2 {
            let reply = send(&client, Method::GET, addr, "/now").await?;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.x_cache(), Some("MISS"));
        }
        // Only GET and HEAD are cached.
        let post = send(&client, Method::POST, addr, "/report").await?;
        assert_eq!(post.x_cache(), Some("BYPASS"));
        assert_eq!(calls.load(Relaxed), 4);

        cache.wait_for_writes().await;
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.bypass, stats.stored),
            (1, 3, 1, 1)
        );
        server.abort();
        Ok(())
    }
}

mod tonic_server {
    use super::*;
    use tonic::transport::Endpoint;

    #[tokio::test]
    async fn grpc_passes_through_and_the_get_route_is_cached() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cache = tonic_example::cache_layer(store());
        let greetings = Arc::new(AtomicU64::new(0));
        let routes = tonic_example::routes(Arc::clone(&greetings));
        let server = tokio::spawn(tonic_example::serve(listener, cache.clone(), routes));

        // The listener is bound already, so connecting does not wait for the server task.
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut health = HealthClient::new(channel);
        for _ in 0..2 {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let response = health.check(request).await?;
            let x_cache = response.metadata().get("x-cache");
            assert_eq!(x_cache.and_then(|v| v.to_str().ok()), Some("BYPASS"));
            assert_eq!(response.into_inner().status(), ServingStatus::Serving);
        }

        let client = http_client();
        let first = send(&client, Method::GET, addr, "/hello/ferris").await?;
        let second = send(&client, Method::GET, addr, "/hello/ferris").await?;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.x_cache(), Some("MISS"));
        assert_eq!(second.x_cache(), Some("HIT"));
        assert_eq!(first.body, second.body);
        assert_eq!(first.body, "Hello, ferris! (greeting #1)\n");
        assert_eq!(greetings.load(Relaxed), 1);

        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.bypass), (1, 1, 2));
        server.abort();
        Ok(())
    }
}

#[tokio::test]
async fn products_demo_caches_reads_and_a_put_purges_the_product_and_its_lists() {
    use tower::ServiceExt;
    let cache =
        tower_redis_cache::CacheLayer::builder(tower_redis_cache::MemoryStore::new(1 << 20))
            .build()
            .expect("valid config");
    let app = products_example::router(cache.clone());
    let get_path = |path: &str| {
        Request::get(format!("http://demo.test{path}"))
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let get = || get_path("/api/products/1");
    let read = |response: Response<_>| async move {
        let x_cache = response.headers()["x-cache"]
            .to_str()
            .expect("x-cache")
            .to_owned();
        let body = BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (x_cache, body)
    };
    let (first, before) = read(app.clone().oneshot(get()).await.expect("GET")).await;
    cache.wait_for_writes().await;
    let (second, cached) = read(app.clone().oneshot(get()).await.expect("GET")).await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
    assert_eq!(before, cached);
    for path in ["/api/products", "/api/products/2"] {
        app.clone().oneshot(get_path(path)).await.expect("GET");
        cache.wait_for_writes().await;
    }

    let put = Request::put("http://demo.test/api/products/1")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            r#"{"name":"Teapot","price_cents":2500}"#,
        ))
        .expect("request");
    let updated = app.clone().oneshot(put).await.expect("PUT");
    assert!(updated.status().is_success());
    let (after, fresh) = read(app.clone().oneshot(get()).await.expect("GET")).await;
    assert_eq!(after, "MISS", "the PUT purged the cached product");
    assert!(String::from_utf8_lossy(&fresh).contains("Teapot"));
    let list = read(
        app.clone()
            .oneshot(get_path("/api/products"))
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(list.0, "MISS", "and every list showing it");
    assert!(String::from_utf8_lossy(&list.1).contains("Teapot"));
    let other = read(app.oneshot(get_path("/api/products/2")).await.expect("GET")).await;
    assert_eq!(other.0, "HIT", "other products stay cached");
}
