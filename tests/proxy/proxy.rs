//! The caching reverse proxy (`examples/proxy/`) end to end: the built binary runs as a child
//! process in front of an in-process origin that counts its calls, and the tests talk to it
//! over TCP, as its users would.
//!
//! The example is built once per test run (`cargo build --example proxy`, default features).
//! Origin responses carry an explicit `Cache-Control: max-age=60`, so they are cacheable in
//! both cache modes.

use crate::support;

use axum::{
    body::Body,
    extract::{Path, State},
    http::Request as AxumRequest,
    routing::{get as on_get, post as on_post},
    Router,
};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::proxy::{
    client, get, get_with_host, proxy_binary, raw_exchange, send, HttpClient, Proxy, PATIENCE,
};
use support::{binary_body, unique_prefix, Calls, RedisServer, TestResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------
// The origin
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Origin {
    bin: Calls,
    slow: Calls,
    hang: Calls,
    graceful: Calls,
    count: Calls,
    echo: Calls,
    graceful_started: Notify,
}

/// The body of `/bin`: every byte value, not UTF-8.
fn bin_body() -> Bytes {
    binary_body(100_003, 0x5eed)
}

/// The body of `/graceful`.
fn graceful_body() -> Bytes {
    binary_body(256 * 1024, 42)
}

/// Starts the origin on a free port; returns its URL and its call counters.
async fn start_origin() -> (String, Arc<Origin>) {
    let origin = Arc::new(Origin::default());
    let app = Router::new()
        .route("/bin", on_get(bin))
        .route("/slow/{name}", on_get(slow))
        .route("/hang", on_get(hang))
        .route("/graceful", on_get(graceful))
        .route("/count", on_get(count))
        .route("/upload", on_post(upload))
        .fallback(echo)
        .with_state(Arc::clone(&origin));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("origin server");
    });
    (format!("http://{addr}"), origin)
}

fn cacheable() -> http::response::Builder {
    http::Response::builder().header("cache-control", "max-age=60")
}

async fn bin(State(origin): State<Arc<Origin>>) -> http::Response<Body> {
    let call = origin.bin.add();
    cacheable()
        .header("content-type", "application/octet-stream")
        .header("x-multi", "first")
        .header("x-multi", "second")
        .header("x-multi", "third, with a comma")
        .header("x-origin-call", call.to_string())
        .header("etag", "\"bin-v1\"")
        .body(Body::from(bin_body()))
        .unwrap()
}

async fn slow(State(origin): State<Arc<Origin>>, Path(name): Path<String>) -> http::Response<Body> {
    origin.slow.add();
    tokio::time::sleep(Duration::from_millis(400)).await;
    cacheable()
        .header("content-type", "text/plain")
        .body(Body::from(format!("slow {name}")))
        .unwrap()
}

async fn hang(State(origin): State<Arc<Origin>>) -> http::Response<Body> {
    origin.hang.add();
    tokio::time::sleep(Duration::from_secs(20)).await;
    cacheable().body(Body::from("too late")).unwrap()
}

async fn graceful(State(origin): State<Arc<Origin>>) -> http::Response<Body> {
    origin.graceful.add();
    origin.graceful_started.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    http::Response::builder()
        .header("cache-control", "no-store")
        .body(Body::from(graceful_body()))
        .unwrap()
}

async fn count(State(origin): State<Arc<Origin>>) -> http::Response<Body> {
    let call = origin.count.add();
    cacheable()
        .body(Body::from(format!("count {call}")))
        .unwrap()
}

async fn upload(body: Bytes) -> http::Response<Body> {
    http::Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from(body))
        .unwrap()
}

