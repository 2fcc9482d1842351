//! HTTP caching conformance, one test per behaviour, each counting what the origin
//! was asked and comparing what clients got: HTTP-date forms (RFC 9110 §5.6.7), targeted cache
//! control (RFC 9213), serving stale when the origin is unreachable, `must-understand`,
//! `Accept-Language` normalisation for `Vary`, `POST` answers reused for `GET`, the
//! `Set-Cookie` opt-in. Stored partial content has its own file, `tests/partial_content.rs`.
//!
//! Every test runs the shared-mode layer on a real store: the in-process [`MemoryStore`] for
//! most, the test store (`crate::backend`, Redis with `TRC_TEST_STORE=redis`) where the store's
//! round trip matters. No test sleeps for timing:
//! "stale" is made by an origin declaring a freshness that has already run out.

use crate::backend::Backend;
use crate::support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::*;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};
use tower_redis_cache::{
    CacheLayer, CacheLayerBuilder, CacheMode, CacheService, MemoryStore, OriginUnreachable,
};

type OriginError = std::io::Error;
type Answer = Result<Response<Full<Bytes>>, OriginError>;
type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, OriginError>;

/// A scripted origin: counts its calls and keeps the request headers of each.
#[derive(Clone, Default)]
struct Scripted {
    calls: Calls,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Scripted {
    /// The origin as a service answering `script(request, call number from 1)`.
    fn service(
        &self,
        script: impl Fn(&Request<ReqBody>, usize) -> Answer + Send + Sync + 'static,
    ) -> Origin {
        let this = self.clone();
        let script = Arc::new(script);
        BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
            let n = this.calls.add();
            this.seen.lock().expect("seen").push(req.headers().clone());
            let answer = script(&req, n);
            async move { answer }
        }))
    }

    /// A request header as the origin saw it on call `n`.
    fn seen(&self, n: usize, name: &str) -> Option<String> {
        let seen = self.seen.lock().expect("seen");
        let value = seen.get(n - 1)?.get(name)?;
        Some(value.to_str().unwrap_or("").to_owned())
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: &'static str) -> Answer {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("response"))
}

fn ok(headers: &[(&str, &str)], body: &'static str) -> Answer {
    answer(200, headers, body)
}

fn with_headers(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = support::request(method, uri);
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    request
}

/// A shared-mode layer over the in-process store, with no default ttl (`--ttl 0`): only what
/// the origin declares fresh is reused.
fn memory_layer(configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder) -> CacheLayer {
    configure(
        builder(MemoryStore::new(16 << 20), "conformance")
            .mode(CacheMode::Shared)
            .ttl(Duration::ZERO),
    )
    .build()
    .expect("valid config")
}

/// The same over the test store (`crate::backend`: a `MemoryStore`, or Redis with
/// `TRC_TEST_STORE=redis`), for the tests that also run where the store is a round trip away.
async fn store_layer(
    backend: &Backend,
    configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder,
) -> CacheLayer {
    configure(
        builder(backend.store().await, "conformance")
            .mode(CacheMode::Shared)
            .ttl(Duration::ZERO),
    )
    .build()
    .expect("valid config")
}

/// Sends a request and waits for the writes it started, so the next request sees them.
async fn exchange(layer: &CacheLayer, svc: &CacheService<Origin>, req: Request<ReqBody>) -> Reply {
    let reply = send(svc, req).await;
    layer.wait_for_writes().await;
    reply
}

/// `SystemTime::now() + secs` in the three HTTP-date forms (IMF-fixdate, RFC 850, asctime).
fn date_forms(secs: u64) -> [String; 3] {
    let imf = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs));
    // "Thu, 18 Aug 2050 02:01:18 GMT"
    let (weekday, rest) = imf.split_once(", ").expect("imf");
    let parts: Vec<&str> = rest.split(' ').collect();
    let long = match weekday {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!(
        "{long}, {}-{}-{} {} GMT",
        parts[0],
        parts[1],
        &parts[2][2..],
        parts[3]
    );
    let day: u32 = parts[0].parse().expect("day");
    let asctime = format!("{weekday} {} {day:>2} {} {}", parts[1], parts[3], parts[2]);
    [imf, rfc850, asctime]
}

