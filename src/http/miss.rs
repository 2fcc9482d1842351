//! The HTTP miss path: followers of a fill in this process, the leader's fill (on the
//! engine's fleet-wide protocol), and background refreshes.
//!
//! In this process, the first request for a key leads and the rest follow it (`engine::flight`).
//! The leader's fill runs in its own task, so a client that hangs up does not cancel it for
//! the others. Across processes, the fill takes a lock in the store; a process that finds the
//! lock held waits for the holder's fill notice (polling as a fallback, and taking the lock
//! over when its holder let it expire), then reads the entry. Every wait is bounded by
//! `lock_wait`, after which the request asks the origin itself.
//!
//! A background refresh (stale-while-revalidate) is the same fill with nobody waiting for
//! it: it runs only if it gets the lock at once, so a fleet refreshes an entry once.

use crate::engine::fill::{self, Acquire, FillKeys, FillRequest, FillWrite, Judged, Lease};
use crate::http::context::{
    Exchange, Follower, Leader, MissContext, Origin, OriginBody, Outcome, Reply, Role, Shared,
};
use crate::http::entry::{self, Entry};
use crate::http::fetch;
use crate::http::headers::{CacheOutcome, Detail, Fwd, Verdict};
use crate::http::key::CacheKey;
use crate::http::lookup::{self, Lookup, Read};
use crate::http::range;
use crate::http::respond;
use crate::http::write::{self, Filled};
use crate::store::FillNotice;
use bytes::Bytes;
use http::{HeaderMap, Response};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Answers a miss: follow this process's fill for the key, or lead one.
pub(crate) async fn miss<S, ReqBody, ResBody>(ex: Exchange<S, ReqBody>) -> Reply<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    match ex.shared.flights.join(ex.key.flight()) {
        Role::Follower(follower) => follow(ex, follower).await,
        Role::Leader(leader) => {
            let (respond, reply) = oneshot::channel();
            let shared = Arc::clone(&ex.shared);
            let running = shared.engine.background.start();
            // Boxed here, once: the wrappers and the spawn below then move a pointer, not the
            // fill's whole state (kilobytes, copied at each move: 2-3 % of a miss's CPU).
            let fill = Box::pin(async move {
                lead(ex, leader, Some(respond)).await;
                drop(running);
            });
            // The leader's response is marked in the fill task: its latency counts from when
            // the request arrived.
            #[cfg(feature = "metrics")]
            let fill = crate::http::context::with_started(fill);
            tokio::spawn(tracing::Instrument::in_current_span(fill));
            // The fill task only drops `respond` unanswered if the inner service panicked.
            reply
                .await
                .unwrap_or_else(|_| Ok(respond::fill_failed(&shared)))
        }
    }
}

/// Waits for the fill this process's leader for the key runs, and answers from it; asks the
/// origin itself when that fill stored nothing this request may use, or took too long.
async fn follow<S, ReqBody, ResBody>(
    mut ex: Exchange<S, ReqBody>,
    follower: Follower,
) -> Reply<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let shared = &ex.shared;
    let request = &ex.call.parts.headers;
    // This process's fill is led by another request, which may be waiting for the lock this
    // one's lookup took: leave it for that leader (released, with a notice, when this wait
    // ends and the leader did not take it).
    let deposit = ex
        .ctx
        .lease
        .take()
        .map(|lease| shared.engine.handoffs.deposit(lease));
    let outcome = tokio::time::timeout(shared.engine.fills.lock_wait, follower.outcome()).await;
    drop(deposit);
    match outcome {
        Ok(Outcome::Stored(entry)) if answers_follower(&entry, request, false) => {
            shared.engine.stats.coalesced(1);
            return Ok(served_by_fill(shared, &entry, request));
        }
        Ok(Outcome::Stale(entry)) => {
            let now = entry::unix_now_ms();
            let fwd = Some((Fwd::Stale, None));
            let verdict = respond::stale_verdict(&entry, now, fwd, Detail::StaleIfError);
            let entry = Entry::clone(&entry);
            return Ok(respond::from_entry(shared, entry, false, request, verdict));
        }
        Ok(_) => {}
        Err(_) => shared.engine.stats.lock_timeouts(1),
    }
    respond::forward(&ex.shared, ex.call, CacheOutcome::Miss, ex.ctx.fwd).await
}

/// Whether the entry another request's fill stored answers a request that waited for it
/// (`head`: a `HEAD`): the request's variant, holding the range asked for, and fresh, as in
/// other processes (`EntryJudge`): one that must be revalidated on every use (`no-cache`,
/// `max-age=0`) was the leader's answer, not one to reuse, and a request joining just after
/// the leader was answered (the flight lasts until its write ends) is a new use.
pub(crate) fn answers_follower(entry: &Entry, request: &HeaderMap, head: bool) -> bool {
    entry.matches(request)
        && entry.meta.is_fresh(entry::unix_now_ms())
        && range::answers(entry, request, head)
}