/// Describes the request it got: `method`, `uri`, then one `name: value` line per header.
async fn echo(
    State(origin): State<Arc<Origin>>,
    request: AxumRequest<Body>,
) -> http::Response<Body> {
    origin.echo.add();
    let mut text = format!("method {}\nuri {}\n", request.method(), request.uri());
    for (name, value) in request.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    http::Response::builder()
        .header("cache-control", "no-store")
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// The headers that must survive the cache unchanged: all but the cache's own verdict.
fn stored_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut map = BTreeMap::<String, Vec<Vec<u8>>>::new();
    for (name, value) in headers {
        if ["x-cache", "cache-status", "age"].contains(&name.as_str()) {
            continue;
        }
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(value.as_bytes().to_vec());
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// Parses the Prometheus text format strictly enough to catch a broken exposition: every
/// sample line is `name value`, `name{labels} value`, optionally followed by a timestamp.
fn parse_prometheus(text: &str) -> Result<Vec<(String, String, f64)>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("not a Prometheus sample: {line:?}");
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .ok_or_else(bad)?;
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad());
        }
        let mut rest = &line[name_end..];
        let mut labels = String::new();
        if rest.starts_with('{') {
            let end = labels_end(rest).ok_or_else(bad)?;
            labels = rest[..=end].to_owned();
            rest = &rest[end + 1..];
        }
        if !rest.starts_with(' ') {
            return Err(bad());
        }
        let mut fields = rest.split_whitespace();
        let value: f64 = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().map_err(|_| bad())?;
        }
        if fields.next().is_some() {
            return Err(bad());
        }
        samples.push((name.to_owned(), labels, value));
    }
    Ok(samples)
}

/// The index of the `}` closing the label set that `text` starts with, checking each label is
/// `name="value"` with escapes.
fn labels_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    loop {
        if bytes.get(i) == Some(&b'}') {
            return Some(i);
        }
        let start = i;
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            i += 1;
        }
        if i == start || bytes.get(i) != Some(&b'=') || bytes.get(i + 1) != Some(&b'"') {
            return None;
        }
        i += 2;
        loop {
            match bytes.get(i)? {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        i += 1;
        match bytes.get(i)? {
            b',' => i += 1,
            b'}' => return Some(i),
            _ => return None,
        }
    }
}

