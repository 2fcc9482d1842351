//! What is cached and what is not (issue: foundation), on the test store (`crate::backend`).

use crate::backend::Backend;
use crate::support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::time::Duration;
use support::*;
use tower::{service_fn, Layer};
use tower_redis_cache::CacheLayer;

async fn layer(backend: &Backend, test: &str) -> CacheLayer {
    support::builder(backend.store().await, test)
        .build()
        .expect("valid config")
}

#[tokio::test]
async fn miss_then_hit_is_byte_identical_for_a_binary_mebibyte() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "binary").await;
    let calls = Calls::default();
    let body = binary_body(1 << 20, 7);
    let svc = layer.layer(service_fn({
        let (calls, body) = (calls.clone(), body.clone());
        move |_req: Request<ReqBody>| {
            calls.add();
            let body = body.clone();
            async move {
                let response = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header("x-multi", "first")
                    .header("etag", "\"v1\"")
                    .header("x-multi", "second")
                    .header("x-multi", "third")
                    .body(Full::new(body))
                    .expect("response");
                Ok::<_, Infallible>(response)
            }
        }
    }));

    let first = send(&svc, get("http://example.test/blob")).await;
    let second = send(&svc, get("http://example.test/blob")).await;

    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(calls.get(), 1);
    assert_eq!(first.body, body);
    assert_eq!(second.body, body);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.headers["content-type"], "application/octet-stream");
    assert_eq!(second.headers["etag"], "\"v1\"");
    let multi: Vec<_> = second.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["first", "second", "third"]);
    assert!(second.headers.contains_key("age"));
    assert_eq!(layer.stats().hits, 1);
    assert_eq!(layer.stats().misses, 1);
    Ok(())
}

#[tokio::test]
async fn a_second_instance_with_its_own_client_hits_what_the_first_stored() -> TestResult {
    let backend = Backend::start().await;
    let prefix = unique_prefix("instances");
    let calls = Calls::default();
    let one = support::builder(backend.store().await, "instances")
        .key_prefix(&prefix)
        .build()?;
    let two = support::builder(backend.store().await, "instances")
        .key_prefix(&prefix)
        .build()?;
    let svc_one = one.layer(counting_origin(&calls));
    let svc_two = two.layer(counting_origin(&calls));

    let filled = send(&svc_one, get("http://example.test/shared")).await;
    let from_two = send(&svc_two, get("http://example.test/shared")).await;

    assert_eq!(filled.x_cache(), "MISS");
    assert_eq!(from_two.x_cache(), "HIT");
    assert_eq!(from_two.body, filled.body);
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test]
async fn unsafe_methods_are_never_cached_nor_answered_from_cache() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "methods").await;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    let cached = send(&svc, get("http://example.test/thing")).await;
    assert_eq!(cached.x_cache(), "MISS");

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        // Fill the GET entry, then send the unsafe request twice.
        send(&svc, get("http://example.test/thing")).await;
        layer.wait_for_writes().await;
        assert_eq!(
            send(&svc, get("http://example.test/thing")).await.x_cache(),
            "HIT"
        );
        for _ in 0..2 {
            let before = calls.get();
            let reply = send(&svc, request(method, "http://example.test/thing")).await;
            assert_eq!(calls.get(), before + 1, "{method} must reach the origin");
            assert_eq!(reply.x_cache(), "BYPASS");
            assert!(
                reply.body.starts_with(method.as_bytes()),
                "{method} got {:?}",
                reply.body
            );
        }
        // A successful unsafe request invalidates what was stored for its URL.
        let after = send(&svc, get("http://example.test/thing")).await;
        assert_eq!(after.x_cache(), "MISS", "{method} invalidated the entry");
        assert_ne!(after.body, cached.body);
    }
    assert_eq!(layer.stats().invalidations, 8);
    Ok(())
}

#[tokio::test]
async fn responses_that_may_not_be_shared_are_not_stored() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "unshareable").await;
    let calls = Calls::default();
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |req: Request<ReqBody>| {
            let n = calls.add();
            let mut response = Response::builder();
            response = match req.uri().path() {
                "/500" => response.status(500),
                "/404" => response.status(404),
                "/no-store" => response.header("cache-control", "no-store"),
                "/private" => response.header("cache-control", "private, max-age=60"),
                "/cookie" => response.header("set-cookie", "session=abc"),
                _ => response,
            };
            let body = format!("{} call {n}", req.uri().path());
            async move {
                Ok::<_, Infallible>(
                    response
                        .body(Full::new(Bytes::from(body)))
                        .expect("response"),
                )
            }
        }
    }));

    for path in ["/500", "/404", "/no-store", "/private", "/cookie"] {
        let uri = format!("http://example.test{path}");
        let before = calls.get();
        let first = send(&svc, get(&uri)).await;
        let second = send(&svc, get(&uri)).await;
        assert_eq!(calls.get(), before + 2, "{path} must not be stored");
        assert_ne!(first.body, second.body, "{path}");
        assert_eq!(second.x_cache(), "MISS", "{path}");
    }
    assert_eq!(layer.stats().hits, 0);
    assert_eq!(layer.stats().stored, 0);
    Ok(())
}

