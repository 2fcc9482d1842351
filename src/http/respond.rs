//! Responses the cache gives: from an entry (with `304`, and byte ranges of whole entries and
//! of stored parts), forwarded from the origin, or made up (`504` for `only-if-cached`, `500`
//! for a failed fill); each marked with `X-Cache`/`Cache-Status`/`Age` and counted, in one
//! place. Unsafe requests are forwarded here too, with the invalidation that follows them.

use crate::http::body::CacheBody;
use crate::http::conditional;
use crate::http::context::{Call, Reply, Shared};
use crate::http::entry::{self, Entry};
use crate::http::headers::{self, CacheOutcome, Detail, Fwd, Verdict};
use crate::http::range;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use tower_service::Service;

/// Marks a response and counts its outcome: the one place both happen, so the counters
/// always agree with the headers clients saw.
pub(crate) fn finish(shared: &Shared, headers: &mut HeaderMap, verdict: Verdict, age: Option<u64>) {
    let stats = &shared.engine.stats;
    stats.request(verdict.outcome);
    #[cfg(feature = "metrics")]
    if let Ok(started) = crate::http::context::STARTED.try_with(|started| *started) {
        stats.record_latency(verdict.outcome, started.elapsed());
    }
    match verdict.outcome {
        CacheOutcome::Hit => shared.engine.stats.hits(1),
        CacheOutcome::Stale => shared.engine.stats.stale(1),
        CacheOutcome::Revalidated => shared.engine.stats.revalidated(1),
        CacheOutcome::Miss => shared.engine.stats.misses(1),
        CacheOutcome::Bypass => shared.engine.stats.bypass(1),
    }
    tracing::Span::current().record("outcome", verdict.outcome.as_str());
    shared.config.tagging.strip(headers);
    headers::mark(headers, &shared.config.cache_name, verdict, age);
}

/// A response answered from `entry`: `304` when the request's conditions say the client's
/// copy is current, headers only for `HEAD`, else the whole entry.
pub(crate) fn from_entry<B>(
    shared: &Shared,
    entry: Entry,
    head: bool,
    request: &HeaderMap,
    verdict: Verdict,
) -> Response<CacheBody<B>> {
    let age = entry.meta.age_secs(entry::unix_now_ms());
    let mut response =
        if entry.status == StatusCode::OK && conditional::not_modified(request, &entry.headers) {
            let mut response = Response::new(CacheBody::cached(None));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = conditional::not_modified_headers(&entry.headers);
            response
        } else if entry.status == StatusCode::PARTIAL_CONTENT {
            // A stored part answers only a range it holds (`range::answers`, which every caller
            // checks first); it never goes out as if it were the whole representation.
            match (!head)
                .then(|| range::from_part(&entry.headers, &entry.body, request))
                .flatten()
            {
                Some((slice, range, len)) => ranged(entry.headers, slice, &range, len),
                None => return bodiless(shared, StatusCode::BAD_GATEWAY, Detail::PartialUnusable),
            }
        } else if let Some(range) = (entry.status == StatusCode::OK && !head)
            .then(|| range::requested(request, entry.body.len(), entry.headers.get(header::ETAG)))
            .flatten()
        {
            let len = entry.body.len();
            let slice = entry.body.slice(range.clone());
            ranged(entry.headers, slice, &range, len)
        } else {
            let len = entry.body.len();
            let mut response = Response::new(CacheBody::cached((!head).then_some(entry.body)));
            *response.status_mut() = entry.status;
            *response.headers_mut() = entry.headers;
            // A HEAD answer has no body to measure: say how long the GET's body is, as the
            // origin's server would have (it may have added the length only on the wire).
            if head && !response.headers().contains_key(header::CONTENT_LENGTH) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            response
        };
    let shows_age = !matches!(verdict.outcome, CacheOutcome::Miss | CacheOutcome::Bypass);
    finish(
        shared,
        response.headers_mut(),
        verdict,
        shows_age.then_some(age),
    );
    response
}

/// A `206` for `range` of a `len`-byte representation, its bytes a slice of the stored body.
fn ranged<B>(
    stored: HeaderMap,
    slice: bytes::Bytes,
    range: &std::ops::Range<usize>,
    len: usize,
) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(Some(slice)));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    *response.headers_mut() = stored;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_RANGE, range::content_range(range, len));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.len()));
    response
}

/// `only-if-cached` found nothing usable: `504`, without asking the origin.
pub(crate) fn gateway_timeout<B>(shared: &Shared) -> Response<CacheBody<B>> {
    bodiless(shared, StatusCode::GATEWAY_TIMEOUT, Detail::OnlyIfCached)
}

