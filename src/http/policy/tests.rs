//! The policy's unit tests: decisions in both modes, request classification, directives.

use super::storable::MAX_KEEP;
use super::*;
use crate::http::config::{CacheMode, Config};
use http::{header, HeaderMap, Method, StatusCode, Uri};
use std::time::Duration;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| (header::HeaderName::from_static(n), v.parse().unwrap()))
        .collect()
}

fn config(mode: CacheMode) -> Config {
    crate::CacheLayer::builder(crate::MemoryStore::new(1 << 20))
        .mode(mode)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap()
        .config()
        .clone()
}

fn decide_for(config: &Config, authorized: bool, status: u16, response: &HeaderMap) -> Decision {
    let uri = Uri::from_static("http://example.test/x");
    let request = RequestHead {
        uri: &uri,
        headers: &HeaderMap::new(),
        authorized,
    };
    decide(
        config,
        &request,
        StatusCode::from_u16(status).unwrap(),
        response,
    )
}

fn fresh(decision: Decision) -> Option<u64> {
    match decision {
        Decision::Store(lifetime) => Some(lifetime.fresh.as_secs()),
        Decision::Skip(_) => None,
    }
}

#[test]
fn application_mode_uses_the_layer_ttl_unless_the_response_says() {
    let c = config(CacheMode::Application);
    assert_eq!(
        fresh(decide_for(&c, false, 200, &HeaderMap::new())),
        Some(60)
    );
    assert_eq!(
        fresh(decide_for(
            &c,
            false,
            200,
            &headers(&[("cache-control", "max-age=5, s-maxage=7")])
        )),
        Some(7)
    );
    assert_eq!(
        fresh(decide_for(
            &c,
            false,
            200,
            &headers(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")])
        )),
        Some(60)
    );
}

#[test]
fn shared_mode_follows_the_response_and_uses_the_ttl_only_without_information() {
    let c = config(CacheMode::Shared);
    assert_eq!(
        fresh(decide_for(&c, false, 200, &HeaderMap::new())),
        Some(60)
    );
    assert_eq!(
        fresh(decide_for(
            &c,
            false,
            200,
            &headers(&[("cache-control", "max-age=5")])
        )),
        Some(5)
    );
    assert_eq!(
        fresh(decide_for(
            &c,
            false,
            200,
            &headers(&[("cache-control", "max-age=5, s-maxage=9")])
        )),
        Some(9)
    );
    let expired = headers(&[
        ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("date", "Thu, 01 Jan 1970 00:00:10 GMT"),
    ]);
    assert_eq!(
        decide_for(&c, false, 200, &expired),
        Decision::Skip(NoCacheReason::ZeroTtl)
    );
    let aged = headers(&[("cache-control", "max-age=100"), ("age", "30")]);
    assert_eq!(fresh(decide_for(&c, false, 200, &aged)), Some(70));
    // 404 is heuristically cacheable, but without information the default applies only
    // to the listed statuses.
    assert_eq!(
        decide_for(&c, false, 404, &HeaderMap::new()),
        Decision::Skip(NoCacheReason::Status)
    );
    assert_eq!(
        fresh(decide_for(
            &c,
            false,
            404,
            &headers(&[("cache-control", "max-age=3")])
        )),
        Some(3)
    );
    let revalidate = headers(&[("cache-control", "max-age=10, proxy-revalidate")]);
    assert_eq!(fresh(decide_for(&c, false, 200, &revalidate)), Some(10));
}

#[test]
fn private_and_personal_responses_are_not_stored_in_either_mode() {
    for mode in [CacheMode::Application, CacheMode::Shared] {
        let c = config(mode);
        for (h, why) in [
            (
                headers(&[("cache-control", "no-store")]),
                NoCacheReason::NoStore,
            ),
            (
                headers(&[("cache-control", "Private")]),
                NoCacheReason::Private,
            ),
            (
                headers(&[
                    ("set-cookie", "a=b"),
                    ("cache-control", "public, max-age=9"),
                ]),
                NoCacheReason::SetCookie,
            ),
            (headers(&[("vary", "accept, *")]), NoCacheReason::VaryStar),
            (
                headers(&[("content-length", "999999999")]),
                NoCacheReason::TooLarge,
            ),
        ] {
            assert_eq!(
                decide_for(&c, false, 200, &h),
                Decision::Skip(why),
                "{mode:?} {}",
                why.as_str()
            );
        }
        assert_eq!(
            decide_for(&c, true, 200, &HeaderMap::new()),
            Decision::Skip(NoCacheReason::Authorization)
        );
        assert!(fresh(decide_for(
            &c,
            true,
            200,
            &headers(&[("cache-control", "public, max-age=9")])
        ))
        .is_some());
    }
    assert_eq!(
        decide_for(
            &config(CacheMode::Application),
            false,
            500,
            &HeaderMap::new()
        ),
        Decision::Skip(NoCacheReason::Status)
    );
}

#[test]
fn stale_windows_come_from_config_or_directives_unless_revalidation_is_required() {
    let c = config(CacheMode::Shared);
    let Decision::Store(l) = decide_for(
        &c,
        false,
        200,
        &headers(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=30, stale-if-error=90",
        )]),
    ) else {
        panic!("stored")
    };
    assert_eq!((l.stale.as_secs(), l.error.as_secs()), (30, 90));
    assert!(l.keep >= l.fresh + l.error);
    let Decision::Store(l) = decide_for(
        &c,
        false,
        200,
        &headers(&[(
            "cache-control",
            "max-age=1, must-revalidate, stale-if-error=90",
        )]),
    ) else {
        panic!("stored")
    };
    assert_eq!((l.stale, l.error), (Duration::ZERO, Duration::ZERO));
}

