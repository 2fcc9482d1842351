//! The request flow (design §1): classify, look up, answer a hit, or hand a miss to `fill`.
//!
//! Every branch that cannot use the store forwards the request to the inner service, so a
//! store that is down, slow or returning garbage costs at most one bounded lookup.

use crate::body::CacheBody;
use crate::coalesce::Outcome;
use crate::entry::{self, Entry, EntryMeta};
use crate::error::BoxError;
use crate::headers::{self, CacheOutcome};
use crate::key::{self, CacheKey};
use crate::layer::Shared;
use crate::policy::{self, Decision, RequestClass};
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tower_service::Service;

pub(crate) type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

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
        RequestClass::Bypass => None,
        _ => shared.keys.derive(&parts),
    };
    let Some(key) = key else {
        return forward(&shared, inner, parts, body, CacheOutcome::Bypass).await;
    };
    if class == RequestClass::Authorized {
        return fetch_and_store(&shared, inner, key, parts, body, CacheOutcome::Bypass, true).await;
    }
    let head = class == RequestClass::Head;
    match lookup(&shared, &key).await {
        Lookup::Unavailable => {
            return forward(&shared, inner, parts, body, CacheOutcome::Bypass).await
        }
        Lookup::Found(entry)
            if entry.meta.is_fresh(entry::unix_now_ms()) && entry.matches(&parts.headers) =>
        {
            return Ok(hit(&shared, entry, head));
        }
        Lookup::HitForMiss if !head => {
            return fetch_and_store(&shared, inner, key, parts, body, CacheOutcome::Miss, false)
                .await;
        }
        _ => {}
    }
    if head {
        // A HEAD arriving during a GET's fill is answered from it; otherwise it is forwarded
        // (a HEAD response has no body to store; the next GET fills the entry).
        if let Some(follower) = shared.flights.follow(key.hash()) {
            if let Ok(Outcome::Stored(entry)) =
                tokio::time::timeout(shared.config.lock_wait, follower.outcome()).await
            {
                if entry.matches(&parts.headers) {
                    shared.stats.coalesced(1);
                    return Ok(hit(&shared, Entry::clone(&entry), true));
                }
            }
        }
        return forward(&shared, inner, parts, body, CacheOutcome::Miss).await;
    }
    crate::fill::miss(shared, inner, key, parts, body).await
}

/// What the store holds for a key.
pub(crate) enum Lookup {
    Found(Entry),
    HitForMiss,
    Missing,
    /// The store failed, timed out or is skipped by the breaker.
    Unavailable,
}

/// Reads and decodes the entry for `key`. A value that does not decode is deleted, counted
/// as corrupt and reported missing, so one bad write cannot keep failing requests.
pub(crate) async fn lookup(shared: &Shared, key: &CacheKey) -> Lookup {
    match shared.store.get(key.entry_key()).await {
        Err(_) => Lookup::Unavailable,
        Ok(None) => Lookup::Missing,
        Ok(Some(bytes)) if bytes == entry::HIT_FOR_MISS => Lookup::HitForMiss,
        Ok(Some(bytes)) => match entry::decode(bytes) {
            Ok(entry) => Lookup::Found(entry),
            Err(error) => {
                shared.stats.corrupt(1);
                tracing::warn!(key = key.entry_key(), %error, "deleting corrupt cache entry");
                let _ = shared.store.delete(key.entry_key()).await;
                Lookup::Missing
            }
        },
    }
}