/// The leading request's answer when its fill task died (the inner service panicked).
pub(crate) fn fill_failed<B>(shared: &Shared) -> Response<CacheBody<B>> {
    bodiless(
        shared,
        StatusCode::INTERNAL_SERVER_ERROR,
        Detail::FillFailed,
    )
}

/// A response the cache makes up itself: no body, `MISS`, and why in `Cache-Status`.
fn bodiless<B>(shared: &Shared, status: StatusCode, detail: Detail) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(None));
    *response.status_mut() = status;
    let verdict = Verdict {
        outcome: CacheOutcome::Miss,
        fwd: None,
        stored: false,
        ttl: None,
        detail: Some(detail),
    };
    finish(shared, response.headers_mut(), verdict, None);
    response
}

/// Passes the request by the cache: not cacheable, or the store is unavailable.
pub(crate) async fn bypass<S, ReqBody, ResBody>(
    shared: &Shared,
    call: Call<S, ReqBody>,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    forward(shared, call, CacheOutcome::Bypass, Fwd::Bypass).await
}

/// Passes the request to the inner service and its response back untouched, but marked.
pub(crate) async fn forward<S, ReqBody, ResBody>(
    shared: &Shared,
    call: Call<S, ReqBody>,
    outcome: CacheOutcome,
    fwd: Fwd,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = call.send().await?;
    let (mut parts, body) = response.into_parts();
    finish(
        shared,
        &mut parts.headers,
        Verdict::forwarded(outcome, fwd, parts.status, false),
        None,
    );
    Ok(Response::from_parts(parts, CacheBody::upstream(body)))
}

/// Forwards an unsafe request; when it succeeds, invalidates what is stored for its target
/// and for same-origin `Location` / `Content-Location` (RFC 9111 §4.4). The store is shared,
/// so this invalidates for every instance.
pub(crate) async fn forward_and_invalidate<S, ReqBody, ResBody>(
    shared: &Shared,
    call: Call<S, ReqBody>,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let target = call.parts.uri.clone();
    let host = call.parts.headers.get(header::HOST).cloned();
    let response = bypass(shared, call).await?;
    invalidate(
        shared,
        &target,
        host.as_ref(),
        response.status(),
        response.headers(),
    )
    .await;
    Ok(response)
}

/// After an unsafe request's `response`: when it succeeded, deletes what is stored for its
/// target and for same-origin `Location` / `Content-Location` (RFC 9111 §4.4).
pub(crate) async fn invalidate(
    shared: &Shared,
    target: &Uri,
    host: Option<&HeaderValue>,
    status: StatusCode,
    response: &HeaderMap,
) {
    if !(status.is_success() || status.is_redirection()) {
        return;
    }
    let related = [header::LOCATION, header::CONTENT_LOCATION]
        .into_iter()
        .filter_map(|name| response.get(name))
        .filter_map(|value| same_origin(target, host, value));
    let uris: Vec<Uri> = std::iter::once(target.clone()).chain(related).collect();
    for uri in uris {
        let mut head = Request::new(());
        *head.uri_mut() = uri;
        if let Some(host) = host {
            head.headers_mut().insert(header::HOST, host.clone());
        }
        let (parts, ()) = head.into_parts();
        if let Some(key) = shared.keys.derive(&parts) {
            if shared.engine.store.delete(key.primary_key()).await.is_ok() {
                shared.engine.stats.invalidations(1);
            }
        }
    }
}

/// `value` as a URI on the same origin as `target`, if it is one.
pub(crate) fn same_origin(
    target: &Uri,
    host: Option<&http::HeaderValue>,
    value: &http::HeaderValue,
) -> Option<Uri> {
    let uri: Uri = value.to_str().ok()?.parse().ok()?;
    match uri.authority() {
        // A path on the target's own origin: key it as the target is keyed.
        None if uri.path().starts_with('/') => match (target.scheme(), target.authority()) {
            (Some(scheme), Some(authority)) => Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(uri.path_and_query()?.clone())
                .build()
                .ok(),
            _ => Some(uri),
        },
        None => None,
        Some(authority) => {
            let ours = target
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host.and_then(|h| h.to_str().ok()))?;
            authority.as_str().eq_ignore_ascii_case(ours).then_some(uri)
        }
    }
}

/// The verdict for an answer from a stale entry, with why it was allowed.
pub(crate) fn stale_verdict(
    entry: &Entry,
    now: u64,
    fwd: Option<(Fwd, Option<StatusCode>)>,
    detail: Detail,
) -> Verdict {
    Verdict {
        outcome: CacheOutcome::Stale,
        fwd,
        stored: false,
        ttl: Some(entry.meta.ttl_secs(now)),
        detail: Some(detail),
    }
}
