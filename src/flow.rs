//! The request flow (design §1): classify, look up, answer from an entry, or hand a miss to
//! `fill`. Also the pieces every path shares: reading entries, calling the origin and turning
//! its answer into an entry, writing entries, and marking responses.
//!
//! Every branch that cannot use the store forwards the request to the inner service, so a
//! store that is down, slow or returning garbage costs at most one bounded lookup.

use crate::body::CacheBody;
use crate::coalesce::Outcome;
use crate::conditional;
use crate::entry::{self, Entry, EntryMeta, VaryIndex};
use crate::error::BoxError;
use crate::headers::{self, CacheOutcome, Fwd, Verdict};
use crate::key::{self, CacheKey};
use crate::layer::{CacheMode, Shared};
use crate::policy::{
    self, CacheControl, Decision, Lifetime, RequestClass, RequestDirectives, RequestHead,
};
use crate::range;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tower_service::Service;

pub(crate) type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

/// What a miss carries from the lookup to the fill.
pub(crate) struct MissContext {
    /// A stored entry that may not be served as is: revalidated with the origin, and served
    /// if the origin fails within its stale-if-error window.
    pub(crate) stale: Option<Arc<Entry>>,
    /// Why the request goes forward, for `Cache-Status`.
    pub(crate) fwd: Fwd,
    /// The request said `no-store` (shared mode).
    pub(crate) no_store: bool,
    /// The resource's vary index, when it has one.
    pub(crate) index: Option<VaryIndex>,
}

pub(crate) async fn run<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<ReqBody>,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let class = policy::classify_request(request.method(), request.headers(), &shared.config);
    let (parts, body) = request.into_parts();
    let key = match class {
        RequestClass::Unsafe => {
            return Box::pin(forward_and_invalidate(&shared, inner, parts, body)).await
        }
        RequestClass::Bypass => None,
        _ => shared.keys.derive(&parts),
    };
    let Some(key) = key else {
        return bypass(&shared, inner, parts, body).await;
    };
    tracing::Span::current().record("key", tracing::field::display(key.entry_key()));
    let wants = RequestDirectives::for_request(&parts.headers, &shared.config);
    let mut ctx = MissContext {
        stale: None,
        fwd: Fwd::UriMiss,
        no_store: wants.no_store,
        index: None,
    };
    if class == RequestClass::Authorized {
        ctx.fwd = Fwd::Bypass;
        return Box::pin(fetch_and_store(
            &shared,
            inner,
            key,
            parts,
            body,
            CacheOutcome::Bypass,
            true,
            ctx,
        ))
        .await;
    }
    let head = class == RequestClass::Head;
    let (key, index, found) = resolve(&shared, key, &parts.headers).await;
    ctx.index = index;
    match found {
        Lookup::Unavailable => return bypass(&shared, inner, parts, body).await,
        Lookup::Found(entry) => {
            let now = entry::unix_now_ms();
            match usability(&entry, now, &wants, shared.config.mode) {
                Usable::Fresh => {
                    let ttl = entry.meta.ttl_secs(now);
                    return Ok(from_entry(
                        &shared,
                        entry,
                        head,
                        &parts.headers,
                        Verdict::hit(ttl),
                    ));
                }
                Usable::Stale(detail) => {
                    let verdict = stale_verdict(&entry, now, None, detail);
                    return Ok(from_entry(&shared, entry, head, &parts.headers, verdict));
                }
                Usable::StaleWhileRevalidate => {
                    let verdict = stale_verdict(&entry, now, None, "stale-while-revalidate");
                    let entry = Arc::new(entry);
                    let reply =
                        from_entry(&shared, Entry::clone(&entry), head, &parts.headers, verdict);
                    if !head {
                        ctx.stale = Some(entry);
                        ctx.fwd = Fwd::Stale;
                        crate::fill::refresh(shared, inner, key, parts, body, ctx);
                    }
                    return Ok(reply);
                }
                Usable::Revalidate(fwd) => {
                    ctx.fwd = fwd;
                    ctx.stale = Some(Arc::new(entry));
                }
            }
        }
        Lookup::HitForMiss if !head && !wants.only_if_cached => {
            return Box::pin(fetch_and_store(
                &shared,
                inner,
                key,
                parts,
                body,
                CacheOutcome::Miss,
                false,
                ctx,
            ))
            .await;
        }
        Lookup::VaryMiss => ctx.fwd = Fwd::VaryMiss,
        Lookup::HitForMiss | Lookup::Missing => {}
    }
    if wants.only_if_cached {
        return Ok(gateway_timeout(&shared));
    }
    if head {
        // A HEAD arriving during a GET's fill is answered from it; otherwise it is forwarded
        // (a HEAD response has no body to store; the next GET fills the entry).
        if let Some(follower) = shared.flights.follow(key.flight()) {
            if let Ok(Outcome::Stored(entry)) =
                tokio::time::timeout(shared.config.lock_wait, follower.outcome()).await
            {
                if entry.matches(&parts.headers) {
                    shared.stats.coalesced(1);
                    let ttl = entry.meta.ttl_secs(entry::unix_now_ms());
                    return Ok(from_entry(
                        &shared,
                        Entry::clone(&entry),
                        true,
                        &parts.headers,
                        Verdict::hit(ttl),
                    ));
                }
            }
        }
        return forward(&shared, inner, parts, body, CacheOutcome::Miss, ctx.fwd).await;
    }
    // The miss path's state is large: boxing it keeps the hit path's future small, so the one
    // allocation every request makes for its future copies less.
    Box::pin(crate::fill::miss(shared, inner, key, parts, body, ctx)).await
}

