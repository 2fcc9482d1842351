//! Cache poisoning through the built proxy: nothing one client sends may change
//! what another client receives.
//!
//! Two proxies share one real Redis and one origin. The origin reflects what a naive framework
//! behind a proxy would: it builds its page, and a canonical `Link` URL, from `Host`,
//! `X-Forwarded-Host`/`-Port`/`-Proto`/`-Scheme`/`-Prefix`, `Forwarded`, `X-Original-URL` and
//! `X-Rewrite-URL`; names the client from `X-Real-IP` or `X-Forwarded-For`; runs the method
//! that `X-HTTP-Method-Override` and kin name; reads a `GET`'s body; and renders JSON or HTML
//! by `Accept` (`Vary: Accept`), all with `Cache-Control: public, max-age=3600`.
//!
//! Every test is attacker request(s) on proxy A (raw TCP where hyper's client cannot send
//! them), then an innocent client's request for the same URL on proxy B, and asserts what the
//! innocent receives: status, the exact bytes the origin renders for an ordinary request, a
//! matching `content-length`, and the right representation. No test asserts timing.

use crate::support;

use axum::{body::Body, extract::State, http::Request as AxumRequest, Router};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::Ipv4Addr;
use std::sync::Arc;
use support::proxy::{client, raw_response, send, HttpClient, Proxy, Reply};
use support::{unique_prefix, Calls, RedisServer, TestResult};

/// The host every innocent client asks for.
const VICTIM: &str = "victim.example";

// ---------------------------------------------------------------------------------------------
// The reflecting origin
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Origin {
    calls: Calls,
}

/// The first comma-separated element of a header, trimmed. Names are read as a CGI-style
/// framework (WSGI, PHP) reads them: `_` and `-` alike, so `X_Forwarded_Prefix` is
/// `X-Forwarded-Prefix`.
fn first<'a>(request: &'a AxumRequest<Body>, name: &str) -> Option<&'a str> {
    let same = |found: &str| {
        found.len() == name.len()
            && found
                .bytes()
                .zip(name.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let (_, value) = request
        .headers()
        .iter()
        .find(|(found, _)| same(found.as_str()))?;
    value.to_str().ok()?.split(',').next().map(str::trim)
}

/// The first of `names` the request carries, as [`first`] reads it.
fn first_of<'a>(request: &'a AxumRequest<Body>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| first(request, name))
}

/// A parameter (`host`, `proto`) of the first `Forwarded` element.
fn forwarded_param<'a>(request: &'a AxumRequest<Body>, param: &str) -> Option<&'a str> {
    first(request, "forwarded")?.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.eq_ignore_ascii_case(param)
            .then(|| value.trim_matches('"'))
    })
}

/// What a naive framework makes of a request: method, URL and client as it believes them.
async fn reflect(
    State(origin): State<Arc<Origin>>,
    request: AxumRequest<Body>,
) -> http::Response<Body> {
    origin.calls.add();
    let method = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .iter()
    .find_map(|name| first(&request, name))
    .map_or_else(|| request.method().to_string(), str::to_owned);
    // A protocol switch that reached the origin: it would answer in another protocol.
    let method = match first(&request, "upgrade") {
        Some(protocol) => format!("{method} upgrading to {protocol}"),
        None => method,
    };
    // Frameworks that trust proxies take the last Host when there are several.
    let host_header = request
        .headers()
        .get_all("host")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut host = first(&request, "x-forwarded-host")
        .or_else(|| forwarded_param(&request, "host"))
        .unwrap_or(host_header)
        .to_owned();
    if let Some(port) = first(&request, "x-forwarded-port") {
        let name = host.split(':').next().unwrap_or("").to_owned();
        host = format!("{name}:{port}");
    }
    let proto = first_of(
        &request,
        &[
            "x-forwarded-proto",
            "x-forwarded-scheme",
            "x-forwarded-protocol",
            "x-scheme",
            "x-url-scheme",
        ],
    )
    .or_else(|| forwarded_param(&request, "proto"))
    .unwrap_or("http")
    .to_owned();
    let prefix = first_of(&request, &["x-forwarded-prefix", "x-forwarded-path"])
        .unwrap_or("")
        .to_owned();
    let path = first(&request, "x-original-url")
        .or_else(|| first(&request, "x-rewrite-url"))
        .map_or_else(
            || {
                request
                    .uri()
                    .path_and_query()
                    .map_or("/".to_owned(), |pq| pq.to_string())
            },
            str::to_owned,
        );
    let mut client = first_of(
        &request,
        &[
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "cf-connecting-ip",
            "x-forwarded-for",
        ],
    )
    .unwrap_or("nobody")
    .to_owned();
    // Who the hop in front says authenticated the client, and with what certificate.
    for name in [
        "x-forwarded-user",
        "x-remote-user",
        "x-forwarded-client-cert",
    ] {
        if let Some(user) = first(&request, name) {
            client = format!("{client} ({user})");
        }
    }
    let json = first(&request, "accept").is_some_and(|a| a.contains("application/json"));
    let content = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = String::from_utf8_lossy(&content).into_owned();
    let url = format!("{proto}://{host}{prefix}{path}");
    let page = Page {
        method: &method,
        url: &url,
        client: &client,
        query: &query,
    };
    http::Response::builder()
        .header("cache-control", "public, max-age=3600")
        .header("vary", "Accept")
        .header("link", format!("<{url}>; rel=\"canonical\""))
        .header("content-type", content_type(json))
        .body(Body::from(page.render(json)))
        .unwrap()
}