#[tokio::test]
async fn expires_in_each_rfc_9110_form_makes_a_response_fresh_and_a_malformed_one_does_not(
) -> TestResult {
    let backend = Backend::start().await;
    let layer = store_layer(&backend, |b| b).await;
    let origin = Scripted::default();
    let [imf, rfc850, asctime] = date_forms(3600);
    let expires: Vec<(&str, String)> = vec![
        ("/imf", imf.clone()),
        ("/rfc850", rfc850),
        ("/asctime", asctime),
        // Two spaces where one belongs: invalid, so already expired (RFC 9111 §5.3).
        ("/spaces", imf.replacen(' ', "  ", 2)),
        ("/utc", imf.replace("GMT", "UTC")),
        ("/zero", "0".to_owned()),
    ];
    let table = expires.clone();
    let svc = layer.layer(origin.service(move |req, _| {
        let (_, value) = table
            .iter()
            .find(|(path, _)| *path == req.uri().path())
            .expect("known path");
        let mut response = ok(&[], "body")?;
        response
            .headers_mut()
            .insert("expires", value.parse().expect("value"));
        Ok(response)
    }));
    for (path, value) in &expires {
        let uri = format!("http://example.test{path}");
        let before = origin.calls.get();
        exchange(&layer, &svc, support::get(&uri)).await;
        let second = exchange(&layer, &svc, support::get(&uri)).await;
        let fresh = matches!(*path, "/imf" | "/rfc850" | "/asctime");
        assert_eq!(
            (second.x_cache() == "HIT", origin.calls.get() - before),
            (fresh, if fresh { 1 } else { 2 }),
            "Expires: {value}"
        );
        assert_eq!(second.body, "body");
    }
    Ok(())
}

/// Response headers of one scripted case.
type Headers = Vec<(&'static str, &'static str)>;

/// RFC 9213: the targeted field replaces `Cache-Control` and `Expires` for this cache, in both
/// directions (fresher and stricter); an invalid one is ignored; the first listed valid field
/// wins; clients receive the fields untouched.
#[tokio::test]
async fn targeted_cache_control_takes_precedence_over_cache_control() -> TestResult {
    let layer =
        memory_layer(|b| b.targeted_cache_control(["Tower-Cache-Control", "CDN-Cache-Control"]));
    let origin = Scripted::default();
    let cases: Vec<(&'static str, Headers, bool)> = vec![
        // Fresher for this cache than for browsers.
        (
            "/cdn-fresh",
            vec![
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=600"),
            ],
            true,
        ),
        // Stricter: each of these forbids reuse despite a long Cache-Control and Expires.
        (
            "/cdn-no-store",
            vec![
                ("cache-control", "max-age=600"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("cdn-cache-control", "no-store"),
            ],
            false,
        ),
        (
            "/cdn-private",
            vec![
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "private"),
            ],
            false,
        ),
        (
            "/cdn-no-cache",
            vec![
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "no-cache"),
            ],
            false,
        ),
        (
            "/cdn-zero",
            vec![
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("cdn-cache-control", "max-age=0"),
            ],
            false,
        ),
        // Not a valid dictionary, or a wrong type: ignored, Cache-Control decides.
        (
            "/cdn-invalid",
            vec![
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=600, &&&"),
            ],
            false,
        ),
        (
            "/cdn-wrong-type",
            vec![
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=\"600\""),
            ],
            false,
        ),
        (
            "/cdn-invalid-fallback",
            vec![
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "MaX-aGe=0"),
            ],
            true,
        ),
        // The first listed field with a valid value wins.
        (
            "/ours-first",
            vec![
                ("tower-cache-control", "max-age=600"),
                ("cdn-cache-control", "no-store"),
            ],
            true,
        ),
        (
            "/ours-invalid",
            vec![
                ("tower-cache-control", "max-age=x"),
                ("cdn-cache-control", "no-store"),
                ("cache-control", "max-age=600"),
            ],
            false,
        ),
        // A field not on the list changes nothing.
        (
            "/unlisted",
            vec![
                ("cache-control", "no-store"),
                ("other-cache-control", "max-age=600"),
            ],
            false,
        ),
    ];
    let table = cases.clone();
    let svc = layer.layer(origin.service(move |req, _| {
        let (_, headers, _) = table
            .iter()
            .find(|(p, _, _)| *p == req.uri().path())
            .expect("path");
        ok(headers, "body")
    }));
    for (path, headers, reused) in &cases {
        let uri = format!("http://example.test{path}");
        let before = origin.calls.get();
        let first = exchange(&layer, &svc, support::get(&uri)).await;
        for (name, value) in headers {
            assert_eq!(
                first.headers.get(*name).map(|v| v.to_str().unwrap()),
                Some(*value),
                "{path}: {name} is passed on"
            );
        }
        let second = exchange(&layer, &svc, support::get(&uri)).await;
        assert_eq!(
            (second.x_cache() == "HIT", origin.calls.get() - before),
            (*reused, if *reused { 1 } else { 2 }),
            "{path}"
        );
    }
    Ok(())
}

