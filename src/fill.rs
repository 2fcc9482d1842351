//! The miss path: one fill per key across the fleet (design §6), and background refreshes.
//!
//! In this process, the first request for a key leads and the rest follow it (`coalesce`).
//! The leader's fill runs in its own task, so a client that hangs up does not cancel it for
//! the others. Across processes, the fill takes a lock in the store; a process that finds the
//! lock held waits for the holder's fill notice (polling as a fallback, and taking the lock
//! over when its holder let it expire), then reads the entry. Every wait is bounded by
//! `lock_wait`, after which the request asks the origin itself.
//!
//! A background refresh (stale-while-revalidate) is the same fill with nobody waiting for
//! it: it runs only if it gets the lock at once, so a fleet refreshes an entry once.

use crate::coalesce::{Leader, Outcome, Role};
use crate::entry::{self, Entry};
use crate::error::BoxError;
use crate::fetch;
use crate::flow::{self, Lookup, MissContext, Read, Reply};
use crate::headers::{CacheOutcome, Fwd, Verdict};
use crate::key::CacheKey;
use crate::layer::Shared;
use crate::respond;
use crate::store::{FillEnd, FillNotice, LockAttempt};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tower_service::Service;

/// Answers a miss: follow this process's fill for the key, or lead one.
pub(crate) async fn miss<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    ctx: MissContext,
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
            match tokio::time::timeout(shared.config.lock_wait, follower.outcome()).await {
                Ok(Outcome::Stored(entry)) if entry.matches(&parts.headers) => {
                    shared.stats.coalesced(1);
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
                Err(_) => shared.stats.lock_timeouts(1),
            }
            respond::forward(&shared, inner, parts, body, CacheOutcome::Miss, ctx.fwd).await
        }
        Role::Leader(leader) => {
            let (respond, reply) = oneshot::channel();
            let running = shared.background.start();
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
    let running = shared.background.start();
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
/// announce it, unlock.
#[allow(clippy::too_many_arguments)]
async fn lead<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    leader: Leader,
    respond: Option<oneshot::Sender<Reply<ResBody, S::Error>>>,
    ctx: MissContext,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let token = lock_token();
    let lock_key = key.lock_key();
    let mut held = false;
    if shared.config.distributed_lock {
        let wait = respond.is_some();
        let seen = ctx
            .stale
            .as_ref()
            .map(|stale| stale.meta.stored_at_ms.to_be_bytes());
        let attempt = acquire_or_wait(&shared, &key, &lock_key, &token, wait, &parts.headers, seen);
        match attempt.await {
            Acquire::Acquired => held = true,
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
                    let reply = match filled.filter(|entry| entry.matches(&parts.headers)) {
                        Some(entry) => {
                            shared.stats.coalesced(1);
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
        shared.stats.refreshes(1);
    }
    let extender =
        held.then(|| extend_while_filling(Arc::clone(&shared), lock_key.clone(), token.clone()));
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
        (Some(filled), Some((target, _))) => {
            Some((target.as_str(), filled.encoded.clone(), filled.keep))
        }
        _ => {
            // Nothing shareable came back (or it cannot be written): mark the key
            // hit-for-miss so the next requests go straight to the origin instead of queueing
            // behind a lock. The marker is written only where nothing is stored (see
            // `FillEnd::only_if_absent`): a marker never replaces an entry, so no request can
            // turn others' hits into misses by drawing an unshareable answer.
            let ttl = shared.config.hit_for_miss_ttl;
            let mark = fetched.stale_served.is_none()
                && fetched.filled.is_none()
                && !ttl.is_zero()
                && (held || !shared.config.distributed_lock);
            mark.then(|| {
                (
                    key.entry_key(),
                    Bytes::from_static(entry::HIT_FOR_MISS),
                    ttl,
                )
            })
        }
    };
    let stores_entry = prepared.is_some();
    let notice = if stores_entry {
        FillNotice::Stored
    } else {
        FillNotice::NotStorable
    };
    let end = FillEnd {
        only_if_absent: !stores_entry,
        write,
        notice: (key.entry_key(), notice),
        unlock: held.then_some((lock_key.as_str(), token.as_str())),
    };
    drop(extender);
    match shared.store.finish_fill(end).await {
        Ok(()) => {
            if let (Some(filled), true) = (&fetched.filled, stores_entry) {
                fetch::count_stored(&shared, filled);
            }
        }
        // Still try to let the others go at once rather than after the lock's expiry.
        Err(_) if held => {
            let _ = shared.store.unlock(&lock_key, &token).await;
        }
        Err(_) => {}
    }
    drop(prepared);
    // The flight ends here, after the write, so requests that came meanwhile were followers.
    drop(leader);
}

enum Acquire {
    Acquired,
    Filled(Entry),
    GoToOrigin,
    /// Held elsewhere, and this fill does not wait (a background refresh).
    Busy,
    StoreDown,
}

/// Takes the fill lock, or waits for its holder's fill. Bounded by `lock_wait`.
/// `seen` is the stamp of the stale entry this fill refreshes, if any: finding it again is not
/// finding a fill.
async fn acquire_or_wait(
    shared: &Shared,
    key: &CacheKey,
    lock_key: &str,
    token: &str,
    wait: bool,
    request: &HeaderMap,
    seen: Option<[u8; 8]>,
) -> Acquire {
    let config = &shared.config;
    // Subscribe before trying the lock, so a notice sent in between is not missed.
    let mut waiter = shared.store.subscribe_fill(key.entry_key());
    // Lock unless a fill has ended since the lookup; both in one step, so a fill that ends in
    // between is found instead of repeated.
    let attempt =
        shared
            .store
            .try_lock_or_read(key.entry_key(), lock_key, token, config.lock_ttl, seen);
    match attempt.await {
        Ok(LockAttempt::Acquired) => return Acquire::Acquired,
        Ok(LockAttempt::Found(value)) => return found(shared, key, request, value).await,
        Ok(LockAttempt::Held) if !wait => return Acquire::Busy,
        Ok(LockAttempt::Held) => {}
        Err(_) => return Acquire::StoreDown,
    }
    shared.stats.lock_waits(1);
    let deadline = tokio::time::sleep(config.lock_wait);
    tokio::pin!(deadline);
    let max_poll =
        (config.lock_ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(200));
    let mut poll = Duration::from_millis(10).min(max_poll);
    loop {
        let polled = tokio::select! {
            notice = waiter.notice() => match notice {
                FillNotice::NotStorable => return Acquire::GoToOrigin,
                FillNotice::Stored | FillNotice::Changed => false,
            },
            () = tokio::time::sleep(poll) => true,
            () = &mut deadline => {
                shared.stats.lock_timeouts(1);
                return Acquire::GoToOrigin;
            }
        };
        match flow::resolve(shared, key.clone(), request).await.2 {
            Lookup::Found(entry) if entry.meta.is_fresh(entry::unix_now_ms()) => {
                return Acquire::Filled(entry)
            }
            Lookup::HitForMiss => return Acquire::GoToOrigin,
            Lookup::Unavailable => return Acquire::StoreDown,
            Lookup::Found(_) | Lookup::Missing | Lookup::VaryMiss => {}
        }
        if polled {
            let attempt = shared.store.try_lock_or_read(
                key.entry_key(),
                lock_key,
                token,
                config.lock_ttl,
                seen,
            );
            match attempt.await {
                Ok(LockAttempt::Acquired) => {
                    shared.stats.lock_takeovers(1);
                    return Acquire::Acquired;
                }
                Ok(LockAttempt::Found(value)) => return found(shared, key, request, value).await,
                Ok(LockAttempt::Held) => {}
                Err(_) => return Acquire::StoreDown,
            }
            poll = (poll * 2).min(max_poll);
        }
    }
}

/// What a value found instead of the lock means for this request: a fresh entry for it is a
/// finished fill; anything else (a marker, another variant, an index) sends it to the origin.
async fn found(shared: &Shared, key: &CacheKey, request: &HeaderMap, value: Bytes) -> Acquire {
    let now = entry::unix_now_ms();
    let usable = |entry: &Entry| entry.meta.is_fresh(now) && entry.matches(request);
    match flow::interpret(shared, key.entry_key(), value).await {
        Read::Entry(entry) if usable(&entry) => Acquire::Filled(entry),
        Read::Index(_) => match flow::resolve(shared, key.clone(), request).await.2 {
            Lookup::Found(entry) if usable(&entry) => Acquire::Filled(entry),
            _ => Acquire::GoToOrigin,
        },
        _ => Acquire::GoToOrigin,
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the lock alive while a slow origin answers, so nobody else calls it meanwhile.
fn extend_while_filling(shared: Arc<Shared>, lock_key: String, token: String) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let ttl = shared.config.lock_ttl;
        loop {
            tokio::time::sleep(ttl / 3).await;
            match shared.store.extend_lock(&lock_key, &token, ttl).await {
                Ok(true) => {}
                // Lost or unreachable: stop; the fill completes without the lock.
                _ => break,
            }
        }
    }))
}

/// A token no other fill holds: per-process random keys mixed with a counter.
fn lock_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Relaxed);
    let high = RandomState::new().hash_one(n);
    let low = RandomState::new().hash_one((n, std::process::id()));
    format!("{high:016x}{low:016x}")
}
