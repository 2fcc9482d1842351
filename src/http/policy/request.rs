//! Request classification: how the cache treats a request before anything is looked up, and
//! the request directives a shared cache honours.

use crate::http::config::{CacheMode, Config};
use crate::http::policy::cache_control::{directives, seconds};
use http::{header, HeaderMap, Method, Uri};

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
