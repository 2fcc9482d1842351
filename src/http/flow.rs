//! The request flow: classify, look up, answer from an entry, or hand a miss to `miss`.
//!
//! Every branch that cannot use the store forwards the request to the inner service, so a
//! store that is down, slow or returning garbage costs at most one bounded lookup.

use crate::http::body::CacheBody;
use crate::http::config::{CacheMode, Config};
use crate::http::context::{
    Call, Exchange, MissContext, Origin, OriginBody, Outcome, Reply, Shared,
};
use crate::http::entry::{self, Entry};
use crate::http::fetch::fetch_and_store;
use crate::http::headers::{CacheOutcome, Detail, Fwd, Verdict};
use crate::http::key::CacheKey;
use crate::http::lookup::{resolve, resolve_or_lock, Lookup};
use crate::http::policy::{self, CacheControl, RequestClass, RequestDirectives};
use crate::http::range;
use crate::http::respond::{
    bypass, forward, forward_and_invalidate, from_entry, gateway_timeout, stale_verdict,
};
use http::{HeaderMap, Request, Response};
use std::sync::Arc;

/// Runs one request through the cache: classify it, key it, then answer it from the store or
/// the origin.
pub(crate) async fn run<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    request: Request<ReqBody>,
) -> Reply<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let class = policy::classify_request(
        request.method(),
        request.uri(),
        request.headers(),
        &shared.config,
    );
    let (parts, body) = request.into_parts();
    let call = Call { inner, parts, body };
    let key = match class {
        // An unsafe request naming two authorities is forwarded without invalidating: its
        // invalidation could otherwise reach entries of a host the origin was not asked about.
        RequestClass::Unsafe if policy::authority_agrees(&call.parts.uri, &call.parts.headers) => {
            // A `POST` may answer with the target's new representation (shared mode only:
            // in application mode the service owner's `GET` rules decide what is stored).
            let post_key = (call.parts.method == http::Method::POST
                && shared.config.mode == CacheMode::Shared)
                .then(|| shared.keys.derive(&call.parts))
                .flatten();
            if let Some(key) = post_key {
                return Box::pin(crate::http::fetch::post_and_store(&shared, key, call)).await;
            }
            return Box::pin(forward_and_invalidate(&shared, call)).await;
        }
        RequestClass::Unsafe => None,
        RequestClass::Bypass => None,
        _ => shared.keys.derive(&call.parts),
    };
    let Some(key) = key else {
        return Box::pin(bypass(&shared, call)).await;
    };
    tracing::Span::current().record("key", tracing::field::display(key.entry_key()));
    let wants = RequestDirectives::for_request(&call.parts.headers, &shared.config);
    let mut ex = Exchange {
        shared,
        key,
        ctx: MissContext::new(class),
        call,
    };
    if class.is_authorized() {
        // Not answered from the cache; its answer is stored only if the origin says it may
        // be shared, and then without touching what anonymous requests read (see `fetch`).
        ex.ctx.fwd = Fwd::Bypass;
        return Box::pin(fetch_and_store(ex, CacheOutcome::Bypass)).await;
    }
    if wants.no_store {
        // `no-store` asks that nothing be kept of this exchange: the origin answers it, and
        // nothing stored is read, replaced or marked on its account.
        let forwarded = forward(&ex.shared, ex.call, CacheOutcome::Miss, Fwd::Request);
        return Box::pin(forwarded).await;
    }
    answer(ex, &wants).await
}

/// Answers a keyed request from what the store holds, or hands it to the miss path.
async fn answer<S, ReqBody, ResBody>(
    mut ex: Exchange<S, ReqBody>,
    wants: &RequestDirectives,
) -> Reply<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let head = ex.ctx.class.is_head();
    if head {
        // A HEAD arriving during a GET's fill is answered from it. Checked before the lookup:
        // a fill that ends in between has written its entry, which the lookup then finds.
        let request = &ex.call.parts.headers;
        if let Some(entry) = outcome_of_running_fill(&ex.shared, &ex.key, request).await {
            ex.shared.engine.stats.coalesced(1);
            let ttl = entry.meta.ttl_secs(entry::unix_now_ms());
            return Ok(from_entry(
                &ex.shared,
                entry,
                true,
                request,
                Verdict::hit(ttl),
            ));
        }
    }
    // A request that fills on a miss reads or takes the fill lock in one round trip.
    let (shared, key, request) = (&ex.shared, &mut ex.key, &ex.call.parts.headers);
    let (index, found) = if !head && !wants.only_if_cached && shared.config.distributed_lock {
        let (index, found, lease) = resolve_or_lock(shared, key, request).await;
        ex.ctx.lease = lease;
        (index, found)
    } else {
        resolve(shared, key, request).await
    };
    ex.ctx.index = index;
    match found {
        Lookup::Unavailable => return Box::pin(bypass(&ex.shared, ex.call)).await,
        Lookup::Found(entry) if !range::answers(&entry, &ex.call.parts.headers, head) => {
            // A stored part that does not hold what is asked for is a miss; the fill may
            // complete it (a part whose numbers disagree with its bytes is not kept for that).
            ex.ctx.fwd = Fwd::Partial;
            if range::stored(&entry.headers, &entry.body).is_some() {
                ex.ctx.partial = Some(Arc::new(entry));
            }
        }
        Lookup::Found(entry) => {
            let now = entry::unix_now_ms();
            match usability(&entry, now, wants, &ex.shared.config) {
                Ok(usable) => return Ok(serve(ex, entry, usable, now, head)),
                Err(fwd) => {
                    ex.ctx.fwd = fwd;
                    ex.ctx.stale = Some(Arc::new(entry));
                }
            }
        }
        Lookup::HitForMiss if !head && !wants.only_if_cached => {
            ex.ctx.forward_range = true;
            return Box::pin(fetch_and_store(ex, CacheOutcome::Miss)).await;
        }
        Lookup::VaryMiss => ex.ctx.fwd = Fwd::VaryMiss,
        Lookup::Purged(seen) => ex.ctx.purged = Some(seen),
        Lookup::HitForMiss | Lookup::Missing => {}
    }
    if wants.only_if_cached {
        return Ok(gateway_timeout(&ex.shared));
    }
    if head {
        // A HEAD response has no body to store; the next GET fills the entry.
        let forwarded = forward(&ex.shared, ex.call, CacheOutcome::Miss, ex.ctx.fwd);
        return Box::pin(forwarded).await;
    }
    // The miss path's state is large, and so is every path that calls the inner service (its
    // future is part of theirs): boxing them keeps the hit path's future small, so the one
    // allocation every request makes for its future copies less (3.3 KiB before, measured
    // through the proxy's origin client).
    Box::pin(crate::http::miss::miss(ex)).await
}

