//! What may be looked up, what may be stored, and for how long.
//!
//! This is the one module that reads `Cache-Control`, `Pragma`, `Expires`, `Vary`,
//! `Set-Cookie` and `Authorization`, so every rule that keeps one user's response from
//! reaching another lives here. Two modes share it:
//!
//! - application mode: the layer's TTL, overridden by the response's `s-maxage`/`max-age`
//!   when `respect_cache_control` is on; request directives are ignored (clients do not get to
//!   decide how often the service's origin is hit);
//! - shared mode: RFC 9111 for a shared cache. Storability and freshness come from
//!   `http-cache-semantics` (explicit lifetimes, `Expires` against `Date`, upstream `Age`,
//!   heuristic freshness from `Last-Modified`, `private`, `Authorization`, `no-store`), and the
//!   layer's TTL is used only when the origin gives no freshness information at all, as
//!   nginx's `proxy_cache_valid` and Varnish's `default_ttl` do. One deviation from that crate
//!   is deliberate: it treats `proxy-revalidate` as "never fresh", while RFC 9111 §5.2.2.8
//!   only forbids serving such a response *stale*; we evaluate it as `must-revalidate`.
//!
//! Split by concern: `request` (classification, request directives), `cache_control` (the
//! response directives), `decision` (what is decided), `freshness` (how long, per mode) and
//! `storable` (the rules every mode shares, and the lifetime).

mod cache_control;
mod decision;
mod freshness;
mod request;
mod storable;
#[cfg(test)]
mod tests;

pub(crate) use self::cache_control::CacheControl;
pub(crate) use self::decision::{Decision, Lifetime, NoCacheReason, RequestHead};
pub(crate) use self::request::{
    authority_agrees, classify_request, RequestClass, RequestDirectives,
};
pub(crate) use self::storable::decide;
