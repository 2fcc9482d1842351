//! Partial content (RFC 9111 §3.3-3.4, RFC 9110 §14): stored `206` parts answer the ranges
//! they hold and nothing else, are extended with `If-Range` range requests and combined
//! only under one strong validator, and a client's `Range` or `If-Range` never changes what
//! another client gets. Every test counts the origin's calls, looks at the `Range` it was
//! asked with, and compares bytes; the core ones run on the in-process store and on a real
//! `redis-server`.
//!
//! A part is first stored the way the HTTP caching test suite stores one: the origin answers
//! `206` to the cache's whole fetch (an upstream that answers with parts).

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer};
use tower_redis_cache::{CacheLayer, CacheLayerBuilder, CacheMode, CacheService, MemoryStore};

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;
type Origin = BoxCloneSyncService<Request<ReqBody>, Response<Full<Bytes>>, std::io::Error>;

/// The representation every origin here serves, and its strong validator.
const REP: &[u8] = b"0123456789";
const V1: &str = "\"v1\"";

/// A scripted origin: counts its calls and keeps the request headers of each.
#[derive(Clone, Default)]
struct Scripted {
    calls: Calls,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Scripted {
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

    /// The `Range` and `If-Range` the origin was asked with on call `n`.
    fn asked(&self, n: usize) -> (Option<String>, Option<String>) {
        let seen = self.seen.lock().expect("seen");
        let value = |name: &str| {
            let value = seen.get(n - 1)?.get(name)?;
            Some(value.to_str().unwrap_or("").to_owned())
        };
        (value("range"), value("if-range"))
    }
}

fn respond(status: u16, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    Ok(builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("response"))
}

/// A `206` holding `range` of [`REP`] under `etag`, fresh for ten minutes.
fn part(range: Range<usize>, etag: &str) -> Answer {
    let content_range = format!("bytes {}-{}/{}", range.start, range.end - 1, REP.len());
    respond(
        206,
        &[
            ("cache-control", "max-age=600".into()),
            ("etag", etag.into()),
            ("content-range", content_range),
        ],
        &REP[range],
    )
}

/// The whole of [`REP`] under `etag`.
fn whole(etag: &str) -> Answer {
    respond(
        200,
        &[
            ("cache-control", "max-age=600".into()),
            ("etag", etag.into()),
        ],
        REP,
    )
}

/// How an origin that implements ranges answers: the range asked for (`bytes=a-b` or
/// `bytes=a-`) when `If-Range` is absent or names `V1`, else the whole representation.
fn compliant(req: &Request<ReqBody>) -> Answer {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let asked = header("range").and_then(|value| {
        let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
        let first: usize = first.parse().ok()?;
        let last: usize = if last.is_empty() {
            REP.len() - 1
        } else {
            last.parse().ok()?
        };
        Some(first..last.min(REP.len() - 1) + 1)
    });
    match asked {
        Some(range) if header("if-range").is_none_or(|tag| tag == V1) => part(range, V1),
        _ => whole(V1),
    }
}

fn ranged(uri: &str, range: &str) -> Request<ReqBody> {
    with_headers(uri, &[("range", range)])
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

/// Sends a request and waits for the writes it started, so the next request sees them.
async fn exchange(layer: &CacheLayer, svc: &CacheService<Origin>, req: Request<ReqBody>) -> Reply {
    let reply = send(svc, req).await;
    layer.wait_for_writes().await;
    reply
}

/// Asserts a reply is the `206` for `range` of [`REP`], with its headers, from `x_cache`.
fn assert_range(reply: &Reply, range: Range<usize>, x_cache: &str) {
    let expected = format!("bytes {}-{}/{}", range.start, range.end - 1, REP.len());
    assert_eq!(
        (
            reply.status,
            reply.x_cache(),
            &reply.body[..],
            reply
                .headers
                .get("content-range")
                .map(|v| v.to_str().unwrap()),
            reply
                .headers
                .get("content-length")
                .map(|v| v.to_str().unwrap()),
        ),
        (
            StatusCode::PARTIAL_CONTENT,
            x_cache,
            &REP[range.clone()],
            Some(expected.as_str()),
            Some(range.len().to_string().as_str()),
        )
    );
}

/// Asserts a reply is the whole of [`REP`], a `200` without `Content-Range`.
fn assert_whole(reply: &Reply, x_cache: &str) {
    assert_eq!(
        (
            reply.status,
            reply.x_cache(),
            &reply.body[..],
            reply.headers.contains_key("content-range")
        ),
        (StatusCode::OK, x_cache, REP, false)
    );
}

fn shared_mode(builder: CacheLayerBuilder) -> CacheLayerBuilder {
    builder.mode(CacheMode::Shared).ttl(Duration::ZERO)
}

fn memory_layer(configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder) -> CacheLayer {
    configure(shared_mode(builder(MemoryStore::new(16 << 20), "partial")))
        .build()
        .expect("valid config")
}

async fn redis_layer(
    server: &RedisServer,
    configure: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder,
) -> CacheLayer {
    configure(shared_mode(builder(redis_store(server).await, "partial")))
        .build()
        .expect("valid config")
}

/// Runs `check` on a layer over the in-process store and on one over a real Redis.
macro_rules! on_each_store {
    ($check:ident) => {
        mod $check {
            #[tokio::test]
            async fn memory() -> super::TestResult {
                super::$check(super::memory_layer(|b| b)).await
            }

            #[tokio::test]
            async fn redis() -> super::TestResult {
                let server = super::RedisServer::start().await;
                super::$check(super::redis_layer(&server, |b| b).await).await
            }
        }
    };
}

on_each_store!(a_stored_part_answers_only_ranges_inside_it);
on_each_store!(a_part_is_extended_by_a_range_request_and_completed);
on_each_store!(parts_under_other_validators_are_never_combined);

/// A stored part answers a range inside it from its bytes, and nothing else: not a range
/// reaching past it, not a request without `Range`, not a `HEAD`.
async fn a_stored_part_answers_only_ranges_inside_it(layer: CacheLayer) -> TestResult {
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, n| match n {
        1 => part(0..5, V1),
        _ => compliant(req),
    }));
    let uri = "http://example.test/part";
    let first = exchange(&layer, &svc, ranged(uri, "bytes=0-4")).await;
    assert_range(&first, 0..5, "MISS");
    assert_eq!(origin.asked(1), (None, None), "a cold miss fetches whole");
    let inside = exchange(&layer, &svc, ranged(uri, "bytes=1-3")).await;
    assert_range(&inside, 1..4, "HIT");
    let again = exchange(&layer, &svc, ranged(uri, "bytes=0-4")).await;
    assert_range(&again, 0..5, "HIT");
    assert_eq!(origin.calls.get(), 1);