/// A response answered from `entry`; for `HEAD`, its headers without the body.
pub(crate) fn hit<B>(shared: &Shared, entry: Entry, head: bool) -> Response<CacheBody<B>> {
    shared.stats.hits(1);
    let age = entry.meta.age_secs(entry::unix_now_ms());
    let body = if head { None } else { Some(entry.body) };
    let mut response = Response::new(CacheBody::cached(body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    headers::mark_hit(response.headers_mut(), age);
    response
}

fn count(shared: &Shared, outcome: CacheOutcome) {
    match outcome {
        CacheOutcome::Hit => shared.stats.hits(1),
        CacheOutcome::Miss => shared.stats.misses(1),
        CacheOutcome::Bypass => shared.stats.bypass(1),
    }
}

/// Passes the request to the inner service and its response back untouched, but marked.
pub(crate) async fn forward<S, ReqBody, ResBody>(
    shared: &Shared,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    count(shared, outcome);
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let (mut parts, body) = response.into_parts();
    headers::mark_forwarded(&mut parts.headers, outcome, false);
    Ok(Response::from_parts(parts, CacheBody::upstream(body)))
}

/// A response the origin gave that may be stored: the encoded value and its decoded form.
pub(crate) struct Filled {
    pub(crate) entry: Arc<Entry>,
    pub(crate) encoded: Bytes,
    pub(crate) ttl: Duration,
}

/// Calls the origin and, when policy allows, buffers the response into an entry. The reply
/// goes to the caller; the entry (if any) is for the caller to store and share.
pub(crate) async fn fetch<S, ReqBody, ResBody>(
    shared: &Shared,
    mut inner: S,
    parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
    authorized: bool,
) -> (Reply<ResBody, S::Error>, Option<Filled>)
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    count(shared, outcome);
    let request_headers = parts.headers.clone();
    let response = match inner.call(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(error) => {
            shared.stats.not_stored(1);
            return (Err(error), None);
        }
    };
    let (mut parts, body) = response.into_parts();
    let (fresh, stale) =
        match policy::decide(&shared.config, authorized, parts.status, &parts.headers) {
            Decision::Store { fresh, stale } => (fresh, stale),
            Decision::Skip(reason) => {
                tracing::debug!(reason, "response not stored");
                shared.stats.not_stored(1);
                headers::mark_forwarded(&mut parts.headers, outcome, false);
                return (
                    Ok(Response::from_parts(parts, CacheBody::upstream(body))),
                    None,
                );
            }
        };
    let (chunks, rest) = match collect(body, shared.config.max_body_bytes).await {
        Collected::Whole(chunks, rest) => (chunks, rest),
        Collected::Partial(body) => {
            shared.stats.not_stored(1);
            headers::mark_forwarded(&mut parts.headers, outcome, false);
            return (Ok(Response::from_parts(parts, body)), None);
        }
    };
    let body_len: usize = chunks.iter().map(Bytes::len).sum();
    let decoded = entry::fits_entry(&parts.headers, body_len as u64)
        .then(|| {
            let now = entry::unix_now_ms();
            let fresh_until_ms = now.saturating_add(fresh.as_millis() as u64);
            let meta = EntryMeta {
                stored_at_ms: now,
                fresh_until_ms,
                stale_until_ms: fresh_until_ms.saturating_add(stale.as_millis() as u64),
                variant: key::variant_hash(
                    parts.headers.get_all(http::header::VARY).iter(),
                    &request_headers,
                ),
            };
            let encoded = entry::encode(parts.status, &parts.headers, &chunks, meta);
            entry::decode(encoded.clone())
                .ok()
                .map(|entry| (entry, encoded))
        })
        .flatten();
    let Some((entry, encoded)) = decoded else {
        // Not representable as an entry (too many headers): hand back what was read.
        shared.stats.not_stored(1);
        headers::mark_forwarded(&mut parts.headers, outcome, false);
        let frames = chunks.into_iter().map(Frame::data).collect();
        return (
            Ok(Response::from_parts(
                parts,
                CacheBody::replay(frames, rest, true),
            )),
            None,
        );
    };
    let mut response = Response::new(CacheBody::cached(Some(entry.body.clone())));
    *response.status_mut() = entry.status;
    *response.version_mut() = parts.version;
    *response.headers_mut() = entry.headers.clone();
    headers::mark_forwarded(response.headers_mut(), outcome, true);
    let filled = Filled {
        entry: Arc::new(entry),
        encoded,
        ttl: fresh + stale,
    };
    (Ok(response), Some(filled))
}

/// Writes a filled entry, unless too many writes are already in flight. `true` when stored.
pub(crate) async fn write(shared: &Shared, key: &CacheKey, filled: &Filled) -> bool {
    let Ok(_permit) = shared.writes.try_acquire() else {
        shared.stats.writes_dropped(1);
        return false;
    };
    match shared
        .store
        .put(key.entry_key(), filled.encoded.clone(), filled.ttl)
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
async fn fetch_and_store<S, ReqBody, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    outcome: CacheOutcome,
    authorized: bool,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (reply, filled) = fetch(shared, inner, parts, body, outcome, authorized).await;
    if let Some(filled) = filled {
        let running = shared.background.start();
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            write(&shared, &key, &filled).await;
            drop(running);
        });
    }
    reply
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
