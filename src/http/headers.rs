//! The headers the cache adds on the way out: `X-Cache`, `Cache-Status` (RFC 9211) and `Age`.

use crate::http::policy::NoCacheReason;
use http::header::{HeaderName, HeaderValue, AGE};
use http::{HeaderMap, StatusCode};
use std::fmt::Write as _;

/// `X-Cache`: the cache's verdict in one word, as CDNs and nginx set-ups print it.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `Cache-Status` (RFC 9211): the structured form of the same verdict.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

pub use crate::outcome::CacheOutcome;

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
    /// Why, when the outcome alone does not say: RFC 9211's `detail` parameter.
    pub(crate) detail: Option<Detail>,
}

/// Why a response is what it is, beyond its outcome: `Cache-Status`'s `detail`, typed, so
/// every path names its reason from one list and nothing compares strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The origin's answer was not stored, for this reason.
    NotStored(NoCacheReason),
    /// Served stale within the entry's stale-while-revalidate window, while it is refreshed.
    StaleWhileRevalidate,
    /// Served stale because the origin failed within the entry's stale-if-error window (or
    /// this process's fill for the key did).
    StaleIfError,
    /// Served stale because the client accepts it (`max-stale`).
    MaxStale,
    /// Served stale because the origin could not be reached (`stale_if_unreachable`).
    OriginUnreachable,
    /// Made up: `only-if-cached` found nothing usable (`504`).
    OnlyIfCached,
    /// Made up: the fill task answering this request died (`500`).
    FillFailed,
    /// Made up: a stored part cannot answer the request it was found for (`502`).
    PartialUnusable,
}

impl Detail {
    /// The `detail` token.
    fn as_str(self) -> &'static str {
        match self {
            Self::NotStored(reason) => reason.as_str(),
            Self::StaleWhileRevalidate => "stale-while-revalidate",
            Self::StaleIfError => "stale-if-error",
            Self::MaxStale => "max-stale",
            Self::OriginUnreachable => "origin-unreachable",
            Self::OnlyIfCached => "only-if-cached",
            Self::FillFailed => "fill-failed",
            Self::PartialUnusable => "partial-unusable",
        }
    }
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

    /// Whether `Cache-Status` says `hit`: the response came from an entry, except a stale
    /// one served for a failed origin within stale-if-error, which reports the forward.
    fn reports_hit(&self) -> bool {
        matches!(self.outcome, CacheOutcome::Hit | CacheOutcome::Stale)
            && self.detail != Some(Detail::StaleIfError)
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
    if verdict.reports_hit() {
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
        let _ = write!(status, "; detail={}", detail.as_str());
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
