//! Clients' conditional requests answered from the cache (RFC 9110 §13), and the validators a
//! cache sends to revalidate a stale entry with the origin (RFC 9111 §4.3).

use http::header::{self, HeaderMap, HeaderValue};
use std::time::SystemTime;

/// Whether a `GET` with `request` headers is answered `304 Not Modified` by a stored
/// response with `response` headers. `If-None-Match` wins over `If-Modified-Since`.
pub(crate) fn not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = response.get(header::ETAG) else {
            return false;
        };
        // Entity tags are compared as bytes: they may carry obs-text.
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|tag| tag == b"*" || weak_match(tag, etag.as_bytes()));
    }
    let since = request.get(header::IF_MODIFIED_SINCE).and_then(http_date);
    // Without Last-Modified, the response's Date is the best known modification time.
    let modified = response
        .get(header::LAST_MODIFIED)
        .or_else(|| response.get(header::DATE))
        .and_then(http_date);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// Weak comparison (RFC 9110 §8.8.3.2): equal opaque tags, whatever their `W/` prefixes.
fn weak_match(a: &[u8], b: &[u8]) -> bool {
    a.strip_prefix(b"W/").unwrap_or(a) == b.strip_prefix(b"W/").unwrap_or(b)
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    crate::http::date::parse(value.as_bytes())
}

/// The headers a `304` carries (RFC 9110 §15.4.5): those that would be sent with the 200 and
/// guide caches, without the representation's metadata.
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    const KEPT: [header::HeaderName; 7] = [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ];
    let mut headers = HeaderMap::new();
    for name in KEPT {
        for value in stored.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Removes the client's own validators and range, so the origin answers the cache with a full
/// response it can store; the client's conditions are then evaluated against what is stored.
pub(crate) fn strip_client_validators(request: &mut HeaderMap) {
    request.remove(header::IF_NONE_MATCH);
    request.remove(header::IF_MODIFIED_SINCE);
    // Likewise a byte range: the cache fetches the whole response and serves the range from it.
    request.remove(header::RANGE);
    request.remove(header::IF_RANGE);
}

/// Adds the stored response's validators to a request, to revalidate it with the origin.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// The stored headers updated with those of a `304` (RFC 9111 §3.2): each field the 304
/// carries replaces the stored one, except `Content-Length` (the stored body's own) and the
/// framing a hop adds (`Transfer-Encoding`).
pub(crate) fn merge_not_modified(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in update.keys() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        merged.remove(name);
        for value in update.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (header::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_wins() {
        let stored = map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(not_modified(
            &map(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored
        ));
        assert!(not_modified(&map(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(
            &map(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")
            ]),
            &stored
        ));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let stored = map(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]);
        assert!(not_modified(
            &map(&[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", "garbage")]),
            &stored
        ));
    }

    #[test]
    fn a_304_updates_stored_headers_but_not_framing() {
        let stored = map(&[("content-length", "10"), ("etag", "\"a\""), ("x-old", "1")]);
        let merged =
            merge_not_modified(&stored, &map(&[("etag", "\"b\""), ("content-length", "0")]));
        assert_eq!(merged["etag"], "\"b\"");
        assert_eq!(merged["content-length"], "10");
        assert_eq!(merged["x-old"], "1");
    }
}