#[tokio::test]
async fn an_authorized_response_never_reaches_an_anonymous_request() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "auth").await;
    let calls = Calls::default();
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |req: Request<ReqBody>| {
            calls.add();
            let mut response = Response::builder();
            let body = match req.headers().get("authorization") {
                Some(user) => format!("secret for {}", user.to_str().unwrap_or("?")),
                None => "public".to_owned(),
            };
            if req.uri().path() == "/public" {
                response = response.header("cache-control", "public, max-age=60");
            }
            async move {
                Ok::<_, Infallible>(
                    response
                        .body(Full::new(Bytes::from(body)))
                        .expect("response"),
                )
            }
        }
    }));
    let authorized = |uri: &str| {
        let mut request = get(uri);
        request
            .headers_mut()
            .insert("authorization", "alice".parse().expect("header"));
        request
    };

    let alice = send(&svc, authorized("http://example.test/me")).await;
    let anonymous = send(&svc, get("http://example.test/me")).await;
    let alice_again = send(&svc, authorized("http://example.test/me")).await;
    assert_eq!(alice.body, "secret for alice");
    assert_eq!(anonymous.body, "public");
    assert_eq!(alice_again.body, "secret for alice");
    assert_eq!(calls.get(), 3);

    layer.wait_for_writes().await;
    assert_eq!(
        layer.stats().stored,
        1,
        "only the anonymous response was stored"
    );

    // A response the origin marks public may be stored, and then serves anonymous requests.
    let marked = send(&svc, authorized("http://example.test/public")).await;
    assert_eq!(
        marked.headers["cache-status"],
        "tower-redis-cache; fwd=bypass; fwd-status=200; stored; ttl=60"
    );
    layer.wait_for_writes().await;
    assert_eq!(layer.stats().stored, 2);
    let shared = send(&svc, get("http://example.test/public")).await;
    assert_eq!(shared.x_cache(), "HIT");
    assert_eq!(shared.body, marked.body);
    assert_eq!(calls.get(), 4);
    Ok(())
}