    // A HEAD, and a GET without Range, are never answered from a part.
    let head = exchange(&layer, &svc, request("HEAD", uri)).await;
    assert_eq!((head.status, head.x_cache()), (StatusCode::OK, "MISS"));
    assert_eq!(origin.asked(2), (None, None));
    let innocent = exchange(&layer, &svc, get(uri)).await;
    assert_whole(&innocent, "MISS");
    assert_eq!(origin.asked(3), (None, None));
    // The whole response replaced the part.
    let later = exchange(&layer, &svc, ranged(uri, "bytes=7-8")).await;
    assert_range(&later, 7..9, "HIT");
    assert_eq!(origin.calls.get(), 3);
    Ok(())
}

/// A range the part does not hold is asked of the origin with `If-Range`; the answer joins
/// the part, and once every byte is held the entry is a complete `200`.
async fn a_part_is_extended_by_a_range_request_and_completed(layer: CacheLayer) -> TestResult {
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, n| match n {
        1 => part(0..3, V1),
        _ => compliant(req),
    }));
    let uri = "http://example.test/grow";
    exchange(&layer, &svc, ranged(uri, "bytes=0-2")).await;

    // Across a gap: the gap is asked for too, so one continuous part holds both.
    let gap = exchange(&layer, &svc, ranged(uri, "bytes=5-6")).await;
    assert_range(&gap, 5..7, "MISS");
    assert_eq!(origin.asked(2), (Some("bytes=3-6".into()), Some(V1.into())));
    let joined = exchange(&layer, &svc, ranged(uri, "bytes=1-6")).await;
    assert_range(&joined, 1..7, "HIT");
    assert_eq!(origin.calls.get(), 2);

    // To the end: the union is the whole representation.
    let tail = exchange(&layer, &svc, ranged(uri, "bytes=8-")).await;
    assert_range(&tail, 8..10, "MISS");
    assert_eq!(origin.asked(3), (Some("bytes=7-9".into()), Some(V1.into())));
    let complete = exchange(&layer, &svc, get(uri)).await;
    assert_whole(&complete, "HIT");
    assert_eq!(complete.headers["content-length"], "10");
    assert_eq!(complete.headers["etag"], V1);
    let suffix = exchange(&layer, &svc, ranged(uri, "bytes=-4")).await;
    assert_range(&suffix, 6..10, "HIT");
    assert_eq!(origin.calls.get(), 3);
    Ok(())
}

