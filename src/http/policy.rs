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

use crate::http::config::{CacheMode, Config};
use http::{header, HeaderMap, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy, RequestLike, ResponseLike};
use std::time::{Duration, SystemTime};

/// How the cache treats a request before anything is looked up: decided once, in
/// [`classify_request`], and honoured by every path after it (README, Security).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestClass {
    /// A cacheable `GET`: look it up, fill on a miss.
    Get,
    /// A `HEAD`: answered from the `GET` entry, forwarded uncached on a miss. A HEAD never
    /// writes anything: its response has no body to store.
    Head,
    /// A `GET` carrying credentials: never answered from the cache, forwarded; its response
    /// is stored only when it says it may be shared (RFC 9111 §3.5), and never rewrites a vary
    /// index that anonymous requests read. (A `HEAD` with credentials is [`Bypass`].)
    ///
    /// [`Bypass`]: RequestClass::Bypass
    Authorized,
    /// An unsafe method (`POST`, `PUT`, `DELETE`, `PATCH`, ...): forwarded, and on success the
    /// stored responses for its target are invalidated (RFC 9111 §4.4).
    Unsafe,
    /// Not for the cache at all: forwarded untouched, nothing read or written. Other safe
    /// methods, upgrades, and requests whose answer could depend on something the key does
    /// not hold (a body, a method-override header, two `Host`s, a `Host` that contradicts the
    /// target's authority).
    Bypass,
}

impl RequestClass {
    /// Whether the request is a `HEAD`, answered without a body.
    pub(crate) fn is_head(self) -> bool {
        self == Self::Head
    }

    /// Whether the request carries credentials its response must be judged against.
    pub(crate) fn is_authorized(self) -> bool {
        self == Self::Authorized
    }
}

/// Headers with which frameworks let a `GET` act as another method: an origin honouring
/// them would answer something the key (which says `GET`) does not describe.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `name` is a method-override header, reading `_` as `-`: CGI-style origins (WSGI,
/// PHP) see `X_HTTP_Method_Override` as the same variable as `X-HTTP-Method-Override`.
fn is_method_override(name: &str) -> bool {
    METHOD_OVERRIDES.iter().any(|listed| {
        name.len() == listed.len()
            && name
                .bytes()
                .zip(listed.bytes())
                .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
    })
}

/// Request headers that make the origin answer something other than the representation
/// (`412 Precondition Failed`, `417 Expectation Failed`): such an answer, stored, would be
/// served to everyone. (`If-None-Match`/`If-Modified-Since`/`Range` are different: the cache
/// removes them on a fill and answers them itself from the stored representation.)
const ANSWER_CHANGING: [header::HeaderName; 3] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::EXPECT,
];

pub(crate) fn classify_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    config: &Config,
) -> RequestClass {
    let head = if method == Method::GET {
        false
    } else if method == Method::HEAD {
        if !config.cache_head {
            return RequestClass::Bypass;
        }
        true
    } else if method.is_safe() {
        return RequestClass::Bypass;
    } else {
        return RequestClass::Unsafe;
    };
    // A protocol upgrade (WebSocket) is not a representation. (A byte range is: it is served
    // from a stored whole response, and forwarded otherwise.)
    if headers.contains_key(header::UPGRADE) || !keyable(uri, headers) {
        return RequestClass::Bypass;
    }
    if headers.contains_key(header::AUTHORIZATION) && !config.share_authorized {
        // A HEAD has nothing to store and may not be answered from the cache: pass it by.
        return if head {
            RequestClass::Bypass
        } else {
            RequestClass::Authorized
        };
    }
    if head {
        RequestClass::Head
    } else {
        RequestClass::Get
    }
}

/// Whether everything that can change the origin's answer to this `GET`/`HEAD` is in the
/// key. The key holds the method class, the authority and the target; a request that
/// carries more (a body, a method override, a precondition or expectation the origin would
/// fail it on) or is ambiguous about its authority (two `Host` fields, or one that
/// contradicts an absolute-form target) is not looked up and not stored, so it cannot place
/// an answer where innocent requests would find it.
fn keyable(uri: &Uri, headers: &HeaderMap) -> bool {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|len| len.as_bytes() != b"0");
    if has_body
        || headers.keys().any(|name| is_method_override(name.as_str()))
        || ANSWER_CHANGING
            .iter()
            .any(|name| headers.contains_key(name))
    {
        return false;
    }
    authority_agrees(uri, headers)
}

