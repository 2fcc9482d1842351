//! Asking the origin for something to store: the fill's origin call (revalidating a stale
//! entry when there is one, serving it on errors within stale-if-error), turning the answer
//! into an encoded entry within the body limit, and writing entries (with vary indexes).

use crate::error::BoxError;
use crate::http::body::CacheBody;
use crate::http::conditional;
use crate::http::context::{Call, Exchange, MissContext, Origin, OriginBody, Reply, Shared};
use crate::http::entry::{self, Entry, EntryMeta, VaryIndex};
use crate::http::headers::{CacheOutcome, Detail, Fwd, Verdict};
use crate::http::key::{self, CacheKey};
use crate::http::lookup::{self, Read};
use crate::http::partial::{self, Completion, Kept};
use crate::http::policy::{self, Decision, Lifetime, NoCacheReason, RequestClass, RequestHead};
use crate::http::range;
use crate::http::respond::stale_verdict;
use crate::http::respond::{finish, from_entry};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

/// Marks a response as made up because the origin could not be reached (a refused connection,
/// a reset, a timeout), not sent by it: put it in the response's extensions, as the caching
/// proxy does on its own `502`/`504`. With
/// [`stale_if_unreachable`](crate::CacheLayerBuilder::stale_if_unreachable) the layer then
/// answers from a stale entry instead, as it does when the inner service fails (`Err`). An
/// origin's own error status is never read as unreachable: the origin answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginUnreachable;

/// A response the origin gave that may be stored: the encoded value and its decoded form.
pub(crate) struct Filled {
    pub(crate) entry: Arc<Entry>,
    pub(crate) encoded: Bytes,
    pub(crate) keep: std::time::Duration,
    /// The language alias to keep the entry under too (see [`language_alias`]).
    pub(crate) language_alias: Option<u64>,
    /// The share of `max_fill_bytes` the buffered body holds, given back when the fill is
    /// done with it (written, shared, dropped).
    pub(crate) _budget: Option<OwnedSemaphorePermit>,
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
    mut call: Call<S, ReqBody>,
    outcome: CacheOutcome,
    ctx: &MissContext,
) -> Fetched<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let mut asked = Asked {
        shared,
        ctx,
        outcome,
        request_headers: call.parts.headers.clone(),
        uri: call.parts.uri.clone(),
        // Before the origin is asked: a purge recorded from here on covers what this fill
        // stores.
        filled_at_us: shared.engine.purges().stamp(),
        unsafe_method: ctx.class == RequestClass::Unsafe,
        ranged: false,
    };
    asked.prepare(&mut call.parts.headers);
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let result = call.send().await;
    #[cfg(feature = "metrics")]
    shared.engine.stats.record_fill(started.elapsed());
    if let Some(stale_served) = asked.stale_on_failure(&result) {
        return stale_served;
    }
    match result {
        Ok(response) => asked.answered(response).await,
        Err(error) => {
            shared.engine.stats.not_stored(1);
            Fetched {
                reply: Err(error),
                filled: None,
                stale_served: None,
            }
        }
    }
}

/// One origin call of a fill, and what the steps after its answer read: the request as the
/// client sent it, and when the fill began.
struct Asked<'a> {
    shared: &'a Shared,
    ctx: &'a MissContext,
    outcome: CacheOutcome,
    /// The client's request headers (the origin's may differ: validators, ranges).
    request_headers: HeaderMap,
    uri: http::Uri,
    filled_at_us: u64,
    unsafe_method: bool,
    /// Whether the origin was asked for a range.
    ranged: bool,
}