/// Parts are joined only under one strong validator: an answer under another `ETag`, a weak
/// one, or none serves its own client and replaces the stored part, never joins it.
async fn parts_under_other_validators_are_never_combined(layer: CacheLayer) -> TestResult {
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, n| {
        let path = req.uri().path().to_owned();
        match (path.as_str(), n % 3) {
            // Each path: a part, then the rest under another validator (the origin ignoring
            // If-Range), then the whole.
            (_, 1) => part(0..5, V1),
            ("/other", 2) => part(5..10, "\"v2\""),
            ("/weak", 2) => part(5..10, "W/\"v1\""),
            ("/none", 2) => respond(
                206,
                &[
                    ("cache-control", "max-age=600".into()),
                    ("content-range", "bytes 5-9/10".into()),
                ],
                &REP[5..],
            ),
            _ => whole("\"v3\""),
        }
    }));
    for path in ["/other", "/weak", "/none"] {
        let uri = format!("http://example.test{path}");
        exchange(&layer, &svc, ranged(&uri, "bytes=0-4")).await;
        let rest = exchange(&layer, &svc, ranged(&uri, "bytes=5-9")).await;
        assert_range(&rest, 5..10, "MISS");
        let innocent = exchange(&layer, &svc, get(&uri)).await;
        assert_whole(&innocent, "MISS");
        assert_eq!(innocent.headers["etag"], "\"v3\"", "{path}");
    }
    assert_eq!(origin.calls.get(), 9);
    Ok(())
}

/// A `206` whose numbers disagree with its bytes (the test suite's `bytes 4-9/10` with five
/// bytes), or with its `Content-Length`, or stating two ranges, or too large to complete, is
/// passed to its client as it came and never stored: the next client is asked of the origin.
#[tokio::test]
async fn parts_whose_numbers_disagree_are_never_stored() -> TestResult {
    let layer = memory_layer(|b| b.max_body_bytes(64));
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, _| {
        let base = [
            ("cache-control", "max-age=600".to_owned()),
            ("etag", V1.into()),
        ];
        let with = |extra: &[(&'static str, &str)]| {
            let mut headers = base.to_vec();
            headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
            headers
        };
        match req.uri().path() {
            "/short" => respond(206, &with(&[("content-range", "bytes 4-9/10")]), b"01234"),
            "/length" => respond(
                206,
                &with(&[("content-range", "bytes 0-4/10"), ("content-length", "4")]),
                b"01234",
            ),
            "/two" => {
                let mut headers = with(&[("content-range", "bytes 0-4/10")]);
                headers.push(("content-range", "bytes 5-9/10".into()));
                respond(206, &headers, b"01234")
            }
            "/unknown" => respond(206, &with(&[("content-range", "bytes 0-4/*")]), b"01234"),
            _ => respond(206, &with(&[("content-range", "bytes 0-4/1000")]), b"01234"),
        }
    }));
    for path in ["/short", "/length", "/two", "/unknown", "/huge"] {
        let uri = format!("http://example.test{path}");
        let before = origin.calls.get();
        let attacker = exchange(&layer, &svc, ranged(&uri, "bytes=-5")).await;
        assert_eq!(attacker.x_cache(), "MISS", "{path}");
        let innocent = exchange(&layer, &svc, ranged(&uri, "bytes=-5")).await;
        assert_eq!(
            (innocent.x_cache(), origin.calls.get() - before),
            ("MISS", 2),
            "{path}: not stored"
        );
    }
    assert_eq!(layer.stats().stored, 0);
    Ok(())
}

