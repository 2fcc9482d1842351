//! The loading path of `get_or_set`: single flight in process, the engine's fill across the
//! fleet, fail-safe (and its throttle), soft and hard timeouts, and background refreshes.
//!
//! The loader is a future polled in the caller's task, so it may borrow the caller's state.
//! Callers of one key in this process follow the one that leads; if the leader's caller
//! gives up (its future is dropped), the flight ends unresolved and a follower leads anew.
//! Followers get the encoded value (each decodes its own `T`) or the loader's error as the
//! same `Arc<E>`; followers elsewhere are told by the fill notice. Only a load that must go
//! on after its caller answered (a stale-while-revalidate or eager refresh, a loader past its
//! soft timeout) leaves the caller's task, which is why only the options that ask for those
//! make the loader `Send + 'static` ([`Loader`]).

use super::codec::{self, unix_now_ms, Meta};
use super::inner::{millis, Found, Inner, Landed};
use super::loader::{Detached, Loader, Validator};
use super::options::{Loaded, Settings};
use super::usable::Usable;
use crate::engine::fill::{self, Acquire, FillKeys, FillRequest, Lease};
use crate::engine::flight::{Leader, Outcome, Role};
use crate::error::GetOrSetError;
use crate::store::FillNotice;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a load produced no value.
enum Failure<E> {
    Loader(E),
    HardTimeout(Duration),
}

/// The last value kept for fail-safe, answered when the load fails or is slow.
struct Fallback<T> {
    meta: Meta,
    value: T,
    bytes: Bytes,
}

/// One `get_or_set` call: what its load needs besides the loader. Cheap to clone into a
/// background task.
pub(super) struct Call<T> {
    pub(super) inner: Arc<Inner>,
    pub(super) keys: FillKeys,
    pub(super) fingerprint: u64,
    pub(super) valid: Option<Validator<T>>,
    pub(super) options: Settings,
    /// The stamp of the value this load replaces (stale, foreign, rejected), if any: the
    /// fill lock treats it as absent.
    pub(super) seen: Option<[u8; 8]>,
    /// When the call began, on the store's clock: what it stores carries it, so a purge
    /// recorded while its loader ran covers the value (taken before the loader starts).
    pub(super) filled_at_us: u64,
}

impl<T> Clone for Call<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            keys: self.keys.clone(),
            fingerprint: self.fingerprint,
            valid: self.valid.clone(),
            options: self.options,
            seen: self.seen,
            filled_at_us: self.filled_at_us,
        }
    }
}

/// What a follower makes of its leader's outcome.
enum Followed<T, E> {
    Value(T),
    Failed(GetOrSetError<E>),
    /// The flight ended without an outcome (its leader's caller gave up): join again.
    Rejoin,
    /// The outcome is not for this caller (another identity or error type): load alone.
    LoadAlone,
}

/// Runs `running` until it answers or `deadline` passes.
async fn bounded<T, E, F>(
    running: F,
    deadline: Option<(Instant, Duration)>,
) -> Result<Loaded<T>, Failure<E>>
where
    F: Future<Output = Result<Loaded<T>, E>>,
{
    match deadline {
        Some((at, after)) => match tokio::time::timeout_at(at, running).await {
            Ok(result) => result.map_err(Failure::Loader),
            Err(_) => Err(Failure::HardTimeout(after)),
        },
        None => running.await.map_err(Failure::Loader),
    }
}