impl Asked<'_> {
    /// Sets the request headers the origin gets: the client's validators replaced by the
    /// stale entry's, and the range that completes a stored part (or the client's own).
    fn prepare(&mut self, origin: &mut HeaderMap) {
        let ctx = self.ctx;
        // An unsafe request's preconditions are the origin's to evaluate; a `GET`'s are
        // answered by the cache from what it stores.
        if !self.unsafe_method {
            conditional::strip_client_validators(origin);
        }
        if let Some(stale) = &ctx.stale {
            conditional::add_validators(origin, &stale.headers);
        }
        let completion = Completion::for_request(ctx.partial.as_deref(), &self.request_headers);
        if let Some(completion) = &completion {
            completion.ask(origin);
        } else if ctx.forward_range && !self.unsafe_method {
            for name in [header::RANGE, header::IF_RANGE] {
                for value in self.request_headers.get_all(&name) {
                    origin.append(name.clone(), value.clone());
                }
            }
        }
        self.ranged = origin.contains_key(header::RANGE);
    }

    /// The stale entry served in place of a failed origin call (a `5xx`, an error, an
    /// unreachable origin), when its windows allow.
    fn stale_on_failure<B, E>(&self, result: &Result<Response<B>, E>) -> Option<Fetched<B, E>> {
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

    fn request(&self) -> RequestHead<'_> {
        RequestHead {
            uri: &self.uri,
            headers: &self.request_headers,
            authorized: self.ctx.class.is_authorized()
                || (self.unsafe_method && self.request_headers.contains_key(header::AUTHORIZATION)),
        }
    }

    /// The `Cache-Status` of a response the origin gave this fill.
    fn verdict(&self, status: StatusCode, stored: bool) -> Verdict {
        Verdict::forwarded(self.outcome, self.ctx.fwd, status, stored)
    }

    /// What the origin's answer becomes: a refreshed entry (`304`), an entry to store, or
    /// the answer passed through as it came.
    async fn answered<B, E>(self, response: Response<B>) -> Fetched<B, E>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = response.into_parts();
        let request = self.request();
        if parts.status == StatusCode::NOT_MODIFIED {
            if let Some(stale) = &self.ctx.stale {
                return self.revalidated(stale, &parts.headers);
            }
        }
        let shared = self.shared;
        let decision = if self.unsafe_method
            && !reusable_post(shared, &self.uri, &self.request_headers, &parts)
        {
            Decision::Skip(NoCacheReason::NotStorable)
        } else if self.ranged
            && !matches!(parts.status, StatusCode::OK | StatusCode::PARTIAL_CONTENT)
        {
            // An answer to a range request (a `416`, a `304`) says something about that
            // range, not about the resource every client asks for.
            Decision::Skip(NoCacheReason::Status)
        } else {
            policy::decide(&shared.config, &request, parts.status, &parts.headers)
        };
        let lifetime = match decision {
            Decision::Store(lifetime) => lifetime,
            Decision::Skip(reason) => {
                // An unsafe method's answer is normally not for storing at all: no count, no
                // detail.
                if !self.unsafe_method {
                    tracing::debug!(reason = reason.as_str(), "response not stored");
                    shared.engine.stats.not_stored(1);
                }
                let verdict = Verdict {
                    detail: (!self.unsafe_method).then_some(Detail::NotStored(reason)),
                    ..self.verdict(parts.status, false)
                };
                finish(shared, &mut parts.headers, verdict, None);
                return Fetched {
                    reply: Ok(Response::from_parts(parts, CacheBody::upstream(body))),
                    filled: None,
                    stale_served: None,
                };
            }
        };
        self.buffered(parts, body, lifetime).await
    }

    /// Reads a storable answer's body within the limits and makes it an entry; hands the
    /// client what was read (and the rest) when it cannot be one.
    async fn buffered<B, E>(
        self,
        mut parts: http::response::Parts,
        body: B,
        lifetime: Lifetime,
    ) -> Fetched<B, E>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let shared = self.shared;
        let collected = collect(
            body,
            shared.config.max_body_bytes,
            &shared.engine.fill_bytes,
        )
        .await;
        let (chunks, rest, budget) = match collected {
            Collected::Whole(chunks, rest, budget) => (chunks, rest, budget),
            Collected::Partial(body, over_budget) => {
                shared.engine.stats.not_stored(1);
                let reason = if over_budget {
                    shared.engine.stats.fills_over_budget(1);
                    NoCacheReason::FillBudget
                } else {
                    NoCacheReason::TooLarge
                };
                let verdict = Verdict {
                    detail: Some(Detail::NotStored(reason)),
                    ..self.verdict(parts.status, false)
                };
                finish(shared, &mut parts.headers, verdict, None);
                return Fetched {
                    reply: Ok(Response::from_parts(parts, body)),
                    filled: None,
                    stale_served: None,
                };
            }
        };
        let (tags, dropped) = shared.config.tagging.collect(&self.uri, &mut parts);
        if dropped > 0 {
            shared.engine.stats.tags_dropped(dropped);
        }
        let made = self.encode(&parts, &chunks, lifetime, &tags);
        let (mut filled, more, ttl) = match made {
            Ok(made) => made,
            Err(refused) => {
                // Not representable as an entry (too many headers), or a part whose numbers
                // disagree with its bytes: hand back what was read.
                shared.engine.stats.not_stored(1);
                let verdict = Verdict {
                    detail: refused.then_some(Detail::NotStored(NoCacheReason::InvalidRange)),
                    ..self.verdict(parts.status, false)
                };
                finish(shared, &mut parts.headers, verdict, None);
                return Fetched {
                    reply: Ok(replayed(parts, chunks, rest)),
                    filled: None,
                    stale_served: None,
                };
            }
        };
        filled._budget = match (budget, more) {
            (Some(mut held), Some(more)) => {
                held.merge(more);
                Some(held)
            }
            (held, more) => held.or(more),
        };
        if !self.unsafe_method && !self.ctx.class.is_authorized() {
            filled.language_alias = language_alias(&parts.headers, &self.request_headers);
        }
        self.respond_filled(parts, chunks, rest, filled, ttl)
    }

    /// The entry a buffered answer makes (joined with the stored part it extends, when
    /// `partial` says so), the budget the joined body holds and its freshness in seconds;
    /// `Err(true)` for a part whose numbers disagree with its bytes, `Err(false)` for an answer
    /// no entry can hold.
    fn encode(
        &self,
        parts: &http::response::Parts,
        chunks: &[Bytes],
        lifetime: Lifetime,
        tags: &str,
    ) -> Result<(Filled, Option<OwnedSemaphorePermit>, i64), bool> {
        let shared = self.shared;
        let request = self.request();
        // A `206` is kept only as a part whose numbers agree with its bytes, joined with the
        // stored part when both are one representation (`partial`).
        let kept = partial::keep(
            &shared.config,
            self.ctx.partial.as_deref(),
            parts,
            chunks,
            &request,
            |len| reserve(&shared.engine.fill_bytes, len),
        );
        let made = match kept {
            Kept::AsReceived => None,
            Kept::Made(made) => Some(made),
            Kept::Refused => return Err(true),
        };
        let (status, headers_kept, body_kept, lifetime) = match &made {
            Some(made) => (made.status, &made.headers, &made.body[..], made.lifetime),
            None => (parts.status, &parts.headers, chunks, lifetime),
        };
        let body_len: usize = body_kept.iter().map(Bytes::len).sum();
        let variant = key::variant_hash(key::vary_names(headers_kept), &self.request_headers);
        let url = key::url_of(&self.uri, &self.request_headers);
        let provenance = Provenance {
            filled_at_us: self.filled_at_us,
            url: &url,
            tags,
        };
        let representable =
            entry::fits_entry(headers_kept, body_len as u64) && url.len() <= entry::MAX_URL_LEN;
        let filled = representable
            .then(|| {
                encode_filled(
                    status,
                    headers_kept,
                    body_kept,
                    lifetime,
                    variant,
                    &provenance,
                )
            })
            .flatten()
            .ok_or(false)?;
        let ttl = lifetime.fresh.as_secs() as i64;
        Ok((filled, made.and_then(|made| made.budget), ttl))
    }

    /// Answers the client from a new entry (a `304` or a range of it when its request asks),
    /// or with the origin's answer as it came when the entry does not hold what it asked for.
    fn respond_filled<B, E>(
        self,
        mut parts: http::response::Parts,
        chunks: Vec<Bytes>,
        rest: Pin<Box<B>>,
        filled: Filled,
        ttl: i64,
    ) -> Fetched<B, E> {
        let shared = self.shared;
        let verdict = Verdict {
            ttl: Some(ttl),
            ..self.verdict(parts.status, true)
        };
        // A `POST` is answered with what the origin sent it, never a `304` or a range of it.
        let conditions = if self.unsafe_method {
            HeaderMap::new()
        } else {
            self.request_headers
        };
        if !range::answers(&filled.entry, &conditions, false) {
            // A part that does not hold what the client asked for (the origin answered `206`
            // to a request the cache made without the client's range): kept, and the client
            // gets the origin's answer as it came, never a part of it as if it were whole.
            finish(shared, &mut parts.headers, verdict, None);
            return Fetched {
                reply: Ok(replayed(parts, chunks, rest)),
                filled: Some(filled),
                stale_served: None,
            };
        }
        let mut response = from_entry(
            shared,
            Entry::clone(&filled.entry),
            false,
            &conditions,
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
}

/// The origin's answer as it came: the body read so far, then the rest.
fn replayed<B>(
    parts: http::response::Parts,
    chunks: Vec<Bytes>,
    rest: Pin<Box<B>>,
) -> Response<CacheBody<B>> {
    let frames = chunks.into_iter().map(Frame::data).collect();
    Response::from_parts(parts, CacheBody::replay(frames, rest, true))
}

/// Whether a `POST`'s answer may be stored as the target's representation, for later `GET`s
/// (RFC 9110 §9.3.3, RFC 9111 §4): it has explicit freshness (not the default ttl), and a
/// `Content-Location` naming the request's own target, by which the origin says this is the
/// target's current representation, whatever body the `POST` carried. Everything else about
/// it (`private`, `no-store`, credentials, `Set-Cookie`) is judged as for a `GET`.
fn reusable_post(
    shared: &Shared,
    target: &http::Uri,
    request: &HeaderMap,
    response: &http::response::Parts,
) -> bool {
    let effective = crate::http::targeted::effective(&response.headers, &shared.config.targeted);
    let headers = effective.as_ref().unwrap_or(&response.headers);
    let cc = policy::CacheControl::parse(headers);
    let explicit =
        cc.max_age.is_some() || cc.s_maxage.is_some() || headers.contains_key(header::EXPIRES);
    let mut locations = response.headers.get_all(header::CONTENT_LOCATION).iter();
    let names_target = match (locations.next(), locations.next()) {
        (Some(location), None) => {
            crate::http::respond::same_origin(target, request.get(header::HOST), location)
                .is_some_and(|uri| uri.path_and_query() == target.path_and_query())
        }
        _ => false,
    };
    explicit
        && names_target
        && matches!(
            response.status,
            StatusCode::OK | StatusCode::NON_AUTHORITATIVE_INFORMATION
        )
}

/// Forwards a `POST` and, when its answer says it is the target's representation (see
/// [`reusable_post`]), stores it for later `GET`s, after invalidating what was stored for the
/// target (RFC 9111 §4.4), so the new answer is what remains.
pub(crate) async fn post_and_store<S, ReqBody, ResBody>(
    shared: &Shared,
    key: CacheKey,
    call: Call<S, ReqBody>,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let target = call.parts.uri.clone();
    let host = call.parts.headers.get(header::HOST).cloned();
    let ctx = MissContext {
        fwd: Fwd::Bypass,
        ..MissContext::new(RequestClass::Unsafe)
    };
    let fetched = fetch(shared, call, CacheOutcome::Bypass, &ctx).await;
    let response = fetched.reply?;
    crate::http::respond::invalidate(
        shared,
        &target,
        host.as_ref(),
        response.status(),
        response.headers(),
    )
    .await;
    // Written before the answer goes back (as the invalidation is), so the client's next
    // `GET` finds it: a `POST` is not on a hit's latency budget.
    if let Some(filled) = fetched.filled {
        write(shared, &key, None, &filled, RequestClass::Unsafe).await;
    }
    Ok(response)
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

impl Asked<'_> {
    /// The origin confirmed a stale entry (`304`): refresh its headers and freshness.
    fn revalidated<B, E>(&self, stale: &Entry, update: &HeaderMap) -> Fetched<B, E> {
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

/// What an entry records for purges: when its fill began, its URL, its tags.
struct Provenance<'a> {
    filled_at_us: u64,
    url: &'a str,
    tags: &'a str,
}

fn encode_filled(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[Bytes],
    lifetime: Lifetime,
    variant: u64,
    provenance: &Provenance<'_>,
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
        filled_at_us: provenance.filled_at_us,
    };
    let encoded = entry::encode_with(
        status,
        headers,
        body,
        meta,
        provenance.url.as_bytes(),
        provenance.tags.as_bytes(),
    );
    let entry = entry::decode(encoded.clone()).ok()?;
    Some(Filled {
        entry: Arc::new(entry),
        encoded,
        keep: lifetime.keep,
        language_alias: None,
        _budget: None,
    })
}

/// Writes a filled entry, unless too many writes are already in flight. `true` when stored.
pub(crate) async fn write(
    shared: &Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> bool {
    match prepare_write(shared, key, index, filled, class).await {
        Some(prepared) => {
            let stored = put_entry(shared, &prepared.target, filled).await;
            if stored {
                put_alias(shared, &prepared, filled).await;
            }
            stored
        }
        None => false,
    }
}

/// Writes a filled entry under its language alias too, when it has one (best effort: the
/// alias only saves a later request an origin call).
pub(crate) async fn put_alias(shared: &Shared, prepared: &Prepared<'_>, filled: &Filled) {
    if let Some(alias) = &prepared.alias {
        let _ = shared
            .engine
            .store
            .put(alias, filled.encoded.clone(), filled.keep)
            .await;
    }
}

/// The language alias of an answer (a variant name, see `key::language_alias`), when it may
/// be kept under one: it varies on `Accept-Language` alone, the origin labelled it with one
/// language (`Content-Language`), and the request that drew it was well formed and accepted
/// that language. A later request preferring that language above all others is then served
/// it (`lookup::language_alias`): the origin said this is its representation in that
/// language, and a request ranking it first would be given that language. Requiring a
/// well-formed `Accept-Language` (language tags and weights only) bounds what an origin that
/// reflects the header into its page could carry from one client's request to another's.
fn language_alias(response: &HeaderMap, request: &HeaderMap) -> Option<u64> {
    let mut names = key::vary_names(response);
    let only_language = names
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("accept-language"))
        && names.next().is_none();
    let language = lookup::content_language(response).filter(|_| only_language)?;
    key::accepts_language(request, &language).then(|| key::language_alias(&language))
}

/// Readies a filled entry's write and says where the entry goes: the primary key, or for an
/// entry that varies its variant's key. `index` is the vary index the request's lookup read.
///
/// When the lookup found an index listing the same headers, its generation is reused and the
/// index is *not* written again: had it been deleted since (an invalidation racing this fill),
/// rewriting it would make every variant stored under it reachable again; this way the new
/// variant is simply unreachable. An answer that does not vary, or varies on other headers,
/// is not stored while the index it found lives. With no index, a new generation is written. An authorized request's answer never writes an index (see
/// [`authorized_target`]). `None` when too many writes are in flight (the permit bounds them
/// until dropped), the index write failed, or the entry may not go anywhere.
pub(crate) async fn prepare_write<'a>(
    shared: &'a Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> Option<Prepared<'a>> {
    let (target, generation, permit) = prepare_target(shared, key, index, filled, class).await?;
    let alias = generation
        .zip(filled.language_alias)
        .map(|(generation, alias)| key.variant(generation, alias).entry_key().to_owned());
    Some(Prepared {
        target,
        alias,
        _permit: permit,
    })
}

/// Where a filled entry is written: its key, the key of its language alias when it has
/// one, and the permit that bounds writes in flight (held until dropped).
pub(crate) struct Prepared<'a> {
    pub(crate) target: String,
    pub(crate) alias: Option<String>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// [`prepare_write`]'s target, with the vary index generation it is under (`None` for an
/// entry that does not vary, or an authorized request's).
async fn prepare_target<'a>(
    shared: &'a Shared,
    key: &CacheKey,
    index: Option<&VaryIndex>,
    filled: &Filled,
    class: RequestClass,
) -> Option<(String, Option<u64>, tokio::sync::SemaphorePermit<'a>)> {
    let Ok(permit) = shared.engine.writes.try_acquire() else {
        shared.engine.stats.writes_dropped(1);
        return None;
    };
    let entry = &filled.entry;
    let varies = VaryIndex::for_response(&entry.headers, 0).filter(|_| entry.meta.variant != 0);
    if class.is_authorized() {
        let target = authorized_target(shared, key, varies.as_ref(), filled).await?;
        return Some((target, None, permit));
    }
    let Some(mut new_index) = varies else {
        // It does not vary: the entry goes to the primary key, unless a live index is there
        // (see below).
        return index
            .is_none()
            .then(|| (key.primary_key().to_owned(), None, permit));
    };
    match index {
        Some(old) if old.names == new_index.names => {
            let target = key.variant(old.generation, entry.meta.variant);
            return Some((target.entry_key().to_owned(), Some(old.generation), permit));
        }
        // One answer that varies on other headers than the live index lists (an origin that
        // adds `Vary: Origin` only when asked with `Origin`) does not replace it: that would
        // orphan every variant others are served, at one request's command. The new list is
        // adopted once the index expires.
        Some(_) => {
            shared.engine.stats.not_stored(1);
            return None;
        }
        None => {}
    }
    new_index.generation = new_generation(filled);
    let index_written = shared
        .engine
        .store
        .put(key.primary_key(), new_index.encode(), filled.keep)
        .await;
    index_written.ok()?;
    let target = key.variant(new_index.generation, entry.meta.variant);
    Some((
        target.entry_key().to_owned(),
        Some(new_index.generation),
        permit,
    ))
}