/// The value of a counter summed over its label sets (0 when it was never incremented).
fn counter(samples: &[(String, String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(client: &HttpClient, proxy: &Proxy) -> Vec<(String, String, f64)> {
    let reply = get(client, &proxy.admin_url("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    parse_prometheus(&reply.text()).unwrap_or_else(|e| panic!("{e}\n{}", reply.text()))
}

async fn json(client: &HttpClient, url: &str) -> serde_json::Value {
    let reply = get(client, url).await;
    assert_eq!(reply.status, StatusCode::OK, "{url}");
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{url}: {e}: {}", reply.text()))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_identical_headers_and_bytes() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let proxy = Proxy::start(&upstream, &[]).await;
    let client = client();

    let miss = get(&client, &proxy.url("/bin")).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(miss.body, bin_body());
    let multi: Vec<_> = miss.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["first", "second", "third, with a comma"]);

    let hit = get(&client, &proxy.url("/bin")).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.headers.contains_key("age"));
    assert_eq!(hit.body, miss.body, "the cached body differs");
    assert_eq!(
        stored_headers(&hit.headers),
        stored_headers(&miss.headers),
        "the cached headers differ"
    );
    assert_eq!(origin.bin.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_headers_and_streams_bodies_both_ways() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let proxy = Proxy::start(&upstream, &[]).await;
    let client = client();

    let request = Request::get(proxy.url("/echo/some/path?q=1&r=two"))
        .header("host", "site.example")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped: named by Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(Full::default())?;
    let reply = send(&client, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"method GET"), "{text}");
    assert!(lines.contains(&"uri /echo/some/path?q=1&r=two"), "{text}");
    assert!(lines.contains(&"host: site.example"), "{text}");
    // The client is not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert!(lines.contains(&"x-forwarded-for: 127.0.0.1"), "{text}");
    assert!(lines.contains(&"x-forwarded-host: site.example"), "{text}");
    assert!(lines.contains(&"x-forwarded-proto: http"), "{text}");
    assert!(lines.contains(&"via: 1.1 tower-redis-cache"), "{text}");
    assert!(lines.contains(&"x-custom: kept"), "{text}");
    for hop in [
        "x-hop:",
        "keep-alive:",
        "proxy-authorization:",
        "proxy-connection:",
        "te:",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(hop)),
            "{hop} was forwarded:\n{text}"
        );
    }
    assert!(reply.header("via").contains("tower-redis-cache"));

    // A 1 MiB upload goes up and comes back whole; POST is never cached.
    let payload = binary_body(1 << 20, 99);
    let request = Request::post(proxy.url("/upload")).body(Full::new(payload.clone()))?;
    let reply = send(&client, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.x_cache(), "BYPASS");
    assert_eq!(reply.body, payload);
    assert_eq!(origin.echo.get(), 1);
    Ok(())
}

/// `--trusted-proxies`: a peer in range keeps its forwarding chain (extended with itself) and
/// its `X-Forwarded-Proto`; `X-Forwarded-Host` is still the host the proxy keyed on, and the
/// always-dropped headers (and the unkeyed `Forwarded`) stay dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_keep_their_forwarding_headers() -> TestResult {
    let (upstream, _origin) = start_origin().await;
    let client = client();
    let request = |proxy: &Proxy| {
        Request::get(proxy.url("/echo/trusted"))
            .header("host", "site.example")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "other.example")
            .header("forwarded", "for=203.0.113.9;proto=https")
            .header("x-real-ip", "203.0.113.9")
            .header("x-http-method-override", "DELETE")
            .body(Full::default())
            .expect("request")
    };
    let trusting = Proxy::start(
        &upstream,
        &["--trusted-proxies", "10.0.0.0/8, 127.0.0.0/8,::1"],
    )
    .await;
    let text = send(&client, request(&trusting)).await.text();
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-forwarded-proto: https",
        "x-forwarded-host: site.example",
    ] {
        assert!(lines.contains(&expected), "{expected}:\n{text}");
    }
    // `Forwarded` is not keyed, so it goes even from a trusted peer (its proto is keyed
    // through `X-Forwarded-Proto`).
    for dropped in ["x-real-ip:", "x-http-method-override:", "forwarded:"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(dropped)),
            "{dropped}\n{text}"
        );
    }

    let elsewhere = Proxy::start(&upstream, &["--trusted-proxies", "10.0.0.0/8"]).await;
    let text = send(&client, request(&elsewhere)).await.text();
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: site.example",
    ] {
        assert!(lines.contains(&expected), "{expected}:\n{text}");
    }
    assert!(!lines.iter().any(|l| l.starts_with("forwarded:")), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_redis_and_coalesce_a_cold_key() -> TestResult {
    let redis = RedisServer::start().await;
    let (upstream, origin) = start_origin().await;
    let prefix = unique_prefix("proxy");
    let a = Proxy::start_redis(&upstream, redis.url(), &prefix).await;
    let b = Proxy::start_redis(&upstream, redis.url(), &prefix).await;
    let client = client();
    // Behind a load balancer both instances see the same Host; the key includes it.
    let host = "shared.example";

    let miss = get_with_host(&client, &a.url("/bin"), host).await;
    assert_eq!(miss.x_cache(), "MISS");
    let hit = get_with_host(&client, &b.url("/bin"), host).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.x_cache(), "HIT", "instance B did not see A's entry");
    assert_eq!(hit.body, bin_body());
    assert_eq!(stored_headers(&hit.headers), stored_headers(&miss.headers));
    assert_eq!(origin.bin.get(), 1);

    // A cold key, 20 concurrent requests over both instances: one origin call.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            a.url("/slow/cold")
        } else {
            b.url("/slow/cold")
        };
        let client = client.clone();
        requests.spawn(async move { get_with_host(&client, &url, host).await });
    }
    let mut verdicts = BTreeMap::<String, usize>::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply?;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow cold");
        *verdicts.entry(reply.x_cache().to_owned()).or_default() += 1;
    }
    assert_eq!(origin.slow.get(), 1, "verdicts: {verdicts:?}");
    assert_eq!(verdicts.get("BYPASS"), None, "verdicts: {verdicts:?}");

    for proxy in [&a, &b] {
        let health = json(&client, &proxy.admin_url("/healthz")).await;
        assert_eq!(health["status"], "ok");
        assert_eq!(health["store"], "reachable");
    }
    Ok(())
}