/// A client cannot use a targeted field: in its request it is not read, so an attacker's
/// `CDN-Cache-Control: max-age=…` cannot make the origin's private answer shared, and the
/// innocent client after it gets its own answer from the origin.
#[tokio::test]
async fn a_targeted_field_in_a_request_changes_nothing() -> TestResult {
    let backend = Backend::start().await;
    let layer = store_layer(&backend, |b| b).await;
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, _| {
        let who = req
            .headers()
            .get("x-user")
            .map_or("anonymous", |v| v.to_str().unwrap_or("?"));
        let body: &'static str = if who == "attacker" {
            "attacker's page"
        } else {
            "innocent's page"
        };
        ok(&[("cache-control", "private, max-age=600")], body)
    }));
    let uri = "http://example.test/account";
    let attack = with_headers(
        "GET",
        uri,
        &[
            ("x-user", "attacker"),
            ("cdn-cache-control", "max-age=600, public"),
            ("cache-control", "max-age=600"),
        ],
    );
    exchange(&layer, &svc, attack).await;
    let innocent = exchange(
        &layer,
        &svc,
        with_headers("GET", uri, &[("x-user", "innocent")]),
    )
    .await;
    assert_eq!(innocent.body, "innocent's page");
    assert_eq!(origin.calls.get(), 2);
    Ok(())
}

/// RFC 9111 §4.2.4: a disconnected cache may serve a stale response, unless the response
/// forbids it; an error status the origin sends is its answer and is passed on.
#[tokio::test]
async fn a_stale_entry_stands_in_for_an_unreachable_origin_unless_forbidden() -> TestResult {
    let backend = Backend::start().await;
    let layer = store_layer(&backend, |b| {
        b.stale_if_unreachable(Duration::from_secs(300))
    })
    .await;
    let origin = Scripted::default();
    // Stale on arrival: its Age already equals its max-age.
    let svc = layer.layer(origin.service(|req, n| {
        let cc = match req.uri().path() {
            "/must-revalidate" => "max-age=1, must-revalidate",
            "/s-maxage" => "max-age=1, s-maxage=1",
            "/no-cache" => "max-age=1, no-cache",
            _ => "max-age=1",
        };
        match (n % 3, req.uri().path()) {
            // Call 1 of each path fills, call 2 finds the origin down, call 3 gets a 500.
            (1, _) => ok(
                &[("cache-control", cc), ("age", "1"), ("etag", "\"v1\"")],
                "stale copy",
            ),
            // The inner service fails, or (as the proxy does) answers with its own marked 502.
            (2, "/plain") => Err(std::io::Error::other("connection refused")),
            (2, _) => {
                let mut refused = answer(502, &[], "unreachable")?;
                refused.extensions_mut().insert(OriginUnreachable);
                Ok(refused)
            }
            _ => answer(500, &[], "origin error"),
        }
    }));
    for (path, served) in [
        ("/plain", true),
        ("/must-revalidate", false),
        ("/s-maxage", false),
        ("/no-cache", false),
    ] {
        let uri = format!("http://example.test{path}");
        exchange(&layer, &svc, support::get(&uri)).await;
        let down = send(&svc, support::get(&uri)).await;
        if served {
            assert_eq!(
                (down.status.as_u16(), &down.body[..]),
                (200, &b"stale copy"[..]),
                "{path}"
            );
            assert!(cache_status(&down).contains("origin-unreachable"), "{path}");
        } else {
            assert_eq!(
                (down.status.as_u16(), &down.body[..]),
                (502, &b"unreachable"[..]),
                "{path}: stale serving is forbidden"
            );
        }
        let error = send(&svc, support::get(&uri)).await;
        assert_eq!(
            (error.status.as_u16(), &error.body[..]),
            (500, &b"origin error"[..]),
            "{path}"
        );
    }
    Ok(())
}