/// Where a shareable answer to an authorized request may go without changing what anonymous
/// requests read: an entry that does not vary replaces a non-varying entry (or nothing); one
/// that varies joins an existing index listing the same headers, or starts the first index
/// of a resource with nothing stored. It never replaces or re-generates an index, so such a
/// request cannot orphan the variants others are served. The lookup was skipped for the
/// request (it is never answered from the cache), so the primary key is read here, only for
/// answers that may be stored at all.
async fn authorized_target(
    shared: &Shared,
    key: &CacheKey,
    varies: Option<&VaryIndex>,
    filled: &Filled,
) -> Option<String> {
    let variant = filled.entry.meta.variant;
    let primary = key.primary_key();
    let current = match shared.engine.store.get(primary).await {
        Err(_) => return None,
        Ok(None) => Read::Missing,
        Ok(Some(bytes)) => lookup::interpret(shared, primary, bytes).await,
    };
    match (current, varies) {
        (Read::Index(index), Some(new)) if index.names == new.names => Some(
            key.variant(index.generation, variant)
                .entry_key()
                .to_owned(),
        ),
        (Read::Entry(_) | Read::Purged(_) | Read::Missing | Read::HitForMiss, None) => {
            Some(primary.to_owned())
        }
        (Read::Missing | Read::HitForMiss, Some(new)) => {
            let index = VaryIndex {
                generation: new_generation(filled),
                names: new.names.clone(),
            };
            shared
                .engine
                .store
                .put(primary, index.encode(), filled.keep)
                .await
                .ok()?;
            Some(
                key.variant(index.generation, variant)
                    .entry_key()
                    .to_owned(),
            )
        }
        _ => None,
    }
}