/// The default runs on one thread; `--workers 0` (one per CPU) and `--workers N` run with work
/// stealing: each serves, coalesces a cold key to one origin call and then hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workers_setting_serves_and_coalesces() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let client = client();
    for (round, workers) in ["0", "3"].into_iter().enumerate() {
        let proxy = Proxy::start(&upstream, &["--workers", workers]).await;
        let path = format!("/slow/workers-{workers}");
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (client, url) = (client.clone(), proxy.url(&path));
            requests.spawn(async move { get(&client, &url).await });
        }
        while let Some(reply) = requests.join_next().await {
            let reply = reply?;
            assert_eq!(reply.status, StatusCode::OK, "--workers {workers}");
            assert_eq!(reply.text(), format!("slow workers-{workers}"));
        }
        assert_eq!(origin.slow.get(), round + 1, "--workers {workers}");
        let hit = get(&client, &proxy.url(&path)).await;
        assert_eq!(hit.x_cache(), "HIT", "--workers {workers}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_slow_upstream_is_504() -> TestResult {
    let closed = {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.local_addr()?
    };
    let refused = Proxy::start(&format!("http://{closed}"), &[]).await;
    let client = client();
    let reply = get(&client, &refused.url("/anything")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let reply = get(&client, &refused.url("/anything")).await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "a 502 must not be cached"
    );

    let (upstream, origin) = start_origin().await;
    let proxy = Proxy::start(&upstream, &["--upstream-timeout-ms", "300"]).await;
    let reply = get(&client, &proxy.url("/hang")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let reply = get(&client, &proxy.url("/hang")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.hang.get(), 2, "a 504 must not be cached");

    // Still serving.
    let reply = get(&client, &proxy.url("/bin")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, bin_body());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_and_the_proxy_keeps_serving() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let mut proxy = Proxy::start(&upstream, &[]).await;
    let addr = proxy.addr;

    let long_url = format!("/echo?x={}", "a".repeat(16 * 1024));
    let many_params: String = (0..3000).map(|i| format!("p{i}={i}&")).collect();
    let answered: Vec<(&str, Vec<u8>)> = vec![
        (
            "16 KiB URL",
            format!("GET {long_url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
        (
            "bad percent-encoding",
            b"GET /echo/%zz%/%?q=%G1%&r=%%% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "obs-text header bytes",
            b"GET /echo/obs HTTP/1.1\r\nHost: x\r\nX-Odd: caf\xe9 \xff\xfe\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "thousands of query parameters",
            format!("GET /echo?{many_params} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "non-numeric Content-Length",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\nabc"
                .to_vec(),
        ),
        (
            "conflicting Content-Lengths",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd"
                .to_vec(),
        ),
        (
            "negative Content-Length",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "spaces in the request target",
            b"GET /a b c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in &answered {
        let status = raw_exchange(addr, request).await;
        let status = status.unwrap_or_else(|| panic!("{what}: no response"));
        assert!(
            (200..500).contains(&status),
            "{what}: answered {status}, expected a 4xx or the origin's answer"
        );
    }

    // Requests that need not be answered, but must not hurt the proxy: a body shorter than
    // its Content-Length followed by a hang-up, and bytes that are not HTTP at all.
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await?;
    stream.shutdown().await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink)).await;
    let _ = raw_exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;

    assert!(proxy.is_running(), "the proxy died: {}", proxy.stderr());
    let client = client();
    let reply = get(&client, &proxy.url("/bin")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, bin_body());
    assert!(origin.echo.get() >= 1, "nothing was passed through");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let mut proxy = Proxy::start(&upstream, &[]).await;
    let addr = proxy.addr;
    let client = client();

    let url = proxy.url("/graceful");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &url).await }
    });
    tokio::time::timeout(PATIENCE, origin.graceful_started.notified())
        .await
        .expect("the request never reached the origin");

    let kill = Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()?;
    assert!(kill.success());

    let reply = in_flight.await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, graceful_body(), "the in-flight body was cut");
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
    assert_eq!(origin.graceful.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_health_stats_and_prometheus_metrics() -> TestResult {
    let (upstream, origin) = start_origin().await;
    let proxy = Proxy::start(
        &upstream,
        &["--admin-listen", "127.0.0.1:0", "--mode", "app"],
    )
    .await;
    let client = client();

    let health = json(&client, &proxy.admin_url("/healthz")).await;
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "store": "memory"})
    );

    assert_eq!(get(&client, &proxy.url("/bin")).await.x_cache(), "MISS");
    assert_eq!(get(&client, &proxy.url("/bin")).await.x_cache(), "HIT");
    let before = counter(
        &scrape(&client, &proxy).await,
        "tower_redis_cache_hits_total",
    );
    assert_eq!(get(&client, &proxy.url("/bin")).await.x_cache(), "HIT");
    assert_eq!(get(&client, &proxy.url("/bin")).await.x_cache(), "HIT");
    let samples = scrape(&client, &proxy).await;
    let after = counter(&samples, "tower_redis_cache_hits_total");
    assert_eq!(after, before + 2.0, "hits counter: {before} then {after}");
    assert!(counter(&samples, "tower_redis_cache_misses_total") >= 1.0);
    assert_eq!(origin.bin.get(), 1);

    // Every field of the library's `Stats` (named by its derived Debug output), no more.
    let stats = json(&client, &proxy.admin_url("/stats")).await;
    let debug = format!("{:?}", tower_redis_cache::Stats::default());
    let fields: Vec<&str> = debug
        .trim_start_matches("Stats {")
        .trim_end_matches('}')
        .split(',')
        .filter_map(|field| Some(field.split_once(':')?.0.trim()))
        .collect();
    assert!(fields.contains(&"hits"), "{debug}");
    let object = stats.as_object().expect("/stats is an object");
    for field in &fields {
        let value = object.get(*field);
        assert!(
            value.is_some_and(serde_json::Value::is_u64),
            "/stats lacks {field}: {stats}"
        );
    }
    assert_eq!(object.len(), fields.len(), "/stats has extra keys: {stats}");
    assert_eq!(stats["hits"], 3);
    assert_eq!(stats["misses"], 1);

    let reply = get(&client, &proxy.admin_url("/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_serves_uncached_then_caches_when_it_answers() -> TestResult {
    let mut redis = RedisServer::start().await;
    if !redis.is_local() {
        return Ok(()); // cannot stop an external server
    }
    redis.stop();
    let (upstream, origin) = start_origin().await;
    let prefix = unique_prefix("proxy-down");
    let mut proxy = Proxy::start(
        &upstream,
        &[
            "--redis",
            redis.url(),
            "--prefix",
            &prefix,
            "--admin-listen",
            "127.0.0.1:0",
            "--store-connect-timeout-ms",
            "300",
        ],
    )
    .await;
    let client = client();

    for expected_calls in 1..=2 {
        let reply = get(&client, &proxy.url("/count")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.x_cache(), "BYPASS");
        assert_eq!(origin.count.get(), expected_calls);
    }
    let health = json(&client, &proxy.admin_url("/healthz")).await;
    assert_eq!(health["store"], "unreachable");

    redis.restart();
    proxy.wait_for_line("redis connected").await;
    // The layer's circuit breaker may still be open for its cool-down after the failures
    // above; there is no event for it closing, so ask again (bounded) until a hit.
    let mut verdicts = Vec::new();
    for _ in 0..100 {
        let reply = get(&client, &proxy.url("/count")).await;
        assert_eq!(reply.status, StatusCode::OK);
        verdicts.push(reply.x_cache().to_owned());
        if reply.x_cache() == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        verdicts.last().map(String::as_str),
        Some("HIT"),
        "never cached after Redis came back: {verdicts:?}"
    );
    let health = json(&client, &proxy.admin_url("/healthz")).await;
    assert_eq!(health["store"], "reachable");
    Ok(())
}

#[test]
fn bad_flags_and_impossible_settings_exit_non_zero_with_one_line() {
    let run = |args: &[&str]| {
        Command::new(proxy_binary())
            .args(args)
            .env_remove("UPSTREAM_URL")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run the proxy")
    };

    let output = run(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--lock-ttl-ms",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(output.stdout.is_empty(), "it announced itself: {stderr}");

    for args in [
        &["--listen", "127.0.0.1:0"][..],
        &["--upstream", "http://127.0.0.1:9", "--mode", "bogus"],
        &["--upstream", "http://127.0.0.1:9", "--ttl", "soon"],
        &["--upstream", "not a url"],
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--upstream-timeout-ms",
            "0",
        ],
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--trusted-proxies",
            "10.0.0.1/8",
        ],
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--trusted-proxies",
            "10.0.0.0/33",
        ],
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--trusted-proxies",
            "localhost",
        ],
    ] {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} announced itself");
    }
}
