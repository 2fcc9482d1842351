//! Single byte ranges answered from a stored complete response (RFC 9110 §14).
//!
//! A cache that holds the whole representation can answer `Range: bytes=…` itself, with a
//! `206` whose body is a zero-copy slice of the stored body. Only one range is served;
//! anything else (several ranges, other units, a stale `If-Range`, an unsatisfiable range) is
//! answered with the whole `200`, which RFC 9110 §14.2 allows a server to do.

use http::header::{self, HeaderMap, HeaderValue};
use std::ops::Range;

/// The byte range of a `len`-byte body that `request` asks for, if it is one satisfiable
/// range and `If-Range` (when present) names the stored response's strong `etag`.
pub(crate) fn requested(
    request: &HeaderMap,
    len: usize,
    etag: Option<&HeaderValue>,
) -> Option<Range<usize>> {
    let mut values = request.get_all(header::RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let strong = etag.filter(|tag| !tag.as_bytes().starts_with(b"W/"))?;
        if if_range != strong {
            return None;
        }
    }
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<usize> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (start, end) = if first.trim().is_empty() {
        let suffix = number(last)?;
        if suffix == 0 {
            return None;
        }
        (len - suffix.min(len), len - 1)
    } else {
        let start = number(first)?;
        let end = if last.trim().is_empty() {
            len - 1
        } else {
            number(last)?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some(start..end + 1)
}

/// The `Content-Range` value for `range` of a `len`-byte body.
pub(crate) fn content_range(range: &Range<usize>, len: usize) -> HeaderValue {
    let value = format!("bytes {}-{}/{len}", range.start, range.end - 1);
    // Digits, a dash and a slash are always a valid header value.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, len: usize) -> Option<Range<usize>> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, value.parse().unwrap());
        requested(&headers, len, None)
    }

    #[test]
    fn single_ranges_are_parsed_and_clamped() {
        assert_eq!(range("bytes=0-4", 10), Some(0..5));
        assert_eq!(range("bytes=5-", 10), Some(5..10));
        assert_eq!(range("bytes=-3", 10), Some(7..10));
        assert_eq!(range("bytes=-30", 10), Some(0..10));
        assert_eq!(range("bytes=8-100", 10), Some(8..10));
        assert_eq!(range("Bytes = 1-1", 10), Some(1..2));
    }

    #[test]
    fn anything_else_gets_the_whole_response() {
        for value in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=a-b",
            "bytes=0x1-2",
        ] {
            assert_eq!(range(value, 10), None, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, "bytes=0-1".parse().unwrap());
        headers.insert(header::IF_RANGE, "\"old\"".parse().unwrap());
        let etag = HeaderValue::from_static("\"new\"");
        assert_eq!(requested(&headers, 10, Some(&etag)), None);
        let same = HeaderValue::from_static("\"old\"");
        assert_eq!(requested(&headers, 10, Some(&same)), Some(0..2));
        assert_eq!(content_range(&(0..2), 10), "bytes 0-1/10");
    }
}