impl<T> Call<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// `get_or_set`: a fresh hit (maybe refreshed eagerly), a stale hit (refreshed in the
    /// background), or a load, with the fail-safe value (if any) standing by.
    pub(super) async fn get_or_set<M, L, E>(mut self, loader: L) -> Result<T, GetOrSetError<E>>
    where
        L: Loader<M, T, E>,
        E: Send + Sync + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let stats = &inner.engine.stats;
        let entry = self.keys.entry.clone();
        // A store that fails is a miss: the loader runs (fail-open).
        let bytes = inner.engine.store.get(&entry).await.unwrap_or(None);
        let valid = self.valid.as_deref();
        let mut fallback = None;
        match inner
            .read::<T>(&entry, bytes, self.fingerprint, valid)
            .await
        {
            Found::Value(meta, value, bytes) => {
                let now = unix_now_ms();
                self.seen = Some(meta.stamp());
                let options = self.options;
                if meta.is_fresh(now) {
                    stats.typed_hits(1);
                    let eager = options.eager_refresh;
                    if eager.is_some_and(|fraction| meta.past_fraction(now, fraction)) {
                        if let Some(detached) = L::detach(Box::pin(loader.start())) {
                            self.refresh(detached);
                        }
                    }
                    return Ok(value);
                }
                if options.stale_while_revalidate.is_some() && now < meta.stale_until_ms {
                    let running = Box::pin(loader.start());
                    match L::detach(running) {
                        Some(detached) => {
                            stats.typed_stale(1);
                            self.refresh(detached);
                            return Ok(value);
                        }
                        // Not reached (the mode that allows the window allows this), but a
                        // load in the caller is the safe answer.
                        None => return self.stale_without_background(value),
                    }
                }
                if options.fail_safe.is_some() && now < meta.fail_safe_until_ms {
                    fallback = Some(Fallback { meta, value, bytes });
                }
            }
            Found::Unusable(meta) => self.seen = Some(meta.stamp()),
            Found::Nothing => {}
        }
        stats.typed_misses(1);
        self.coalesced(fallback, loader).await
    }

    fn stale_without_background<E>(&self, value: T) -> Result<T, GetOrSetError<E>> {
        self.inner.engine.stats.typed_stale(1);
        Ok(value)
    }

    /// Follows this process's load of the key, or leads one.
    async fn coalesced<M, L, E>(
        &self,
        mut fallback: Option<Fallback<T>>,
        loader: L,
    ) -> Result<T, GetOrSetError<E>>
    where
        L: Loader<M, T, E>,
        E: Send + Sync + 'static,
    {
        let stats = &self.inner.engine.stats;
        // A flight whose leader's caller gave up is joined again (one of its followers
        // leads next); after a few, this caller loads on its own.
        for _ in 0..8 {
            let follower = match self.inner.flights.join(self.keys.flight) {
                Role::Leader(leader) => return self.lead(Some(leader), fallback, loader).await,
                Role::Follower(follower) => follower,
            };
            let outcome = match (self.options.soft_timeout, fallback.is_some()) {
                (Some(soft), true) => match tokio::time::timeout(soft, follower.outcome()).await {
                    Ok(outcome) => outcome,
                    Err(_) => match fallback.take() {
                        Some(stale) => {
                            stats.typed_stale(1);
                            return Ok(stale.value);
                        }
                        None => continue,
                    },
                },
                _ => follower.outcome().await,
            };
            match self.followed::<E>(outcome) {
                Followed::Value(value) => return Ok(value),
                Followed::Failed(error) => {
                    return match fallback {
                        Some(stale) => {
                            stats.typed_stale(1);
                            Ok(stale.value)
                        }
                        None => Err(error),
                    }
                }
                Followed::Rejoin => continue,
                Followed::LoadAlone => break,
            }
        }
        self.lead(None, fallback, loader).await
    }

    /// What a follower makes of its leader's outcome.
    fn followed<E: Send + Sync + 'static>(&self, outcome: Outcome<Landed>) -> Followed<T, E> {
        let stats = &self.inner.engine.stats;
        match outcome {
            Outcome::Stored(Landed::Value(bytes)) => {
                match codec::open::<T>(&bytes, self.fingerprint) {
                    Ok((_, value)) if self.valid.as_ref().is_none_or(|valid| valid(&value)) => {
                        stats.typed_hits(1);
                        stats.coalesced(1);
                        Followed::Value(value)
                    }
                    // Another identity's value, or one this caller's validator rejects.
                    _ => Followed::LoadAlone,
                }
            }
            Outcome::Stored(Landed::Failed(error)) => match error.downcast::<E>() {
                Ok(error) => Followed::Failed(GetOrSetError::Loader(error)),
                // A caller with another error type: its error cannot be ours.
                Err(_) => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::TimedOut(after)) => match self.options.hard_timeout {
                Some(_) => Followed::Failed(GetOrSetError::HardTimeout(after)),
                // The leader had a hard timeout and this caller has none: load without one.
                None => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::Unstored) => Followed::LoadAlone,
            Outcome::Pending | Outcome::Stale(_) | Outcome::GoToOrigin => Followed::Rejoin,
        }
    }

    /// One load, in the caller's task: the fleet's fill lock (or another's value), the
    /// loader, the store. At the soft timeout, the load goes on in the background.
    async fn lead<M, L, E>(
        &self,
        leader: Option<Leader<Landed>>,
        fallback: Option<Fallback<T>>,
        loader: L,
    ) -> Result<T, GetOrSetError<E>>
    where
        L: Loader<M, T, E>,
        E: Send + Sync + 'static,
    {
        let engine = &self.inner.engine;
        let judge = self.judge();
        let request = FillRequest {
            keys: &self.keys,
            wait: Some(engine.fills.lock_wait),
            seen: self.seen,
            judge: &judge,
        };
        let lease = match fill::acquire_or_wait(engine, request).await {
            Acquire::Filled((bytes, value)) => {
                if let Some(leader) = &leader {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                }
                engine.stats.typed_hits(1);
                engine.stats.coalesced(1);
                return Ok(value);
            }
            Acquire::Lead(lease) => Some(lease),
            // Load unlocked: another's load ended without a value, the wait ran out, or the
            // store is down (fail-open; the write is tried anyway).
            Acquire::Load | Acquire::Busy | Acquire::StoreDown => None,
        };
        engine.stats.typed_loads(1);
        let deadline = self
            .options
            .hard_timeout
            .map(|after| (Instant::now() + after, after));
        let mut running = Box::pin(loader.start());
        let loaded = match (self.options.soft_timeout, &fallback) {
            (Some(soft), Some(_)) => {
                let early = tokio::select! {
                    loaded = bounded(running.as_mut(), deadline) => Some(loaded),
                    () = tokio::time::sleep(soft) => None,
                };
                match (early, L::detach(running)) {
                    (Some(loaded), _) => loaded,
                    (None, Some(detached)) => {
                        // The load goes on in the background, and its value is stored.
                        let call = self.clone();
                        let _detached = engine.spawn(async move {
                            let loaded = bounded(detached, deadline).await;
                            let _ = call.finish(leader, lease, loaded, None).await;
                        });
                        engine.stats.typed_stale(1);
                        engine.stats.typed_refreshes(1);
                        return match fallback {
                            Some(stale) => Ok(stale.value),
                            None => Err(GetOrSetError::HardTimeout(soft)),
                        };
                    }
                    // Not reached (soft timeouts come with the mode that detaches).
                    (None, None) => return Err(GetOrSetError::HardTimeout(soft)),
                }
            }
            _ => bounded(running.as_mut(), deadline).await,
        };
        self.finish(leader, lease, loaded, fallback).await
    }

    /// Hands a load's outcome to this process's followers and ends the fill: the value
    /// written (or the fail-safe value, fresh for the throttle window, on an error), the
    /// notice, the unlock. The flight ends (`leader` dropped) only after the write, so callers
    /// that came meanwhile followed, and before an error is answered, so the next call loads
    /// again.
    async fn finish<E: Send + Sync + 'static>(
        &self,
        leader: Option<Leader<Landed>>,
        lease: Option<Lease>,
        loaded: Result<Loaded<T>, Failure<E>>,
        fallback: Option<Fallback<T>>,
    ) -> Result<T, GetOrSetError<E>> {
        let leader = leader.as_ref();
        let failure = match loaded {
            Ok(loaded) => return Ok(self.land(leader, lease, loaded).await),
            Err(failure) => failure,
        };
        self.inner.engine.stats.typed_load_errors(1);
        if let Some(stale) = fallback {
            return Ok(self.fail_safe(leader, lease, stale).await);
        }
        let error = match failure {
            Failure::Loader(error) => {
                let error = Arc::new(error);
                resolve(leader, Landed::Failed(Arc::clone(&error) as _));
                GetOrSetError::Loader(error)
            }
            Failure::HardTimeout(after) => {
                resolve(leader, Landed::TimedOut(after));
                GetOrSetError::HardTimeout(after)
            }
        };
        // Nothing stored; waiters elsewhere are told to load themselves.
        let notice = (self.keys.entry.as_str(), FillNotice::NotStorable);
        let _ = fill::finish(&self.inner.engine, lease, None, notice).await;
        Err(error)
    }

    /// A loaded value: handed to this process's followers, written (when it may be stored
    /// and is fresh), announced, unlocked.
    async fn land(
        &self,
        leader: Option<&Leader<Landed>>,
        lease: Option<Lease>,
        loaded: Loaded<T>,
    ) -> T {
        let engine = &self.inner.engine;
        let entry = self.keys.entry.as_str();
        let now = unix_now_ms();
        let Loaded {
            value,
            ttl,
            store,
            tags,
        } = loaded;
        match self.seal(now, &value, ttl, &tags) {
            Ok((bytes, meta)) => {
                resolve(leader, Landed::Value(bytes.clone()));
                let keep = meta.keep_until_ms().saturating_sub(now);
                let stored = store && meta.fresh_until_ms > now;
                let write = stored
                    .then(|| fill::FillWrite::value(entry, bytes, Duration::from_millis(keep)));
                let notice = match stored {
                    true => FillNotice::Stored,
                    false => FillNotice::NotStorable,
                };
                let _ = fill::finish(engine, lease, write, (entry, notice)).await;
            }
            Err(error) => {
                tracing::warn!(%error, key = entry, "typed cache value not encodable: not stored");
                resolve(leader, Landed::Unstored);
                let notice = (entry, FillNotice::NotStorable);
                let _ = fill::finish(engine, lease, None, notice).await;
            }
        }
        value
    }

    /// Fail-safe, for a load that failed: the last value answers, and is stored fresh for the
    /// throttle window so the failing loader is not run again on every call, here or elsewhere.
    async fn fail_safe(
        &self,
        leader: Option<&Leader<Landed>>,
        lease: Option<Lease>,
        stale: Fallback<T>,
    ) -> T {
        let engine = &self.inner.engine;
        let entry = self.keys.entry.as_str();
        let now = unix_now_ms();
        let fresh_until = now
            .saturating_add(millis(self.options.fail_safe_throttle))
            .min(stale.meta.fail_safe_until_ms);
        let meta = Meta {
            stored_at_ms: now,
            fresh_until_ms: fresh_until,
            stale_until_ms: fresh_until,
            ..stale.meta
        };
        let write = codec::with_meta(&stale.bytes, &meta).map(|bytes| {
            resolve(leader, Landed::Value(bytes.clone()));
            let keep = meta.keep_until_ms().saturating_sub(now);
            fill::FillWrite::value(entry, bytes, Duration::from_millis(keep))
        });
        let _ = fill::finish(engine, lease, write, (entry, FillNotice::Stored)).await;
        engine.stats.typed_stale(1);
        engine.stats.typed_throttled(1);
        stale.value
    }

    /// Encodes a loaded value with its lifetimes: the loader's ttl if it gave one, else the
    /// negative ttl for "nothing" (`None`, `()`) when set, else the options' ttl.
    fn seal(
        &self,
        now: u64,
        value: &T,
        ttl: Option<Duration>,
        tags: &[String],
    ) -> Result<(Bytes, Meta), crate::BoxError> {
        let options = &self.options;
        let filled_at = self.filled_at_us;
        let meta = |ttl| {
            self.inner
                .meta_for(now, ttl, options, self.fingerprint, filled_at)
        };
        let first = meta(ttl.unwrap_or(options.ttl));
        let (tags, dropped) = crate::tags::join(tags);
        if dropped > 0 {
            self.inner.engine.stats.tags_dropped(dropped);
        }
        let bytes = codec::seal(self.inner.codec, value, &first, &tags)?;
        match (ttl, options.negative_ttl) {
            (None, Some(negative)) if codec::is_nothing(&bytes) => {
                let meta = meta(negative);
                let bytes = codec::with_meta(&bytes, &meta).ok_or("envelope too short")?;
                Ok((bytes, meta))
            }
            _ => Ok((bytes, first)),
        }
    }

    /// Starts one background load of the key unless one is running here or elsewhere
    /// (stale-while-revalidate, eager refresh). It only runs if it takes the fill lock at once.
    fn refresh<E: Send + Sync + 'static>(&self, detached: Detached<T, E>) {
        let Role::Leader(leader) = self.inner.flights.join(self.keys.flight) else {
            return;
        };
        let call = self.clone();
        let _detached = self.inner.engine.spawn(async move {
            let engine = &call.inner.engine;
            let judge = call.judge();
            let request = FillRequest {
                keys: &call.keys,
                wait: None,
                seen: call.seen,
                judge: &judge,
            };
            let lease = match fill::acquire_or_wait(engine, request).await {
                Acquire::Lead(lease) => lease,
                Acquire::Filled((bytes, _)) => {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                    return;
                }
                // Refreshing elsewhere, replaced meanwhile, or the store is down.
                Acquire::Busy | Acquire::Load | Acquire::StoreDown => return,
            };
            engine.stats.typed_refreshes(1);
            engine.stats.typed_loads(1);
            let deadline = call
                .options
                .hard_timeout
                .map(|after| (Instant::now() + after, after));
            let loaded = bounded(detached, deadline).await;
            let _ = call.finish(Some(leader), Some(lease), loaded, None).await;
        });
    }

    fn judge(&self) -> Usable<T> {
        Usable {
            fingerprint: self.fingerprint,
            seen: self.seen,
            valid: self.valid.clone(),
            inner: Arc::clone(&self.inner),
            entry: self.keys.entry.clone(),
        }
    }
}

/// Hands `landed` to this process's followers of the flight `leader` leads, if any.
fn resolve(leader: Option<&Leader<Landed>>, landed: Landed) {
    if let Some(leader) = leader {
        leader.resolve(Outcome::Stored(landed));
    }
}
