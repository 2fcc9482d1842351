//! The request flow: classify, look up, answer from an entry, or hand a miss to
//! `miss`. Reading entries (and their vary indexes) lives here too.
//!
//! Every branch that cannot use the store forwards the request to the inner service, so a
//! store that is down, slow or returning garbage costs at most one bounded lookup.

use crate::error::BoxError;
use crate::http::config::{CacheMode, Config};
use crate::http::context::{Outcome, Reply, Shared};
use crate::http::entry::{self, Entry};
use crate::http::fetch::fetch_and_store;
use crate::http::headers::{CacheOutcome, Fwd, Verdict};
use crate::http::key::CacheKey;
use crate::http::lookup::{resolve, resolve_or_lock, Lookup, MissContext};
use crate::http::policy::{self, CacheControl, RequestClass, RequestDirectives};
use crate::http::range;
use crate::http::respond::{
    bypass, forward, forward_and_invalidate, from_entry, gateway_timeout, stale_verdict,
};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use std::sync::Arc;
use tower_service::Service;

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
    let class = policy::classify_request(
        request.method(),
        request.uri(),
        request.headers(),
        &shared.config,
    );
    let (parts, body) = request.into_parts();
    let key = match class {
        // An unsafe request naming two authorities is forwarded without invalidating: its
        // invalidation could otherwise reach entries of a host the origin was not asked about.
        RequestClass::Unsafe if policy::authority_agrees(&parts.uri, &parts.headers) => {
            // A `POST` may answer with the target's new representation (shared mode only:
            // in application mode the service owner's `GET` rules decide what is stored).
            let post_key = (parts.method == http::Method::POST
                && shared.config.mode == CacheMode::Shared)
                .then(|| shared.keys.derive(&parts))
                .flatten();
            if let Some(key) = post_key {
                return Box::pin(crate::http::fetch::post_and_store(
                    &shared, inner, key, parts, body,
                ))
                .await;
            }
            return Box::pin(forward_and_invalidate(&shared, inner, parts, body)).await;
        }
        RequestClass::Unsafe => None,
        RequestClass::Bypass => None,
        _ => shared.keys.derive(&parts),
    };
    let Some(key) = key else {
        return Box::pin(bypass(&shared, inner, parts, body)).await;
    };
    tracing::Span::current().record("key", tracing::field::display(key.entry_key()));
    let wants = RequestDirectives::for_request(&parts.headers, &shared.config);
    let mut ctx = MissContext {
        class,
        stale: None,
        partial: None,
        forward_range: false,
        fwd: Fwd::UriMiss,
        index: None,
        lease: None,
        purged: None,
    };
    if class.is_authorized() {
        // Not answered from the cache; its answer is stored only if the origin says it may
        // be shared, and then without touching what anonymous requests read (see `fetch`).
        ctx.fwd = Fwd::Bypass;
        return Box::pin(fetch_and_store(
            &shared,
            inner,
            key,
            parts,
            body,
            CacheOutcome::Bypass,
            ctx,
        ))
        .await;
    }
    if wants.no_store {
        // `no-store` asks that nothing be kept of this exchange: the origin answers it, and
        // nothing stored is read, replaced or marked on its account.
        return Box::pin(forward(
            &shared,
            inner,
            parts,
            body,
            CacheOutcome::Miss,
            Fwd::Request,
        ))
        .await;
    }
    let head = class.is_head();
    if head {
        // A HEAD arriving during a GET's fill is answered from it. Checked before the lookup:
        // a fill that ends in between has written its entry, which the lookup then finds.
        if let Some(entry) = outcome_of_running_fill(&shared, &key, &parts.headers).await {
            shared.engine.stats.coalesced(1);
            let ttl = entry.meta.ttl_secs(entry::unix_now_ms());
            return Ok(from_entry(
                &shared,
                entry,
                true,
                &parts.headers,
                Verdict::hit(ttl),
            ));
        }
    }
    // A request that fills on a miss reads or takes the fill lock in one round trip.
    let (key, index, found) = if !head && !wants.only_if_cached && shared.config.distributed_lock {
        let (key, index, found, lease) = resolve_or_lock(&shared, key, &parts.headers).await;
        ctx.lease = lease;
        (key, index, found)
    } else {
        resolve(&shared, key, &parts.headers).await
    };
    ctx.index = index;
    match found {
        Lookup::Unavailable => return Box::pin(bypass(&shared, inner, parts, body)).await,
        Lookup::Found(entry) if !range::answers(&entry, &parts.headers, head) => {
            // A stored part that does not hold what is asked for is a miss; the fill may
            // complete it (a part whose numbers disagree with its bytes is not kept for that).
            ctx.fwd = Fwd::Partial;
            if range::stored(&entry.headers, &entry.body).is_some() {
                ctx.partial = Some(Arc::new(entry));
            }
        }
        Lookup::Found(entry) => {
            let now = entry::unix_now_ms();
            match usability(&entry, now, &wants, &shared.config) {
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
                        crate::http::miss::refresh(shared, inner, key, parts, body, ctx);
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
            ctx.forward_range = true;
            return Box::pin(fetch_and_store(
                &shared,
                inner,
                key,
                parts,
                body,
                CacheOutcome::Miss,
                ctx,
            ))
            .await;
        }
        Lookup::VaryMiss => ctx.fwd = Fwd::VaryMiss,
        Lookup::Purged(seen) => ctx.purged = Some(seen),
        Lookup::HitForMiss | Lookup::Missing => {}
    }
    if wants.only_if_cached {
        return Ok(gateway_timeout(&shared));
    }
    if head {
        // A HEAD response has no body to store; the next GET fills the entry.
        return Box::pin(forward(
            &shared,
            inner,
            parts,
            body,
            CacheOutcome::Miss,
            ctx.fwd,
        ))
        .await;
    }
    // The miss path's state is large, and so is every path that calls the inner service (its
    // future is part of theirs): boxing them keeps the hit path's future small, so the one
    // allocation every request makes for its future copies less (3.3 KiB before, measured
    // through the proxy's origin client).
    Box::pin(crate::http::miss::miss(
        shared, inner, key, parts, body, ctx,
    ))
    .await
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
            if entry.matches(request) && range::answers(&entry, request, true) =>
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
    Stale(&'static str),
    /// Stale within its stale-while-revalidate window: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin first.
    Revalidate(Fwd),
}

fn usability(entry: &Entry, now: u64, wants: &RequestDirectives, config: &Config) -> Usable {
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
        return Usable::Revalidate(Fwd::Request);
    }
    if meta.is_fresh(now) {
        return Usable::Fresh;
    }
    if let Some(limit) = wants.max_stale {
        let staleness_ms = now.saturating_sub(meta.fresh_until_ms);
        let allowed = !CacheControl::for_response(&entry.headers, config)
            .forbids_unpermitted_stale(config.mode == CacheMode::Shared);
        if allowed && limit.is_none_or(|secs| staleness_ms <= secs.saturating_mul(1000)) {
            return Usable::Stale("max-stale");
        }
    }
    if meta.within_stale_while_revalidate(now) {
        return Usable::StaleWhileRevalidate;
    }
    Usable::Revalidate(Fwd::Stale)
}