/// The parts of the origin's page that depend on the request.
struct Page<'a> {
    method: &'a str,
    url: &'a str,
    client: &'a str,
    query: &'a str,
}

impl Page<'_> {
    fn render(&self, json: bool) -> String {
        let Page {
            method,
            url,
            client,
            query,
        } = self;
        if json {
            format!(
                "{{\"method\":\"{method}\",\"url\":\"{url}\",\"client\":\"{client}\",\"query\":\"{query}\"}}"
            )
        } else {
            format!(
                "<!doctype html><link rel=canonical href=\"{url}\"><p>{method} for {client}</p><p>{query}</p>\n"
            )
        }
    }
}

fn content_type(json: bool) -> &'static str {
    if json {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------------------------

/// Redis, the origin, and two proxies sharing that Redis.
struct Fleet {
    _redis: RedisServer,
    origin: Arc<Origin>,
    a: Proxy,
    b: Proxy,
    client: HttpClient,
}

async fn fleet(test: &str) -> Fleet {
    fleet_with(test, &[]).await
}

async fn fleet_with(test: &str, extra: &[&str]) -> Fleet {
    let redis = RedisServer::start().await;
    let origin = Arc::new(Origin::default());
    let app = Router::new()
        .fallback(reflect)
        .with_state(Arc::clone(&origin));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the origin");
    let upstream = format!("http://{}", listener.local_addr().expect("origin address"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("origin server");
    });
    let prefix = unique_prefix(test);
    let a = Proxy::start_redis_with(&upstream, redis.url(), &prefix, extra).await;
    let b = Proxy::start_redis_with(&upstream, redis.url(), &prefix, extra).await;
    Fleet {
        _redis: redis,
        origin,
        a,
        b,
        client: client(),
    }
}

/// The page the origin renders for an ordinary request of `path` on the victim host from a
/// client at 127.0.0.1 (the proxies add `X-Forwarded-For: 127.0.0.1`).
fn normal_page(path: &str, json: bool) -> String {
    Page {
        method: "GET",
        url: &format!("http://{VICTIM}{path}"),
        client: "127.0.0.1",
        query: "",
    }
    .render(json)
}

/// Accept header values of the two representations.
fn accept(json: bool) -> &'static str {
    if json {
        "application/json"
    } else {
        "text/html"
    }
}

/// The attacker's raw GET for `path` on the victim's host, asking for one representation,
/// with `headers` (raw `Name: value\r\n` lines), on a connection that closes after it.
fn attacker_get(path: &str, headers: &str, json: bool) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: {}\r\n{headers}\
         Connection: close\r\n\r\n",
        accept(json)
    )
}

impl Fleet {
    /// The innocent client: a plain GET on proxy B for `path` on the victim host.
    async fn innocent(&self, path: &str, json: bool) -> Reply {
        let request = Request::get(self.b.url(path))
            .header("host", VICTIM)
            .header("accept", accept(json))
            .body(Full::default())
            .expect("request");
        send(&self.client, request).await
    }