fn cache_status(reply: &Reply) -> &str {
    reply
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// RFC 9111 §5.2.2.3: `must-understand` lifts `no-store` for a status whose rules the cache
/// implements, and for no other.
#[tokio::test]
async fn must_understand_stores_known_statuses_despite_no_store() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, _| {
        let status = if req.uri().path() == "/known" {
            200
        } else {
            299
        };
        answer(
            status,
            &[("cache-control", "max-age=600, no-store, must-understand")],
            "body",
        )
    }));
    for (path, reused) in [("/known", true), ("/unknown", false)] {
        let uri = format!("http://example.test{path}");
        let before = origin.calls.get();
        exchange(&layer, &svc, support::get(&uri)).await;
        let second = exchange(&layer, &svc, support::get(&uri)).await;
        assert_eq!(
            (second.x_cache() == "HIT", origin.calls.get() - before),
            (reused, if reused { 1 } else { 2 }),
            "{path}"
        );
    }
    Ok(())
}

/// RFC 9111 §4.1: `Accept-Language` values that differ only in case, whitespace, the spelling
/// of `q` or the order of equally weighted languages select one variant; different weights
/// or languages do not.
#[tokio::test]
async fn accept_language_is_normalised_for_vary() -> TestResult {
    let backend = Backend::start().await;
    let layer = store_layer(&backend, |b| b).await;
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, _| {
        let asked = req
            .headers()
            .get("accept-language")
            .map_or("", |v| v.to_str().unwrap_or(""));
        let body: &'static str = if asked.to_ascii_lowercase().trim_start().starts_with("de") {
            "Hallo"
        } else {
            "Hello"
        };
        ok(
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Language"),
            ],
            body,
        )
    }));
    let uri = "http://example.test/greeting";
    let ask = |value: &'static str| with_headers("GET", uri, &[("accept-language", value)]);
    assert_eq!(exchange(&layer, &svc, ask("en, de")).await.body, "Hello");
    for same in ["de, en", "eN, De", "  en ,de ", "en;q=1.0, de;q=1"] {
        let reply = exchange(&layer, &svc, ask(same)).await;
        assert_eq!(
            (reply.x_cache(), &reply.body[..]),
            ("HIT", &b"Hello"[..]),
            "{same}"
        );
    }
    assert_eq!(origin.calls.get(), 1);
    let weighted = exchange(&layer, &svc, ask("de, en;q=0.5")).await;
    assert_eq!(
        (weighted.x_cache(), &weighted.body[..]),
        ("MISS", &b"Hallo"[..])
    );
    assert_eq!(origin.calls.get(), 2);
    Ok(())
}

/// RFC 9110 §9.3.3: a `POST` answer with explicit freshness and a `Content-Location` naming
/// its own target is that target's representation, reused for `GET`; without either it is not.
#[tokio::test]
async fn a_post_answer_naming_its_target_is_reused_for_get() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let svc =
        layer.layer(
            origin.service(|req, _| match (req.method().as_str(), req.uri().path()) {
                ("POST", "/named") => ok(
                    &[
                        ("cache-control", "max-age=600"),
                        ("content-location", "/named"),
                    ],
                    "posted",
                ),
                ("POST", "/elsewhere") => ok(
                    &[
                        ("cache-control", "max-age=600"),
                        ("content-location", "/other"),
                    ],
                    "posted",
                ),
                ("POST", _) => ok(&[("content-location", "/no-freshness")], "posted"),
                _ => ok(&[], "fetched"),
            }),
        );
    for (path, reused) in [
        ("/named", true),
        ("/elsewhere", false),
        ("/no-freshness", false),
    ] {
        let uri = format!("http://example.test{path}");
        let before = origin.calls.get();
        let posted = exchange(
            &layer,
            &svc,
            with_headers("POST", &uri, &[("if-none-match", "*")]),
        )
        .await;
        assert_eq!(
            (posted.status.as_u16(), &posted.body[..]),
            (200, &b"posted"[..]),
            "{path}: a POST gets its own answer"
        );
        assert_eq!(
            origin.seen(before + 1, "if-none-match").as_deref(),
            Some("*"),
            "a POST's preconditions are the origin's"
        );
        let got = exchange(&layer, &svc, support::get(&uri)).await;
        let expected: &[u8] = if reused { b"posted" } else { b"fetched" };
        assert_eq!(
            (&got.body[..], origin.calls.get() - before),
            (expected, if reused { 1 } else { 2 }),
            "{path}"
        );
    }
    Ok(())
}

