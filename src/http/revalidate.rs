//! What a stale entry becomes when the fill's origin call ends: served in place of an origin
//! that failed or cannot be reached (within its windows), or refreshed by the origin's `304`.

use crate::http::conditional;
use crate::http::context::Shared;
use crate::http::entry::{self, Entry};
use crate::http::fetch::{Asked, Fetched, OriginUnreachable};
use crate::http::headers::{CacheOutcome, Detail, Fwd, Verdict};
use crate::http::key;
use crate::http::policy::{self, Decision};
use crate::http::respond::{from_entry, stale_verdict};
use crate::http::write::{encode_filled, Provenance};
use http::{header, HeaderMap, Response, StatusCode};
use std::sync::Arc;

impl Asked<'_> {
    /// The stale entry served in place of a failed origin call (a `5xx`, an error, an
    /// unreachable origin), when its windows allow.
    pub(crate) fn stale_on_failure<B, E>(
        &self,
        result: &Result<Response<B>, E>,
    ) -> Option<Fetched<B, E>> {
        let status = match result {
            Ok(response) if response.status().is_server_error() => response.status(),
            Ok(_) => return None,
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        let unreachable = match result {
            Ok(response) => response.extensions().get::<OriginUnreachable>().is_some(),
            Err(_) => true,
        };
        let stale = self.ctx.stale.as_ref()?;
        let now = entry::unix_now_ms();
        let detail = if stale.meta.within_stale_if_error(now) {
            Detail::StaleIfError
        } else if unreachable && servable_unreachable(self.shared, stale, now) {
            Detail::OriginUnreachable
        } else {
            return None;
        };
        let verdict = stale_verdict(stale, now, Some((Fwd::Stale, Some(status))), detail);
        let reply = Ok(from_entry(
            self.shared,
            Entry::clone(stale),
            false,
            &self.request_headers,
            verdict,
        ));
        Some(Fetched {
            reply,
            filled: None,
            stale_served: Some(Arc::clone(stale)),
        })
    }

    /// The origin confirmed a stale entry (`304`): refresh its headers and freshness.
    pub(crate) fn revalidated<B, E>(&self, stale: &Entry, update: &HeaderMap) -> Fetched<B, E> {
        let shared = self.shared;
        let request = self.request();
        let headers = refreshed_headers(shared, stale, update);
        let (url, tags) = (
            String::from_utf8_lossy(&stale.url),
            String::from_utf8_lossy(&stale.tags),
        );
        let provenance = Provenance {
            filled_at_us: self.filled_at_us,
            url: &url,
            tags: &tags,
        };
        let fwd = self.ctx.fwd;
        let verdict = |stored, ttl| Verdict {
            outcome: CacheOutcome::Revalidated,
            fwd: Some((fwd, Some(StatusCode::NOT_MODIFIED))),
            stored,
            ttl,
            detail: None,
        };
        // The variant the merged headers select for this request: a `304` that adds or
        // changes `Vary` must not leave the entry answering every request (variant 0) with
        // headers chosen for this one (a CORS answer for one `Origin` served to all). With a
        // new `Vary` the entry is written as a variant under a new index, like any fill that
        // varies.
        let variant = key::variant_hash(key::vary_names(&headers), request.headers);
        let filled = match policy::decide(&shared.config, &request, stale.status, &headers) {
            Decision::Store(lifetime) => encode_filled(
                stale.status,
                &headers,
                std::slice::from_ref(&stale.body),
                lifetime,
                variant,
                &provenance,
            ),
            Decision::Skip(_) => None,
        };
        let (entry, verdict) = match &filled {
            Some(filled) => {
                let ttl = filled.entry.meta.ttl_secs(entry::unix_now_ms());
                (Entry::clone(&filled.entry), verdict(true, Some(ttl)))
            }
            None => {
                let entry = Entry {
                    status: stale.status,
                    headers,
                    body: stale.body.clone(),
                    meta: stale.meta,
                    url: stale.url.clone(),
                    tags: stale.tags.clone(),
                };
                (entry, verdict(false, None))
            }
        };
        let reply = Ok(from_entry(shared, entry, false, request.headers, verdict));
        Fetched {
            reply,
            filled,
            stale_served: None,
        }
    }
}

/// A stale entry's headers updated by the origin's `304`: its own range kept for a part, and
/// the `304`'s tag headers not stored (the entry keeps the tags it was stored with).
fn refreshed_headers(shared: &Shared, stale: &Entry, update: &HeaderMap) -> HeaderMap {
    let mut headers = conditional::merge_not_modified(&stale.headers, update);
    if stale.status == StatusCode::PARTIAL_CONTENT {
        // A stored part's range is its body's: a `304` does not restate it.
        headers.remove(header::CONTENT_RANGE);
        for value in stale.headers.get_all(header::CONTENT_RANGE) {
            headers.append(header::CONTENT_RANGE, value.clone());
        }
    }
    shared.config.tagging.strip(&mut headers);
    headers
}

/// Whether a stale entry may stand in for an origin that cannot be reached: within
/// `stale_if_unreachable` past its freshness, and not forbidden by its directives
/// (RFC 9111 §4.2.4: a disconnected cache may serve stale unless the response prohibits it).
fn servable_unreachable(shared: &Shared, stale: &Entry, now: u64) -> bool {
    let config = &shared.config;
    let window = u64::try_from(config.stale_if_unreachable.as_millis()).unwrap_or(u64::MAX);
    now < stale.meta.fresh_until_ms.saturating_add(window)
        && !policy::CacheControl::for_response(&stale.headers, config)
            .forbids_unpermitted_stale(config.mode == crate::CacheMode::Shared)
}
