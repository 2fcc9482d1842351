//! The loading path of `get_or_set`: single flight in process, the engine's fill across the
//! fleet, fail-safe, soft and hard timeouts, and background refreshes.
//!
//! A load runs in its own task (`Engine::spawn`), so a caller that gives up (or answers a
//! stale value at its soft timeout) does not cancel it for the others, and its value is still
//! stored. Followers in this process get the stored bytes (each decodes its own `T`) or the
//! loader's error (type-erased, cloned out as the follower's `E`); followers elsewhere are
//! told by the fill notice: `Stored` (read it) or `NotStorable` (load yourself).

use super::codec::{self, unix_now_ms};
use super::inner::{Inner, Landed};
use super::options::GetOrSetOptions;
use crate::engine::fill::{self, Acquire, FillKeys, FillRequest, Judge, Judged};
use crate::engine::flight::{Leader, Outcome, Role};
use crate::store::FillNotice;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// Why a load produced no value; `H` is what a hard timeout reports (`Infallible` where
/// there is none, so the plain `get_or_set` needs no impossible arm).
pub(super) enum Failure<E, H> {
    Loader(E),
    HardTimeout(H),
}

/// A fill's judge for the typed face: a value is usable when it decodes as `T`, is fresh and
/// passes the validator.
struct FreshValue<T> {
    fingerprint: u64,
    options: GetOrSetOptions,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> Judge for FreshValue<T> {
    type Value = (Bytes, T);

    fn judge(&self, value: Bytes) -> impl Future<Output = Judged<(Bytes, T)>> + Send {
        let judged = match codec::open::<T>(&value, self.fingerprint) {
            // Rejected by this caller's validator: another fill would not change that.
            Ok((_, decoded)) if !self.options.accepts(&decoded) => Judged::Load,
            Ok((meta, decoded)) if meta.is_fresh(unix_now_ms()) => Judged::Usable((value, decoded)),
            // An older value: the fill has not landed yet.
            Ok(_) => Judged::Wait,
            // Another type's or a foreign writer's: not worth waiting for.
            Err(_) => Judged::Load,
        };
        std::future::ready(judged)
    }
}

impl Inner {
    /// `get_or_set`: a fresh hit (maybe refreshed eagerly), a stale hit (refreshed in the
    /// background), or a load, with the fail-safe value (if any) standing by.
    pub(super) async fn load_path<T, E, H, F, Fut>(
        self: &Arc<Self>,
        key: &str,
        options: GetOrSetOptions,
        hard: Option<(Duration, H)>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut job = Job {
            keys: self.keys(key),
            seen: None,
            options,
            hard,
        };
        let stats = &self.engine.stats;
        // A store that fails is a miss: the loader runs (fail-open).
        let bytes = self.engine.store.get(&job.keys.entry).await.unwrap_or(None);
        let mut fallback = None;
        let found = self.read::<T>(&job.keys.entry, bytes, Some(&job.options));
        if let Some((meta, value)) = found.await {
            let now = unix_now_ms();
            job.seen = Some(meta.stamp());
            let options = &job.options;
            if meta.is_fresh(now) {
                stats.typed_hits(1);
                let eager = options.eager_refresh;
                if eager.is_some_and(|fraction| meta.past_fraction(now, fraction)) {
                    self.refresh(job, loader);
                }
                return Ok(value);
            }
            if options.stale_while_revalidate.is_some() && now < meta.stale_until_ms {
                stats.typed_stale(1);
                self.refresh(job, loader);
                return Ok(value);
            }
            if options.fail_safe.is_some() && now < meta.fail_safe_until_ms {
                fallback = Some(value);
            }
        }
        stats.typed_misses(1);
        self.load_coalesced(job, fallback, loader).await
    }

    /// Follows this process's load of the key, or leads one.
    async fn load_coalesced<T, E, H, F, Fut>(
        self: &Arc<Self>,
        job: Job<H>,
        fallback: Option<T>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // A flight that ends without an answer for us (its leader was cancelled, or could not
        // encode its value) is joined again once; after that this caller loads on its own.
        let mut fallback = fallback;
        for _ in 0..2 {
            let follower = match self.flights.join(job.keys.flight) {
                Role::Leader(leader) => {
                    return self
                        .lead_and_wait(Some(leader), job, fallback, loader)
                        .await
                }
                Role::Follower(follower) => follower,
            };
            let outcome = match (job.options.soft_timeout, fallback.is_some()) {
                (Some(soft), true) => match tokio::time::timeout(soft, follower.outcome()).await {
                    Ok(outcome) => outcome,
                    Err(_) => match fallback.take() {
                        Some(stale) => {
                            self.engine.stats.typed_stale(1);
                            return Ok(stale);
                        }
                        None => continue,
                    },
                },
                _ => follower.outcome().await,
            };
            match self.followed::<T, E, H>(outcome, &job.hard) {
                Followed::Value(value) => return Ok(value),
                Followed::Failed(failure) => return self.fail_safe(fallback, failure),
                Followed::Rejoin => continue,
                Followed::LoadAlone => break,
            }
        }
        self.lead_and_wait(None, job, fallback, loader).await
    }