/// How a found entry may be used for this request.
enum Usable {
    Fresh,
    /// Stale, but the client accepts it (`max-stale`).
    Stale(&'static str),
    /// Stale within its stale-while-revalidate window: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin first.
    Revalidate(Fwd),
}

fn usability(entry: &Entry, now: u64, wants: &RequestDirectives, mode: CacheMode) -> Usable {
    let meta = &entry.meta;
    let fresh_left_ms = meta.fresh_left_ms(now);
    // `no-store` asks that nothing be kept of this exchange: answer it from the origin.
    if wants.no_cache
        || wants.no_store
        // Compared in milliseconds; `max-age=0` always revalidates, as clients mean by it,
        // even for a response stored in this very millisecond.
        || wants.max_age.is_some_and(|max| {
            max == 0 || now.saturating_sub(meta.stored_at_ms) > max.saturating_mul(1000)
        })
        || wants
            .min_fresh
            .is_some_and(|min| fresh_left_ms < (min as i64).saturating_mul(1000))
    {
        return Usable::Revalidate(Fwd::Request);
    }
    if meta.is_fresh(now) {
        return Usable::Fresh;
    }
    if let Some(limit) = wants.max_stale {
        let staleness_ms = now.saturating_sub(meta.fresh_until_ms);
        let allowed = !CacheControl::parse(&entry.headers).forbids_stale(mode == CacheMode::Shared);
        if allowed && limit.is_none_or(|secs| staleness_ms <= secs.saturating_mul(1000)) {
            return Usable::Stale("max-stale");
        }
    }
    if meta.within_stale_while_revalidate(now) {
        return Usable::StaleWhileRevalidate;
    }
    Usable::Revalidate(Fwd::Stale)
}

pub(crate) fn stale_verdict(
    entry: &Entry,
    now: u64,
    fwd: Option<(Fwd, Option<StatusCode>)>,
    detail: &'static str,
) -> Verdict {
    Verdict {
        outcome: CacheOutcome::Stale,
        fwd,
        stored: false,
        ttl: Some(entry.meta.ttl_secs(now)),
        detail: Some(detail),
    }
}

/// What the store holds for a request.
pub(crate) enum Lookup {
    Found(Entry),
    HitForMiss,
    Missing,
    /// The resource varies, and nothing is stored for this request's variant.
    VaryMiss,
    /// The store failed, timed out or is skipped by the breaker.
    Unavailable,
}

/// Finds the entry for a request: one read for a resource that does not vary, two (index,
/// then variant) for one that does. Returns the key the entry lives under (the variant's key
/// when the resource varies) and the index, if any.
pub(crate) async fn resolve(
    shared: &Shared,
    key: CacheKey,
    request: &HeaderMap,
) -> (CacheKey, Option<VaryIndex>, Lookup) {
    match read(shared, key.primary_key()).await {
        Read::Index(index) => {
            let variant = key::variant_hash(index.names.split(','), request);
            let key = key.variant(index.generation, variant);
            let found = match read(shared, key.entry_key()).await {
                Read::Entry(entry) if entry.matches(request) => Lookup::Found(entry),
                Read::HitForMiss => Lookup::HitForMiss,
                Read::Unavailable => Lookup::Unavailable,
                Read::Entry(_) | Read::Index(_) | Read::Missing => Lookup::VaryMiss,
            };
            (key, Some(index), found)
        }
        Read::Entry(entry) if entry.matches(request) => (key, None, Lookup::Found(entry)),
        Read::Entry(_) => (key, None, Lookup::VaryMiss),
        Read::HitForMiss => (key, None, Lookup::HitForMiss),
        Read::Missing => (key, None, Lookup::Missing),
        Read::Unavailable => (key, None, Lookup::Unavailable),
    }
}

enum Read {
    Entry(Entry),
    Index(VaryIndex),
    HitForMiss,
    Missing,
    Unavailable,
}

/// Reads and decodes one value. A value that does not decode is deleted, counted as corrupt
/// and reported missing, so one bad write cannot keep failing requests.
async fn read(shared: &Shared, key: &str) -> Read {
    let bytes = match shared.store.get(key).await {
        Err(_) => return Read::Unavailable,
        Ok(None) => return Read::Missing,
        Ok(Some(bytes)) => bytes,
    };
    if bytes == entry::HIT_FOR_MISS {
        return Read::HitForMiss;
    }
    let decoded = if VaryIndex::is_index(&bytes) {
        VaryIndex::decode(&bytes)
            .map(Read::Index)
            .ok_or(entry::DecodeError::InvalidHttp)
    } else {
        entry::decode(bytes).map(Read::Entry)
    };
    match decoded {
        Ok(read) => read,
        Err(error) => {
            shared.stats.corrupt(1);
            tracing::warn!(key, %error, "deleting corrupt cache entry");
            // Best effort: a failure is counted by the guard; the value is missing either way.
            let _ = shared.store.delete(key).await;
            Read::Missing
        }
    }
}

/// Marks a response and counts its outcome: the one place both happen, so the counters
/// always agree with the headers clients saw.
fn finish(shared: &Shared, headers: &mut HeaderMap, verdict: Verdict, age: Option<u64>) {
    match verdict.outcome {
        CacheOutcome::Hit => shared.stats.hits(1),
        CacheOutcome::Stale => shared.stats.stale(1),
        CacheOutcome::Revalidated => shared.stats.revalidated(1),
        CacheOutcome::Miss => shared.stats.misses(1),
        CacheOutcome::Bypass => shared.stats.bypass(1),
    }
    tracing::Span::current().record("outcome", verdict.outcome.as_str());
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
    let mut response = if entry.status == StatusCode::OK
        && conditional::not_modified(request, &entry.headers)
    {
        let mut response = Response::new(CacheBody::cached(None));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = conditional::not_modified_headers(&entry.headers);
        response
    } else if let Some(range) = (entry.status == StatusCode::OK && !head)
        .then(|| range::requested(request, entry.body.len(), entry.headers.get(header::ETAG)))
        .flatten()
    {
        let len = entry.body.len();
        let mut response = Response::new(CacheBody::cached(Some(entry.body.slice(range.clone()))));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        *response.headers_mut() = entry.headers;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_RANGE, range::content_range(&range, len));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.len()));
        response
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

