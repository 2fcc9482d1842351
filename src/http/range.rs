//! Byte ranges (RFC 9110 §14, RFC 9111 §3.3-3.4): the range a request asks for, the part of a
//! representation a stored `206` holds, and combining a new part with a stored one.
//!
//! A cache that holds the whole representation answers `Range: bytes=…` itself, with a `206`
//! whose body is a zero-copy slice of the stored body. Only one range is served; anything
//! else (several ranges, other units, a stale `If-Range`, an unsatisfiable range) is answered
//! with the whole `200`, which RFC 9110 §14.2 allows a server to do.
//!
//! A stored `206` (a *part*) holds one continuous range of a representation whose complete
//! length it states. It answers only requests for a single range lying wholly inside it
//! (RFC 9111 §3.3: an incomplete response never answers anything else), and never a request
//! without `Range`, nor a `HEAD`. Every number in it is checked against its body each time it
//! is used, so a part whose `Content-Range` disagrees with its bytes answers nothing.
//!
//! Two parts combine (RFC 9111 §3.4, RFC 9110 §15.3.7.3) only when both carry the same strong
//! `ETag`, state the same complete length, touch or overlap, and agree byte for byte where
//! they overlap; the union is built from zero-copy slices of both and copied once, into the
//! new entry. A union covering the whole length is a complete `200`.

use crate::http::entry::Entry;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
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

/// A decimal number of ASCII digits only (no sign, no spaces inside), within `usize`, with
/// spaces around it allowed (as `Range` values are written by hand).
fn number(s: &str) -> Option<usize> {
    digits(s.trim())
}

/// A decimal number of ASCII digits only, nothing else, within `usize`.
fn digits(s: &str) -> Option<usize> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

/// The `Content-Range` value for `range` of a `len`-byte body.
pub(crate) fn content_range(range: &Range<usize>, len: usize) -> HeaderValue {
    let value = format!("bytes {}-{}/{len}", range.start, range.end - 1);
    // Digits, a dash and a slash are always a valid header value.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes */0"))
}

/// The place of a part's bytes in its representation, and the representation's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// Which bytes the part holds (never empty, always within `complete`).
    pub(crate) range: Range<usize>,
    /// The complete length of the representation.
    pub(crate) complete: usize,
}

impl Part {
    /// Whether the part holds every byte of `range`.
    pub(crate) fn holds(&self, range: &Range<usize>) -> bool {
        self.range.start <= range.start && range.end <= self.range.end
    }

    /// Whether the part is the whole representation.
    pub(crate) fn is_whole(&self) -> bool {
        self.range.start == 0 && self.range.end == self.complete
    }
}

/// The part a response's `Content-Range` states, read strictly: exactly one field value,
/// `bytes first-last/complete` with digits only, `first <= last < complete` (a `*` complete
/// length, or anything else, is `None`).
fn stated(headers: &HeaderMap) -> Option<Part> {
    let mut values = headers.get_all(header::CONTENT_RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, complete) = rest.trim_start().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, complete) = (digits(first)?, digits(last)?, digits(complete)?);
    (first <= last && last < complete).then_some(Part {
        range: first..last.checked_add(1)?,
        complete,
    })
}

/// The part a `206` holds, when the cache may keep it: its `Content-Range` is well formed
/// ([`stated`]) and says exactly as many bytes as the body has, any `Content-Length` says the
/// same, and the complete representation would fit in `limit` bytes (a part is kept only on
/// the way to a complete entry the cache could store). A multipart answer has no
/// `Content-Range` of its own and is never a part.
pub(crate) fn received(headers: &HeaderMap, body_len: usize, limit: u64) -> Option<Part> {
    let part = stated(headers)?;
    let length_agrees = match headers.get(header::CONTENT_LENGTH) {
        None => true,
        Some(value) => value.to_str().ok().and_then(digits) == Some(body_len),
    };
    (part.range.len() == body_len && length_agrees && part.complete as u64 <= limit).then_some(part)
}

/// Whether a stored response may answer `request` at all: anything but a part may (its own
/// rules decide how), a part only a `GET` for a range it holds ([`from_part`]).
pub(crate) fn answers(entry: &Entry, request: &HeaderMap, head: bool) -> bool {
    entry.status != StatusCode::PARTIAL_CONTENT
        || (!head && from_part(&entry.headers, &entry.body, request).is_some())
}

/// The part a stored `206` holds, checked against its body again (a value from the store is
/// not trusted to be what was written): `None` when it disagrees, and then it answers nothing.
pub(crate) fn stored(headers: &HeaderMap, body: &Bytes) -> Option<Part> {
    stated(headers).filter(|part| part.range.len() == body.len())
}

