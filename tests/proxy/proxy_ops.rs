//! The proxy as operators run it: ready before serving, bounded under abuse,
//! complete (HTTPS upstreams, WebSocket tunnels, default features), observable and with an
//! admin port whose writes need a token. The built binary runs as a child process, as in
//! tests/proxy/proxy.rs.

use crate::support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::proxy::{
    client, get, get_with_host, proxy_binary, send, HttpClient, Proxy, Reply, PATIENCE,
};
use support::{unique_prefix, Calls, RedisServer, TestResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

/// Serves `handler` over HTTP/1.1 on a free port (plain TCP); returns the address.
async fn serve_plain<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<OriginBody>> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn body(bytes: impl Into<Bytes>) -> OriginBody {
    Full::new(bytes.into()).boxed()
}

/// An origin whose `/slow` answers after 500 ms; counts its calls.
async fn slow_origin(calls: &Calls) -> String {
    let calls = calls.clone();
    let addr = serve_plain(move |_request| {
        let calls = calls.clone();
        async move {
            calls.add();
            tokio::time::sleep(Duration::from_millis(500)).await;
            http::Response::builder()
                .header("cache-control", "public, max-age=60")
                .body(body("slow and cold"))
                .unwrap()
        }
    })
    .await;
    format!("http://{addr}")
}

/// An origin answering every path with a small cacheable body naming the path.
async fn small_origin(calls: &Calls) -> String {
    let calls = calls.clone();
    let addr = serve_plain(move |request: Request<hyper::body::Incoming>| {
        let n = calls.add();
        async move {
            http::Response::builder()
                .header("cache-control", "public, max-age=60")
                .header("surrogate-key", "pages")
                .body(body(format!("{} call {n}", request.uri().path())))
                .unwrap()
        }
    })
    .await;
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A client that opens a new connection per request, so the proxy closing idle kept-alive
/// connections (its header timeout) never races a reused one.
fn fresh_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

async fn stats(client: &HttpClient, proxy: &Proxy) -> serde_json::Value {
    let reply = get(client, &proxy.admin_url("/stats")).await;
    assert_eq!(reply.status, StatusCode::OK);
    serde_json::from_slice(&reply.body).expect("/stats JSON")
}

// ---------------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------------

/// Two proxies started together and sent 40 concurrent requests for
/// one cold URL (origin 500 ms) at once cost the origin exactly one call. The proxies are
/// only waited for until they say `listening on` (not `redis connected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_started_together_coalesces_its_first_cold_key() -> TestResult {
    let redis = RedisServer::start().await;
    let calls = Calls::default();
    let upstream = slow_origin(&calls).await;
    let prefix = unique_prefix("ops-start");
    let flags = [
        "--redis",
        redis.url(),
        "--prefix",
        &prefix,
        "--store-read-timeout-ms",
        "2000",
        "--store-write-timeout-ms",
        "2000",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let (a, b) = tokio::join!(
        Proxy::start(&upstream, &flags),
        Proxy::start(&upstream, &flags)
    );
    let client = client();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url("/cold")
        } else {
            b.url("/cold")
        };
        let client = client.clone();
        // Behind a load balancer both instances see the same Host, so they share the key.
        requests.spawn(async move { get_with_host(&client, &url, "fleet.example").await });
    }
    let mut verdicts = BTreeMap::<String, usize>::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply?;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow and cold");
        *verdicts.entry(reply.x_cache().to_owned()).or_default() += 1;
    }
    if calls.get() != 1 {
        panic!(
            "{} origin calls; verdicts: {verdicts:?}\nA: {}\nB: {}",
            calls.get(),
            stats(&client, &a).await,
            stats(&client, &b).await
        );
    }
    assert_eq!(verdicts.get("BYPASS"), None, "verdicts: {verdicts:?}");
    Ok(())
}