fn gateway_timeout<B>(shared: &Shared) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(None));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let verdict = Verdict {
        outcome: CacheOutcome::Miss,
        fwd: None,
        stored: false,
        ttl: None,
        detail: Some("only-if-cached"),
    };
    finish(shared, response.headers_mut(), verdict, None);
    response
}

/// The leading request's answer when its fill task died (the inner service panicked).
pub(crate) fn fill_failed<B>(shared: &Shared) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(None));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    let verdict = Verdict {
        outcome: CacheOutcome::Miss,
        fwd: None,
        stored: false,
        ttl: None,
        detail: Some("fill-failed"),
    };
    finish(shared, response.headers_mut(), verdict, None);
    response
}

/// Passes the request by the cache: not cacheable, or the store is unavailable.
async fn bypass<S, ReqBody, ResBody>(
    shared: &Shared,
    inner: S,
    parts: Parts,
    body: ReqBody,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    forward(
        shared,
        inner,
        parts,
        body,
        CacheOutcome::Bypass,
        Fwd::Bypass,
    )
    .await
}

/// Passes the request to the inner service and its response back untouched, but marked.
pub(crate) async fn forward<S, ReqBody, ResBody>(
    shared: &Shared,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
    fwd: Fwd,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(Request::from_parts(parts, body)).await?;
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
async fn forward_and_invalidate<S, ReqBody, ResBody>(
    shared: &Shared,
    inner: S,
    parts: Parts,
    body: ReqBody,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let target = parts.uri.clone();
    let host = parts.headers.get(header::HOST).cloned();
    let response = bypass(shared, inner, parts, body).await?;
    if !(response.status().is_success() || response.status().is_redirection()) {
        return Ok(response);
    }
    let related = [header::LOCATION, header::CONTENT_LOCATION]
        .into_iter()
        .filter_map(|name| response.headers().get(name))
        .filter_map(|value| same_origin(&target, host.as_ref(), value));
    let uris: Vec<Uri> = std::iter::once(target.clone()).chain(related).collect();
    for uri in uris {
        let mut head = Request::new(());
        *head.uri_mut() = uri;
        if let Some(host) = &host {
            head.headers_mut().insert(header::HOST, host.clone());
        }
        let (parts, ()) = head.into_parts();
        if let Some(key) = shared.keys.derive(&parts) {
            if shared.store.delete(key.primary_key()).await.is_ok() {
                shared.stats.invalidations(1);
            }
        }
    }
    Ok(response)
}

/// `value` as a URI on the same origin as `target`, if it is one.
fn same_origin(
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

/// A response the origin gave that may be stored: the encoded value and its decoded form.
pub(crate) struct Filled {
    pub(crate) entry: Arc<Entry>,
    pub(crate) encoded: Bytes,
    pub(crate) keep: std::time::Duration,
}

/// What came of asking the origin.
pub(crate) struct Fetched<B, E> {
    pub(crate) reply: Reply<B, E>,
    /// The entry to store and share, when the answer may be stored.
    pub(crate) filled: Option<Filled>,
    /// The stale entry served because the origin failed (stale-if-error).
    pub(crate) stale_served: Option<Arc<Entry>>,
}

/// Calls the origin (revalidating `ctx.stale` when there is one) and, when policy allows,
/// buffers the response into an entry. The reply goes to the caller; the entry (if any) is for
/// the caller to store and share.
pub(crate) async fn fetch<S, ReqBody, ResBody>(
    shared: &Shared,
    mut inner: S,
    mut parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
    authorized: bool,
    ctx: &MissContext,
) -> Fetched<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let request_headers = parts.headers.clone();
    let uri = parts.uri.clone();
    conditional::strip_client_validators(&mut parts.headers);
    if let Some(stale) = &ctx.stale {
        conditional::add_validators(&mut parts.headers, &stale.headers);
    }
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let result = inner.call(Request::from_parts(parts, body)).await;
    #[cfg(feature = "metrics")]
    crate::stats::record_fill(started.elapsed());
    let failed_status = match &result {
        Ok(response) if response.status().is_server_error() => Some(response.status()),
        Ok(_) => None,
        Err(_) => Some(StatusCode::BAD_GATEWAY),
    };
    if let Some(status) = failed_status {
        let now = entry::unix_now_ms();
        if let Some(stale) = ctx
            .stale
            .as_ref()
            .filter(|s| s.meta.within_stale_if_error(now))
        {
            let verdict = stale_verdict(
                stale,
                now,
                Some((Fwd::Stale, Some(status))),
                "stale-if-error",
            );
            let reply = Ok(from_entry(
                shared,
                Entry::clone(stale),
                false,
                &request_headers,
                verdict,
            ));
            return Fetched {
                reply,
                filled: None,
                stale_served: Some(Arc::clone(stale)),
            };
        }
    }
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            shared.stats.not_stored(1);
            return Fetched {
                reply: Err(error),
                filled: None,
                stale_served: None,
            };
        }
    };
    let (mut parts, body) = response.into_parts();
    let request = RequestHead {
        uri: &uri,
        headers: &request_headers,
        authorized,
        no_store: ctx.no_store,
    };
    if parts.status == StatusCode::NOT_MODIFIED {
        if let Some(stale) = &ctx.stale {
            return revalidated(shared, stale, &parts.headers, &request, ctx.fwd);
        }
    }
    let decision = policy::decide(&shared.config, &request, parts.status, &parts.headers);
    let verdict = |stored| Verdict::forwarded(outcome, ctx.fwd, parts.status, stored);
    let lifetime = match decision {
        Decision::Store(lifetime) => lifetime,
        Decision::Skip(reason) => {
            tracing::debug!(reason, "response not stored");
            shared.stats.not_stored(1);
            let verdict = Verdict {
                detail: Some(reason),
                ..verdict(false)
            };
            finish(shared, &mut parts.headers, verdict, None);
            return Fetched {
                reply: Ok(Response::from_parts(parts, CacheBody::upstream(body))),
                filled: None,
                stale_served: None,
            };
        }
    };
    let (chunks, rest) = match collect(body, shared.config.max_body_bytes).await {
        Collected::Whole(chunks, rest) => (chunks, rest),
        Collected::Partial(body) => {
            shared.stats.not_stored(1);
            finish(
                shared,
                &mut parts.headers,
                Verdict {
                    detail: Some("too-large"),
                    ..verdict(false)
                },
                None,
            );
            return Fetched {
                reply: Ok(Response::from_parts(parts, body)),
                filled: None,
                stale_served: None,
            };
        }
    };
    let body_len: usize = chunks.iter().map(Bytes::len).sum();
    let variant = key::variant_hash(key::vary_names(&parts.headers), &request_headers);
    let filled = entry::fits_entry(&parts.headers, body_len as u64)
        .then(|| encode_filled(parts.status, &parts.headers, &chunks, lifetime, variant))
        .flatten();
    let Some(filled) = filled else {
        // Not representable as an entry (too many headers): hand back what was read.
        shared.stats.not_stored(1);
        finish(shared, &mut parts.headers, verdict(false), None);
        let frames = chunks.into_iter().map(Frame::data).collect();
        let reply = Ok(Response::from_parts(
            parts,
            CacheBody::replay(frames, rest, true),
        ));
        return Fetched {
            reply,
            filled: None,
            stale_served: None,
        };
    };
    let ttl = lifetime.fresh.as_secs() as i64;
    let verdict = Verdict {
        ttl: Some(ttl),
        ..verdict(true)
    };
    let mut response = from_entry(
        shared,
        Entry::clone(&filled.entry),
        false,
        &request_headers,
        verdict,
    );
    *response.version_mut() = parts.version;
    // The age the response already had upstream is part of its identity for the client.
    for age in parts.headers.get_all(header::AGE) {
        response.headers_mut().append(header::AGE, age.clone());
    }
    Fetched {
        reply: Ok(response),
        filled: Some(filled),
        stale_served: None,
    }
}