/// Serves a found entry as the request allows: fresh, stale because the client accepts it,
/// or stale while a background refresh runs.
fn serve<S, ReqBody, ResBody>(
    mut ex: Exchange<S, ReqBody>,
    entry: Entry,
    usable: Usable,
    now: u64,
    head: bool,
) -> Response<CacheBody<ResBody>>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let request = &ex.call.parts.headers;
    match usable {
        Usable::Fresh => {
            let ttl = entry.meta.ttl_secs(now);
            from_entry(&ex.shared, entry, head, request, Verdict::hit(ttl))
        }
        Usable::Stale(detail) => {
            let verdict = stale_verdict(&entry, now, None, detail);
            from_entry(&ex.shared, entry, head, request, verdict)
        }
        Usable::StaleWhileRevalidate => {
            let verdict = stale_verdict(&entry, now, None, Detail::StaleWhileRevalidate);
            let entry = Arc::new(entry);
            let reply = from_entry(&ex.shared, Entry::clone(&entry), head, request, verdict);
            if !head {
                ex.ctx.stale = Some(entry);
                ex.ctx.fwd = Fwd::Stale;
                crate::http::miss::refresh(ex);
            }
            reply
        }
    }
}

/// The entry a fill running in this process for `key` stores, if one is running and stores
/// an entry for this request's variant (waiting at most `lock_wait`).
async fn outcome_of_running_fill(
    shared: &Shared,
    key: &CacheKey,
    request: &HeaderMap,
) -> Option<Entry> {
    let follower = shared.flights.follow(key.flight())?;
    match tokio::time::timeout(shared.engine.fills.lock_wait, follower.outcome()).await {
        Ok(Outcome::Stored(entry))
            if crate::http::miss::answers_follower(&entry, request, true) =>
        {
            Some(Entry::clone(&entry))
        }
        _ => None,
    }
}

/// How a found entry may be used for this request.
enum Usable {
    Fresh,
    /// Stale, but the client accepts it (`max-stale`).
    Stale(Detail),
    /// Stale within its stale-while-revalidate window: serve it and refresh in the background.
    StaleWhileRevalidate,
}

/// How a found entry may be used, or why it must be validated with the origin first.
fn usability(
    entry: &Entry,
    now: u64,
    wants: &RequestDirectives,
    config: &Config,
) -> Result<Usable, Fwd> {
    let meta = &entry.meta;
    let fresh_left_ms = meta.fresh_left_ms(now);
    if wants.no_cache
        // Compared in milliseconds; `max-age=0` always revalidates, as clients mean by it,
        // even for a response stored in this very millisecond.
        || wants.max_age.is_some_and(|max| {
            max == 0 || now.saturating_sub(meta.stored_at_ms) > max.saturating_mul(1000)
        })
        || wants
            .min_fresh
            .is_some_and(|min| fresh_left_ms < (min as i64).saturating_mul(1000))
    {
        return Err(Fwd::Request);
    }
    if meta.is_fresh(now) {
        return Ok(Usable::Fresh);
    }
    if let Some(limit) = wants.max_stale {
        let staleness_ms = now.saturating_sub(meta.fresh_until_ms);
        let allowed = !CacheControl::for_response(&entry.headers, config)
            .forbids_unpermitted_stale(config.mode == CacheMode::Shared);
        if allowed && limit.is_none_or(|secs| staleness_ms <= secs.saturating_mul(1000)) {
            return Ok(Usable::Stale(Detail::MaxStale));
        }
    }
    if meta.within_stale_while_revalidate(now) {
        return Ok(Usable::StaleWhileRevalidate);
    }
    Err(Fwd::Stale)
}
