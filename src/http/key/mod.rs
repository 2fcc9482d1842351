//! Canonical request keys.
//!
//! A request is reduced to `GET \n scheme \n authority \n path \n ?query` (HEAD shares
//! GET's class, so a HEAD is answered from the GET entry), hashed with SHA-256 (its first 128
//! bits) and laid out as
//! `{prefix}:{<32 hex digits>}:e`. A fixed-length hex hash keeps user input (globs, separators,
//! huge URLs) out of Redis key names, and the `{…}` hash tag puts an entry and its lock in one
//! Redis Cluster slot so they can be used together in one script.
//!
//! What the response varies on (`Vary`) is resolved in a second step: for a resource that
//! varies, the primary key `…:e` holds a [`VaryIndex`](crate::http::entry::VaryIndex) naming the
//! varied headers, and each variant lives at `…:e:<hex>`, named by the index's generation and
//! a hash of the request's values for those headers. Resources that do not vary cost one read.
//!
//! Both hashes are SHA-256, not a fast non-cryptographic hash: a key or variant that a client
//! could make collide with another's would let it replace what the other is served (a value
//! hashing like a victim's `Accept-Language` under 64-bit xxh3 is found in microseconds).
//! Finding a second request with the same truncated SHA-256 is out of reach, and with the
//! CPU's SHA extensions one key costs well under a microsecond.

use http::request::Parts;
use sha2::{Digest, Sha256};
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// A user-supplied replacement for the canonical key material. Returning `None` makes the
/// request bypass the cache. The returned string is hashed and prefixed like the canonical one.
pub type KeyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// A user-supplied test that sends a request past the cache when it returns `true`.
pub type BypassFn = dyn Fn(&Parts) -> bool + Send + Sync;

/// The store keys of one cached resource (or of one variant of it).
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// `{prefix}:{hash}:e`, then `:<variant hex>` for a variant.
    entry: String,
    /// Length of `{prefix}:{hash}`.
    base_len: usize,
    hash: u128,
    variant: u64,
}

impl CacheKey {
    /// The key under which the response entry is stored: `{prefix}:{hash}:e`, or
    /// `{prefix}:{hash}:e:<variant>` for one variant of a resource that varies.
    pub fn entry_key(&self) -> &str {
        &self.entry
    }

    /// The resource's primary key, `{prefix}:{hash}:e`: its entry, or its vary index.
    pub fn primary_key(&self) -> &str {
        &self.entry[..self.base_len + 2]
    }

    /// The key of the fill lock for this entry: `{prefix}:{hash}:l` (plus the variant).
    pub fn lock_key(&self) -> String {
        let mut key = self.entry.clone();
        key.replace_range(self.base_len + 1..self.base_len + 2, "l");
        key
    }

    /// The 128-bit hash of the canonical request.
    pub fn hash(&self) -> u128 {
        self.hash
    }

    /// Identifies this key's fill among the process's running fills (resource and variant).
    pub(crate) fn flight(&self) -> u128 {
        self.hash ^ u128::from(self.variant)
    }

    /// The key of one variant, named by a vary index generation and a variant hash.
    pub(crate) fn variant(&self, generation: u64, variant: u64) -> CacheKey {
        let name = generation ^ variant;
        let mut entry = String::with_capacity(self.base_len + 2 + 17);
        entry.push_str(self.primary_key());
        // Writing to a String cannot fail.
        let _ = write!(entry, ":{name:016x}");
        CacheKey {
            entry,
            base_len: self.base_len,
            hash: self.hash,
            variant: name | 1,
        }
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entry)
    }
}

/// Derives [`CacheKey`]s from requests.
#[derive(Clone)]
pub(crate) struct KeyMaker {
    pub(crate) prefix: Arc<str>,
    pub(crate) normalize_query: bool,
    pub(crate) custom: Option<Arc<KeyFn>>,
    pub(crate) bypass: Option<Arc<BypassFn>>,
}

impl KeyMaker {
    /// The key for a request, or `None` when a custom key function opts it out.
    pub(crate) fn derive(&self, parts: &Parts) -> Option<CacheKey> {
        if self.bypass.as_ref().is_some_and(|bypass| bypass(parts)) {
            return None;
        }
        let hash = match &self.custom {
            Some(custom) => first_128(Sha256::digest(custom(parts)?.as_bytes())),
            None => self.canonical_hash(parts),
        };
        Some(self.key_from_hash(hash))
    }

    fn key_from_hash(&self, hash: u128) -> CacheKey {
        let mut entry = String::with_capacity(self.prefix.len() + 38);
        entry.push_str(&self.prefix);
        entry.push_str(":{");
        // Writing to a String cannot fail.
        let _ = write!(entry, "{hash:032x}");
        entry.push('}');
        let base_len = entry.len();
        entry.push_str(":e");
        CacheKey {
            entry,
            base_len,
            hash,
            variant: 0,
        }
    }