/// The origin confirmed a stale entry (`304`): refresh its headers and freshness.
fn revalidated<B, E>(
    shared: &Shared,
    stale: &Entry,
    update: &HeaderMap,
    request: &RequestHead<'_>,
    fwd: Fwd,
) -> Fetched<B, E> {
    let headers = conditional::merge_not_modified(&stale.headers, update);
    let verdict = |stored, ttl| Verdict {
        outcome: CacheOutcome::Revalidated,
        fwd: Some((fwd, Some(StatusCode::NOT_MODIFIED))),
        stored,
        ttl,
        detail: None,
    };
    let variant = stale.meta.variant;
    let filled = match policy::decide(&shared.config, request, stale.status, &headers) {
        Decision::Store(lifetime) => encode_filled(
            stale.status,
            &headers,
            std::slice::from_ref(&stale.body),
            lifetime,
            variant,
        ),
        Decision::Skip(_) => None,
    };
    match filled {
        Some(filled) => {
            let ttl = filled.entry.meta.ttl_secs(entry::unix_now_ms());
            let reply = Ok(from_entry(
                shared,
                Entry::clone(&filled.entry),
                false,
                request.headers,
                verdict(true, Some(ttl)),
            ));
            Fetched {
                reply,
                filled: Some(filled),
                stale_served: None,
            }
        }
        None => {
            let entry = Entry {
                status: stale.status,
                headers,
                body: stale.body.clone(),
                meta: stale.meta,
            };
            let reply = Ok(from_entry(
                shared,
                entry,
                false,
                request.headers,
                verdict(false, None),
            ));
            Fetched {
                reply,
                filled: None,
                stale_served: None,
            }
        }
    }
}