#[tokio::test]
async fn head_after_get_is_a_hit_with_the_get_headers_and_no_body() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "head").await;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    let got = send(&svc, get("http://example.test/doc")).await;
    let head = send(&svc, request("HEAD", "http://example.test/doc")).await;
    assert_eq!(head.x_cache(), "HIT");
    assert!(head.body.is_empty());
    // The GET's length, even though the origin left it to the wire to say.
    assert!(got.headers.get("content-length").is_none());
    assert_eq!(
        head.headers["content-length"],
        got.body.len().to_string().as_str()
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test]
async fn query_order_is_normalized_only_when_asked_and_hosts_never_share() -> TestResult {
    let backend = Backend::start().await;
    let calls = Calls::default();
    let normalized = layer(&backend, "query-on")
        .await
        .layer(counting_origin(&calls));
    assert_eq!(
        send(&normalized, get("http://example.test/q?a=1&b=2"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&normalized, get("http://example.test/q?b=2&a=1"))
            .await
            .x_cache(),
        "HIT"
    );

    let verbatim = support::builder(backend.store().await, "query-off")
        .normalize_query(false)
        .build()?
        .layer(counting_origin(&calls));
    assert_eq!(
        send(&verbatim, get("http://example.test/q?a=1&b=2"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        send(&verbatim, get("http://example.test/q?b=2&a=1"))
            .await
            .x_cache(),
        "MISS"
    );

    let hosts = layer(&backend, "hosts")
        .await
        .layer(counting_origin(&calls));
    let host = |name: &str| {
        let mut request = get("/same/path");
        request
            .headers_mut()
            .insert("host", name.parse().expect("header"));
        request
    };
    let a = send(&hosts, host("a.example")).await;
    let b = send(&hosts, host("b.example")).await;
    assert_eq!((a.x_cache(), b.x_cache()), ("MISS", "MISS"));
    assert_ne!(a.body, b.body);
    assert_eq!(send(&hosts, host("a.example")).await.body, a.body);
    assert_eq!(calls.get(), 5);
    Ok(())
}

#[tokio::test]
async fn an_oversized_body_streams_through_complete_and_is_never_held_whole() -> TestResult {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let backend = Backend::start().await;
    let limit: u64 = 64 * 1024;
    let chunk = binary_body(16 * 1024, 3);
    let chunks = 64; // 1 MiB in all
    let layer = support::builder(backend.store().await, "oversized")
        .max_body_bytes(limit)
        .build()?;
    let pulled = Arc::new(AtomicU64::new(0));
    let calls = Calls::default();
    let svc = layer.layer(service_fn({
        let (calls, pulled, chunk) = (calls.clone(), pulled.clone(), chunk.clone());
        move |_req: Request<ReqBody>| {
            calls.add();
            pulled.store(0, SeqCst);
            let body = CountedChunks::new(chunks, chunk.clone(), pulled.clone());
            async move { Ok::<_, Infallible>(Response::new(body)) }
        }
    }));

    for round in 0..2 {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let response = svc.clone().oneshot(get("http://example.test/big")).await?;
        let held = pulled.load(SeqCst);
        assert!(
            held <= limit + chunk.len() as u64,
            "layer read {held} bytes before answering"
        );
        assert_eq!(response.headers()["x-cache"], "MISS", "round {round}");
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(body.len(), chunks * chunk.len());
        assert!(body.chunks(chunk.len()).all(|c| c == chunk));
    }
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().stored, 0);
    Ok(())
}

#[tokio::test]
async fn a_corrupt_entry_is_a_counted_miss_and_is_replaced() -> TestResult {
    let backend = Backend::start().await;
    let layer = layer(&backend, "corrupt").await;
    let calls = Calls::default();
    let svc = layer.layer(counting_origin(&calls));
    let uri = "http://example.test/fragile";
    let key = layer
        .key_for(&get(uri))
        .expect("keyed")
        .entry_key()
        .to_owned();
    // A handle of its own on the store, as another program writing beside the cache.
    let raw = backend.store().await;

    let filled = send(&svc, get(uri)).await;
    layer.wait_for_writes().await;
    assert!(raw.get(&key).await?.is_some());
    raw.put(
        &key,
        Bytes::from_static(b"garbage \0\x01 bytes"),
        Duration::from_secs(600),
    )
    .await?;

    let after = send(&svc, get(uri)).await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(after.body, "GET http://example.test/fragile call 2");
    assert_ne!(after.body, filled.body);
    assert_eq!(layer.stats().corrupt, 1);
    layer.wait_for_writes().await;
    let stored = raw.get(&key).await?;
    let stored = stored.expect("the miss stored a fresh entry in place of the garbage");
    assert!(tower_redis_cache::entry::decode(stored).is_ok());
    assert_eq!(send(&svc, get(uri)).await.x_cache(), "HIT");
    Ok(())
}

#[tokio::test]
async fn fills_past_the_byte_budget_stream_through_uncached() -> TestResult {
    let backend = Backend::start().await;
    let layer = support::builder(backend.store().await, "fill-budget")
        .max_fill_bytes(64 * 1024)
        .build()?;
    let calls = Calls::default();
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |req: Request<ReqBody>| {
            calls.add();
            let len = if req.uri().path() == "/big" {
                100 * 1024
            } else {
                1024
            };
            let body = binary_body(len, len as u64);
            async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
        }
    }));

    // Larger than the budget (but not than max_body_bytes): the client gets all of it.
    let big = send(&svc, get("http://example.test/big")).await;
    assert_eq!(big.body, binary_body(100 * 1024, 100 * 1024));
    assert!(big.headers["cache-status"]
        .to_str()?
        .contains("detail=fill-budget"));
    layer.wait_for_writes().await;
    assert_eq!(
        send(&svc, get("http://example.test/big")).await.x_cache(),
        "MISS"
    );
    let stats = layer.stats();
    assert_eq!((stats.fills_over_budget, stats.stored), (2, 0));

    // The budget given back by those fills lets a small one buffer and be stored.
    send(&svc, get("http://example.test/small")).await;
    layer.wait_for_writes().await;
    let small = send(&svc, get("http://example.test/small")).await;
    assert_eq!(
        (small.x_cache(), &small.body),
        ("HIT", &binary_body(1024, 1024))
    );
    assert_eq!(calls.get(), 3);
    Ok(())
}
