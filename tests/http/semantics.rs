//! HTTP caching semantics on the test store (issue: RFC 9111): stale-while-revalidate,
//! stale-if-error, Vary, revalidation, conditional requests, request directives, shared-mode
//! freshness, `Age`, `Cache-Status`, and invalidation by unsafe methods.
//!
//! Timing is controlled, not slept on: "served at once while the refresh is pending" is shown
//! by a STALE response arriving while the origin is blocked on a signal from the test.

use crate::backend::Backend;
use crate::support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::*;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};
use tower_redis_cache::{CacheLayer, CacheLayerBuilder, CacheMode, CacheService};

type OriginError = std::io::Error;
type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, OriginError>;

/// What the origin answers, given the request and the call number (1-based).
type Script =
    dyn Fn(&Request<ReqBody>, usize) -> Result<Response<Full<Bytes>>, OriginError> + Send + Sync;

/// A scripted origin that counts calls and records the request headers of each.
#[derive(Clone)]
struct Scripted {
    calls: Calls,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// When set, calls after the first wait for `release` (and announce themselves on `called`).
    gate: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            calls: Calls::default(),
            seen: Arc::default(),
            gate: None,
        }
    }

    fn gated(called: &Arc<Notify>, release: &Arc<Notify>) -> Self {
        Self {
            gate: Some((called.clone(), release.clone())),
            ..Self::new()
        }
    }

    fn service(
        &self,
        script: impl Fn(&Request<ReqBody>, usize) -> Result<Response<Full<Bytes>>, OriginError>
            + Send
            + Sync
            + 'static,
    ) -> Origin {
        let script: Arc<Script> = Arc::new(script);
        let this = self.clone();
        BoxCloneSyncService::new(service_fn(move |req: Request<ReqBody>| {
            let n = this.calls.add();
            this.seen.lock().expect("seen").push(req.headers().clone());
            let answer = script(&req, n);
            let gate = this.gate.clone().filter(|_| n > 1);
            async move {
                if let Some((called, release)) = gate {
                    called.notify_one();
                    release.notified().await;
                }
                answer
            }
        }))
    }

    fn header_seen(&self, call: usize, name: &str) -> Option<String> {
        let seen = self.seen.lock().expect("seen");
        seen.get(call - 1)?
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    }
}

fn response(
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response<Full<Bytes>>, OriginError> {
    let mut builder = Response::builder();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Full::new(body.into())).expect("response"))
}

fn status(code: u16, headers: &[(&str, &str)]) -> Result<Response<Full<Bytes>>, OriginError> {
    let mut builder = Response::builder().status(code);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Full::default()).expect("response"))
}

fn with_headers(uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = get(uri);
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    request
}

async fn layer(
    backend: &Backend,
    test: &str,
    configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder,
) -> CacheLayer {
    configure(builder(backend.store().await, test))
        .build()
        .expect("valid config")
}