fn encode_filled(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[Bytes],
    lifetime: Lifetime,
    variant: u64,
) -> Option<Filled> {
    let now = entry::unix_now_ms();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let fresh_until_ms = now.saturating_add(ms(lifetime.fresh));
    let meta = EntryMeta {
        stored_at_ms: now.saturating_sub(ms(lifetime.initial_age)),
        fresh_until_ms,
        stale_until_ms: fresh_until_ms.saturating_add(ms(lifetime.stale)),
        error_until_ms: fresh_until_ms.saturating_add(ms(lifetime.error)),
        variant,
    };
    let encoded = entry::encode(status, headers, body, meta);
    let entry = entry::decode(encoded.clone()).ok()?;
    Some(Filled {
        entry: Arc::new(entry),
        encoded,
        keep: lifetime.keep,
    })
}

/// Writes a filled entry, unless too many writes are already in flight. `true` when stored.
/// An entry that varies goes under its variant's key, with the resource's vary index (reused
/// when it lists the same headers, else a new generation) at the primary key.
pub(crate) async fn write(
    shared: &Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
) -> bool {
    let Ok(_permit) = shared.writes.try_acquire() else {
        shared.stats.writes_dropped(1);
        return false;
    };
    let entry = &filled.entry;
    let Some(mut new_index) =
        VaryIndex::for_response(&entry.headers, 0).filter(|_| entry.meta.variant != 0)
    else {
        // It does not vary: the entry goes to the primary key (replacing an old index).
        return put_entry(shared, key.primary_key(), filled).await;
    };
    new_index.generation = match index {
        Some(old) if old.names == new_index.names => old.generation,
        _ => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(entry.meta.stored_at_ms)
        }
    };
    if shared
        .store
        .put(key.primary_key(), new_index.encode(), filled.keep)
        .await
        .is_err()
    {
        return false;
    }
    let target = key.variant(new_index.generation, entry.meta.variant);
    put_entry(shared, target.entry_key(), filled).await
}