/// A proxy whose Redis is unreachable starts once its connect timeout
/// has passed, says it is not ready, and serves `BYPASS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_starts_after_the_connect_timeout_in_fail_open_mode() -> TestResult {
    let closed = {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.local_addr()?
    };
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    // Built first, so the timing below is the proxy's start, not cargo's build.
    tokio::task::spawn_blocking(proxy_binary).await?;
    let started = Instant::now();
    let proxy = Proxy::start(
        &upstream,
        &[
            "--redis",
            &format!("redis://{closed}"),
            "--store-connect-timeout-ms",
            "500",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    // Loose on purpose: the point is that the wait is bounded by the flag, not forever (the
    // harness would give up after 30 s); a loaded machine may add seconds.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?} to start",
        started.elapsed()
    );
    proxy.wait_for_stderr("fail-open").await;
    let client = client();
    for _ in 0..2 {
        let reply = get(&client, &proxy.url("/page")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.x_cache(), "BYPASS");
    }
    assert_eq!(calls.get(), 2);
    let ready = get(&client, &proxy.admin_url("/readyz")).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    let ready: serde_json::Value = serde_json::from_slice(&ready.body)?;
    assert_eq!(ready["store"], false);
    let health = get(&client, &proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK, "/healthz is liveness only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_with_a_connected_store() -> TestResult {
    let redis = RedisServer::start().await;
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    let proxy = Proxy::start_redis(&upstream, redis.url(), &unique_prefix("ops-ready")).await;
    let client = client();
    let ready = get(&client, &proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let ready: serde_json::Value = serde_json::from_slice(&ready.body)?;
    assert_eq!(
        ready,
        serde_json::json!({"ready": true, "store": true, "shedding": false, "draining": false})
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------------------

/// Opens `n` connections to `addr` that send nothing; each task resolves when the server
/// closes its connection (EOF or reset), with how long that took.
async fn idle_connections(addr: SocketAddr, n: usize) -> tokio::task::JoinSet<Option<Duration>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let opened = Instant::now();
        set.spawn(async move {
            let mut stream = stream;
            let mut byte = [0u8; 1];
            // Bounded far past the header timeout: only reached when nothing closes them.
            match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => Some(opened.elapsed()),
                Ok(Ok(_)) => Some(opened.elapsed()),
                Err(_) => None,
            }
        });
    }
    set
}

/// 1,000 connections that send nothing, on the traffic port and on the
/// admin port, are closed by the proxy within its header timeout, while a concurrent client
/// keeps getting `HIT`s and the admin port keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_within_the_header_timeout_while_hits_go_on() -> TestResult {
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    let header_timeout = Duration::from_millis(1500);
    let proxy = Proxy::start(
        &upstream,
        &[
            "--header-timeout-ms",
            &header_timeout.as_millis().to_string(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let client = fresh_client();
    assert_eq!(get(&client, &proxy.url("/hot")).await.x_cache(), "MISS");

    let mut traffic = idle_connections(proxy.addr, 1000).await;
    let mut admin = idle_connections(proxy.admin.expect("admin"), 1000).await;
    let hot = proxy.url("/hot");
    let health_url = proxy.admin_url("/healthz");
    let mut closed = Vec::new();
    let mut served = 0;
    while !(traffic.is_empty() && admin.is_empty()) {
        tokio::select! {
            Some(done) = traffic.join_next(), if !traffic.is_empty() => closed.push(done?),
            Some(done) = admin.join_next(), if !admin.is_empty() => closed.push(done?),
            reply = get(&client, &hot) => {
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.x_cache(), "HIT");
                let health = get(&client, &health_url).await;
                assert_eq!(health.status, StatusCode::OK);
                served += 1;
            }
        }
    }
    assert_eq!(closed.len(), 2000);
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} idle connections were never closed");
    // Each was closed by the header timer, not at once (the client notes "opened" after its
    // connect returns, which a busy test process may do later than the proxy's accept, hence
    // the slack) and not long after it (a loose bound).
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    let fastest = closed.iter().flatten().min().copied().unwrap_or_default();
    assert!(
        fastest + Duration::from_millis(500) >= header_timeout,
        "closed before the header timeout: {fastest:?}"
    );
    assert!(
        slowest < header_timeout + Duration::from_secs(10),
        "closed late: {slowest:?}"
    );
    assert!(served > 0, "no request was served meanwhile");
    assert_eq!(calls.get(), 1);
    assert!(get(&client, &proxy.url("/hot")).await.x_cache() == "HIT");
    Ok(())
}

/// `--max-connections`: past it the proxy stops accepting (the connection waits in the
/// backlog) and `/readyz` reports shedding; a slot freed is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_sheds_and_recovers() -> TestResult {
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    let proxy = Proxy::start(
        &upstream,
        &["--max-connections", "2", "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let admin = client();
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(proxy.addr).await?,
        TcpStream::connect(proxy.addr).await?,
    ];
    // Both slots are taken once the proxy has accepted them; no event says so, so ask
    // (bounded) until /readyz reports shedding.
    let mut shedding = false;
    for _ in 0..200 {
        let ready = get(&admin, &proxy.admin_url("/readyz")).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            let body: serde_json::Value = serde_json::from_slice(&ready.body)?;
            assert_eq!(body["shedding"], true, "{body}");
            shedding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(shedding, "/readyz never reported shedding");
    let waiting = tokio::spawn({
        let url = proxy.url("/third");
        async move { get(&fresh_client(), &url).await }
    });
    drop(held);
    let reply = waiting.await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "/third call 1");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_the_admin_token_and_removes_the_entry() -> TestResult {
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    let dir = std::env::temp_dir().join(unique_prefix("ops-token"));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n")?;
    let proxy = Proxy::start(
        &upstream,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_file.to_str().ok_or("path")?,
        ],
    )
    .await;
    let client = client();
    let page = |proxy: &Proxy| {
        Request::get(proxy.url("/page?x=1"))
            .header("host", "site.example")
            .body(Full::default())
            .expect("request")
    };
    assert_eq!(send(&client, page(&proxy)).await.x_cache(), "MISS");
    assert_eq!(send(&client, page(&proxy)).await.x_cache(), "HIT");

    let purge_by = |query: &str, token: Option<&str>| {
        let mut request = Request::post(proxy.admin_url(&format!("/purge?{query}")));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Full::default()).expect("request")
    };
    let purge = |token| purge_by("url=http%3A%2F%2Fsite.example%2Fpage%3Fx%3D1", token);
    let refused = send(&client, purge(None)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.header("www-authenticate"), "Bearer realm=\"admin\"");
    let refused = send(&client, purge(Some("wrong-token!"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&client, page(&proxy)).await.x_cache(), "HIT");

    let purged = send(&client, purge(Some("s3cret-token"))).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    assert_eq!(purged.text(), "{\"purged\":1}\n");
    let again = send(&client, page(&proxy)).await;
    assert_eq!(again.x_cache(), "MISS");
    assert_eq!(again.body, "/page call 2");
    assert!(
        again.headers.get("surrogate-key").is_none(),
        "tag headers stay with the proxy"
    );

    // By tag, and by URL prefix (entries behind the proxy are under `http://`).
    for query in ["tag=pages", "prefix=http%3A%2F%2Fsite.example%2Fpa"] {
        // A refill begun within the last purge's clock margin counts as purged too: it is
        // refilled once more before it hits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut warm = send(&client, page(&proxy)).await;
        while warm.x_cache() != "HIT" && tokio::time::Instant::now() < deadline {
            warm = send(&client, page(&proxy)).await;
        }
        assert_eq!(warm.x_cache(), "HIT", "{query}");
        let refused = send(&client, purge_by(query, None)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let purged = send(&client, purge_by(query, Some("s3cret-token"))).await;
        assert_eq!(purged.text(), "{\"purged\":null}\n", "{query}");
        let again = send(&client, page(&proxy)).await;
        assert_eq!(again.x_cache(), "MISS", "{query}");
        assert_ne!(again.body, warm.body, "{query}: refilled");
    }
    for bad in [
        "tag=two%20words",
        "prefix=%2Frelative",
        "nothing=1",
        "tag=a&url=b",
    ] {
        let refused = send(&client, purge_by(bad, Some("s3cret-token"))).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let get_purge = get(&client, &proxy.admin_url("/purge?url=x")).await;
    assert_eq!(get_purge.status, StatusCode::METHOD_NOT_ALLOWED);
    let _ = std::fs::remove_dir_all(dir);

    // Without a token purging is off altogether.
    let open = Proxy::start(&upstream, &["--admin-listen", "127.0.0.1:0"]).await;
    let request = Request::post(open.admin_url("/purge?url=http%3A%2F%2Fa%2F"))
        .header("authorization", "Bearer anything")
        .body(Full::default())?;
    assert_eq!(send(&client, request).await.status, StatusCode::FORBIDDEN);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One Prometheus sample: name, labels (sorted), value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition strictly: `# HELP` and `# TYPE` before each family's
/// samples, every sample `name{label="value",...} value`, histogram families made of
/// `_bucket` (with `le`), `_sum` and `_count`, buckets cumulative and ending in `+Inf` equal
/// to `_count`. Returns the samples and each family's type.
fn parse_strict(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
            if help.trim().is_empty() {
                return Err(format!("empty help: {line}"));
            }
            helps.insert(name.to_owned(), help.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !["counter", "gauge", "histogram", "summary"].contains(&kind) {
                return Err(format!("unknown type: {line}"));
            }
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("unexpected comment: {line}"));
        }
        let (head, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
        let (name, labels) = match head.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or(format!("bad labels: {line}"))?;
                let mut map = BTreeMap::new();
                for pair in labels.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or(format!("bad label: {line}"))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or(format!("unquoted label: {line}"))?;
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad label name: {line}"));
                    }
                    map.insert(k.to_owned(), v.to_owned());
                }
                (name, map)
            }
            None => (head, BTreeMap::new()),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("bad name: {line}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helps.contains_key(family) {
            return Err(format!("sample before its HELP and TYPE: {line}"));
        }
        samples.push((name.to_owned(), labels, value));
    }
    // Each series of a histogram (its labels but `le`) has cumulative buckets ending in
    // `+Inf`, which equals that series' `_count`.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(String, f64)>> = BTreeMap::new();
        for (name, labels, value) in &samples {
            if *name == format!("{family}_bucket") {
                let mut key = labels.clone();
                let le = key
                    .remove("le")
                    .ok_or(format!("{family}: bucket without le"))?;
                series.entry(key).or_default().push((le, *value));
            }
        }
        for (labels, buckets) in &series {
            let count = samples
                .iter()
                .find(|(n, l, _)| *n == format!("{family}_count") && l == labels)
                .map(|(_, _, v)| *v)
                .ok_or(format!("{family}{labels:?}: no _count"))?;
            let mut last = 0.0;
            for (_, value) in buckets {
                if *value < last {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                last = *value;
            }
            match buckets.last() {
                Some((le, value)) if le == "+Inf" && *value == count => {}
                _ => {
                    return Err(format!(
                        "{family}{labels:?}: no +Inf bucket equal to _count"
                    ))
                }
            }
        }
    }
    Ok((samples, types))
}