/// Whether the request names one authority: at most one `Host`, and the target's authority
/// (absolute form) agreeing with it. Unsafe methods need this too: their invalidation must
/// not reach entries of an authority the origin was not asked about.
pub(crate) fn authority_agrees(uri: &Uri, headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => false,
        (Some(host), None) => uri.authority().is_none_or(|authority| {
            authority
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.as_bytes())
        }),
        (None, None) => true,
    }
}

/// The request directives a shared cache honours (RFC 9111 §5.2.1). Empty in application mode.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) max_age: Option<u64>,
    /// `Some(None)`: any staleness is acceptable; `Some(Some(n))`: up to `n` seconds.
    pub(crate) max_stale: Option<Option<u64>>,
    pub(crate) min_fresh: Option<u64>,
}

impl RequestDirectives {
    pub(crate) fn for_request(headers: &HeaderMap, config: &Config) -> Self {
        if config.mode != CacheMode::Shared {
            return Self::default();
        }
        // `Pragma` is not read: RFC 9111 §5.4 deprecates it, and only `Cache-Control` counts.
        let mut wants = Self::default();
        for (name, arg) in directives(headers.get_all(header::CACHE_CONTROL)) {
            match name.as_str() {
                "no-cache" => wants.no_cache = true,
                "no-store" => wants.no_store = true,
                "only-if-cached" => wants.only_if_cached = true,
                "max-age" => wants.max_age = Some(arg.and_then(seconds).unwrap_or(0)),
                "max-stale" => wants.max_stale = Some(arg.and_then(seconds)),
                "min-fresh" => wants.min_fresh = Some(arg.and_then(seconds).unwrap_or(0)),
                _ => {}
            }
        }
        wants
    }
}

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

/// The longest anything is kept in the store, whatever the response declares.
const MAX_KEEP: Duration = Duration::from_secs(365 * 86_400);

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

/// The response directives this cache acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) must_understand: bool,
}

/// Iterates the directives of `Cache-Control`-like fields as (lowercased name, argument).
fn directives<'a>(
    values: header::GetAll<'a, http::HeaderValue>,
) -> impl Iterator<Item = (String, Option<&'a str>)> {
    values
        .into_iter()
        // A value that is not visible ASCII cannot carry directives we understand.
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|directive| {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            (!name.is_empty()).then(|| (name.to_ascii_lowercase(), arg))
        })
}

fn seconds(arg: &str) -> Option<u64> {
    arg.parse().ok()
}

impl CacheControl {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for (name, arg) in directives(headers.get_all(header::CACHE_CONTROL)) {
            match name.as_str() {
                "no-store" => cc.no_store = true,
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "public" => cc.public = true,
                "must-revalidate" => cc.must_revalidate = true,
                "proxy-revalidate" => cc.proxy_revalidate = true,
                "must-understand" => cc.must_understand = true,
                // A bad argument is read as zero, the conservative reading (RFC 9111 §4.2.1).
                "max-age" => cc.max_age = Some(arg.and_then(seconds).unwrap_or(0)),
                "s-maxage" => cc.s_maxage = Some(arg.and_then(seconds).unwrap_or(0)),
                "stale-while-revalidate" => cc.stale_while_revalidate = arg.and_then(seconds),
                "stale-if-error" => cc.stale_if_error = arg.and_then(seconds),
                _ => {}
            }
        }
        cc
    }

    /// The directives of a stored response as this cache obeys them: its targeted field
    /// (RFC 9213) when it has a valid one, else its `Cache-Control`.
    pub(crate) fn for_response(headers: &HeaderMap, config: &Config) -> Self {
        match crate::http::targeted::effective(headers, &config.targeted) {
            Some(effective) => Self::parse(&effective),
            None => Self::parse(headers),
        }
    }

    /// Whether stale serving is forbidden (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.4).
    pub(crate) fn forbids_stale(&self, shared: bool) -> bool {
        self.must_revalidate || (shared && self.proxy_revalidate) || self.no_cache
    }

    /// Whether stale serving that the origin did not itself permit (by
    /// `stale-while-revalidate` or `stale-if-error`) is forbidden: a client's `max-stale`, or
    /// a disconnected cache's fallback. In a shared cache `s-maxage` forbids it too, as it
    /// carries `proxy-revalidate`'s semantics (RFC 9111 §5.2.2.10, §4.2.4).
    pub(crate) fn forbids_unpermitted_stale(&self, shared: bool) -> bool {
        self.forbids_stale(shared) || (shared && self.s_maxage.is_some())
    }
}