async fn put_entry(shared: &Shared, key: &str, filled: &Filled) -> bool {
    match shared
        .store
        .put(key, filled.encoded.clone(), filled.keep)
        .await
    {
        Ok(()) => {
            shared.stats.stored(1);
            shared.stats.bytes_stored(filled.encoded.len() as u64);
            true
        }
        Err(_) => false,
    }
}

/// Fetches without coalescing, and stores the response in the background when it may be.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_and_store<S, ReqBody, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
    authorized: bool,
    ctx: MissContext,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let fetched = fetch(shared, inner, parts, body, outcome, authorized, &ctx).await;
    if let Some(filled) = fetched.filled {
        let running = shared.background.start();
        let shared = Arc::clone(shared);
        let write = async move {
            write(&shared, &key, ctx.index.as_ref(), &filled).await;
            drop(running);
        };
        tokio::spawn(tracing::Instrument::in_current_span(write));
    }
    fetched.reply
}

enum Collected<B> {
    /// The whole body, and the (ended) body it came from.
    Whole(Vec<Bytes>, Pin<Box<B>>),
    /// Not storable (too large, trailers, error): what was read, then the rest, for the client.
    Partial(CacheBody<B>),
}

/// Reads the body into memory, up to `limit` bytes.
async fn collect<B>(body: B, limit: u64) -> Collected<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut chunks = Vec::new();
    let mut len = 0u64;
    let frames = |chunks: Vec<Bytes>| chunks.into_iter().map(Frame::data).collect::<VecDeque<_>>();
    loop {
        match body.frame().await {
            None => return Collected::Whole(chunks, body),
            Some(Err(error)) => {
                return Collected::Partial(CacheBody::failed(frames(chunks), error.into()))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len() as u64;
                    chunks.push(data);
                    if len > limit {
                        return Collected::Partial(CacheBody::replay(frames(chunks), body, false));
                    }
                }
                Err(trailers) => {
                    // Trailers are not part of an entry: pass this response through whole.
                    let mut frames = frames(chunks);
                    frames.push_back(trailers);
                    return Collected::Partial(CacheBody::replay(frames, body, true));
                }
            },
        }
    }
}