/// Refreshes a stale entry in the background, unless this process or another already is.
pub(crate) fn refresh<S, ReqBody, ResBody>(ex: Exchange<S, ReqBody>)
where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Role::Leader(leader) = ex.shared.flights.join(ex.key.flight()) else {
        return;
    };
    let running = ex.shared.engine.background.start();
    let refresh = Box::pin(async move {
        lead(ex, leader, None).await;
        drop(running);
    });
    tokio::spawn(tracing::Instrument::in_current_span(refresh));
}

/// A response for a request served by another request's fill.
fn served_by_fill<B>(
    shared: &Shared,
    entry: &Entry,
    request: &HeaderMap,
) -> Response<crate::CacheBody<B>> {
    let ttl = entry.meta.ttl_secs(entry::unix_now_ms());
    respond::from_entry(
        shared,
        Entry::clone(entry),
        false,
        request,
        Verdict::hit(ttl),
    )
}

/// Where the leader answers its request: `None` for a background refresh.
type Respond<B, E> = Option<oneshot::Sender<Reply<B, E>>>;

/// Runs one fill: lock (or wait for another's), call the origin, answer the leading request
/// (`respond`, absent for a background refresh), share the entry with followers, write it,
/// announce it, unlock. The fleet-wide part (lock, wait, takeover, extension, the one-call
/// end) is the engine's ([`engine::fill`]); this is what it means for an HTTP response.
async fn lead<S, ReqBody, ResBody>(
    ex: Exchange<S, ReqBody>,
    leader: Leader,
    respond: Respond<ResBody, S::Error>,
) where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Exchange {
        shared,
        key,
        mut ctx,
        call,
    } = ex;
    // The lookup may have taken the lock already (it found nothing).
    let lease = ctx.lease.take();
    let mut fill = Fill {
        shared: &shared,
        key: &key,
        ctx: &ctx,
        lease,
    };
    if fill.lease.is_none() && shared.config.distributed_lock {
        match fill.acquire(&call.parts.headers, respond.is_some()).await {
            Acquire::Lead(held) => fill.lease = Some(held),
            // The store is failing: fill without the lock; the write is tried all the same.
            Acquire::StoreDown => {}
            // Another's fill ended (stored, or not shareable), the wait ran out, or (for a
            // background refresh) another process is already refreshing.
            ended_with => {
                let filled = match ended_with {
                    Acquire::Filled(entry) => Some(entry),
                    _ => None,
                };
                drop(fill);
                let ex = Exchange {
                    shared,
                    key,
                    ctx,
                    call,
                };
                return ended(ex, leader, respond, filled).await;
            }
        }
    }
    if respond.is_none() {
        shared.engine.stats.refreshes(1);
    }
    let fetched = fetch::fetch(&shared, call, CacheOutcome::Miss, &ctx).await;
    leader.resolve(match (&fetched.filled, &fetched.stale_served) {
        (Some(filled), _) => Outcome::Stored(Arc::clone(&filled.entry)),
        (None, Some(stale)) => Outcome::Stale(Arc::clone(stale)),
        (None, None) => Outcome::GoToOrigin,
    });
    if let Some(respond) = respond {
        let _ = respond.send(fetched.reply);
    }
    fill.end(fetched.filled, fetched.stale_served.is_some())
        .await;
    // The flight ends here, after the write, so requests that came meanwhile were followers.
    drop(leader);
}

/// Another's fill ended before this one took the lock: share what it stored with this
/// process's followers, and answer the leading request from it, or from the origin.
async fn ended<S, ReqBody, ResBody>(
    ex: Exchange<S, ReqBody>,
    leader: Leader,
    respond: Respond<ResBody, S::Error>,
    filled: Option<Entry>,
) where
    S: Origin<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let filled = filled.map(Arc::new);
    leader.resolve(match &filled {
        Some(entry) => Outcome::Stored(Arc::clone(entry)),
        None => Outcome::GoToOrigin,
    });
    let Some(respond) = respond else {
        return;
    };
    let request = &ex.call.parts.headers;
    let answers =
        |entry: &Arc<Entry>| entry.matches(request) && range::answers(entry, request, false);
    let reply = match filled.filter(answers) {
        Some(entry) => {
            ex.shared.engine.stats.coalesced(1);
            Ok(served_by_fill(&ex.shared, &entry, request))
        }
        None => fetch::fetch_and_store(ex, CacheOutcome::Miss).await,
    };
    let _ = respond.send(reply);
}

/// One fill's hold on the fleet-wide protocol: the lock it takes (or the fill it waits for),
/// and the one store call that ends it.
struct Fill<'a> {
    shared: &'a Arc<Shared>,
    key: &'a CacheKey,
    ctx: &'a MissContext,
    /// The fill lock, when this fill holds it.
    lease: Option<Lease>,
}