/// The slice of a stored part's body that answers `request`, with the range it is and the
/// complete length: `Some` only for one satisfiable range (its `If-Range`, if any, naming the
/// part's strong `ETag`) lying wholly inside the part.
pub(crate) fn from_part(
    headers: &HeaderMap,
    body: &Bytes,
    request: &HeaderMap,
) -> Option<(Bytes, Range<usize>, usize)> {
    let part = stored(headers, body)?;
    let wanted = requested(request, part.complete, headers.get(header::ETAG))?;
    part.holds(&wanted).then(|| {
        let offset = part.range.start;
        let slice = body.slice(wanted.start - offset..wanted.end - offset);
        (slice, wanted, part.complete)
    })
}

/// The response's `ETag` when it is one strong validator (`"…"`, not `W/`), the only kind
/// parts may be combined under (RFC 9110 §8.8.1, §15.3.7.3).
pub(crate) fn strong_etag(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut values = headers.get_all(header::ETAG).iter();
    let etag = values.next()?;
    let bytes = etag.as_bytes();
    let quoted = bytes.len() >= 2 && bytes.starts_with(b"\"") && bytes.ends_with(b"\"");
    (values.next().is_none() && quoted).then_some(etag)
}

/// The range to ask the origin for (with `If-Range`) so that, with the stored part, one
/// continuous part holds `wanted`: `wanted` itself, reaching back (or forward) to the stored
/// part when a gap lies between them. It always holds `wanted`, so the answer alone serves the
/// client even when it cannot be combined. `wanted` is not held by `stored`.
pub(crate) fn to_fetch(stored: &Part, wanted: &Range<usize>) -> Range<usize> {
    if wanted.start >= stored.range.start {
        // Reaches past the stored part's end.
        wanted.start.min(stored.range.end)..wanted.end
    } else if wanted.end <= stored.range.end {
        // Starts before the stored part.
        wanted.start..wanted.end.max(stored.range.start)
    } else {
        wanted.clone()
    }
}

/// The `Range` request value for `range`.
pub(crate) fn range_request(range: &Range<usize>) -> HeaderValue {
    let value = format!("bytes={}-{}", range.start, range.end - 1);
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes=0-0"))
}

/// Two parts of one representation combined: the union's place and its body as zero-copy
/// slices of both, in order. `None` unless they state the same complete length, touch or
/// overlap, and hold the same bytes where they overlap (a part whose bytes differ from the
/// stored ones under the same validator is not one representation, whatever it claims).
/// The caller has checked that both carry the same strong validator.
pub(crate) fn combine(
    old: &Part,
    old_body: &Bytes,
    new: &Part,
    new_body: &[Bytes],
) -> Option<(Part, Vec<Bytes>)> {
    if old.complete != new.complete
        || new.range.start > old.range.end
        || old.range.start > new.range.end
    {
        return None;
    }
    let overlap = old.range.start.max(new.range.start)..old.range.end.min(new.range.end);
    if !overlap.is_empty() {
        let mine = &old_body[overlap.start - old.range.start..overlap.end - old.range.start];
        let theirs = window(
            new_body,
            overlap.start - new.range.start..overlap.end - new.range.start,
        );
        if !same_bytes(&theirs, mine) {
            return None;
        }
    }
    let union = old.range.start.min(new.range.start)..old.range.end.max(new.range.end);
    let mut pieces = Vec::with_capacity(new_body.len() + 2);
    if old.range.start < new.range.start {
        pieces.push(old_body.slice(..new.range.start - old.range.start));
    }
    pieces.extend(new_body.iter().filter(|c| !c.is_empty()).cloned());
    if new.range.end < old.range.end {
        pieces.push(old_body.slice(new.range.end - old.range.start..));
    }
    Some((
        Part {
            range: union,
            complete: old.complete,
        },
        pieces,
    ))
}

/// The bytes at `range` of a body held as `chunks`, as zero-copy slices.
fn window(chunks: &[Bytes], range: Range<usize>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for chunk in chunks {
        let (start, end) = (at, at + chunk.len());
        at = end;
        if end <= range.start || start >= range.end {
            continue;
        }
        let from = range.start.max(start) - start;
        let to = range.end.min(end) - start;
        out.push(chunk.slice(from..to));
    }
    out
}