fn cache_status(reply: &Reply) -> &str {
    reply
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The `ttl=` parameter of the `Cache-Status` header.
fn ttl(reply: &Reply) -> i64 {
    cache_status(reply)
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {:?}", cache_status(reply)))
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_at_once_while_one_refresh_runs() -> TestResult {
    let backend = Backend::start().await;
    let (called, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let origin = Scripted::gated(&called, &release);
    let layer = layer(&backend, "swr", |b| {
        b.ttl(Duration::ZERO)
            .stale_while_revalidate(Duration::from_secs(60))
    })
    .await;
    let svc = layer.layer(origin.service(|_, n| match n {
        1 => response(&[], "v1"),
        _ => response(&[("cache-control", "max-age=60")], "v2"),
    }));
    let uri = "http://example.test/swr";

    assert_eq!(send(&svc, get(uri)).await.x_cache(), "MISS");
    layer.wait_for_writes().await;
    // The entry is stale at once (ttl 0) and inside its stale-while-revalidate window.
    let stale = send(&svc, get(uri)).await;
    assert_eq!((stale.x_cache(), &stale.body[..]), ("STALE", &b"v1"[..]));
    assert!(
        cache_status(&stale).contains("hit")
            && cache_status(&stale).contains("detail=stale-while-revalidate")
    );
    called.notified().await; // the refresh reached the origin, which now waits for us
    let while_refreshing = send(&svc, get(uri)).await;
    assert_eq!(
        (while_refreshing.x_cache(), &while_refreshing.body[..]),
        ("STALE", &b"v1"[..])
    );
    assert_eq!(origin.calls.get(), 2, "one refresh, not one per stale hit");

    release.notify_one();
    layer.wait_for_writes().await;
    let fresh = send(&svc, get(uri)).await;
    assert_eq!((fresh.x_cache(), &fresh.body[..]), ("HIT", &b"v2"[..]));
    assert_eq!(origin.calls.get(), 2);
    assert_eq!((layer.stats().stale, layer.stats().refreshes), (2, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_across_three_instances_costs_one_background_call() -> TestResult {
    let backend = Backend::start().await;
    let (called, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let origin = Scripted::gated(&called, &release);
    let service = origin.service(|_, n| match n {
        1 => response(&[], "v1"),
        _ => response(&[("cache-control", "max-age=60")], "v2"),
    });
    let prefix = unique_prefix("swr-fleet");
    let mut layers = Vec::new();
    for _ in 0..3 {
        let layer = layer(&backend, "swr-fleet", |b| {
            b.key_prefix(&prefix)
                .ttl(Duration::ZERO)
                .stale_while_revalidate(Duration::from_secs(60))
        })
        .await;
        layers.push(layer);
    }
    let services: Vec<CacheService<Origin>> =
        layers.iter().map(|l| l.layer(service.clone())).collect();
    let uri = "http://example.test/hot-and-stale";
    assert_eq!(send(&services[0], get(uri)).await.x_cache(), "MISS");
    layers[0].wait_for_writes().await;

    let mut set = JoinSet::new();
    for i in 0..30 {
        let svc = services[i % 3].clone();
        set.spawn(async move { send(&svc, get(uri)).await });
    }
    let mut replies = Vec::new();
    while let Some(reply) = set.join_next().await {
        replies.push(reply?);
    }
    // All 30 were answered while the one refresh is still blocked at the origin.
    assert!(replies
        .iter()
        .all(|r| r.x_cache() == "STALE" && r.body == "v1"));
    called.notified().await;
    let refresher = layers
        .iter()
        .position(|l| l.stats().refreshes == 1)
        .expect("one instance refreshes");
    for (i, layer) in layers.iter().enumerate() {
        if i != refresher {
            layer.wait_for_writes().await; // their refresh attempts found the lock taken
            assert_eq!(layer.stats().refreshes, 0);
        }
    }
    release.notify_one();
    layers[refresher].wait_for_writes().await;

    assert_eq!(
        origin.calls.get(),
        2,
        "one fill, one background refresh for the whole fleet"
    );
    for svc in &services {
        let reply = send(svc, get(uri)).await;
        assert_eq!((reply.x_cache(), &reply.body[..]), ("HIT", &b"v2"[..]));
    }
    Ok(())
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_when_the_origin_fails() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let script = |req: &Request<ReqBody>, n: usize| match (req.uri().path(), n) {
        (_, 1) | ("/other", 4) => response(&[], "good"),
        ("/a", 2) => status(503, &[]),
        ("/a", 3) => Err(std::io::Error::other("origin unreachable")),
        _ => status(500, &[]),
    };
    let layer = layer(&backend, "sie", |b| {
        b.ttl(Duration::ZERO)
            .stale_if_error(Duration::from_secs(60))
    })
    .await;
    let svc = layer.layer(origin.service(script));

    assert_eq!(
        send(&svc, get("http://example.test/a")).await.x_cache(),
        "MISS"
    );
    layer.wait_for_writes().await;
    let on_503 = send(&svc, get("http://example.test/a")).await;
    layer.wait_for_writes().await; // the failed fill has ended; the next request starts its own
    assert_eq!(
        (on_503.status, on_503.x_cache(), &on_503.body[..]),
        (StatusCode::OK, "STALE", &b"good"[..])
    );
    assert!(
        cache_status(&on_503).contains("fwd-status=503")
            && cache_status(&on_503).contains("detail=stale-if-error")
    );
    let on_error = send(&svc, get("http://example.test/a")).await;
    assert_eq!(
        (on_error.x_cache(), &on_error.body[..]),
        ("STALE", &b"good"[..])
    );
    assert_eq!(origin.calls.get(), 3);

    // Without the window, the failure reaches the client.
    let strict = layer_without_window(&backend).await;
    let strict_svc = strict.layer(Scripted::new().service(|_, n| {
        if n == 1 {
            response(&[("cache-control", "max-age=0"), ("etag", "\"e\"")], "good")
        } else {
            status(503, &[])
        }
    }));
    send(&strict_svc, get("http://example.test/b")).await;
    strict.wait_for_writes().await;
    assert_eq!(
        send(&strict_svc, get("http://example.test/b")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    Ok(())
}

async fn layer_without_window(backend: &Backend) -> CacheLayer {
    layer(backend, "sie-strict", |b| b).await
}

#[tokio::test]
async fn vary_keeps_one_entry_per_variant() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let layer = layer(&backend, "vary", |b| b).await;
    let svc = layer.layer(origin.service(|req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap_or("?"));
        if req.uri().path() == "/star" {
            return response(&[("vary", "*")], "star");
        }
        response(&[("vary", "Accept-Language")], format!("hello in {lang}"))
    }));
    let uri = "http://example.test/greeting";
    let lang = |l: &str| with_headers(uri, &[("accept-language", l)]);

    let en = send(&svc, lang("en")).await;
    layer.wait_for_writes().await;
    let fr = send(&svc, lang("fr")).await;
    layer.wait_for_writes().await;
    assert_eq!((en.x_cache(), fr.x_cache()), ("MISS", "MISS"));
    assert!(
        cache_status(&fr).contains("fwd=vary-miss"),
        "{}",
        cache_status(&fr)
    );
    let en_again = send(&svc, lang("en")).await;
    let fr_again = send(&svc, lang("fr")).await;
    assert_eq!(
        (en_again.x_cache(), &en_again.body[..]),
        ("HIT", &b"hello in en"[..])
    );
    assert_eq!(
        (fr_again.x_cache(), &fr_again.body[..]),
        ("HIT", &b"hello in fr"[..])
    );
    assert_eq!(origin.calls.get(), 2);

    // Whitespace around list elements is not significant (RFC 9111 §4.1), nor is the case
    // of language tags (RFC 4647 §2.1); the languages and their weights are.
    send(&svc, lang("en, fr")).await;
    layer.wait_for_writes().await;
    assert_eq!(send(&svc, lang("en,fr")).await.x_cache(), "HIT");
    assert_eq!(send(&svc, lang("EN,FR")).await.x_cache(), "HIT");
    assert_eq!(send(&svc, lang("en,fr;q=0.5")).await.x_cache(), "MISS");

    // `Vary: *` is never stored.
    let star = "http://example.test/star";
    let before = origin.calls.get();
    send(&svc, get(star)).await;
    layer.wait_for_writes().await;
    assert_eq!(send(&svc, get(star)).await.x_cache(), "MISS");
    assert_eq!(origin.calls.get(), before + 2);
    Ok(())
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_validators() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let layer = layer(&backend, "revalidate", |b| b).await;
    let svc = layer.layer(origin.service(|req, n| {
        match (req.uri().path(), n) {
            ("/etag", 1) => response(
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "no-cache"),
                    ("x-version", "1"),
                ],
                "payload",
            ),
            ("/etag", _)
                if req
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|v| v == "\"v1\"") =>
            {
                status(304, &[("cache-control", "max-age=60"), ("x-version", "2")])
            }
            ("/date", _) if req.headers().contains_key("if-modified-since") => {
                status(304, &[("cache-control", "max-age=60")])
            }
            ("/date", _) => response(
                &[
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                    ("cache-control", "max-age=0"),
                ],
                "dated",
            ),
            _ => status(500, &[]),
        }
    }));

    let first = send(&svc, get("http://example.test/etag")).await;
    assert_eq!(first.x_cache(), "MISS");
    layer.wait_for_writes().await;
    let revalidated = send(&svc, get("http://example.test/etag")).await;
    assert_eq!(
        origin.header_seen(2, "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(
        revalidated.body, "payload",
        "the client gets the full stored response"
    );
    assert_eq!(
        revalidated.headers["x-version"], "2",
        "headers updated from the 304"
    );
    assert!(cache_status(&revalidated).contains("fwd=stale; fwd-status=304; stored"));
    layer.wait_for_writes().await;
    let hit = send(&svc, get("http://example.test/etag")).await;
    assert_eq!((hit.x_cache(), &hit.body[..]), ("HIT", &b"payload"[..]));
    assert_eq!(origin.calls.get(), 2);

    send(&svc, get("http://example.test/date")).await;
    layer.wait_for_writes().await;
    let by_date = send(&svc, get("http://example.test/date")).await;
    assert_eq!(
        origin.header_seen(4, "if-modified-since").as_deref(),
        Some("Mon, 01 Jan 2024 00:00:00 GMT")
    );
    assert_eq!(
        (by_date.x_cache(), &by_date.body[..]),
        ("REVALIDATED", &b"dated"[..])
    );
    assert_eq!(layer.stats().revalidated, 2);
    Ok(())
}

#[tokio::test]
async fn clients_conditional_requests_are_answered_from_the_cache() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let layer = layer(&backend, "conditional", |b| b).await;
    let svc = layer.layer(origin.service(|_, _| {
        response(
            &[
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            "representation",
        )
    }));
    let uri = "http://example.test/doc";

    // A cold conditional request: the fill asks the origin for the full response (it must
    // store it), then answers the client's condition from it.
    let cold = send(&svc, with_headers(uri, &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(origin.header_seen(1, "if-none-match"), None);
    assert_eq!(
        (cold.status, cold.body.len()),
        (StatusCode::NOT_MODIFIED, 0)
    );
    layer.wait_for_writes().await;

    let matching = send(
        &svc,
        with_headers(uri, &[("if-none-match", "W/\"v0\", \"v1\"")]),
    )
    .await;
    assert_eq!(
        (matching.status, matching.x_cache(), matching.body.len()),
        (StatusCode::NOT_MODIFIED, "HIT", 0)
    );
    assert_eq!(matching.headers["etag"], "\"v1\"");
    let other = send(&svc, with_headers(uri, &[("if-none-match", "\"v2\"")])).await;
    assert_eq!(
        (other.status, &other.body[..]),
        (StatusCode::OK, &b"representation"[..])
    );
    let since = send(
        &svc,
        with_headers(
            uri,
            &[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let older = send(
        &svc,
        with_headers(
            uri,
            &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(older.status, StatusCode::OK);
    assert_eq!(origin.calls.get(), 1);
    Ok(())
}

#[tokio::test]
async fn shared_mode_honours_request_directives_and_application_mode_does_not() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let script = |req: &Request<ReqBody>, _: usize| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return status(304, &[("cache-control", "max-age=60")]);
        }
        let cc = if req.uri().path() == "/stale" {
            "max-age=0"
        } else {
            "max-age=60"
        };
        response(
            &[("etag", "\"v1\""), ("cache-control", cc)],
            format!("body of {}", req.uri().path()),
        )
    };
    let layer = layer(&backend, "directives", |b| b.mode(CacheMode::Shared)).await;
    let svc = layer.layer(origin.service(script));
    let fill = |path: &str| {
        let svc = svc.clone();
        let layer = layer.clone();
        let uri = format!("http://example.test{path}");
        async move {
            send(&svc, get(&uri)).await;
            layer.wait_for_writes().await;
        }
    };
    let ask = |path: &str, cc: &str| {
        send(
            &svc,
            with_headers(
                &format!("http://example.test{path}"),
                &[("cache-control", cc)],
            ),
        )
    };

    fill("/doc").await;
    for directive in ["no-cache", "max-age=0", "min-fresh=3600"] {
        let before = origin.calls.get();
        let reply = ask("/doc", directive).await;
        assert_eq!(origin.calls.get(), before + 1, "{directive} revalidates");
        assert_eq!(
            origin.header_seen(before + 1, "if-none-match").as_deref(),
            Some("\"v1\""),
            "{directive}"
        );
        assert_eq!(
            (reply.x_cache(), &reply.body[..]),
            ("REVALIDATED", &b"body of /doc"[..]),
            "{directive}"
        );
        assert!(
            cache_status(&reply).contains("fwd=request"),
            "{directive}: {}",
            cache_status(&reply)
        );
        layer.wait_for_writes().await;
    }
    // `Pragma` is deprecated (RFC 9111 §5.4): only Cache-Control asks for revalidation.
    let pragma = send(
        &svc,
        with_headers("http://example.test/doc", &[("pragma", "no-cache")]),
    )
    .await;
    assert_eq!(pragma.x_cache(), "HIT");

    let before = origin.calls.get();
    let cached_only = ask("/doc", "only-if-cached").await;
    assert_eq!(cached_only.x_cache(), "HIT");
    let missing = ask("/never-fetched", "only-if-cached").await;
    assert_eq!(missing.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        origin.calls.get(),
        before,
        "only-if-cached never reaches the origin"
    );

    let unstored = ask("/private-request", "no-store").await;
    assert_eq!(unstored.x_cache(), "MISS");
    layer.wait_for_writes().await;
    assert_eq!(
        send(&svc, get("http://example.test/private-request"))
            .await
            .x_cache(),
        "MISS"
    );

    fill("/stale").await;
    let before = origin.calls.get();
    let accepted = ask("/stale", "max-stale").await;
    assert_eq!(
        (accepted.x_cache(), &accepted.body[..]),
        ("STALE", &b"body of /stale"[..])
    );
    assert!(cache_status(&accepted).contains("detail=max-stale"));
    assert_eq!(origin.calls.get(), before);

    // Application mode: the service owner decides; clients' directives are ignored.
    let app = layer_in_app_mode(&backend).await;
    let app_svc = app.layer(Scripted::new().service(script));
    send(&app_svc, get("http://example.test/doc")).await;
    app.wait_for_writes().await;
    let ignored = send(
        &app_svc,
        with_headers("http://example.test/doc", &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(ignored.x_cache(), "HIT");
    Ok(())
}

async fn layer_in_app_mode(backend: &Backend) -> CacheLayer {
    layer(backend, "directives-app", |b| {
        b.mode(CacheMode::Application)
    })
    .await
}

#[tokio::test]
async fn shared_mode_freshness_comes_from_the_response() -> TestResult {
    let backend = Backend::start().await;
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
    let ten_days_ago = httpdate::fmt_http_date(now - Duration::from_secs(10 * 86_400));
    let origin = Scripted::new();
    let script = move |req: &Request<ReqBody>, _: usize| match req.uri().path() {
        "/s-maxage" => response(&[("cache-control", "max-age=5, s-maxage=30")], "s"),
        "/expires" => response(&[("date", &date), ("expires", &expires)], "e"),
        "/heuristic" => response(&[("date", &date), ("last-modified", &ten_days_ago)], "h"),
        "/aged" => response(&[("cache-control", "max-age=100"), ("age", "30")], "a"),
        "/nothing" => response(&[], "n"),
        "/private" => response(&[("cache-control", "private, max-age=60")], "p"),
        "/auth-shared" => response(&[("cache-control", "s-maxage=60")], "for everyone"),
        "/auth-plain" => response(&[("cache-control", "max-age=60")], "for one user"),
        "/must" => response(
            &[
                ("cache-control", "max-age=0, must-revalidate"),
                ("etag", "\"m\""),
            ],
            "m",
        ),
        _ => status(404, &[]),
    };
    let shared = layer(&backend, "freshness", |b| {
        b.mode(CacheMode::Shared)
            .ttl(Duration::from_secs(60))
            .stale_while_revalidate(Duration::from_secs(600))
    })
    .await;
    let svc = shared.layer(origin.service(script.clone()));
    let twice = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let (svc, shared) = (svc.clone(), shared.clone());
        async move {
            let uri = format!("http://example.test{path}");
            send(&svc, with_headers(&uri, headers)).await;
            shared.wait_for_writes().await;
            send(&svc, get(&uri)).await
        }
    };

    let s = twice("/s-maxage", &[]).await;
    assert_eq!(s.x_cache(), "HIT");
    assert!(
        (28..=30).contains(&ttl(&s)),
        "s-maxage wins over max-age: {}",
        cache_status(&s)
    );
    let e = twice("/expires", &[]).await;
    assert!(
        (97..=100).contains(&ttl(&e)),
        "Expires - Date: {}",
        cache_status(&e)
    );
    let h = twice("/heuristic", &[]).await;
    assert!(
        (86_390..=86_400).contains(&ttl(&h)),
        "10% of the time since Last-Modified: {}",
        cache_status(&h)
    );
    let a = twice("/aged", &[]).await;
    assert!(
        (68..=70).contains(&ttl(&a)),
        "upstream Age counts: {}",
        cache_status(&a)
    );
    let age: u64 = a.headers["age"].to_str()?.parse()?;
    assert!(age >= 30, "Age includes the upstream age: {age}");
    let n = twice("/nothing", &[]).await;
    assert!(
        (58..=60).contains(&ttl(&n)),
        "the layer TTL applies only without information: {}",
        cache_status(&n)
    );
    assert_eq!(twice("/private", &[]).await.x_cache(), "MISS");
    let everyone = twice("/auth-shared", &[("authorization", "alice")]).await;
    assert_eq!(
        (everyone.x_cache(), &everyone.body[..]),
        ("HIT", &b"for everyone"[..])
    );
    let one = twice("/auth-plain", &[("authorization", "alice")]).await;
    assert_eq!(
        one.x_cache(),
        "MISS",
        "a response to an authorized request needs s-maxage or public"
    );
    let must = twice("/must", &[]).await;
    assert_ne!(
        must.x_cache(),
        "STALE",
        "must-revalidate forbids serving stale, whatever the layer allows"
    );

    // With a default TTL of zero (the RFC-strict setting) nothing without freshness is stored.
    let strict = layer(&backend, "freshness-strict", |b| {
        b.mode(CacheMode::Shared).ttl(Duration::ZERO)
    })
    .await;
    let strict_svc = strict.layer(origin.service(script));
    send(&strict_svc, get("http://example.test/nothing")).await;
    strict.wait_for_writes().await;
    assert_eq!(
        send(&strict_svc, get("http://example.test/nothing"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(strict.stats().stored, 0);
    Ok(())
}

#[tokio::test]
async fn successful_unsafe_requests_invalidate_their_targets_in_every_instance() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let script = |req: &Request<ReqBody>, n: usize| match *req.method() {
        http::Method::POST if req.uri().path() == "/fail" => status(500, &[]),
        http::Method::POST => status(
            201,
            &[
                ("location", "/created"),
                ("content-location", "http://elsewhere.test/other"),
            ],
        ),
        _ => response(&[], format!("{} #{n}", req.uri().path())),
    };
    let prefix = unique_prefix("invalidate");
    let one = layer(&backend, "invalidate", |b| b.key_prefix(&prefix)).await;
    let two = layer(&backend, "invalidate", |b| b.key_prefix(&prefix)).await;
    let svc_one = one.layer(origin.service(script));
    let svc_two = two.layer(origin.service(script));
    let paths = ["/list", "/created", "/fail"];
    for path in paths {
        send(&svc_one, get(&format!("http://example.test{path}"))).await;
    }
    let other_origin = with_headers("/other", &[("host", "elsewhere.test")]);
    let other = send(&svc_one, other_origin).await;
    one.wait_for_writes().await;

    let posted = send(&svc_two, request("POST", "http://example.test/list")).await;
    assert_eq!(posted.status, StatusCode::CREATED);
    let failed = send(&svc_two, request("POST", "http://example.test/fail")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);

    let list = send(&svc_one, get("http://example.test/list")).await;
    let created = send(&svc_one, get("http://example.test/created")).await;
    let kept = send(&svc_one, get("http://example.test/fail")).await;
    let elsewhere = send(
        &svc_one,
        with_headers("/other", &[("host", "elsewhere.test")]),
    )
    .await;
    assert_eq!(
        list.x_cache(),
        "MISS",
        "the target of a successful POST is invalidated"
    );
    assert_eq!(created.x_cache(), "MISS", "so is its same-origin Location");
    assert_eq!(kept.x_cache(), "HIT", "a failed POST invalidates nothing");
    assert_eq!(
        (elsewhere.x_cache(), &elsewhere.body[..]),
        ("HIT", &other.body[..]),
        "another origin is not touched"
    );
    assert_eq!(two.stats().invalidations, 2);
    Ok(())
}

#[tokio::test]
async fn byte_ranges_are_served_from_the_stored_response() -> TestResult {
    let backend = Backend::start().await;
    let origin = Scripted::new();
    let layer = layer(&backend, "ranges", |b| b).await;
    let body = binary_body(1000, 5);
    let svc = layer.layer(origin.service({
        let body = body.clone();
        move |req, _| {
            assert!(
                !req.headers().contains_key("range"),
                "the cache asks for the whole response"
            );
            response(&[("etag", "\"r1\"")], body.clone())
        }
    }));
    let uri = "http://example.test/file";

    // A cold range request fills the whole entry and gets its range from it.
    let cold = send(&svc, with_headers(uri, &[("range", "bytes=10-19")])).await;
    assert_eq!(cold.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cold.body, body.slice(10..20));
    assert_eq!(cold.headers["content-range"], "bytes 10-19/1000");
    layer.wait_for_writes().await;

    let suffix = send(&svc, with_headers(uri, &[("range", "bytes=-100")])).await;
    assert_eq!(
        (suffix.status, suffix.x_cache()),
        (StatusCode::PARTIAL_CONTENT, "HIT")
    );
    assert_eq!(suffix.body, body.slice(900..));
    assert_eq!(suffix.headers["content-length"], "100");
    let stale_validator = send(
        &svc,
        with_headers(uri, &[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
    )
    .await;
    assert_eq!(
        (stale_validator.status, stale_validator.body.len()),
        (StatusCode::OK, 1000)
    );
    let several = send(&svc, with_headers(uri, &[("range", "bytes=0-1,5-6")])).await;
    assert_eq!((several.status, several.body.len()), (StatusCode::OK, 1000));
    assert_eq!(origin.calls.get(), 1);
    Ok(())
}