impl Fill<'_> {
    /// Takes the fill lock, or waits for the fill of the process that holds it (`waits`:
    /// not for a background refresh, which leaves the key to the fill already at it).
    async fn acquire(&self, request: &HeaderMap, waits: bool) -> Acquire<Entry> {
        let (shared, key, ctx) = (self.shared, self.key, self.ctx);
        let keys = FillKeys {
            entry: key.entry_key().to_owned(),
            lock: key.lock_key(),
            flight: key.flight(),
        };
        let judge = EntryJudge {
            shared,
            key,
            request,
        };
        let request = FillRequest {
            keys: &keys,
            wait: waits.then_some(shared.engine.fills.lock_wait),
            seen: ctx
                .stale
                .as_ref()
                .or(ctx.partial.as_ref())
                .map(|stored| stored.meta.stored_at_ms.to_be_bytes())
                .or(ctx.purged),
            judge: &judge,
        };
        fill::acquire_or_wait(&shared.engine, request).await
    }

    /// Ends the fill in one store call: the entry (or a hit-for-miss marker), the notice to
    /// waiters everywhere, and the lock's release.
    async fn end(self, filled: Option<Filled>, stale_served: bool) {
        let Self {
            shared,
            key,
            ctx,
            lease,
        } = self;
        let prepared = match &filled {
            Some(filled) => {
                write::prepare_write(shared, key, ctx.index.as_ref(), filled, ctx.class).await
            }
            None => None,
        };
        let write = match (&filled, &prepared) {
            (Some(filled), Some(prepared)) => Some(FillWrite::value(
                prepared.target.as_str(),
                filled.encoded.clone(),
                filled.keep,
            )),
            _ => {
                // Nothing shareable came back (or it cannot be written): mark the key
                // hit-for-miss so the next requests go straight to the origin instead of
                // queueing behind a lock. The marker is written only where nothing is stored
                // (`only_if_absent`): a marker never replaces an entry, so no request can turn
                // others' hits into misses by drawing an unshareable answer.
                let ttl = shared.config.hit_for_miss_ttl;
                let mark = !stale_served
                    && filled.is_none()
                    && !ttl.is_zero()
                    && (lease.is_some() || !shared.config.distributed_lock);
                mark.then(|| FillWrite {
                    key: key.entry_key(),
                    value: Bytes::from_static(entry::HIT_FOR_MISS),
                    keep: ttl,
                    only_if_absent: true,
                })
            }
        };
        let notice = match prepared {
            Some(_) => FillNotice::Stored,
            None => FillNotice::NotStorable,
        };
        let finished = fill::finish(&shared.engine, lease, write, (key.entry_key(), notice)).await;
        if let (Ok(()), Some(filled), Some(prepared)) = (finished, &filled, &prepared) {
            write::count_stored(shared, filled);
            write::put_alias(shared, prepared, filled).await;
        }
        drop(prepared);
    }
}

/// What the values a fill meets mean for an HTTP request: a fresh entry for its variant is a
/// finished fill (read through the vary index when the key holds one); a stale entry is the
/// one being refreshed (wait on); a hit-for-miss marker, or a store that fails, sends the
/// request to the origin.
struct EntryJudge<'a> {
    shared: &'a Shared,
    key: &'a CacheKey,
    request: &'a HeaderMap,
}

impl fill::Judge for EntryJudge<'_> {
    type Value = Entry;

    async fn judge(&self, value: Bytes) -> Judged<Entry> {
        let now = entry::unix_now_ms();
        let fresh = |entry: &Entry| entry.meta.is_fresh(now) && entry.matches(self.request);
        let usable = |entry: &Entry| fresh(entry) && range::answers(entry, self.request, false);
        match lookup::interpret(self.shared, self.key.entry_key(), value).await {
            Read::Entry(entry) if usable(&entry) => Judged::Usable(entry),
            // Another fill's fresh part, not holding what this request asks for.
            Read::Entry(entry) if fresh(&entry) => Judged::Load,
            Read::Entry(_) | Read::Missing => Judged::Wait,
            // Purged, yet not the value this fill was told to replace: another fill's, made
            // within the purge's clock margin; asking the origin is quicker than waiting.
            Read::HitForMiss | Read::Unavailable | Read::Purged(_) => Judged::Load,
            Read::Index(_) => {
                let mut key = self.key.clone();
                match lookup::resolve(self.shared, &mut key, self.request).await.1 {
                    Lookup::Found(entry) if usable(&entry) => Judged::Usable(entry),
                    Lookup::Found(entry) if fresh(&entry) => Judged::Load,
                    Lookup::HitForMiss | Lookup::Unavailable | Lookup::Purged(_) => Judged::Load,
                    Lookup::Found(_) | Lookup::Missing | Lookup::VaryMiss => Judged::Wait,
                }
            }
        }
    }
}
