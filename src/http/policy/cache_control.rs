//! Reading `Cache-Control`-like fields: the response directives this cache acts on, and the
//! statuses whose caching rules this cache implements (for `must-understand`).

use crate::http::config::Config;
use http::{header, HeaderMap, StatusCode};

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
pub(super) fn directives<'a>(
    values: header::GetAll<'a, http::HeaderValue>,
) -> impl Iterator<Item = (String, Option<&'a str>)> {
    values
        .into_iter()
        // A value that is not visible ASCII cannot carry directives we understand.
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_directives)
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, arg)| (name.to_ascii_lowercase(), arg.map(|a| a.trim_matches('"'))))
}

/// One field value's directives as written: (name, argument), each trimmed of whitespace,
/// the name's case and the argument's quotes kept.
pub(super) fn split_directives(value: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    value
        .split(',')
        .map(|directive| match directive.split_once('=') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (directive.trim(), None),
        })
}

pub(super) fn seconds(arg: &str) -> Option<u64> {
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

/// Statuses whose caching requirements this cache implements, so that `must-understand` may
/// lift `no-store` for them: those RFC 9110 §15.1 lets caches store heuristically (`206` is
/// judged as a `200` by [`decide`](super::decide), its combination rules being `range`'s).
pub(super) fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}