/// A generation no earlier index had: random, so no old variant can be named by it.
fn new_generation(filled: &Filled) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(filled.entry.meta.stored_at_ms)
}

/// Counts a stored entry.
pub(crate) fn count_stored(shared: &Shared, filled: &Filled) {
    shared.engine.stats.stored(1);
    shared
        .engine
        .stats
        .bytes_stored(filled.encoded.len() as u64);
}

async fn put_entry(shared: &Shared, key: &str, filled: &Filled) -> bool {
    match shared
        .engine
        .store
        .put(key, filled.encoded.clone(), filled.keep)
        .await
    {
        Ok(()) => {
            count_stored(shared, filled);
            true
        }
        Err(_) => false,
    }
}

/// Fetches without coalescing, and stores the response in the background when it may be.
pub(crate) async fn fetch_and_store<S, ReqBody, ResBody>(
    ex: Exchange<S, ReqBody>,
    outcome: CacheOutcome,
) -> Reply<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Exchange {
        shared,
        key,
        ctx,
        call,
    } = ex;
    let fetched = fetch(&shared, call, outcome, &ctx).await;
    if let Some(filled) = fetched.filled {
        let running = shared.engine.background.start();
        let write = async move {
            write(&shared, &key, ctx.index.as_ref(), &filled, ctx.class).await;
            drop(running);
        };
        tokio::spawn(tracing::Instrument::in_current_span(write));
    }
    fetched.reply
}

