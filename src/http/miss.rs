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

use crate::engine::fill::{self, Acquire, FillKeys, FillRequest, FillWrite, Judged};
use crate::error::BoxError;
use crate::http::context::{Leader, Outcome, Reply, Role, Shared};
use crate::http::entry::{self, Entry};
use crate::http::fetch;
use crate::http::headers::{CacheOutcome, Fwd, Verdict};
use crate::http::key::CacheKey;
use crate::http::lookup::{self, Lookup, MissContext, Read};
use crate::http::range;
use crate::http::respond;
use crate::store::FillNotice;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use std::sync::Arc;
use tokio::sync::oneshot;
use tower_service::Service;

/// Answers a miss: follow this process's fill for the key, or lead one.
pub(crate) async fn miss<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    mut ctx: MissContext,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    match shared.flights.join(key.flight()) {
        Role::Follower(follower) => {
            // This process's fill is led by another request, which may be waiting for the
            // lock this one's lookup took: leave it for that leader (released, with a notice,
            // when this wait ends and the leader did not take it).
            let deposit = ctx
                .lease
                .take()
                .map(|lease| shared.engine.handoffs.deposit(lease));
            let outcome =
                tokio::time::timeout(shared.engine.fills.lock_wait, follower.outcome()).await;
            drop(deposit);
            match outcome {
                // Only a fresh entry answers a follower, as in other processes (`EntryJudge`): one
                // that must be revalidated on every use (`no-cache`, `max-age=0`) was the
                // leader's answer, not one to reuse, and a request joining just after the
                // leader was answered (the flight lasts until its write ends) is a new use.
                Ok(Outcome::Stored(entry))
                    if entry.matches(&parts.headers)
                        && entry.meta.is_fresh(entry::unix_now_ms())
                        && range::answers(&entry, &parts.headers, false) =>
                {
                    shared.engine.stats.coalesced(1);
                    return Ok(served_by_fill(&shared, &entry, &parts.headers));
                }
                Ok(Outcome::Stale(entry)) => {
                    let now = entry::unix_now_ms();
                    let verdict = respond::stale_verdict(
                        &entry,
                        now,
                        Some((Fwd::Stale, None)),
                        "stale-if-error",
                    );
                    return Ok(respond::from_entry(
                        &shared,
                        Entry::clone(&entry),
                        false,
                        &parts.headers,
                        verdict,
                    ));
                }
                Ok(_) => {}
                Err(_) => shared.engine.stats.lock_timeouts(1),
            }
            respond::forward(&shared, inner, parts, body, CacheOutcome::Miss, ctx.fwd).await
        }
        Role::Leader(leader) => {
            let (respond, reply) = oneshot::channel();
            let running = shared.engine.background.start();
            let task_shared = Arc::clone(&shared);
            let fill = async move {
                lead(
                    task_shared,
                    inner,
                    key,
                    parts,
                    body,
                    leader,
                    Some(respond),
                    ctx,
                )
                .await;
                drop(running);
            };
            tokio::spawn(tracing::Instrument::in_current_span(fill));
            // The fill task only drops `respond` unanswered if the inner service panicked.
            reply
                .await
                .unwrap_or_else(|_| Ok(respond::fill_failed(&shared)))
        }
    }
}

/// Refreshes a stale entry in the background, unless this process or another already is.
pub(crate) fn refresh<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    ctx: MissContext,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Role::Leader(leader) = shared.flights.join(key.flight()) else {
        return;
    };
    let running = shared.engine.background.start();
    let refresh = async move {
        lead(shared, inner, key, parts, body, leader, None, ctx).await;
        drop(running);
    };
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