/// Where a part's bytes overlap the stored ones they must be the same bytes: an answer that
/// differs there is not joined, whatever validator it claims.
#[tokio::test]
async fn a_part_whose_overlap_differs_is_not_joined() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, n| match n {
        1 => part(0..5, V1),
        2 => {
            assert_eq!(req.headers()["range"], "bytes=3-7");
            let content_range = "bytes 3-7/10".to_owned();
            respond(
                206,
                &[
                    ("cache-control", "max-age=600".into()),
                    ("etag", V1.into()),
                    ("content-range", content_range),
                ],
                b"XX567",
            )
        }
        _ => whole(V1),
    }));
    let uri = "http://example.test/overlap";
    exchange(&layer, &svc, ranged(uri, "bytes=0-4")).await;
    let attacker = exchange(&layer, &svc, ranged(uri, "bytes=3-7")).await;
    assert_eq!(&attacker.body[..], b"XX567", "the origin's own answer");
    // Nothing joined: a range across both parts is not served from a mix of them.
    let innocent = exchange(&layer, &svc, ranged(uri, "bytes=0-7")).await;
    assert_range(&innocent, 0..8, "MISS");
    assert_eq!(origin.calls.get(), 3);
    Ok(())
}

/// Attacker first, innocent second: a crafted `Range` or `If-Range` never makes another
/// client get other bytes, a shorter body, or a `206` it did not ask for, whether nothing is
/// stored yet or a part is.
#[tokio::test]
async fn an_attackers_range_never_changes_what_an_innocent_gets() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let parted = Mutex::new(std::collections::HashSet::new());
    let svc = layer.layer(origin.service(move |req, _| {
        // An upstream answering the cache's first whole fetch of a `/part` URL with a part.
        let first = parted.lock().expect("parted").insert(req.uri().to_string());
        if req.uri().path() == "/part" && first {
            return part(0..5, V1);
        }
        compliant(req)
    }));
    let attacks: [&[(&str, &str)]; 7] = [
        &[("range", "bytes=0-4"), ("if-range", V1)],
        &[("range", "bytes=3-8"), ("if-range", V1)],
        &[("range", "bytes=0-4"), ("if-range", "\"evil\"")],
        &[("range", "bytes=0-4"), ("if-range", "W/\"v1\"")],
        &[("range", "bytes=0-4,6-7")],
        &[("range", "bytes=9999999999999999999999-")],
        &[("range", "bytes=0-4"), ("range", "bytes=5-9")],
    ];
    for (i, attack) in attacks.iter().enumerate() {
        for path in ["cold", "part"] {
            let uri = format!("http://example.test/{path}?{i}");
            if path == "part" {
                let primed = exchange(&layer, &svc, ranged(&uri, "bytes=0-4")).await;
                assert_range(&primed, 0..5, "MISS");
            }
            let _ = exchange(&layer, &svc, with_headers(&uri, attack)).await;
            let innocent = exchange(&layer, &svc, get(&uri)).await;
            assert_eq!(
                (innocent.status, &innocent.body[..]),
                (StatusCode::OK, REP),
                "{uri} after {attack:?}"
            );
            let ranged_innocent = exchange(&layer, &svc, ranged(&uri, "bytes=2-3")).await;
            assert_eq!(
                (ranged_innocent.status, &ranged_innocent.body[..]),
                (StatusCode::PARTIAL_CONTENT, &REP[2..4]),
                "{uri} after {attack:?}"
            );
            let head = exchange(&layer, &svc, request("HEAD", &uri)).await;
            assert_eq!(head.status, StatusCode::OK, "{uri} after {attack:?}");
        }
    }
    Ok(())
}