enum Collected<B> {
    /// The whole body, the (ended) body it came from, and its share of the fill budget.
    Whole(Vec<Bytes>, Pin<Box<B>>, Option<OwnedSemaphorePermit>),
    /// Not storable (too large, over the fill budget when `true`, trailers, error): what was
    /// read, then the rest, for the client.
    Partial(CacheBody<B>, bool),
}

/// `bytes` more of the fill budget ([`FILL_COPIES`] permits each), if that much is left.
fn reserve(budget: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    u32::try_from(bytes)
        .ok()
        .and_then(|n| n.checked_mul(FILL_COPIES))
        .and_then(|n| Arc::clone(budget).try_acquire_many_owned(n).ok())
}

/// How many times a fill holds each byte it buffers, at its peak: the body as read, the
/// encoded entry (written before the chunks are dropped) and the store client's write buffer
/// (while the entry is sent), so the budget bounds the memory fills really hold, not just
/// their bodies (measured through the proxy: about 2.2 times the body budget otherwise).
const FILL_COPIES: u32 = 3;

/// Reads the body into memory, up to `limit` bytes, taking [`FILL_COPIES`] permits of `budget`
/// per byte buffered. When the budget runs out the body is handed back for streaming instead (and the
/// permits taken so far are returned at once: what was read is the client's to drain).
async fn collect<B>(body: B, limit: u64, budget: &Arc<Semaphore>) -> Collected<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut chunks = Vec::new();
    let mut len = 0u64;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let frames = |chunks: Vec<Bytes>| chunks.into_iter().map(Frame::data).collect::<VecDeque<_>>();
    loop {
        match body.frame().await {
            None => return Collected::Whole(chunks, body, held),
            Some(Err(error)) => {
                let body = CacheBody::failed(frames(chunks), error.into());
                return Collected::Partial(body, false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len() as u64;
                    let reserved = reserve(budget, data.len());
                    chunks.push(data);
                    if len > limit {
                        let body = CacheBody::replay(frames(chunks), body, false);
                        return Collected::Partial(body, false);
                    }
                    match (reserved, &mut held) {
                        (None, _) => {
                            let body = CacheBody::replay(frames(chunks), body, false);
                            return Collected::Partial(body, true);
                        }
                        (Some(permit), Some(held)) => held.merge(permit),
                        (Some(permit), None) => held = Some(permit),
                    }
                }
                Err(trailers) => {
                    // Trailers are not part of an entry: pass this response through whole.
                    let mut frames = frames(chunks);
                    frames.push_back(trailers);
                    return Collected::Partial(CacheBody::replay(frames, body, true), false);
                }
            },
        }
    }
}