    /// What a follower makes of its leader's outcome.
    fn followed<T, E, H>(
        &self,
        outcome: Outcome<Landed>,
        hard: &Option<(Duration, H)>,
    ) -> Followed<T, E, H>
    where
        T: DeserializeOwned + 'static,
        E: Clone + 'static,
        H: Clone,
    {
        let stats = &self.engine.stats;
        match outcome {
            Outcome::Stored(Landed::Value(bytes)) => {
                match codec::open::<T>(&bytes, self.fingerprint::<T>()) {
                    Ok((_, value)) => {
                        stats.typed_hits(1);
                        stats.coalesced(1);
                        Followed::Value(value)
                    }
                    // The leader stored another type under this key.
                    Err(_) => Followed::LoadAlone,
                }
            }
            Outcome::Stored(Landed::Failed(error)) => match error.downcast_ref::<E>() {
                Some(error) => Followed::Failed(Failure::Loader(error.clone())),
                // A caller with another error type: its error cannot be ours.
                None => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::TimedOut) => match hard {
                Some((_, report)) => Followed::Failed(Failure::HardTimeout(report.clone())),
                // The leader had a hard timeout and we have none: load without one.
                None => Followed::LoadAlone,
            },
            Outcome::Stored(Landed::Unstored) => Followed::LoadAlone,
            Outcome::Pending | Outcome::Stale(_) | Outcome::GoToOrigin => Followed::Rejoin,
        }
    }

    /// A failed load answers the fail-safe value when there is one.
    fn fail_safe<T, E, H>(
        &self,
        fallback: Option<T>,
        failure: Failure<E, H>,
    ) -> Result<T, Failure<E, H>> {
        match fallback {
            Some(value) => {
                self.engine.stats.typed_stale(1);
                Ok(value)
            }
            None => Err(failure),
        }
    }

    /// Runs the load in its own task (so a caller that gives up does not cancel it for the
    /// others) and waits for it, answering the fallback at the soft timeout.
    async fn lead_and_wait<T, E, H, F, Fut>(
        self: &Arc<Self>,
        leader: Option<Leader<Landed>>,
        job: Job<H>,
        fallback: Option<T>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let soft = job.options.soft_timeout;
        let inner = Arc::clone(self);
        let mut task = self
            .engine
            .spawn(async move { inner.lead(leader, job, loader).await });
        let (joined, fallback) = match (soft, fallback) {
            (Some(soft), Some(stale)) => tokio::select! {
                joined = &mut task => (joined, Some(stale)),
                () = tokio::time::sleep(soft) => {
                    // The load goes on in the background, and its value is stored.
                    self.engine.stats.typed_stale(1);
                    self.engine.stats.typed_refreshes(1);
                    return Ok(stale);
                }
            },
            (_, fallback) => (task.await, fallback),
        };
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => self.fail_safe(fallback, failure),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The task is never aborted; only a runtime shutting down cancels it, and then
            // this future is about to be dropped too.
            Err(_) => match fallback {
                Some(value) => Ok(value),
                None => std::future::pending().await,
            },
        }
    }

    /// One load: the fleet's fill lock (or another's value), the loader, the store.
    async fn lead<T, E, H, F, Fut>(
        self: Arc<Self>,
        leader: Option<Leader<Landed>>,
        job: Job<H>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let judge = self.judge::<T>(&job.options);
        let request = FillRequest {
            keys: &job.keys,
            wait: Some(self.engine.fills.lock_wait),
            seen: job.seen,
            judge: &judge,
        };
        let lease = match fill::acquire_or_wait(&self.engine, request).await {
            Acquire::Filled((bytes, value)) => {
                if let Some(leader) = &leader {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                }
                self.engine.stats.typed_hits(1);
                self.engine.stats.coalesced(1);
                return Ok(value);
            }
            Acquire::Lead(lease) => Some(lease),
            // Load unlocked: another's load ended without a value, the wait ran out, or the
            // store is down (fail-open; the write is tried anyway).
            Acquire::Load | Acquire::Busy | Acquire::StoreDown => None,
        };
        self.load_and_finish(leader, lease, &job, loader).await
    }