    fn canonical_hash(&self, parts: &Parts) -> u128 {
        let mut hasher = Sha256::new();
        hasher.update(b"GET\n");
        // The scheme the client used (an `https` page may differ from the `http` one, e.g. a
        // redirect to https); an origin-form target counts as `http`.
        update_lowercase(
            &mut hasher,
            parts.uri.scheme_str().unwrap_or("http").as_bytes(),
        );
        hasher.update(b"\n");
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()))
            .unwrap_or_default();
        update_lowercase(&mut hasher, authority);
        hasher.update(b"\n");
        hasher.update(parts.uri.path().as_bytes());
        hasher.update(b"\n");
        // `?` marks a query, so `/x?` and `/x` stay apart.
        match parts.uri.query() {
            Some(query) if self.normalize_query => {
                hasher.update(b"?");
                update_sorted_query(&mut hasher, query);
            }
            Some(query) => {
                hasher.update(b"?");
                hasher.update(query.as_bytes());
            }
            None => {}
        }
        first_128(hasher.finalize())
    }
}

/// The URL an entry records for purges by URL prefix: `scheme://authority/path?query`, with
/// the scheme (`http` for an origin-form target) and the authority (from the target, else
/// `Host`) in lower case, as the key reads them, and the path and query as sent.
pub(crate) fn url_of(uri: &http::Uri, headers: &http::HeaderMap) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| headers.get(http::header::HOST).map(|h| h.as_bytes()))
        .unwrap_or_default();
    let authority = String::from_utf8_lossy(authority);
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + path_and_query.len());
    url.push_str(&scheme.to_ascii_lowercase());
    url.push_str("://");
    url.push_str(&authority.to_ascii_lowercase());
    url.push_str(path_and_query);
    url
}

/// Normalises a URL prefix for a purge the way [`url_of`] writes URLs: scheme and authority
/// lower-cased. `None` unless it is `http://` or `https://` followed by a host.
pub(crate) fn normalize_url_prefix(prefix: &str) -> Option<String> {
    let (scheme, rest) = prefix.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if authority.is_empty() || authority.bytes().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    Some(format!(
        "{scheme}://{}{path}",
        authority.to_ascii_lowercase()
    ))
}

/// Hosts are case-insensitive; hash them lowercased without allocating for the common case.
fn update_lowercase(hasher: &mut Sha256, bytes: &[u8]) {
    if bytes.iter().any(u8::is_ascii_uppercase) {
        hasher.update(bytes.to_ascii_lowercase());
    } else {
        hasher.update(bytes);
    }
}

/// Hashes the query with its parameters sorted by name, so `?b=2&a=1` and `?a=1&b=2` name the
/// same resource. Nothing else is merged: the sort is stable, so repeated names keep their
/// order (`?id=1&id=2` and `?id=2&id=1` can get different answers from a last-wins origin),
/// and each parameter is hashed as written (`a` is not `a=`, an empty one is kept).
///
/// Names are compared as an origin may read them: percent-decoded, `+` as a space, and
/// ASCII case ignored (ASP.NET's names are case-insensitive). Names equal under that reading
/// are "repeated" and keep their order, so `?%61=evil&a=good` and `?a=good&%61=evil` (both
/// `a` to the origin, in opposite orders) never share a key.
fn update_sorted_query(hasher: &mut Sha256, query: &str) {
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_by_cached_key(|pair| {
        origin_name(pair.split_once('=').map_or(*pair, |(name, _)| name))
    });
    for (i, pair) in pairs.iter().enumerate() {
        if i > 0 {
            hasher.update(b"&");
        }
        hasher.update(pair.as_bytes());
    }
}

/// A query parameter's name as an origin may read it (see [`update_sorted_query`]); borrowed
/// when it needs no decoding and is lowercase already.
fn origin_name(name: &str) -> std::borrow::Cow<'_, [u8]> {
    let bytes = name.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'%' | b'+') || b.is_ascii_uppercase())
    {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    i += 2;
                    // Two hex digits make one byte: `high * 16 + low` is at most 255.
                    u8::try_from(high * 16 + low).unwrap_or(b'%')
                }
                _ => b'%',
            },
            b'+' => b' ',
            other => other,
        };
        decoded.push(byte.to_ascii_lowercase());
        i += 1;
    }
    std::borrow::Cow::Owned(decoded)
}

/// The header names listed by a response's `Vary` fields (`*` included, for the caller to
/// refuse).
pub(crate) fn vary_names(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Request fields defined as comma-separated lists (RFC 9110), whose field lines may be
/// combined and whose elements' surrounding whitespace carries no meaning.
const LIST_FIELDS: [&str; 4] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
];