/// `/metrics` parses strictly; every family has
/// help text; counters carry the `cache` label; latency histograms have explicit buckets,
/// the same on two proxies, so their buckets sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_with_help_labels_and_summable_buckets() -> TestResult {
    let calls = Calls::default();
    let upstream = small_origin(&calls).await;
    let flags = ["--admin-listen", "127.0.0.1:0", "--cache-name", "edge-1"];
    let a = Proxy::start(&upstream, &flags).await;
    let b = Proxy::start(&upstream, &flags).await;
    let client = client();
    let mut histograms = Vec::new();
    for proxy in [&a, &b] {
        assert_eq!(get(&client, &proxy.url("/m")).await.x_cache(), "MISS");
        assert_eq!(get(&client, &proxy.url("/m")).await.x_cache(), "HIT");
        let reply = get(&client, &proxy.admin_url("/metrics")).await;
        let text = reply.text();
        let (samples, types) = parse_strict(&text).map_err(|e| format!("{e}\n{text}"))?;
        let hits: f64 = samples
            .iter()
            .filter(|(n, l, _)| n == "tower_redis_cache_hits_total" && l["cache"] == "edge-1")
            .map(|(_, _, v)| v)
            .sum();
        assert_eq!(hits, 1.0, "{text}");
        assert_eq!(
            types
                .get("tower_redis_cache_request_seconds")
                .map(String::as_str),
            Some("histogram"),
            "{text}"
        );
        let bounds: Vec<String> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "tower_redis_cache_request_seconds_bucket" && l["outcome"] == "hit"
            })
            .map(|(_, l, _)| l["le"].clone())
            .collect();
        assert!(bounds.len() > 5, "{bounds:?}");
        histograms.push((bounds, samples));
        assert!(text.contains("proxy_connections_total"), "{text}");
    }
    assert_eq!(histograms[0].0, histograms[1].0, "bucket bounds differ");
    // Summed bucket by bucket across the two proxies: one hit each.
    let total_inf: f64 = histograms
        .iter()
        .flat_map(|(_, samples)| samples.iter())
        .filter(|(n, l, _)| {
            n == "tower_redis_cache_request_seconds_bucket"
                && l["outcome"] == "hit"
                && l["le"] == "+Inf"
        })
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(total_inf, 2.0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Completeness
// ---------------------------------------------------------------------------------------------

/// The example builds with default features (the harness builds it
/// with no `--features`) and `--help` works.
#[test]
fn help_works_with_default_features() {
    let output = Command::new(proxy_binary())
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run the proxy");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for flag in [
        "--upstream",
        "--trusted-proxies",
        "--store-connect-timeout-ms",
        "--header-timeout-ms",
        "--max-connections",
        "--max-fill-bytes",
        "--admin-token",
        "--admin-token-file",
        "--upstream-ca",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

/// An HTTPS upstream with a self-signed certificate (made here with
/// rcgen) is reached through rustls when `--upstream-ca` trusts it, cached like any other,
/// and refused (502) when nothing trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() -> TestResult {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let dir = std::env::temp_dir().join(unique_prefix("ops-tls"));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem())?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let calls = Calls::default();
    let origin_calls = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let calls = origin_calls.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let n = calls.add();
                    async move {
                        let text = format!(
                            "secure {} call {n} host {}",
                            request.uri().path(),
                            request
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                        );
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("cache-control", "public, max-age=60")
                                .body(Full::new(Bytes::from(text)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let upstream = format!("https://127.0.0.1:{}", addr.port());
    let proxy = Proxy::start(&upstream, &["--upstream-ca", ca.to_str().ok_or("path")?]).await;
    let client = client();
    let request = || {
        Request::get(proxy.url("/tls"))
            .header("host", "site.example")
            .body(Full::default())
            .expect("request")
    };
    let miss = send(&client, request()).await;
    assert_eq!(miss.status, StatusCode::OK, "{}", miss.text());
    assert_eq!(miss.body, "secure /tls call 1 host site.example");
    assert_eq!(miss.x_cache(), "MISS");
    let hit = send(&client, request()).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, miss.body);
    assert_eq!(calls.get(), 1);

    let untrusting = Proxy::start(&upstream, &[]).await;
    let refused = get(&client, &untrusting.url("/tls")).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        calls.get(),
        1,
        "a request got through an untrusted TLS handshake"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A WebSocket echo through the proxy: the handshake is tunnelled to
/// the origin (never cached: a second handshake reaches it too) and messages go both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_is_tunnelled_uncached() -> TestResult {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let handshakes = Calls::default();
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                counted.add();
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() {
                        break;
                    }
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&format!("http://{addr}"), &[]).await;
    for round in 1..=2u64 {
        let stream = TcpStream::connect(proxy.addr).await?;
        let url = format!("ws://{}/ws", proxy.addr);
        let (mut socket, response) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::client_async(url.as_str(), stream),
        )
        .await??;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        use tokio_tungstenite::tungstenite::Message;
        socket.send(Message::text(format!("hello {round}"))).await?;
        let big = support::binary_body(200_000, round);
        socket.send(Message::binary(big.clone())).await?;
        let echoed = tokio::time::timeout(PATIENCE, socket.next())
            .await?
            .ok_or("closed")??;
        assert_eq!(echoed, Message::text(format!("hello {round}")));
        let echoed = tokio::time::timeout(PATIENCE, socket.next())
            .await?
            .ok_or("closed")??;
        assert_eq!(echoed.into_data(), big);
        socket.close(None).await?;
        assert_eq!(handshakes.get(), round as usize);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fill byte budget
// ---------------------------------------------------------------------------------------------

const BIG: usize = 8 * 1024 * 1024;

/// A `/big/{n}` origin: 8 MiB bodies with a declared length, streamed in 64 KiB chunks of
/// one shared buffer (the test process holds one chunk, not 1.6 GB), the first byte naming
/// nothing, the rest a pattern that depends on `n` so a mixed-up entry shows.
async fn big_origin() -> String {
    let addr = serve_plain(move |request: Request<hyper::body::Incoming>| async move {
        let n: u8 = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .map_or(0, |n| (n % 251) as u8);
        let chunk = big_chunk(n);
        let chunks = futures_util::stream::iter(
            (0..BIG / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        http::Response::builder()
            .header("cache-control", "public, max-age=3600")
            .header("content-length", BIG.to_string())
            .body(BodyExt::boxed(StreamBody::new(chunks)))
            .unwrap()
    })
    .await;
    format!("http://{addr}")
}

fn big_chunk(n: u8) -> Bytes {
    Bytes::from(
        (0..64 * 1024)
            .map(|i: usize| (i as u8).wrapping_mul(31).wrapping_add(n))
            .collect::<Vec<u8>>(),
    )
}

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM")
}

/// 200 requests for 200 distinct 8 MiB cold URLs, each client hanging
/// up after the first byte, keep the proxy's peak RSS under `--max-fill-bytes` + 64 MiB, and
/// every entry that was stored is complete (checked through a second proxy on the same
/// Redis).
///
/// Before the layer counted the copies a fill holds (body, encoded entry, store write
/// buffer), peak RSS here was about 20 MiB at rest + 36 MiB + 2.5 times `--max-fill-bytes`
/// (76, 119 and 194 MiB for 16, 32 and 64 MiB). `TRC_FILL_BUDGET_MIB` sets the budget to
/// measure others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_of_many_large_cold_urls_stay_within_the_byte_budget() -> TestResult {
    if !std::path::Path::new("/proc/self/status").exists() {
        return Ok(()); // VmHWM is Linux's
    }
    let redis = RedisServer::start().await;
    let upstream = big_origin().await;
    let prefix = unique_prefix("ops-budget");
    let budget: u64 = std::env::var("TRC_FILL_BUDGET_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        * 1024
        * 1024;
    let flags = [
        "--max-fill-bytes",
        &budget.to_string(),
        "--max-body-bytes",
        &(16 * 1024 * 1024).to_string(),
        "--lock-wait-ms",
        "100",
    ];
    let proxy = Proxy::start_redis_with(&upstream, redis.url(), &prefix, &flags).await;
    let pid = proxy.pid();
    let t0 = Instant::now();
    let baseline = peak_rss(pid);
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..200 {
        let addr = proxy.addr;
        clients.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let request = format!("GET /big/{n} HTTP/1.1\r\nHost: big.example\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .expect("send the request");
            let mut first = [0u8; 1];
            let _ = tokio::time::timeout(PATIENCE, stream.read_exact(&mut first)).await;
            // Hang up after the first byte.
        });
    }
    while let Some(done) = clients.join_next().await {
        done?;
    }
    // Wait (bounded) until every fill has ended, stored or not: no event says so.
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = loop {
        let stats = stats(&client, &proxy).await;
        let ended =
            stats["stored"].as_u64().unwrap_or(0) + stats["not_stored"].as_u64().unwrap_or(0);
        if ended >= 200 || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peak = peak_rss(pid);
    eprintln!(
        "baseline {} MiB, peak {} MiB, settled after {:?}",
        baseline >> 20,
        peak >> 20,
        t0.elapsed()
    );
    assert!(
        peak < budget + 64 * 1024 * 1024,
        "peak RSS {} MiB over budget {} MiB + 64 MiB; stats {settled}",
        peak >> 20,
        budget >> 20
    );

    let checker = Proxy::start_redis_with(&upstream, redis.url(), &prefix, &flags).await;
    let mut complete = 0;
    for n in 0..200u32 {
        let head = send(
            &client,
            Request::head(checker.url(&format!("/big/{n}")))
                .header("host", "big.example")
                .body(Full::default())?,
        )
        .await;
        if head.x_cache() != "HIT" {
            continue;
        }
        let reply: Reply = send(
            &client,
            Request::get(checker.url(&format!("/big/{n}")))
                .header("host", "big.example")
                .body(Full::default())?,
        )
        .await;
        assert_eq!(reply.x_cache(), "HIT");
        assert_eq!(reply.body.len(), BIG, "/big/{n} stored incomplete");
        let chunk = big_chunk((n % 251) as u8);
        assert!(
            reply.body.chunks(chunk.len()).all(|c| c == chunk),
            "/big/{n} stored with the wrong bytes"
        );
        complete += 1;
    }
    assert!(complete > 0, "nothing was stored: {settled}");
    eprintln!(
        "peak RSS {} MiB (budget {} MiB); {complete} complete entries; stats {settled}",
        peak >> 20,
        budget >> 20
    );
    Ok(())
}