/// A key whose last answer could not be stored (hit-for-miss) sends the client's own range to
/// the origin instead of fetching everything again, and the origin's `206` is kept as a part;
/// a request the part cannot answer then fetches the whole representation.
#[tokio::test]
async fn a_range_for_a_key_not_stored_reaches_the_origin_as_asked() -> TestResult {
    let layer = memory_layer(|b| b.hit_for_miss_ttl(Duration::from_secs(60)));
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|req, n| match n {
        1 => respond(200, &[("cache-control", "private".into())], REP),
        _ => compliant(req),
    }));
    let uri = "http://example.test/hfm";
    exchange(&layer, &svc, get(uri)).await;
    let asked = exchange(&layer, &svc, ranged(uri, "bytes=2-3")).await;
    assert_range(&asked, 2..4, "MISS");
    assert_eq!(origin.asked(2), (Some("bytes=2-3".into()), None));
    let inside = exchange(&layer, &svc, ranged(uri, "bytes=2-2")).await;
    assert_range(&inside, 2..3, "HIT");
    assert_eq!(origin.calls.get(), 2);
    // Unsatisfiable: not a range the part holds; the whole representation is fetched.
    let beyond = exchange(&layer, &svc, ranged(uri, "bytes=20-")).await;
    assert_whole(&beyond, "MISS");
    assert_eq!(origin.asked(3), (None, None));
    let innocent = exchange(&layer, &svc, get(uri)).await;
    assert_whole(&innocent, "HIT");
    assert_eq!(origin.calls.get(), 3);
    Ok(())
}

/// A stale part is revalidated like any entry (`If-None-Match`, no `Range`), and a `304` does
/// not restate its range: a `Content-Range` on the `304` is not taken for the part's.
#[tokio::test]
async fn a_revalidated_part_keeps_its_own_range() -> TestResult {
    let layer = memory_layer(|b| b);
    let origin = Scripted::default();
    let svc = layer.layer(origin.service(|_, n| match n {
        1 => respond(
            206,
            &[
                ("cache-control", "max-age=0".into()),
                ("etag", V1.into()),
                ("content-range", "bytes 0-4/10".into()),
            ],
            &REP[..5],
        ),
        _ => respond(
            304,
            &[
                ("cache-control", "max-age=600".into()),
                ("etag", V1.into()),
                ("content-range", "bytes 0-9/10".into()),
            ],
            b"",
        ),
    }));
    let uri = "http://example.test/revalidated";
    exchange(&layer, &svc, ranged(uri, "bytes=0-4")).await;
    let revalidated = exchange(&layer, &svc, ranged(uri, "bytes=1-2")).await;
    assert_eq!(
        (
            revalidated.status,
            &revalidated.body[..],
            revalidated.headers["content-range"].to_str().ok()
        ),
        (
            StatusCode::PARTIAL_CONTENT,
            &REP[1..3],
            Some("bytes 1-2/10")
        )
    );
    let seen = origin.seen.lock().expect("seen")[1].clone();
    assert_eq!(
        (seen.get("if-none-match"), seen.get("range")),
        (Some(&http::HeaderValue::from_static(V1)), None)
    );
    let hit = exchange(&layer, &svc, ranged(uri, "bytes=3-4")).await;
    assert_range(&hit, 3..5, "HIT");
    assert_eq!(origin.calls.get(), 2);
    Ok(())
}