    /// Sends a raw request to proxy A and returns its status (0 when none came).
    async fn attack(&self, raw: &str) -> u16 {
        raw_response(self.a.addr, raw.as_bytes())
            .await
            .map_or(0, |reply| reply.status)
    }

    /// The attacker's GET for `path` with `headers` (raw `Name: value\r\n` lines), asked in
    /// both representations, then the innocent's GETs: what went wrong, each line led by
    /// `label`.
    async fn attack_then_innocent(&self, path: &str, headers: &str, label: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for json in [false, true] {
            let status = self.attack(&attacker_get(path, headers, json)).await;
            if status != 200 {
                problems.push(format!("{label}: the attacker got {status}"));
            }
        }
        for json in [false, true] {
            let reply = self.innocent(path, json).await;
            if let Some(problem) = wrong(&reply, path, json) {
                problems.push(format!("{label}: {problem}"));
            }
        }
        problems
    }
}

/// What is wrong with the innocent's answer for `path`, or `None` when it is the origin's
/// ordinary answer (status, bytes, length, type, link).
fn wrong(reply: &Reply, path: &str, json: bool) -> Option<String> {
    let expected = normal_page(path, json);
    let mut problems = Vec::new();
    if reply.status != StatusCode::OK {
        problems.push(format!("status {}", reply.status));
    }
    if reply.body != expected.as_bytes() {
        problems.push(format!("body {:?}, expected {expected:?}", reply.text()));
    }
    if reply.header("content-length") != reply.body.len().to_string() {
        problems.push(format!(
            "content-length {:?} for {} bytes",
            reply.header("content-length"),
            reply.body.len()
        ));
    }
    if reply.header("content-type") != content_type(json) {
        problems.push(format!("content-type {:?}", reply.header("content-type")));
    }
    let link = format!("<http://{VICTIM}{path}>; rel=\"canonical\"");
    if reply.header("link") != link {
        problems.push(format!("link {:?}", reply.header("link")));
    }
    (!problems.is_empty()).then(|| format!("{path} (json: {json}): {}", problems.join("; ")))
}

