//! The miss path: one fill per key across the fleet (design §6).
//!
//! In this process, the first request for a key leads and the rest follow it (`coalesce`).
//! The leader's fill runs in its own task, so a client that hangs up does not cancel it for
//! the others. Across processes, the fill takes a lock in the store; a process that finds the
//! lock held waits for the holder's fill notice (polling as a fallback, and taking the lock
//! over when its holder let it expire), then reads the entry. Every wait is bounded by
//! `lock_wait`, after which the request asks the origin itself.

use crate::coalesce::{Leader, Outcome, Role};
use crate::entry::{self, Entry};
use crate::error::BoxError;
use crate::flow::{self, Lookup, Reply};
use crate::headers::CacheOutcome;
use crate::key::CacheKey;
use crate::layer::Shared;
use crate::store::FillNotice;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tower_service::Service;

pub(crate) async fn miss<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
) -> Reply<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    match shared.flights.join(key.hash()) {
        Role::Follower(follower) => {
            match tokio::time::timeout(shared.config.lock_wait, follower.outcome()).await {
                Ok(Outcome::Stored(entry)) if entry.matches(&parts.headers) => {
                    shared.stats.coalesced(1);
                    return Ok(flow::hit(&shared, Entry::clone(&entry), false));
                }
                Ok(_) => {}
                Err(_) => shared.stats.lock_timeouts(1),
            }
            flow::forward(&shared, inner, parts, body, CacheOutcome::Miss).await
        }
        Role::Leader(leader) => {
            let (respond, reply) = oneshot::channel();
            let running = shared.background.start();
            tokio::spawn(async move {
                lead(shared, inner, key, parts, body, leader, respond).await;
                drop(running);
            });
            // The fill task only drops `respond` unanswered if the inner service panicked.
            reply.await.unwrap_or_else(|_| Ok(fill_failed()))
        }
    }
}

fn fill_failed<B>() -> Response<crate::CacheBody<B>> {
    let mut response = Response::new(crate::CacheBody::cached(None));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    crate::headers::mark_forwarded(response.headers_mut(), CacheOutcome::Miss, false);
    response
}

/// Runs one fill: lock (or wait for another's), call the origin, answer the leading request,
/// share the entry with followers, write it, announce it, unlock.
async fn lead<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    parts: Parts,
    body: ReqBody,
    leader: Leader,
    respond: oneshot::Sender<Reply<ResBody, S::Error>>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let token = lock_token();
    let lock_key = key.lock_key();
    let mut held = false;
    if shared.config.distributed_lock {
        match acquire_or_wait(&shared, &key, &lock_key, &token).await {
            Acquire::Acquired => held = true,
            Acquire::Filled(entry) => {
                let entry = Arc::new(entry);
                leader.resolve(Outcome::Stored(Arc::clone(&entry)));
                let reply = if entry.matches(&parts.headers) {
                    shared.stats.coalesced(1);
                    Ok(flow::hit(&shared, Entry::clone(&entry), false))
                } else {
                    flow::forward(&shared, inner, parts, body, CacheOutcome::Miss).await
                };
                let _ = respond.send(reply);
                return;
            }
            Acquire::GoToOrigin => {
                leader.resolve(Outcome::GoToOrigin);
                let _ = respond
                    .send(flow::forward(&shared, inner, parts, body, CacheOutcome::Miss).await);
                return;
            }
            // The store is failing: fill without the lock; the write is tried all the same.
            Acquire::StoreDown => {}
        }
    }
    let extender =
        held.then(|| extend_while_filling(Arc::clone(&shared), lock_key.clone(), token.clone()));
    let (reply, filled) = flow::fetch(&shared, inner, parts, body, CacheOutcome::Miss, false).await;
    leader.resolve(match &filled {
        Some(filled) => Outcome::Stored(Arc::clone(&filled.entry)),
        None => Outcome::GoToOrigin,
    });
    let _ = respond.send(reply);
    let notice = match &filled {
        Some(filled) if flow::write(&shared, &key, filled).await => FillNotice::Stored,
        Some(_) => FillNotice::NotStorable,
        None => {
            let ttl = shared.config.hit_for_miss_ttl;
            if !ttl.is_zero() && (held || !shared.config.distributed_lock) {
                let marker = Bytes::from_static(entry::HIT_FOR_MISS);
                let _ = shared.store.put(key.entry_key(), marker, ttl).await;
            }
            FillNotice::NotStorable
        }
    };
    if held || notice == FillNotice::Stored {
        let _ = shared.store.publish_fill(key.entry_key(), notice).await;
    }
    drop(extender);
    if held {
        let _ = shared.store.unlock(&lock_key, &token).await;
    }
    // The flight ends here, after the write, so requests that came meanwhile were followers.
    drop(leader);
}

enum Acquire {
    Acquired,
    Filled(Entry),
    GoToOrigin,
    StoreDown,
}

/// Takes the fill lock, or waits for its holder's fill. Bounded by `lock_wait`.
async fn acquire_or_wait(shared: &Shared, key: &CacheKey, lock_key: &str, token: &str) -> Acquire {
    let config = &shared.config;
    // Subscribe before trying the lock, so a notice sent in between is not missed.
    let mut waiter = shared.store.subscribe_fill(key.entry_key());
    match shared
        .store
        .try_lock(lock_key, token, config.lock_ttl)
        .await
    {
        Ok(true) => return Acquire::Acquired,
        Ok(false) => {}
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
                FillNotice::Stored => false,
            },
            () = tokio::time::sleep(poll) => true,
            () = &mut deadline => {
                shared.stats.lock_timeouts(1);
                return Acquire::GoToOrigin;
            }
        };
        match flow::lookup(shared, key).await {
            Lookup::Found(entry) if entry.meta.is_fresh(entry::unix_now_ms()) => {
                return Acquire::Filled(entry)
            }
            Lookup::HitForMiss => return Acquire::GoToOrigin,
            Lookup::Unavailable => return Acquire::StoreDown,
            Lookup::Found(_) | Lookup::Missing => {}
        }
        if polled {
            match shared
                .store
                .try_lock(lock_key, token, config.lock_ttl)
                .await
            {
                Ok(true) => {
                    shared.stats.lock_takeovers(1);
                    return Acquire::Acquired;
                }
                Ok(false) => {}
                Err(_) => return Acquire::StoreDown,
            }
            poll = (poll * 2).min(max_poll);
        }
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
