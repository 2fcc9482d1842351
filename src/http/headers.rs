//! The headers the cache adds on the way out: `X-Cache`, `Cache-Status` (RFC 9211) and `Age`.

use http::header::{HeaderName, HeaderValue, AGE};
use http::{HeaderMap, StatusCode};
use std::fmt::Write as _;

/// `X-Cache`: the cache's verdict in one word, as CDNs and nginx set-ups print it.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `Cache-Status` (RFC 9211): the structured form of the same verdict.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did with a request: the `X-Cache` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Answered from a fresh entry.
    Hit,
    /// Answered from a stale entry: while it is refreshed, because the client accepts stale
    /// responses, or because the origin failed.
    Stale,
    /// A stale entry was confirmed by the origin (`304 Not Modified`) and served.
    Revalidated,
    /// Looked up, not usable, answered by the origin.
    Miss,
    /// Not looked up: the request is not cacheable, or the store is unavailable.
    Bypass,
}

impl CacheOutcome {
    /// The outcome in lower case, as metrics label it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }

    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// Why a request went forward to the origin: RFC 9211's `fwd` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// The cache was not used for this request.
    Bypass,
    /// No entry for the URI.
    UriMiss,
    /// Entries for the URI, none for this request's variant.
    VaryMiss,
    /// The entry was stale and had to be validated.
    Stale,
    /// The request asked for validation (`no-cache`, `max-age`, `min-fresh`).
    Request,
    /// Only part of the representation is stored, not all the request asks for.
    Partial,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
            Self::Partial => "partial",
        }
    }
}

/// Everything `Cache-Status` reports about one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict {
    pub(crate) outcome: CacheOutcome,
    /// Set when the request went to the origin.
    pub(crate) fwd: Option<(Fwd, Option<StatusCode>)>,
    pub(crate) stored: bool,
    /// Seconds of freshness left (negative when stale), for responses from an entry.
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<&'static str>,
}

impl Verdict {
    pub(crate) fn forwarded(
        outcome: CacheOutcome,
        fwd: Fwd,
        status: StatusCode,
        stored: bool,
    ) -> Self {
        Self {
            outcome,
            fwd: Some((fwd, Some(status))),
            stored,
            ttl: None,
            detail: None,
        }
    }

    pub(crate) fn hit(ttl: i64) -> Self {
        Self {
            outcome: CacheOutcome::Hit,
            fwd: None,
            stored: false,
            ttl: Some(ttl),
            detail: None,
        }
    }
}

/// Marks a response: `X-Cache`, `Cache-Status` (appended after any upstream cache's member,
/// as RFC 9211 orders them), and `Age` when it comes from an entry.
pub(crate) fn mark(
    headers: &mut HeaderMap,
    cache_name: &str,
    verdict: Verdict,
    age_secs: Option<u64>,
) {
    headers.insert(X_CACHE, HeaderValue::from_static(verdict.outcome.as_str()));
    // Written straight into the buffer the header value keeps (one allocation, no copy).
    let mut status = bytes::BytesMut::with_capacity(cache_name.len() + 48);
    status.extend_from_slice(cache_name.as_bytes());
    let served_from_entry = matches!(verdict.outcome, CacheOutcome::Hit | CacheOutcome::Stale)
        && verdict.detail != Some("stale-if-error");
    if served_from_entry {
        status.extend_from_slice(b"; hit");
    }
    // Writing to a BytesMut cannot fail.
    if let Some((fwd, fwd_status)) = verdict.fwd {
        let _ = write!(status, "; fwd={}", fwd.as_str());
        if let Some(code) = fwd_status {
            let _ = write!(status, "; fwd-status={}", code.as_u16());
        }
    }
    if verdict.stored {
        status.extend_from_slice(b"; stored");
    }
    if let Some(ttl) = verdict.ttl {
        let _ = write!(status, "; ttl={ttl}");
    }
    if let Some(detail) = verdict.detail {
        let _ = write!(status, "; detail={detail}");
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(status.freeze()) {
        headers.append(CACHE_STATUS, value);
    }
    if let Some(age) = age_secs {
        headers.insert(AGE, HeaderValue::from(age));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_follows_rfc_9211() {
        let mut h = HeaderMap::new();
        mark(&mut h, "edge", Verdict::hit(42), Some(3));
        assert_eq!(h["cache-status"], "edge; hit; ttl=42");
        assert_eq!(h["x-cache"], "HIT");
        assert_eq!(h["age"], "3");
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        mark(
            &mut h,
            "edge",
            Verdict::forwarded(CacheOutcome::Miss, Fwd::UriMiss, StatusCode::OK, true),
            None,
        );
        let all: Vec<_> = h.get_all("cache-status").iter().collect();
        assert_eq!(
            all,
            [
                "origin-cache; hit",
                "edge; fwd=uri-miss; fwd-status=200; stored"
            ]
        );
        assert!(h.get("age").is_none());
    }
}
