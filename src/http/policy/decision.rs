//! What the policy decides about a response: store it for a lifetime, or skip it for one
//! reason; and the request a response answered, as the policy reads it.

use http::{HeaderMap, Uri};
use std::time::Duration;

/// Why an answer was not stored: the one reason type every path that declines to store
/// reports (as pingora-cache's `NoCacheReason`), shown as `Cache-Status: …; detail=<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoCacheReason {
    /// `Cache-Control: no-store` on the response.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// The response sets a cookie.
    SetCookie,
    /// `Vary: *`: it may vary on anything.
    VaryStar,
    /// It answers a request with credentials and does not say it may be shared.
    Authorization,
    /// Larger than `max_body_bytes` (declared, or once buffered).
    TooLarge,
    /// The fills in flight already hold `max_fill_bytes`.
    FillBudget,
    /// Neither fresh, nor stale-servable, nor revalidatable.
    ZeroTtl,
    /// A status the settings do not store.
    Status,
    /// RFC 9111 rules (as `http-cache-semantics` reads them) forbid storing it.
    NotStorable,
    /// A part (`206`) whose numbers disagree with its bytes.
    InvalidRange,
    /// It declares no freshness of its own and answers a request with cookies: the default
    /// ttl is not applied to it (a session's page would be everyone's), unless
    /// `ttl_with_cookies` says so.
    Cookie,
}

impl NoCacheReason {
    /// The `Cache-Status` detail token.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary-star",
            Self::Authorization => "authorization",
            Self::TooLarge => "too-large",
            Self::FillBudget => "fill-budget",
            Self::ZeroTtl => "zero-ttl",
            Self::Status => "status",
            Self::NotStorable => "not-storable",
            Self::InvalidRange => "invalid-range",
            Self::Cookie => "cookie",
        }
    }
}

/// Whether and how long a response may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Store(Lifetime),
    /// Do not store it, for the reason given (used in `Cache-Status` detail and traces).
    Skip(NoCacheReason),
}

/// How long a stored response may be used, counted from when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// Fresh for this long.
    pub(crate) fresh: Duration,
    /// Then servable while being refreshed for this long (stale-while-revalidate).
    pub(crate) stale: Duration,
    /// Then servable when the origin fails for this long (stale-if-error), from freshness end.
    pub(crate) error: Duration,
    /// How long the store keeps it: past every window, and past freshness for revalidation
    /// when it has a validator.
    pub(crate) keep: Duration,
    /// How old it already was when received (its `Age`).
    pub(crate) initial_age: Duration,
}

/// The request a response answered, as the policy needs it.
pub(crate) struct RequestHead<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) authorized: bool,
}
