//! The headers the cache adds on the way out: `X-Cache`, `Cache-Status` (RFC 9211) and `Age`.

use http::header::{HeaderName, HeaderValue, AGE};
use http::HeaderMap;

/// `X-Cache`: the cache's verdict in one word, as CDNs and nginx set-ups print it.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `Cache-Status` (RFC 9211): the structured form of the same verdict.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from a fresh entry.
    Hit,
    /// Looked up, not found (or not usable), answered by the origin.
    Miss,
    /// Not looked up: the request is not cacheable, or the store is unavailable.
    Bypass,
}

impl CacheOutcome {
    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// Sets `X-Cache` and `Cache-Status` for a response the origin answered.
/// `stored` says whether the response was written to the cache.
pub(crate) fn mark_forwarded(headers: &mut HeaderMap, outcome: CacheOutcome, stored: bool) {
    headers.insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    let status = match (outcome, stored) {
        (CacheOutcome::Bypass, true) => "tower-redis-cache; fwd=bypass; stored",
        (CacheOutcome::Bypass, false) => "tower-redis-cache; fwd=bypass",
        (_, true) => "tower-redis-cache; fwd=uri-miss; stored",
        (_, false) => "tower-redis-cache; fwd=uri-miss",
    };
    headers.append(CACHE_STATUS, HeaderValue::from_static(status));
}

/// Sets `X-Cache: HIT`, `Cache-Status` and `Age` for a response answered from the cache.
pub(crate) fn mark_hit(headers: &mut HeaderMap, age_secs: u64) {
    headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
    headers.append(
        CACHE_STATUS,
        HeaderValue::from_static("tower-redis-cache; hit"),
    );
    headers.insert(AGE, HeaderValue::from(age_secs));
}
