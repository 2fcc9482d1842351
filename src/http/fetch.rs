//! Asking the origin for something to store: the fill's origin call and turning its answer
//! into an encoded entry within the body limit (or passing it through, marked). What a stale
//! entry becomes is `revalidate`'s; reading the body is `buffer`'s; writing the entry is
//! `write`'s.

use crate::error::BoxError;
use crate::http::body::CacheBody;
use crate::http::buffer::{collect, reserve, Collected};
use crate::http::conditional;
use crate::http::context::{Call, Exchange, MissContext, Origin, OriginBody, Reply, Shared};
use crate::http::entry::{self, Entry};
use crate::http::headers::{CacheOutcome, Detail, Fwd, Verdict};
use crate::http::key::{self, CacheKey};
use crate::http::partial::{self, Completion, Kept};
use crate::http::policy::{self, Decision, Lifetime, NoCacheReason, RequestClass, RequestHead};
use crate::http::range;
use crate::http::respond::{finish, from_entry};
use crate::http::write::{self, encode_filled, language_alias, Filled, Provenance};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

/// Marks a response as made up because the origin could not be reached (a refused connection,
/// a reset, a timeout), not sent by it: put it in the response's extensions, as the caching
/// proxy does on its own `502`/`504`. With
/// [`stale_if_unreachable`](crate::CacheLayerBuilder::stale_if_unreachable) the layer then
/// answers from a stale entry instead, as it does when the inner service fails (`Err`). An
/// origin's own error status is never read as unreachable: the origin answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginUnreachable;

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
pub(crate) struct Asked<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) ctx: &'a MissContext,
    pub(crate) outcome: CacheOutcome,
    /// The client's request headers (the origin's may differ: validators, ranges).
    pub(crate) request_headers: HeaderMap,
    pub(crate) uri: http::Uri,
    pub(crate) filled_at_us: u64,
    pub(crate) unsafe_method: bool,
    /// Whether the origin was asked for a range.
    pub(crate) ranged: bool,
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

    /// The request as the policy reads it.
    pub(crate) fn request(&self) -> RequestHead<'_> {
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
        write::write(shared, &key, None, &filled, RequestClass::Unsafe).await;
    }
    Ok(response)
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
            write::write(&shared, &key, ctx.index.as_ref(), &filled, ctx.class).await;
            drop(running);
        };
        tokio::spawn(tracing::Instrument::in_current_span(write));
    }
    fetched.reply
}