/// Whether `chunks`, read in order, are exactly `expected`.
fn same_bytes(chunks: &[Bytes], expected: &[u8]) -> bool {
    let mut rest = expected;
    for chunk in chunks {
        match rest.strip_prefix(&chunk[..]) {
            Some(tail) => rest = tail,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, len: usize) -> Option<Range<usize>> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, value.parse().unwrap());
        requested(&headers, len, None)
    }

    fn with_content_range(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, value.parse().unwrap());
        headers
    }

    fn part(range: Range<usize>, complete: usize) -> Part {
        Part { range, complete }
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
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
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

    #[test]
    fn a_part_is_kept_only_when_its_content_range_matches_its_body() {
        let ok = with_content_range("bytes 4-8/10");
        assert_eq!(received(&ok, 5, 100), Some(part(4..9, 10)));
        // The suite's own 206: six bytes stated, five sent.
        assert_eq!(received(&with_content_range("bytes 4-9/10"), 5, 100), None);
        for value in [
            "bytes 4-8/*",
            "bytes */10",
            "bytes 8-4/10",
            "bytes 4-10/10",
            "bytes 4-8",
            "items 4-8/10",
            "bytes 4 - 8/10",
            "bytes -4-8/10",
            "bytes 4-8/99999999999999999999999",
        ] {
            assert_eq!(
                received(&with_content_range(value), 5, 100),
                None,
                "{value}"
            );
        }
        // Past the limit (the complete representation could never be stored).
        assert_eq!(received(&ok, 5, 9), None);
        // Two Content-Range fields, or a Content-Length that disagrees.
        let mut two = ok.clone();
        two.append(header::CONTENT_RANGE, "bytes 0-4/10".parse().unwrap());
        assert_eq!(received(&two, 5, 100), None);
        let mut length = ok.clone();
        length.insert(header::CONTENT_LENGTH, "6".parse().unwrap());
        assert_eq!(received(&length, 5, 100), None);
        length.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        assert_eq!(received(&length, 5, 100), Some(part(4..9, 10)));
    }

    #[test]
    fn a_part_answers_only_ranges_inside_it() {
        let headers = with_content_range("bytes 4-8/10");
        let body = Bytes::from_static(b"45678");
        let ask = |value: &str| {
            let mut request = HeaderMap::new();
            request.insert(header::RANGE, value.parse().unwrap());
            from_part(&headers, &body, &request)
        };
        assert_eq!(
            ask("bytes=5-7"),
            Some((Bytes::from_static(b"567"), 5..8, 10))
        );
        assert_eq!(ask("bytes=4-8").map(|a| a.0), Some(body.clone()));
        assert_eq!(ask("bytes=3-5"), None);
        assert_eq!(ask("bytes=6-"), None, "reaches byte 9, not held");
        assert_eq!(ask("bytes=-1"), None);
        assert_eq!(ask("bytes=4-5,6-7"), None);
        assert_eq!(from_part(&headers, &body, &HeaderMap::new()), None);
        // A stored part whose numbers disagree with its body answers nothing.
        let short = Bytes::from_static(b"4567");
        let mut request = HeaderMap::new();
        request.insert(header::RANGE, "bytes=5-6".parse().unwrap());
        assert_eq!(from_part(&headers, &short, &request), None);
    }

    #[test]
    fn the_fetched_range_holds_what_is_wanted_and_joins_the_stored_part() {
        let stored = part(0..5, 10);
        assert_eq!(to_fetch(&stored, &(5..10)), 5..10);
        assert_eq!(to_fetch(&stored, &(3..8)), 3..8);
        assert_eq!(to_fetch(&stored, &(7..9)), 5..9);
        let stored = part(5..8, 10);
        assert_eq!(to_fetch(&stored, &(0..2)), 0..5);
        assert_eq!(to_fetch(&stored, &(2..6)), 2..6);
        assert_eq!(to_fetch(&stored, &(0..10)), 0..10);
        assert_eq!(range_request(&(5..10)), "bytes=5-9");
    }

    #[test]
    fn parts_combine_only_when_they_touch_and_agree() {
        let old = Bytes::from_static(b"01234");
        let joined = |new: &Part, body: &[&'static [u8]]| {
            let chunks: Vec<Bytes> = body.iter().map(|b| Bytes::from_static(b)).collect();
            combine(&part(0..5, 10), &old, new, &chunks).map(|(p, pieces)| (p, pieces.concat()))
        };
        assert_eq!(
            joined(&part(5..10, 10), &[b"56", b"789"]),
            Some((part(0..10, 10), b"0123456789".to_vec()))
        );
        assert_eq!(
            joined(&part(3..7, 10), &[b"3", b"456"]),
            Some((part(0..7, 10), b"0123456".to_vec()))
        );
        assert_eq!(
            joined(&part(1..3, 10), &[b"12"]),
            Some((part(0..5, 10), b"01234".to_vec()))
        );
        assert_eq!(joined(&part(3..7, 10), &[b"X456"]), None, "overlap differs");
        assert_eq!(joined(&part(6..10, 10), &[b"6789"]), None, "gap");
        assert_eq!(joined(&part(5..10, 11), &[b"56789"]), None, "other length");
        let (whole, _) = combine(
            &part(5..10, 10),
            &Bytes::from_static(b"56789"),
            &part(0..5, 10),
            &[Bytes::from_static(b"01234")],
        )
        .unwrap();
        assert!(whole.is_whole());
    }

    #[test]
    fn only_one_quoted_etag_is_strong() {
        let etag = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ETAG, value.parse().unwrap());
            }
            strong_etag(&headers).cloned()
        };
        assert_eq!(etag(&["\"a\""]), Some(HeaderValue::from_static("\"a\"")));
        assert_eq!(etag(&["W/\"a\""]), None);
        assert_eq!(etag(&["a"]), None);
        assert_eq!(etag(&["\"a\"", "\"b\""]), None);
        assert_eq!(etag(&[]), None);
    }
}