/// Runs one fill: lock (or wait for another's), call the origin, answer the leading request
/// (`respond`, absent for a background refresh), share the entry with followers, write it,
/// announce it, unlock. The fleet-wide part (lock, wait, takeover, extension, the one-call
/// end) is the engine's ([`engine::fill`]); this is what it means for an HTTP response.
#[allow(clippy::too_many_arguments)]
async fn lead<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    leader: Leader,
    respond: Option<oneshot::Sender<Reply<ResBody, S::Error>>>,
    mut ctx: MissContext,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let keys = FillKeys {
        entry: key.entry_key().to_owned(),
        lock: key.lock_key(),
        flight: key.flight(),
    };
    // The lookup may have taken the lock already (it found nothing).
    let mut lease = ctx.lease.take();
    if lease.is_none() && shared.config.distributed_lock {
        let judge = EntryJudge {
            shared: &shared,
            key: &key,
            request: &parts.headers,
        };
        let attempt = fill::acquire_or_wait(
            &shared.engine,
            FillRequest {
                keys: &keys,
                // A background refresh does not wait: another process is already at it.
                wait: respond.is_some().then_some(shared.engine.fills.lock_wait),
                seen: ctx
                    .stale
                    .as_ref()
                    .or(ctx.partial.as_ref())
                    .map(|stored| stored.meta.stored_at_ms.to_be_bytes())
                    .or(ctx.purged),
                judge: &judge,
            },
        );
        match attempt.await {
            Acquire::Lead(held) => lease = Some(held),
            // The store is failing: fill without the lock; the write is tried all the same.
            Acquire::StoreDown => {}
            // Another's fill ended (stored, or not shareable), the wait ran out, or (for a
            // background refresh) another process is already refreshing.
            ended => {
                let filled = match ended {
                    Acquire::Filled(entry) => Some(Arc::new(entry)),
                    _ => None,
                };
                leader.resolve(match &filled {
                    Some(entry) => Outcome::Stored(Arc::clone(entry)),
                    None => Outcome::GoToOrigin,
                });
                if let Some(respond) = respond {
                    let answers = |entry: &Arc<Entry>| {
                        entry.matches(&parts.headers)
                            && range::answers(entry, &parts.headers, false)
                    };
                    let reply = match filled.filter(answers) {
                        Some(entry) => {
                            shared.engine.stats.coalesced(1);
                            Ok(served_by_fill(&shared, &entry, &parts.headers))
                        }
                        None => {
                            let miss = CacheOutcome::Miss;
                            fetch::fetch_and_store(&shared, inner, key, parts, body, miss, ctx)
                                .await
                        }
                    };
                    let _ = respond.send(reply);
                }
                return;
            }
        }
    }
    if respond.is_none() {
        shared.engine.stats.refreshes(1);
    }
    let fetched = fetch::fetch(&shared, inner, parts, body, CacheOutcome::Miss, &ctx).await;
    leader.resolve(match (&fetched.filled, &fetched.stale_served) {
        (Some(filled), _) => Outcome::Stored(Arc::clone(&filled.entry)),
        (None, Some(stale)) => Outcome::Stale(Arc::clone(stale)),
        (None, None) => Outcome::GoToOrigin,
    });
    if let Some(respond) = respond {
        let _ = respond.send(fetched.reply);
    }
    // End the fill in one store call: the entry (or a hit-for-miss marker), the notice to
    // waiters everywhere, and the lock's release.
    let prepared = match &fetched.filled {
        Some(filled) => {
            fetch::prepare_write(&shared, &key, ctx.index.as_ref(), filled, ctx.class).await
        }
        None => None,
    };
    let write = match (&fetched.filled, &prepared) {
        (Some(filled), Some(prepared)) => Some(FillWrite::value(
            prepared.target.as_str(),
            filled.encoded.clone(),
            filled.keep,
        )),
        _ => {
            // Nothing shareable came back (or it cannot be written): mark the key
            // hit-for-miss so the next requests go straight to the origin instead of queueing
            // behind a lock. The marker is written only where nothing is stored
            // (`only_if_absent`): a marker never replaces an entry, so no request can turn
            // others' hits into misses by drawing an unshareable answer.
            let ttl = shared.config.hit_for_miss_ttl;
            let mark = fetched.stale_served.is_none()
                && fetched.filled.is_none()
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
    if let (Ok(()), Some(filled), Some(prepared)) = (finished, &fetched.filled, &prepared) {
        fetch::count_stored(&shared, filled);
        fetch::put_alias(&shared, prepared, filled).await;
    }
    drop(prepared);
    // The flight ends here, after the write, so requests that came meanwhile were followers.
    drop(leader);
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
                match lookup::resolve(self.shared, self.key.clone(), self.request)
                    .await
                    .2
                {
                    Lookup::Found(entry) if usable(&entry) => Judged::Usable(entry),
                    Lookup::Found(entry) if fresh(&entry) => Judged::Load,
                    Lookup::HitForMiss | Lookup::Unavailable | Lookup::Purged(_) => Judged::Load,
                    Lookup::Found(_) | Lookup::Missing | Lookup::VaryMiss => Judged::Wait,
                }
            }
        }
    }
}