/// Asserts the innocent gets the ordinary answer for `path` in both representations.
async fn assert_innocent_served_normally(fleet: &Fleet, path: &str) {
    for json in [false, true] {
        let reply = fleet.innocent(path, json).await;
        if let Some(problem) = wrong(&reply, path, json) {
            panic!("poisoned: {problem}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_wins_over_host() -> TestResult {
    let fleet = fleet("poison-absolute").await;
    let status = fleet
        .attack(&format!(
            "GET http://{VICTIM}/page HTTP/1.1\r\nHost: evil.example\r\nAccept: text/html\r\n\
             Connection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 200, "the attacker's request was not served");
    assert_innocent_served_normally(&fleet, "/page").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_spelling_does_not_leak_into_the_shared_entry() -> TestResult {
    let fleet = fleet("poison-host-case").await;
    let status = fleet
        .attack(
            "GET /page HTTP/1.1\r\nHost: VICTIM.Example\r\nAccept: text/html\r\n\
             Connection: close\r\n\r\n",
        )
        .await;
    assert_eq!(status, 200);
    assert_innocent_served_normally(&fleet, "/page").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_is_refused_before_the_cache() -> TestResult {
    let fleet = fleet("poison-dup-host").await;
    let status = fleet
        .attack(&format!(
            "GET /page HTTP/1.1\r\nHost: {VICTIM}\r\nHost: evil.example\r\nAccept: text/html\r\n\
             Connection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 400, "duplicate Host must be a 400");
    assert_eq!(fleet.origin.calls.get(), 0, "the origin saw the request");
    assert_innocent_served_normally(&fleet, "/page").await;
    Ok(())
}

/// Each forwarding header an origin may build URLs or names from, sent by an attacker with
/// an otherwise ordinary request for the victim's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_forwarding_headers_do_not_reach_the_origin() -> TestResult {
    let fleet = fleet("poison-forwarding").await;
    let attacks = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "6666"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-original-url", "/evil"),
        ("x-rewrite-url", "/evil"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    let mut problems = Vec::new();
    for (i, (name, value)) in attacks.iter().enumerate() {
        let path = format!("/forwarding/{i}");
        let headers = format!("{name}: {value}\r\n");
        problems.extend(fleet.attack_then_innocent(&path, &headers, name).await);
    }
    assert!(problems.is_empty(), "poisoned:\n{}", problems.join("\n"));
    Ok(())
}

/// Forwarding headers spelled with underscores (CGI-style origins read
/// them as dashes), and the family's names beyond the classic list, sent by an attacker
/// with an otherwise ordinary request; the innocent client gets the ordinary page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_family_headers_in_any_spelling_do_not_reach_the_origin() -> TestResult {
    let fleet = fleet("poison-forwarding-family").await;
    let attacks = [
        ("X_Forwarded_Prefix", "/evil"),
        ("X_Forwarded_Host", "evil.example"),
        ("x_forwarded_proto", "https"),
        ("X-Forwarded-Path", "/evil"),
        ("X-Forwarded-Protocol", "https"),
        ("X-Forwarded-Client-Cert", "Hash=evil"),
        ("X-Forwarded-User", "admin"),
        ("X-Scheme", "https"),
        ("X-Url-Scheme", "https"),
        ("True-Client-IP", "6.6.6.6"),
        ("X-Client-IP", "6.6.6.6"),
        ("X-Cluster-Client-IP", "6.6.6.6"),
        ("CF-Connecting-IP", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X-Remote-User", "admin"),
    ];
    let mut problems = Vec::new();
    for (i, (name, value)) in attacks.iter().enumerate() {
        let path = format!("/family/{i}");
        let headers = format!("{name}: {value}\r\n");
        problems.extend(fleet.attack_then_innocent(&path, &headers, name).await);
    }
    assert!(problems.is_empty(), "poisoned:\n{}", problems.join("\n"));
    Ok(())
}

/// Only listed protocols are tunnelled: an `Upgrade: h2c` (or any unlisted token) is an
/// ordinary request, cached like one, and the origin never sees the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_upgrades_are_tunnelled() -> TestResult {
    let fleet = fleet("poison-upgrade").await;
    for (i, protocol) in ["h2c", "evil/1.0"].iter().enumerate() {
        let path = format!("/upgrade/{i}");
        let reply = raw_response(
            fleet.a.addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: text/html\r\n\
                 Connection: Upgrade, close\r\nUpgrade: {protocol}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("an answer");
        assert_eq!(reply.status, 200, "{protocol}: not switched, not refused");
        assert_eq!(
            reply.body,
            normal_page(&path, false).as_bytes(),
            "{protocol}: the origin saw the upgrade"
        );
        assert_innocent_served_normally(&fleet, &path).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_named_in_connection_is_gone_before_the_variant_is_chosen() -> TestResult {
    let fleet = fleet("poison-connection").await;
    let status = fleet
        .attack(&format!(
            "GET /page HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: application/json\r\n\
             Connection: accept, close\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 200);
    assert_innocent_served_normally(&fleet, "/page").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_cannot_turn_a_get_into_another_method() -> TestResult {
    let fleet = fleet("poison-override").await;
    let attacks = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method-override", "POST"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "PUT"),
        // CGI-style origins read `_` as `-`.
        ("X_HTTP_Method_Override", "DELETE"),
        ("x_method_override", "PUT"),
    ];
    let mut problems = Vec::new();
    for (i, (name, method)) in attacks.iter().enumerate() {
        let path = format!("/override/{i}");
        let status = fleet
            .attack(&format!(
                "GET {path} HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: text/html\r\n{name}: {method}\r\n\
                 Connection: close\r\n\r\n"
            ))
            .await;
        if status != 200 {
            problems.push(format!("{name}: {method}: the attacker got {status}"));
        }
        let reply = fleet.innocent(&path, false).await;
        if let Some(problem) = wrong(&reply, &path, false) {
            problems.push(format!("{name}: {method}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "poisoned:\n{}", problems.join("\n"));
    Ok(())
}

/// Path spellings that normalise to one another somewhere: whatever the proxy keys on is what
/// it forwards, so each spelling's entry holds the origin's answer for that spelling, and the
/// plain path's entry is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_are_keyed_and_forwarded_alike() -> TestResult {
    let fleet = fleet("poison-paths").await;
    let spellings = [
        "/a/../b",
        "//b",
        "/%2e%2e/b",
        "/a/%2e%2e/b",
        "/a%2Fb",
        "/a/./b",
        "/b/",
        "/%62",
    ];
    for spelling in spellings {
        let status = fleet
            .attack(&format!(
                "GET {spelling} HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: text/html\r\n\
                 Connection: close\r\n\r\n"
            ))
            .await;
        assert_eq!(status, 200, "{spelling}");
    }
    assert_innocent_served_normally(&fleet, "/b").await;
    assert_innocent_served_normally(&fleet, "/a/b").await;
    for spelling in spellings {
        let reply = fleet.innocent(spelling, false).await;
        if let Some(problem) = wrong(&reply, spelling, false) {
            panic!("the entry for {spelling} is not the origin's answer for it: {problem}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_answered_for_its_sender_only() -> TestResult {
    let fleet = fleet("poison-get-body").await;
    for json in [false, true] {
        let status = fleet
            .attack(&format!(
                "GET /search HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: {}\r\nContent-Length: 9\r\n\
                 Connection: close\r\n\r\nevil=true",
                accept(json)
            ))
            .await;
        assert_eq!(status, 200);
    }
    let status = fleet
        .attack(&format!(
            "GET /search HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: text/html\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\nevil=true\r\n0\r\n\r\n"
        ))
        .await;
    assert_eq!(status, 200);
    assert_innocent_served_normally(&fleet, "/search").await;
    Ok(())
}

/// `no-cache` and `max-age=0` make the cache go back to the origin; an attacker sending them
/// with forwarding headers must not get the refilled entry rendered for the attacker's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refills_forced_by_an_attacker_store_the_ordinary_answer() -> TestResult {
    let fleet = fleet("poison-refill").await;
    let directives = [
        "Cache-Control: no-cache",
        "Cache-Control: max-age=0",
        "Pragma: no-cache",
    ];
    let mut problems = Vec::new();
    for (i, directive) in directives.iter().enumerate() {
        let path = format!("/refill/{i}");
        // The innocent's entry is there first.
        assert_innocent_served_normally(&fleet, &path).await;
        let headers = format!(
            "{directive}\r\nX-Forwarded-Host: evil.example\r\nForwarded: host=evil.example\r\n\
             X-Forwarded-Proto: https\r\nX-Original-URL: /evil\r\n"
        );
        problems.extend(fleet.attack_then_innocent(&path, &headers, directive).await);
    }
    assert!(problems.is_empty(), "poisoned:\n{}", problems.join("\n"));
    Ok(())
}

/// An authorized HEAD must not store an empty GET entry. The
/// fix is in the layer (a HEAD with credentials passes by); the proxy does nothing about it,
/// so this checks the layer's fix through the built binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_head_does_not_empty_the_get_entry() -> TestResult {
    let fleet = fleet("poison-head-auth").await;
    let reply = raw_response(
        fleet.a.addr,
        format!(
            "HEAD /app.js HTTP/1.1\r\nHost: {VICTIM}\r\nAccept: text/html\r\n\
             Authorization: Basic dXNlcjpwYXNz\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("an answer to the HEAD");
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty(), "a HEAD answer with a body");
    assert_innocent_served_normally(&fleet, "/app.js").await;
    Ok(())
}

/// Requests that must not damage what others are served. After
/// the innocent's entries are stored, an attacker on proxy A sends `Cache-Control: no-store`
/// (which used to replace the entry with a hit-for-miss marker) and authorized GETs of the
/// varied resource (which used to write a new vary generation, orphaning every variant); the
/// innocent on proxy B must still be answered from the cache, with the ordinary bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cannot_replace_mark_or_orphan_what_others_are_served() -> TestResult {
    let fleet = fleet("poison-state").await;
    let path = "/state";
    assert_innocent_served_normally(&fleet, path).await;
    // The fills are written off the response path: wait until both variants are hits (a
    // bounded poll; there is no event to await in another process).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for json in [false, true] {
        while fleet.innocent(path, json).await.x_cache() != "HIT" {
            assert!(
                std::time::Instant::now() < deadline,
                "the entries were never stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    for json in [false, true] {
        for extra in [
            "Cache-Control: no-store\r\n",
            "Authorization: Basic YWxpY2U6c2VjcmV0\r\n",
            "Authorization: Bearer x\r\nCache-Control: no-cache\r\n",
        ] {
            let status = fleet.attack(&attacker_get(path, extra, json)).await;
            assert_eq!(status, 200, "{extra}");
        }
    }
    let mut problems = Vec::new();
    for json in [false, true] {
        let reply = fleet.innocent(path, json).await;
        if reply.x_cache() != "HIT" {
            problems.push(format!("json: {json}: {} instead of HIT", reply.x_cache()));
        }
        if let Some(problem) = wrong(&reply, path, json) {
            problems.push(problem);
        }
    }
    assert!(problems.is_empty(), "damaged:\n{}", problems.join("\n"));
    Ok(())
}

/// The scheme is keyed: behind a trusted TLS terminator that sends both `http` and `https`
/// traffic, an origin that redirects `http` to `https` (Django's `SECURE_SSL_REDIRECT`,
/// Rails' `force_ssl`) must not have its `301` served to `https` clients, who would loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_redirect_is_never_served_to_https_clients() -> TestResult {
    async fn origin(request: AxumRequest<Body>) -> axum::response::Response {
        let proto = request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("http")
            .to_owned();
        let response = axum::response::Response::builder();
        let response = if proto == "http" {
            response
                .status(301)
                .header("location", format!("https://{VICTIM}{}", request.uri()))
                .body(Body::empty())
        } else {
            response
                .header("cache-control", "public, max-age=60")
                .body(Body::from("secure page"))
        };
        response.expect("response")
    }
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let upstream = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(origin)).await;
    });
    // The test client connects from 127.0.0.1: it plays the trusted TLS terminator.
    let proxy = Proxy::start(&upstream, &["--trusted-proxies", "127.0.0.1/32"]).await;
    let client = client();
    let request = |proto: &str| {
        Request::get(proxy.url("/page"))
            .header("host", VICTIM)
            .header("x-forwarded-proto", proto)
            .body(Full::default())
            .expect("request")
    };
    // The attacker's plain-http request, until its redirect is stored (bounded poll: the
    // write is off the response path).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = send(&client, request("http")).await;
        assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
        if reply.x_cache() == "HIT" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the redirect was never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let innocent = send(&client, request("https")).await;
    assert_eq!(
        (innocent.status, innocent.text()),
        (StatusCode::OK, "secure page".to_owned())
    );
    Ok(())
}

/// An origin that writes a body after its answer to `HEAD` (late, as a slow framework that
/// streams it would: when the next request on the connection arrives): a whole second
/// response, which a pooled connection hands to that next request as its answer. `GET`s get
/// a small page naming their path.
async fn desyncing_origin() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the origin");
    let address = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut late_body = false;
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    buffer.drain(..end + 4);
                    let mut line = head.lines().next().unwrap_or("").split(' ');
                    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    let page = format!("page {path}");
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=600\r\n\
                         Content-Length: {}\r\n\r\n",
                        page.len()
                    );
                    if std::mem::take(&mut late_body) {
                        answer.insert_str(
                            0,
                            "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=600\r\n\
                             Content-Length: 4\r\n\r\nEVIL",
                        );
                    }
                    if method == "HEAD" {
                        late_body = true;
                    } else {
                        answer.push_str(&page);
                    }
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}")
}

/// A `HEAD` miss never leaves a pooled upstream connection that the origin
/// desynchronised by writing a body: the next request's stored answer is the origin's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answered_with_a_body_cannot_desync_the_next_answer() -> TestResult {
    let redis = RedisServer::start().await;
    let upstream = desyncing_origin().await;
    let proxy = Proxy::start_redis_with(
        &upstream,
        redis.url(),
        &unique_prefix("poison-head-desync"),
        &[],
    )
    .await;
    let client = client();
    for round in 0..3 {
        let head = Request::head(proxy.url(&format!("/attack/{round}")))
            .header("host", VICTIM)
            .body(Full::default())?;
        assert_eq!(send(&client, head).await.status, StatusCode::OK);
        let path = format!("/victim/{round}");
        for _ in 0..2 {
            let innocent = Request::get(proxy.url(&path))
                .header("host", VICTIM)
                .body(Full::default())?;
            let reply = send(&client, innocent).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), format!("page {path}"), "round {round}");
        }
    }
    Ok(())
}
