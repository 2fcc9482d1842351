//! Stored parts in a fill: what the origin is asked for to extend a stored `206`, and what
//! the cache keeps of the origin's answer (RFC 9111 §3.3-3.4).
//!
//! When to forward a range. A cold range request still fetches the whole representation (one
//! origin call, after which every range is a hit). A range request that a stored part does
//! not hold asks the origin for [`range::to_fetch`]: the client's range, reaching to the
//! stored part across any gap, with `If-Range` naming the part's strong `ETag`, so a
//! representation that changed comes back whole (`200`) rather than as a piece of something
//! else. The origin is never asked for more than the client asked plus that gap, and its
//! answer alone always answers the client, so a part that cannot be combined costs nothing
//! but the combination. A request without `Range` (or one whose `If-Range` does not match)
//! fetches the whole representation, as a cold miss does: the client needs every byte, and
//! only a `200` can be given to it. A key whose last answer could not be stored (hit-for-miss,
//! most often too large) forwards the client's own `Range` and `If-Range` (`fetch`): a whole
//! fetch there would only make the origin send, and the client receive, bytes nobody asked
//! for. Whatever carried a `Range` to the origin, only its `200` or `206` may be kept.
//!
//! Every number a `206` carries is checked against its bytes ([`range::received`]); a part
//! that disagrees, or whose complete length would not fit an entry, is passed to the client
//! as it came and never kept.

use crate::http::conditional;
use crate::http::config::Config;
use crate::http::entry::Entry;
use crate::http::policy::{self, Decision, Lifetime, RequestHead};
use crate::http::range::{self, Part};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use std::ops::Range;
use tokio::sync::OwnedSemaphorePermit;

/// What a fill asks the origin for on a stored part's account.
pub(crate) struct Completion {
    /// The bytes to ask for.
    pub(crate) range: Range<usize>,
    /// The stored part's strong `ETag`: the representation the answer must still be.
    pub(crate) etag: HeaderValue,
}

impl Completion {
    /// The range request for the stored part `stored`, when `request` asks for one range the
    /// part does not hold and the part has a strong validator to combine under (RFC 9110
    /// §15.3.7.3 allows no other).
    pub(crate) fn for_request(stored: Option<&Entry>, request: &HeaderMap) -> Option<Self> {
        let stored = stored?;
        let part = range::stored(&stored.headers, &stored.body)?;
        let etag = range::strong_etag(&stored.headers)?;
        let wanted = range::requested(request, part.complete, Some(etag))?;
        (!part.holds(&wanted)).then(|| Self {
            range: range::to_fetch(&part, &wanted),
            etag: etag.clone(),
        })
    }

    /// Puts the range and its condition on the origin request (whose own `Range` and
    /// `If-Range` the fill removed).
    pub(crate) fn ask(&self, request: &mut HeaderMap) {
        request.insert(header::RANGE, range::range_request(&self.range));
        request.insert(header::IF_RANGE, self.etag.clone());
    }
}

/// What a fill keeps of an answer.
pub(crate) enum Kept {
    /// The answer as it came: not a `206`, or a part kept alone.
    AsReceived,
    /// The answer made into another entry: a part joined with the stored one, or a `206`
    /// holding every byte, kept as the complete `200` it is.
    Made(Box<Made>),
    /// A `206` whose numbers disagree with its bytes, or too large to complete: not kept.
    Refused,
}

/// An entry made from a `206`: status, headers and body (zero-copy slices, in order).
pub(crate) struct Made {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<Bytes>,
    pub(crate) lifetime: Lifetime,
    /// The fill budget's share for the stored part's bytes, copied into the new entry.
    pub(crate) budget: Option<OwnedSemaphorePermit>,
}

/// What to keep of an answer `response` with `body`, given the stored part the fill meant to
/// extend (if any) and `reserve`, which takes the fill budget for bytes copied from it.
pub(crate) fn keep(
    config: &Config,
    stored: Option<&Entry>,
    response: &http::response::Parts,
    body: &[Bytes],
    request: &RequestHead<'_>,
    reserve: impl FnOnce(usize) -> Option<OwnedSemaphorePermit>,
) -> Kept {
    if response.status != StatusCode::PARTIAL_CONTENT {
        return Kept::AsReceived;
    }
    let body_len = body.iter().map(Bytes::len).sum();
    let Some(new) = range::received(&response.headers, body_len, config.max_body_bytes) else {
        return Kept::Refused;
    };
    let joined = stored.and_then(|old| {
        // One representation only: the same strong validator on both (RFC 9111 §3.4).
        let etag = range::strong_etag(&old.headers)?;
        if range::strong_etag(&response.headers) != Some(etag) {
            return None;
        }
        let old_part = range::stored(&old.headers, &old.body)?;
        let (union, pieces) = range::combine(&old_part, &old.body, &new, body)?;
        let budget = reserve(old.body.len())?;
        // The new answer's fields replace the stored ones, all but `Content-Range` (and the
        // lengths, which the union states anew).
        let headers = conditional::merge_not_modified(&old.headers, &response.headers);
        Some((union, headers, pieces, Some(budget)))
    });
    let (union, headers, pieces, budget) = match joined {
        Some(joined) => joined,
        None if new.is_whole() => (new, response.headers.clone(), body.to_vec(), None),
        None => return Kept::AsReceived,
    };
    let (status, headers) = restated(headers, &union);
    // Judged again on the headers it is kept with (the stored fields an answer left alone
    // count too).
    match policy::decide(config, request, status, &headers) {
        Decision::Store(lifetime) => Kept::Made(Box::new(Made {
            status,
            headers,
            body: pieces,
            lifetime,
            budget,
        })),
        Decision::Skip(_) => Kept::AsReceived,
    }
}

/// The status and headers of an entry holding `part`: a `200` with the complete length when
/// it holds every byte, else a `206` stating its range.
fn restated(mut headers: HeaderMap, part: &Part) -> (StatusCode, HeaderMap) {
    headers.remove(header::CONTENT_RANGE);
    headers.remove(header::CONTENT_LENGTH);
    if part.is_whole() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.complete));
        (StatusCode::OK, headers)
    } else {
        let value = range::content_range(&part.range, part.complete);
        headers.insert(header::CONTENT_RANGE, value);
        (StatusCode::PARTIAL_CONTENT, headers)
    }
}