/// The request a response answered, as the policy needs it.
pub(crate) struct RequestHead<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) authorized: bool,
}

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
    // Rules for every mode: never share what is personal or cannot be keyed.
    // `must-understand` lifts `no-store` for a status whose caching rules this cache
    // implements, and only for those (RFC 9111 §5.2.2.3).
    if cc.no_store && !(cc.must_understand && understood(status)) {
        return Decision::Skip(NoCacheReason::NoStore);
    }
    if cc.must_understand && !understood(status) {
        return Decision::Skip(NoCacheReason::Status);
    }
    if cc.private {
        return Decision::Skip(NoCacheReason::Private);
    }
    if headers.contains_key(header::SET_COOKIE) && !shares_set_cookie(config, headers, &cc) {
        return Decision::Skip(NoCacheReason::SetCookie);
    }
    if crate::http::key::vary_names(headers).any(|name| name == "*") {
        return Decision::Skip(NoCacheReason::VaryStar);
    }
    if request.authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Decision::Skip(NoCacheReason::Authorization);
    }
    if declared_length(headers).is_some_and(|len| len > config.max_body_bytes) {
        return Decision::Skip(NoCacheReason::TooLarge);
    }
    let shared = config.mode == CacheMode::Shared;
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

/// Statuses whose caching requirements this cache implements, so that `must-understand` may
/// lift `no-store` for them: those RFC 9110 §15.1 lets caches store heuristically (`206` is
/// judged as a `200` by [`decide`], its combination rules being `range`'s).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
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

fn application_freshness(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    cc: &CacheControl,
) -> Result<Duration, NoCacheReason> {
    let negative = config
        .negative_ttl
        .filter(|_| matches!(status.as_u16(), 404 | 410));
    if negative.is_none() && !config.statuses.contains(&status) {
        return Err(NoCacheReason::Status);
    }
    // `no-cache`: stored, but never fresh; every use is revalidated with the origin.
    if cc.no_cache && config.respect_cache_control {
        return Ok(Duration::ZERO);
    }
    if config.respect_cache_control {
        if let Some(secs) = cc.s_maxage.or(cc.max_age) {
            return Ok(Duration::from_secs(secs));
        }
    }
    default_ttl(config, request)?;
    Ok(negative.unwrap_or(config.ttl))
}

/// The configured ttl, for a response that declares no freshness of its own: refused when the
/// request carried cookies (unless `ttl_with_cookies`), since such a page is likely the
/// session's own, and the origin did not say it may be shared (Varnish's default too).
fn default_ttl(config: &Config, request: &RequestHead<'_>) -> Result<Duration, NoCacheReason> {
    if request.headers.contains_key(header::COOKIE) && !config.ttl_with_cookies {
        return Err(NoCacheReason::Cookie);
    }
    Ok(config.ttl)
}

struct PolicyRequest<'a>(&'a RequestHead<'a>);

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        self.0.uri.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        self.0.uri == other
    }
    fn method(&self) -> &Method {
        &Method::GET
    }
    fn headers(&self) -> &HeaderMap {
        self.0.headers
    }
}

struct PolicyResponse<'a>(StatusCode, &'a HeaderMap);

impl ResponseLike for PolicyResponse<'_> {
    fn status(&self) -> StatusCode {
        self.0
    }
    fn headers(&self) -> &HeaderMap {
        self.1
    }
}

/// Statuses a client can draw from an origin with headers the key does not hold (an
/// oversized or malformed header, a length or expectation the origin refuses, a header value
/// the application fails on): `400`, `411`-`413`, `415`-`417`, `431`, and `500`, which is what
/// frameworks answer when a request makes the application throw. (A `414` answers a target,
/// which is keyed; `502`-`504` describe the origin's or a gateway's own state and stay
/// storable when the origin says so.)
fn provokable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 411..=413 | 415..=417 | 431 | 500)
}

/// RFC 9111 freshness for a shared cache: (time to live from now, age already accrued).
fn shared_freshness(
    config: &Config,
    request: &RequestHead<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
) -> Result<(Duration, Duration), NoCacheReason> {
    if status == StatusCode::NOT_MODIFIED {
        return Err(NoCacheReason::Status);
    }
    let explicit = cc.no_cache
        || cc.public
        || cc.s_maxage.is_some()
        || cc.max_age.is_some()
        || headers.contains_key(header::EXPIRES);
    let heuristic = headers.contains_key(header::LAST_MODIFIED);
    if !explicit && !heuristic {
        // No freshness information at all: the operator's default, for the listed statuses.
        return if config.statuses.contains(&status) {
            default_ttl(config, request).map(|ttl| (ttl, Duration::ZERO))
        } else {
            Err(NoCacheReason::Status)
        };
    }
    // Errors a client can provoke with the request alone (a malformed or oversized header, a
    // failed precondition) are never shared, however fresh the origin says they are,
    // unless the operator lists the status: stored, one client's bad request would be
    // everyone's answer (cache-poisoned denial of service).
    if provokable(status) && !config.statuses.contains(&status) {
        return Err(NoCacheReason::Status);
    }
    // Any other final status may be stored when the origin says for how long (RFC 9111 §3);
    // the crate only knows the classic list, so explicit freshness is evaluated as for a 200.
    let evaluated_status = if explicit { StatusCode::OK } else { status };
    let headers = normalized_for_policy(headers, cc, status, config);
    let now = SystemTime::now();
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let policy = CachePolicy::new_options(
        &PolicyRequest(request),
        &PolicyResponse(evaluated_status, &headers),
        now,
        options,
    );
    if !policy.is_storable() {
        return Err(NoCacheReason::NotStorable);
    }
    Ok((policy.time_to_live(now), policy.age(now)))
}

