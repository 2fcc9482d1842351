//! Whether a response from the origin is stored, and for how long: the rules every mode
//! shares (what is personal or cannot be keyed is never stored), then the mode's freshness,
//! then the stale windows and how long the store keeps it.

use crate::http::config::{CacheMode, Config};
use crate::http::policy::cache_control::{understood, CacheControl};
use crate::http::policy::decision::{Decision, Lifetime, NoCacheReason, RequestHead};
use crate::http::policy::freshness::{application_freshness, shared_freshness};
use http::{header, HeaderMap, StatusCode};
use std::time::Duration;

/// The longest anything is kept in the store, whatever the response declares.
pub(super) const MAX_KEEP: Duration = Duration::from_secs(365 * 86_400);

/// Decides whether a response from the origin is stored, and for how long.
pub(crate) fn decide(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Decision {
    // A targeted field (RFC 9213) speaks for this cache in place of `Cache-Control` and
    // `Expires`; every rule below reads the headers as this cache should see them.
    // A part (`206`) is judged as the representation it is part of (RFC 9111 §3.3); `fetch`
    // keeps it only when its `Content-Range` agrees with its bytes (`range::received`).
    let status = if status == StatusCode::PARTIAL_CONTENT {
        StatusCode::OK
    } else {
        status
    };
    let targeted = crate::http::targeted::effective(headers, &config.targeted);
    let headers = targeted.as_ref().unwrap_or(headers);
    let cc = CacheControl::parse(headers);
    if let Some(reason) = refused(config, request, status, headers, &cc) {
        return Decision::Skip(reason);
    }
    let (fresh, initial_age) = match config.mode {
        CacheMode::Shared => match shared_freshness(config, request, status, headers, &cc) {
            Ok(freshness) => freshness,
            Err(reason) => return Decision::Skip(reason),
        },
        _ => match application_freshness(config, request, status, &cc) {
            Ok(fresh) => (fresh, Duration::ZERO),
            Err(reason) => return Decision::Skip(reason),
        },
    };
    lifetime(config, headers, &cc, fresh, initial_age)
}

/// The rules for every mode: what is personal or cannot be keyed is never shared, whatever
/// its freshness. The first that applies is the reason.
fn refused(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
) -> Option<NoCacheReason> {
    // `must-understand` lifts `no-store` for a status whose caching rules this cache
    // implements, and only for those (RFC 9111 §5.2.2.3).
    if cc.no_store && !(cc.must_understand && understood(status)) {
        return Some(NoCacheReason::NoStore);
    }
    if cc.must_understand && !understood(status) {
        return Some(NoCacheReason::Status);
    }
    if cc.private {
        return Some(NoCacheReason::Private);
    }
    if headers.contains_key(header::SET_COOKIE) && !shares_set_cookie(config, headers, cc) {
        return Some(NoCacheReason::SetCookie);
    }
    if crate::http::key::vary_names(headers).any(|name| name == "*") {
        return Some(NoCacheReason::VaryStar);
    }
    if request.authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Some(NoCacheReason::Authorization);
    }
    if declared_length(headers).is_some_and(|len| len > config.max_body_bytes) {
        return Some(NoCacheReason::TooLarge);
    }
    None
}

/// The stale windows and how long the store keeps a response fresh for `fresh`, or `ZeroTtl`
/// when it is worth nothing: never fresh, never servable stale, and without a validator.
fn lifetime(
    config: &Config,
    headers: &HeaderMap,
    cc: &CacheControl,
    fresh: Duration,
    initial_age: Duration,
) -> Decision {
    let shared = config.mode == CacheMode::Shared;
    let (stale, error) = if cc.forbids_stale(shared) {
        (Duration::ZERO, Duration::ZERO)
    } else {
        let directive = |d: Option<u64>| Duration::from_secs(d.unwrap_or(0));
        let stale = config
            .stale_while_revalidate
            .max(directive(cc.stale_while_revalidate));
        (
            stale,
            config.stale_if_error.max(directive(cc.stale_if_error)),
        )
    };
    let has_validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    // A response that is never fresh is still worth keeping when it can be revalidated: the
    // origin then answers `304` instead of sending the body again (`no-cache`, `max-age=0`).
    if fresh.is_zero() && stale.is_zero() && error.is_zero() && !has_validator {
        return Decision::Skip(NoCacheReason::ZeroTtl);
    }
    // Kept past freshness for revalidation (with a validator) and for clients' `max-stale`;
    // bounded, so a lifetime of centuries cannot overflow a store's expiry arithmetic.
    let grace = if has_validator {
        fresh.clamp(Duration::from_secs(60), Duration::from_secs(86_400))
    } else {
        Duration::from_secs(60)
    };
    // Kept for the unreachable-origin window too, when the response allows stale serving.
    let unreachable = if cc.forbids_unpermitted_stale(shared) {
        Duration::ZERO
    } else {
        config.stale_if_unreachable
    };
    let keep = fresh
        .saturating_add(stale.max(error).max(grace).max(unreachable))
        .min(MAX_KEEP);
    Decision::Store(Lifetime {
        fresh,
        stale,
        error,
        keep,
        initial_age,
    })
}

/// Whether a response that sets a cookie may be stored: only when the operator opted in
/// (`share_set_cookie`) and the response itself says it may be reused, by explicit freshness
/// or `public` (`private`/`no-store` were refused before).
fn shares_set_cookie(config: &Config, headers: &HeaderMap, cc: &CacheControl) -> bool {
    config.share_set_cookie
        && (cc.public
            || cc.max_age.is_some()
            || cc.s_maxage.is_some()
            || headers.contains_key(header::EXPIRES))
}

/// The body length the response declares, if it declares a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