/// `Set-Cookie` is never stored by default; with `share_set_cookie` a response that declares
/// itself reusable is stored with its cookie, and one that does not (a login answer the
/// default ttl would otherwise cover) still is not: the next client never gets the first
/// one's session.
#[tokio::test]
async fn set_cookie_is_shared_only_when_opted_in_and_declared_reusable() -> TestResult {
    let origin = Scripted::default();
    let service = origin.service(|req, _| match req.uri().path() {
        "/bucket" => ok(
            &[("cache-control", "max-age=600"), ("set-cookie", "bucket=a")],
            "page",
        ),
        _ => {
            let who = req
                .headers()
                .get("x-user")
                .map_or("nobody", |v| v.to_str().unwrap_or("?"));
            let cookie: &'static str = if who == "attacker" {
                "session=attacker"
            } else {
                "session=innocent"
            };
            ok(&[("set-cookie", cookie)], "welcome")
        }
    });
    let default = memory_layer(|b| b.ttl(Duration::from_secs(60)));
    let svc = default.layer(service.clone());
    let uri = "http://example.test/bucket";
    exchange(&default, &svc, support::get(uri)).await;
    assert_eq!(
        exchange(&default, &svc, support::get(uri)).await.x_cache(),
        "MISS"
    );
    assert_eq!(origin.calls.get(), 2, "not stored by default");

    let opted = memory_layer(|b| b.ttl(Duration::from_secs(60)).share_set_cookie(true));
    let svc = opted.layer(service);
    exchange(&opted, &svc, support::get(uri)).await;
    let hit = exchange(&opted, &svc, support::get(uri)).await;
    assert_eq!(
        (
            hit.x_cache(),
            hit.headers.get("set-cookie").map(|v| v.to_str().unwrap())
        ),
        ("HIT", Some("bucket=a"))
    );
    assert_eq!(origin.calls.get(), 3);

    let login = "http://example.test/login";
    exchange(
        &opted,
        &svc,
        with_headers("GET", login, &[("x-user", "attacker")]),
    )
    .await;
    let innocent = exchange(
        &opted,
        &svc,
        with_headers("GET", login, &[("x-user", "innocent")]),
    )
    .await;
    assert_eq!(innocent.headers["set-cookie"], "session=innocent");
    assert_eq!(origin.calls.get(), 5);
    Ok(())
}

/// The in-process store, with every fill's closing write held until the test releases it:
/// the window in which a fill has answered its client but still runs.
struct HeldWrites {
    inner: MemoryStore,
    release: Arc<tokio::sync::Semaphore>,
}

mod held {
    use super::HeldWrites;
    use std::time::Duration;
    use tower_redis_cache::store::{FillEnd, FillNotice, FillWaiter, LockAttempt};
    use tower_redis_cache::{Store, StoreFuture};

    impl Store for HeldWrites {
        fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<bytes::Bytes>> {
            self.inner.get(key)
        }
        fn put<'a>(
            &'a self,
            key: &'a str,
            value: bytes::Bytes,
            ttl: Duration,
        ) -> StoreFuture<'a, ()> {
            self.inner.put(key, value, ttl)
        }
        fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
            self.inner.delete(key)
        }
        fn try_lock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> StoreFuture<'a, bool> {
            self.inner.try_lock(key, token, ttl)
        }
        fn read_or_lock<'a>(
            &'a self,
            entry_key: &'a str,
            lock_key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> StoreFuture<'a, LockAttempt> {
            self.inner.read_or_lock(entry_key, lock_key, token, ttl)
        }
        fn extend_lock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            ttl: Duration,
        ) -> StoreFuture<'a, bool> {
            self.inner.extend_lock(key, token, ttl)
        }
        fn unlock<'a>(
            &'a self,
            key: &'a str,
            token: &'a str,
            entry_key: Option<&'a str>,
        ) -> StoreFuture<'a, ()> {
            self.inner.unlock(key, token, entry_key)
        }
        fn publish_fill<'a>(
            &'a self,
            entry_key: &'a str,
            notice: FillNotice,
        ) -> StoreFuture<'a, ()> {
            self.inner.publish_fill(entry_key, notice)
        }
        fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
            self.inner.subscribe_fill(entry_key)
        }
        fn finish_fill<'a>(&'a self, end: FillEnd<'a>) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                let _permit = self.release.acquire().await;
                self.inner.finish_fill(end).await
            })
        }
    }
}