/// A hash of the request's values for the headers a response varies on; 0 means "no Vary".
///
/// For the list-based `Accept*` fields, values are normalised as RFC 9111 §4.1 allows: all
/// field lines are combined into one list and the optional whitespace around its elements is
/// dropped, so `gzip, br` and `gzip,br` select the same variant. Every other field is hashed
/// line by line (whitespace around commas still dropped): a singleton field such as
/// `User-Agent` or `Cookie` sent as two lines (which an origin reading only the first would
/// answer differently) never hashes like the one line an innocent client sends. Case and
/// order are kept.
pub(crate) fn variant_hash<'a>(
    names: impl Iterator<Item = &'a str>,
    request: &http::HeaderMap,
) -> u64 {
    let mut hasher: Option<Sha256> = None;
    for name in names {
        let hasher = hasher.get_or_insert_with(Sha256::new);
        update_lowercase(hasher, name.as_bytes());
        hasher.update(b":");
        if name.eq_ignore_ascii_case("accept-language") {
            if let Some(languages) = language_preferences(request) {
                for (range, q) in languages {
                    hasher.update(range.as_bytes());
                    hasher.update(q.to_be_bytes());
                    hasher.update(b",");
                }
                hasher.update(b"\n");
                continue;
            }
        }
        let list = LIST_FIELDS.iter().any(|l| l.eq_ignore_ascii_case(name));
        for value in request.get_all(name) {
            // Each element with its surrounding whitespace dropped.
            for element in value.as_bytes().split(|b| *b == b',') {
                hasher.update(element.trim_ascii());
                hasher.update(b",");
            }
            // A field that is not a list: its line ends with a separator no header value can
            // hold, so line boundaries are hashed too.
            if !list {
                hasher.update(b"\0");
            }
        }
        hasher.update(b"\n");
    }
    // 0 is reserved for "no Vary", so a real hash that happens to be 0 becomes 1.
    hasher.map_or(0, |h| {
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first).max(1)
    })
}

/// A request's `Accept-Language` in a canonical form, so that requests saying the same thing
/// select the same variant (RFC 9111 §4.1 allows normalising "in a way that is known to have
/// identical semantics"): language ranges lowercased (they are case-insensitive, RFC 4647
/// §2.1), `q` read as a number (`q=1.0` is `q=1` is no `q`, in thousandths), and the list
/// ordered by weight, then by range. Order among ranges of equal weight is dropped: RFC 9110
/// §12.5.4 says it "cannot be relied upon". So a request can only ever be served a variant
/// chosen for a request naming the same languages at the same weights, one it declared
/// acceptable. `None` (hash the field as written) when any element is not a well-formed
/// `language-range [;q=qvalue]`.
fn language_preferences(request: &http::HeaderMap) -> Option<Vec<(String, u16)>> {
    let mut languages = Vec::new();
    for value in request.get_all(http::header::ACCEPT_LANGUAGE) {
        for element in value.to_str().ok()?.split(',') {
            let element = element.trim_matches([' ', '\t']);
            if element.is_empty() {
                continue;
            }
            let mut params = element.split(';');
            let range = params.next()?.trim_matches([' ', '\t']);
            let is_range = range == "*"
                || (!range.is_empty()
                    && range.split('-').all(|sub| {
                        (1..=8).contains(&sub.len())
                            && sub.bytes().all(|b| b.is_ascii_alphanumeric())
                    }));
            if !is_range {
                return None;
            }
            let q = match params.next() {
                None => 1000,
                Some(param) => {
                    let (name, value) = param.trim_matches([' ', '\t']).split_once('=')?;
                    if !name.eq_ignore_ascii_case("q") || params.next().is_some() {
                        return None;
                    }
                    qvalue(value)?
                }
            };
            languages.push((range.to_ascii_lowercase(), q));
        }
    }
    languages.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    languages.dedup();
    Some(languages)
}

/// The one language a request prefers above all others: the highest-weighted range when no
/// other shares its weight, and it is a language (not `*`, not refused with `q=0`).
pub(crate) fn top_language(request: &http::HeaderMap) -> Option<String> {
    let languages = language_preferences(request)?;
    let mut ranked = languages.into_iter();
    let (top, q) = ranked.next()?;
    let unique = ranked.next().is_none_or(|(_, next)| next < q);
    (unique && q > 0 && top != "*").then_some(top)
}

/// Whether a request's `Accept-Language` is well formed and accepts `language` (a range equal
/// to it, case-insensitively, with a weight above zero).
pub(crate) fn accepts_language(request: &http::HeaderMap, language: &str) -> bool {
    language_preferences(request).is_some_and(|languages| {
        languages
            .iter()
            .any(|(range, q)| *q > 0 && range.eq_ignore_ascii_case(language))
    })
}

/// The variant name of a resource's language alias: where the representation the origin
/// labelled `Content-Language: <language>` is also kept, for requests that prefer exactly
/// that language above all others (see `write::language_alias`). Its hash input starts
/// with a NUL, which no header name can, so it is never a [`variant_hash`].
pub(crate) fn language_alias(language: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"\0content-language:");
    hasher.update(language.to_ascii_lowercase().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

/// An RFC 9110 §12.4.2 qvalue (`0`, `0.xyz`, `1`, `1.000`), in thousandths.
fn qvalue(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The first 128 bits of a SHA-256 digest.
fn first_128(digest: impl AsRef<[u8]>) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests;
