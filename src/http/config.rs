//! The validated settings of a layer: [`CacheMode`] and the `Config` every request reads.
//!
//! Kept apart from the builder so that the rules that read settings (policy, the request
//! flow) depend on plain data, not on the layer that builds it.

use http::StatusCode;
use std::time::Duration;

/// Whose rules decide what is stored and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheMode {
    /// The service owner decides: the layer's TTL, which the response's own
    /// `Cache-Control: s-maxage / max-age` may override. The default for the layer.
    #[default]
    Application,
    /// RFC 9111 rules for a shared cache: freshness from the response (`s-maxage`, `max-age`,
    /// `Expires`, heuristics), request directives honoured, the layer's TTL used only when the
    /// origin gives no freshness information. The default of the caching proxy.
    Shared,
}

/// Validated settings, shared by every service the layer makes.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) mode: CacheMode,
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) cache_head: bool,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_body_bytes: u64,
    pub(crate) respect_cache_control: bool,
    pub(crate) share_authorized: bool,
    /// Whether the default ttl applies to responses to requests with cookies.
    pub(crate) ttl_with_cookies: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// How long past freshness an entry may be served when the origin cannot be reached.
    pub(crate) stale_if_unreachable: Duration,
    /// The targeted cache-control fields obeyed (RFC 9213), in order of precedence.
    pub(crate) targeted: Vec<http::HeaderName>,
    /// Whether responses with `Set-Cookie` may be stored when they say they may be shared.
    pub(crate) share_set_cookie: bool,
    pub(crate) distributed_lock: bool,
    pub(crate) hit_for_miss_ttl: Duration,
    pub(crate) cache_name: String,
    /// Where response tags come from, and whether their headers reach clients.
    pub(crate) tagging: crate::http::tags::Tagging,
}
