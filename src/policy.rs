//! What may be looked up, what may be stored, and for how long (design §5, application mode).
//!
//! This is the one module that reads `Cache-Control`, `Vary`, `Set-Cookie` and `Authorization`,
//! so every rule that keeps one user's response from reaching another lives here.

use crate::layer::Config;
use http::{header, HeaderMap, Method, StatusCode};
use std::time::Duration;

/// How the cache treats a request before anything is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestClass {
    /// A cacheable `GET`: look it up, fill on a miss.
    Get,
    /// A `HEAD`: answered from the `GET` entry, forwarded uncached on a miss.
    Head,
    /// A request carrying credentials: never answered from the cache, forwarded; its response
    /// is stored only when it says it may be shared (RFC 9111 §3.5).
    Authorized,
    /// Not for the cache at all (other methods, upgrades, ranges): forwarded untouched.
    Bypass,
}

pub(crate) fn classify_request(
    method: &Method,
    headers: &HeaderMap,
    config: &Config,
) -> RequestClass {
    let class = if method == Method::GET {
        RequestClass::Get
    } else if method == Method::HEAD && config.cache_head {
        RequestClass::Head
    } else {
        return RequestClass::Bypass;
    };
    // A protocol upgrade (WebSocket) or a byte range is not a plain representation.
    if headers.contains_key(header::UPGRADE) || headers.contains_key(header::RANGE) {
        return RequestClass::Bypass;
    }
    if headers.contains_key(header::AUTHORIZATION) && !config.share_authorized {
        return RequestClass::Authorized;
    }
    class
}

/// Whether and how long a response may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Store it: fresh for `fresh`, then usable stale for `stale` more.
    Store { fresh: Duration, stale: Duration },
    /// Do not store it, for the reason given (used in `Cache-Status` detail and traces).
    Skip(&'static str),
}

/// The response directives this cache acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            // A value that is not visible ASCII cannot carry directives we understand.
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    // A directive with a bad argument makes the response uncacheable for that
                    // purpose: treat it as zero, the conservative reading (RFC 9111 §4.2.1).
                    "max-age" => cc.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(seconds().unwrap_or(0)),
                    "stale-while-revalidate" => cc.stale_while_revalidate = seconds(),
                    "stale-if-error" => cc.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Decides whether a response from the origin is stored, in application mode.
pub(crate) fn decide(
    config: &Config,
    authorized_request: bool,
    status: StatusCode,
    headers: &HeaderMap,
) -> Decision {
    let negative = config
        .negative_ttl
        .filter(|_| matches!(status.as_u16(), 404 | 410));
    if negative.is_none() && !config.statuses.contains(&status) {
        return Decision::Skip("status");
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store {
        return Decision::Skip("no-store");
    }
    if cc.private {
        return Decision::Skip("private");
    }
    if cc.no_cache {
        return Decision::Skip("no-cache");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Decision::Skip("set-cookie");
    }
    if varies_on_everything(headers) {
        return Decision::Skip("vary-star");
    }
    if authorized_request && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Decision::Skip("authorization");
    }
    if declared_length(headers).is_some_and(|len| len > config.max_body_bytes) {
        return Decision::Skip("too-large");
    }
    let mut fresh = negative.unwrap_or(config.ttl);
    if config.respect_cache_control {
        if let Some(secs) = cc.s_maxage.or(cc.max_age) {
            fresh = Duration::from_secs(secs);
        }
    }
    let stale = if cc.must_revalidate {
        Duration::ZERO
    } else {
        config.stale_while_revalidate.max(config.stale_if_error)
    };
    if fresh.is_zero() && stale.is_zero() {
        return Decision::Skip("zero-ttl");
    }
    Decision::Store { fresh, stale }
}

fn varies_on_everything(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim() == "*")
}

/// The body length the response declares, if it declares a valid one.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (header::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    fn config() -> Config {
        crate::CacheLayer::builder(crate::MemoryStore::new(1 << 20))
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap()
            .config()
            .clone()
    }

    #[test]
    fn shared_responses_are_stored_for_their_declared_lifetime() {
        let c = config();
        let ok = StatusCode::OK;
        assert_eq!(
            decide(&c, false, ok, &HeaderMap::new()),
            Decision::Store {
                fresh: Duration::from_secs(60),
                stale: Duration::ZERO
            }
        );
        assert_eq!(
            decide(
                &c,
                false,
                ok,
                &headers(&[("cache-control", "max-age=5, s-maxage=7")])
            ),
            Decision::Store {
                fresh: Duration::from_secs(7),
                stale: Duration::ZERO
            }
        );
    }

    #[test]
    fn private_and_personal_responses_are_not_stored() {
        let c = config();
        let ok = StatusCode::OK;
        for (h, why) in [
            (headers(&[("cache-control", "no-store")]), "no-store"),
            (headers(&[("cache-control", "Private")]), "private"),
            (headers(&[("set-cookie", "a=b")]), "set-cookie"),
            (headers(&[("vary", "accept, *")]), "vary-star"),
            (headers(&[("content-length", "999999999")]), "too-large"),
        ] {
            assert_eq!(decide(&c, false, ok, &h), Decision::Skip(why));
        }
        assert_eq!(
            decide(
                &c,
                false,
                StatusCode::INTERNAL_SERVER_ERROR,
                &HeaderMap::new()
            ),
            Decision::Skip("status")
        );
        assert_eq!(
            decide(&c, true, ok, &HeaderMap::new()),
            Decision::Skip("authorization")
        );
        assert!(matches!(
            decide(&c, true, ok, &headers(&[("cache-control", "public")])),
            Decision::Store { .. }
        ));
    }

    #[test]
    fn requests_are_classified() {
        let c = config();
        let none = HeaderMap::new();
        assert_eq!(classify_request(&Method::GET, &none, &c), RequestClass::Get);
        assert_eq!(
            classify_request(&Method::HEAD, &none, &c),
            RequestClass::Head
        );
        assert_eq!(
            classify_request(&Method::POST, &none, &c),
            RequestClass::Bypass
        );
        assert_eq!(
            classify_request(&Method::GET, &headers(&[("authorization", "x")]), &c),
            RequestClass::Authorized
        );
        assert_eq!(
            classify_request(&Method::GET, &headers(&[("upgrade", "websocket")]), &c),
            RequestClass::Bypass
        );
    }
}