/// A response that must be revalidated on every use (`no-cache`) answers only the request
/// that drew it: a request arriving after that one was answered, while its fill is still
/// writing, goes to the origin itself instead of taking the leader's copy.
#[tokio::test]
async fn a_no_cache_answer_is_not_handed_to_a_request_joining_its_fill_late() -> TestResult {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let store = HeldWrites {
        inner: MemoryStore::new(1 << 20),
        release: Arc::clone(&release),
    };
    let layer = builder(store, "late-follower")
        .mode(CacheMode::Shared)
        .ttl(Duration::ZERO)
        .build()?;
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|_, n| {
        let body: &'static str = if n == 1 { "first" } else { "second" };
        ok(
            &[
                ("cache-control", "max-age=600, no-cache"),
                ("etag", "\"e\""),
            ],
            body,
        )
    }));
    let uri = "http://example.test/no-cache";
    let first = send(&svc, support::get(uri)).await;
    assert_eq!(first.body, "first");
    // The first fill's write is held: its flight is still open.
    let second = send(&svc, support::get(uri)).await;
    assert_eq!(
        (second.body, origin.calls.get()),
        (Bytes::from("second"), 2)
    );
    release.add_permits(16);
    layer.wait_for_writes().await;
    Ok(())
}

/// A resource varying on `Accept-Language` alone: a request with no stored variant of its own
/// is served the representation the origin labelled in the language it prefers above all
/// others. Ties, other languages and a representation drawn by a malformed header (which an
/// origin reflecting the header could fill with anything) are not.
#[tokio::test]
async fn the_variant_in_the_preferred_language_is_selected_by_content_language() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, _| {
        let asked = req
            .headers()
            .get("accept-language")
            .map_or("", |v| v.to_str().unwrap_or(""));
        // The origin has German and French; it picks the first of those the client names,
        // and echoes what it was asked into the page.
        let german =
            asked.find("de").unwrap_or(usize::MAX) < asked.find("fr").unwrap_or(usize::MAX);
        let (language, body): (&str, &'static str) = match (german, req.uri().path()) {
            (true, "/echo") => ("de", Box::leak(format!("Hallo ({asked})").into_boxed_str())),
            (true, _) => ("de", "Hallo"),
            (false, _) => ("fr", "Bonjour"),
        };
        ok(
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Language"),
                ("content-language", language),
            ],
            body,
        )
    }));
    let ask = |path: &str, value: &str| {
        with_headers(
            "GET",
            &format!("http://example.test{path}"),
            &[("accept-language", value)],
        )
    };
    assert_eq!(
        exchange(&layer, &svc, ask("/page", "en, de")).await.body,
        "Hallo"
    );
    let preferred = exchange(&layer, &svc, ask("/page", "fr;q=0.5, de;q=1.0")).await;
    assert_eq!(
        (preferred.x_cache(), &preferred.body[..]),
        ("HIT", &b"Hallo"[..])
    );
    assert_eq!(origin.calls.get(), 1);
    // No single preference: the origin is asked (and labels its answer French) ...
    let tie = exchange(&layer, &svc, ask("/page", "fr, de")).await;
    assert_eq!((tie.x_cache(), &tie.body[..]), ("MISS", &b"Bonjour"[..]));
    // ... which then serves a client preferring French.
    let french = exchange(&layer, &svc, ask("/page", "fr;q=0.9, de;q=0.1")).await;
    assert_eq!(
        (french.x_cache(), &french.body[..]),
        ("HIT", &b"Bonjour"[..])
    );
    let english = exchange(&layer, &svc, ask("/page", "en")).await;
    assert_eq!(
        english.x_cache(),
        "MISS",
        "no representation labelled English"
    );
    assert_eq!(origin.calls.get(), 3);

    // An attacker's malformed header reflected into the German page is kept for that header
    // only: the next client preferring German gets its own page.
    exchange(&layer, &svc, ask("/echo", "de, <script>")).await;
    let innocent = exchange(&layer, &svc, ask("/echo", "de;q=1, en;q=0.5")).await;
    assert_eq!(
        (innocent.x_cache(), &innocent.body[..]),
        ("MISS", &b"Hallo (de;q=1, en;q=0.5)"[..])
    );
    Ok(())
}