/// The response headers as `http-cache-semantics` should see them. That crate matches
/// directive names case-sensitively and reads `Age` strictly, so `Cache-Control` is rebuilt
/// from our own parse (names lowercased, `proxy-revalidate` as `must-revalidate`: see the
/// module docs) and `Age` is reduced to its first value when that is a number (RFC 9111 §5.1),
/// else dropped. Dates are rewritten as [`normalize_dates`] says.
fn normalized_for_policy(
    headers: &HeaderMap,
    cc: &CacheControl,
    status: StatusCode,
    config: &Config,
) -> HeaderMap {
    let mut copy = headers.clone();
    // What `decide` already allowed, the crate must not refuse again: `no-store` lifted by
    // `must-understand`, and a `Set-Cookie` the operator opted in to sharing (the crate
    // wants `public` for it).
    let lifted = cc.must_understand && understood(status);
    if config.share_set_cookie {
        copy.remove(header::SET_COOKIE);
    }
    let rebuilt: Vec<String> = directives(headers.get_all(header::CACHE_CONTROL))
        .filter(|(name, _)| !(lifted && name == "no-store"))
        .map(|(name, arg)| {
            let name = if name == "proxy-revalidate" && !cc.must_revalidate {
                "must-revalidate".to_owned()
            } else {
                name
            };
            match arg {
                Some(arg)
                    if arg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                {
                    format!("{name}={arg}")
                }
                Some(arg) => format!("{name}=\"{}\"", arg.replace('"', "")),
                None => name,
            }
        })
        .collect();
    copy.remove(header::CACHE_CONTROL);
    if let Ok(value) = http::HeaderValue::from_str(&rebuilt.join(", ")) {
        if !rebuilt.is_empty() {
            copy.insert(header::CACHE_CONTROL, value);
        }
    }
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| http::HeaderValue::from_str(v.trim_start_matches('0')).ok());
    copy.remove(header::AGE);
    if let Some(Some(age)) = age {
        if !age.is_empty() {
            copy.insert(header::AGE, age);
        }
    }
    normalize_dates(&mut copy);
    copy
}

/// Rewrites the dates `http-cache-semantics` reads into IMF-fixdate, the one form its parser
/// (RFC 2822, more lenient than RFC 9110 in some ways and stricter in others) reads as HTTP
/// means it, after reading them with [`crate::http::date`]. An `Expires` that is not one valid
/// HTTP-date (or is sent twice) becomes `0`, "already expired" (RFC 9111 §5.3); an invalid
/// `Date` or `Last-Modified` is dropped, as if absent (the receipt time then stands for `Date`,
/// and no heuristic freshness is drawn from a modification time nobody can read).
fn normalize_dates(headers: &mut HeaderMap) {
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        let mut values = headers.get_all(&name).iter();
        let parsed = match (values.next(), values.next()) {
            (None, _) => continue,
            (Some(value), None) => crate::http::date::parse(value.as_bytes()),
            (Some(_), Some(_)) => None,
        };
        let rewritten =
            parsed.and_then(|t| http::HeaderValue::from_str(&crate::http::date::format(t)).ok());
        headers.remove(&name);
        match (rewritten, name == header::EXPIRES) {
            (Some(value), _) => {
                headers.insert(name, value);
            }
            (None, true) => {
                headers.insert(name, http::HeaderValue::from_static("0"));
            }
            (None, false) => {}
        }
    }
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

    fn config(mode: CacheMode) -> Config {
        crate::CacheLayer::builder(crate::MemoryStore::new(1 << 20))
            .mode(mode)
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap()
            .config()
            .clone()
    }

    fn decide_for(
        config: &Config,
        authorized: bool,
        status: u16,
        response: &HeaderMap,
    ) -> Decision {
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
}