#[test]
fn requests_are_classified() {
    let c = config(CacheMode::Application);
    let class = |method: Method, pairs: &[(&'static str, &'static str)]| {
        let uri = Uri::from_static("/x");
        classify_request(&method, &uri, &headers(pairs), &c)
    };
    assert_eq!(class(Method::GET, &[]), RequestClass::Get);
    assert_eq!(class(Method::HEAD, &[]), RequestClass::Head);
    assert_eq!(class(Method::POST, &[]), RequestClass::Unsafe);
    assert_eq!(class(Method::OPTIONS, &[]), RequestClass::Bypass);
    assert_eq!(
        class(Method::GET, &[("range", "bytes=0-1")]),
        RequestClass::Get
    );
    assert_eq!(
        class(Method::GET, &[("authorization", "x")]),
        RequestClass::Authorized
    );
    assert_eq!(
        class(Method::HEAD, &[("authorization", "x")]),
        RequestClass::Bypass,
        "a HEAD with credentials is neither answered nor stored"
    );
    assert_eq!(
        class(Method::GET, &[("upgrade", "websocket")]),
        RequestClass::Bypass
    );
}

#[test]
fn requests_whose_answer_the_key_cannot_describe_bypass() {
    let c = config(CacheMode::Application);
    let class = |uri: &'static str, pairs: &[(&'static str, &'static str)]| {
        classify_request(&Method::GET, &Uri::from_static(uri), &headers(pairs), &c)
    };
    assert_eq!(class("/x", &[("content-length", "0")]), RequestClass::Get);
    assert_eq!(
        class("/x", &[("content-length", "5")]),
        RequestClass::Bypass
    );
    assert_eq!(
        class("/x", &[("transfer-encoding", "chunked")]),
        RequestClass::Bypass
    );
    assert_eq!(
        class("/x", &[("x-http-method-override", "DELETE")]),
        RequestClass::Bypass
    );
    assert_eq!(
        class("/x", &[("x-method-override", "PUT")]),
        RequestClass::Bypass
    );
    assert_eq!(
        class("/x", &[("x_http_method_override", "DELETE")]),
        RequestClass::Bypass,
        "CGI-style origins read `_` as `-`"
    );
    let mut two_hosts = headers(&[("host", "victim.example")]);
    two_hosts.append(header::HOST, "evil.example".parse().unwrap());
    assert_eq!(
        classify_request(&Method::GET, &Uri::from_static("/x"), &two_hosts, &c),
        RequestClass::Bypass
    );
    assert_eq!(
        class("http://victim.example/x", &[("host", "evil.example")]),
        RequestClass::Bypass
    );
    assert_eq!(
        class("http://victim.example/x", &[("host", "Victim.Example")]),
        RequestClass::Get
    );
    assert_eq!(class("http://victim.example/x", &[]), RequestClass::Get);
}

#[test]
fn request_directives_count_only_in_shared_mode() {
    let h = headers(&[(
        "cache-control",
        "max-age=0, max-stale, min-fresh=5, only-if-cached",
    )]);
    assert_eq!(
        RequestDirectives::for_request(&h, &config(CacheMode::Application)),
        RequestDirectives::default()
    );
    let wants = RequestDirectives::for_request(&h, &config(CacheMode::Shared));
    assert_eq!(wants.max_age, Some(0));
    assert_eq!(wants.max_stale, Some(None));
    assert_eq!(wants.min_fresh, Some(5));
    assert!(wants.only_if_cached);
    let pragma = RequestDirectives::for_request(
        &headers(&[("pragma", "no-cache")]),
        &config(CacheMode::Shared),
    );
    assert!(!pragma.no_cache, "Pragma is deprecated (RFC 9111 §5.4)");
}

#[test]
fn shared_mode_reads_directives_and_age_as_the_rfc_does() {
    let c = config(CacheMode::Shared);
    let mixed_case = headers(&[("cache-control", "No-CaChE, MaX-aGe=10000")]);
    assert_eq!(
        fresh(decide_for(&c, false, 200, &mixed_case)),
        None,
        "no-cache: never fresh"
    );
    let listed_age = headers(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]);
    assert_eq!(
        decide_for(&c, false, 200, &listed_age),
        Decision::Skip(NoCacheReason::ZeroTtl)
    );
    let declared = headers(&[("cache-control", "max-age=30")]);
    assert_eq!(
        fresh(decide_for(&c, false, 299, &declared)),
        Some(30),
        "any status may be stored with explicit freshness"
    );
    for provokable in [400, 412, 417, 431] {
        assert_eq!(
            decide_for(&c, false, provokable, &declared),
            Decision::Skip(NoCacheReason::Status),
            "{provokable}: an error a client can provoke is not shared unless listed"
        );
    }
    assert_eq!(
        decide_for(&c, false, 500, &HeaderMap::new()),
        Decision::Skip(NoCacheReason::Status)
    );
    let Decision::Store(l) = decide_for(
        &c,
        false,
        200,
        &headers(&[("cache-control", "max-age=99999999999")]),
    ) else {
        panic!("stored")
    };
    assert!(l.keep <= MAX_KEEP);
}

#[test]
fn absurd_lifetimes_do_not_overflow() {
    let c = config(CacheMode::Application);
    let forever = headers(&[(
        "cache-control",
        "max-age=18446744073709551615, stale-if-error=18446744073709551615",
    )]);
    let Decision::Store(l) = decide_for(&c, false, 200, &forever) else {
        panic!("stored")
    };
    assert_eq!(l.keep, MAX_KEEP);
}