    /// Runs the loader, hands its outcome to this process's followers, and ends the fill:
    /// the value written (or nothing, on an error), the notice, the unlock.
    async fn load_and_finish<T, E, H, F, Fut>(
        &self,
        leader: Option<Leader<Landed>>,
        lease: Option<fill::Lease>,
        job: &Job<H>,
        loader: F,
    ) -> Result<T, Failure<E, H>>
    where
        T: Serialize + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let stats = &self.engine.stats;
        stats.typed_loads(1);
        let loaded = match &job.hard {
            Some((after, report)) => match tokio::time::timeout(*after, loader()).await {
                Ok(result) => result.map_err(Failure::Loader),
                Err(_) => Err(Failure::HardTimeout(report.clone())),
            },
            None => loader().await.map_err(Failure::Loader),
        };
        let resolve = |landed: Landed| {
            if let Some(leader) = &leader {
                leader.resolve(Outcome::Stored(landed));
            }
        };
        let entry = job.keys.entry.as_str();
        match loaded {
            Ok(value) => {
                let now = unix_now_ms();
                let meta = self.meta_for::<T>(now, &job.options);
                match codec::seal(self.codec, &value, &meta) {
                    Ok(bytes) => {
                        resolve(Landed::Value(bytes.clone()));
                        let keep = Duration::from_millis(meta.keep_until_ms().saturating_sub(now));
                        let write = Some(fill::FillWrite::value(entry, bytes, keep));
                        let notice = (entry, FillNotice::Stored);
                        let _ = fill::finish(&self.engine, lease, write, notice).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, key = entry, "typed cache value not encodable: not stored");
                        resolve(Landed::Unstored);
                        let notice = (entry, FillNotice::NotStorable);
                        let _ = fill::finish(&self.engine, lease, None, notice).await;
                    }
                }
                // The flight ends after the write, so callers that came meanwhile followed.
                drop(leader);
                Ok(value)
            }
            Err(failure) => {
                stats.typed_load_errors(1);
                resolve(match &failure {
                    Failure::Loader(error) => Landed::Failed(Arc::new(error.clone())),
                    Failure::HardTimeout(_) => Landed::TimedOut,
                });
                // Nothing stored; waiters elsewhere are told to load themselves.
                let notice = (entry, FillNotice::NotStorable);
                let _ = fill::finish(&self.engine, lease, None, notice).await;
                // End the flight before answering, so the next call loads again.
                drop(leader);
                Err(failure)
            }
        }
    }

    /// Starts one background load of the key unless one is running here or elsewhere
    /// (stale-while-revalidate, eager refresh). It only runs if it takes the fill lock at once.
    fn refresh<T, E, H, F, Fut>(self: &Arc<Self>, job: Job<H>, loader: F)
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Clone + Send + Sync + 'static,
        H: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let Role::Leader(leader) = self.flights.join(job.keys.flight) else {
            return;
        };
        let inner = Arc::clone(self);
        let _detached = self.engine.spawn(async move {
            let judge = inner.judge::<T>(&job.options);
            let request = FillRequest {
                keys: &job.keys,
                wait: None,
                seen: job.seen,
                judge: &judge,
            };
            let lease = match fill::acquire_or_wait(&inner.engine, request).await {
                Acquire::Lead(lease) => lease,
                Acquire::Filled((bytes, _)) => {
                    leader.resolve(Outcome::Stored(Landed::Value(bytes)));
                    return;
                }
                // Refreshing elsewhere, replaced meanwhile, or the store is down: nothing to do.
                Acquire::Busy | Acquire::Load | Acquire::StoreDown => return,
            };
            inner.engine.stats.typed_refreshes(1);
            let _ = inner
                .load_and_finish::<T, E, H, F, Fut>(Some(leader), Some(lease), &job, loader)
                .await;
        });
    }

    fn judge<T>(&self, options: &GetOrSetOptions) -> FreshValue<T> {
        FreshValue {
            fingerprint: self.fingerprint::<T>(),
            options: options.clone(),
            _type: PhantomData,
        }
    }
}

/// What one load needs besides its loader.
struct Job<H> {
    keys: FillKeys,
    /// The stamp of the stale value this load replaces, if any.
    seen: Option<[u8; 8]>,
    options: GetOrSetOptions,
    /// The hard timeout, and what reaching it reports.
    hard: Option<(Duration, H)>,
}

/// What a follower makes of its leader's outcome.
enum Followed<T, E, H> {
    Value(T),
    Failed(Failure<E, H>),
    /// The flight ended without an outcome (its leader was cancelled): join again.
    Rejoin,
    /// The outcome is not for this caller (another type, another error type): load alone.
    LoadAlone,
}
