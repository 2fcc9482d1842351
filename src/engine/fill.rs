//! One fill per key across the fleet: the fill lock, waiting for another's fill, takeover,
//! extension while loading, and the fill's end in one store call.
//!
//! The protocol, for callers that already lead the fill in their own process (in-process
//! single flight, `crate::engine::flight`, comes first and is the caller's):
//!
//! 1. [`acquire_or_wait`] subscribes to the entry's fill notices, then takes the lock unless
//!    the entry holds a value (the store's lock-or-read, one round trip), so a fill that ended
//!    between the caller's lookup and its lock attempt is found rather than repeated. A value
//!    whose stamp (bytes 4..12) equals `seen` counts as absent: it is the stale value the
//!    caller is refreshing.
//! 2. When the lock is held elsewhere, it waits, bounded by the caller's wait: a `Stored`
//!    notice or a poll tick re-reads the entry, a `NotStorable` notice ends the wait. Each
//!    poll tick also retries the lock, taking it over when its holder let it expire.
//! 3. The holder gets a [`Lease`], which extends the lock every third of its ttl while the
//!    caller loads, and [`finish`] ends the fill: write, notice, compare-and-delete unlock in
//!    one store call. A lease dropped unfinished releases the lock in a spawned task.
//!
//! Values met on the way are judged by the caller ([`Judge`]): only it knows whether bytes
//! are a usable answer for it (fresh, decodable, the right variant) or a marker. The engine
//! never decodes anything, so the HTTP face and the typed face share this code.
//!
//! How the HTTP face's `fill.rs` maps onto it: `FillKeys { entry: key.entry_key(), lock:
//! key.lock_key(), flight: key.flight() }`; `wait: Some(lock_wait)` for a request and `None`
//! for a background refresh (its `Busy`); `seen` the stale entry's `stored_at_ms` bytes; the
//! judge is today's `found` (an entry fresh for this request's variant is `Usable`, a vary
//! index is resolved inside `judge`, a hit-for-miss marker is `Load`, an expired entry is
//! `Wait`); `Lead(lease)` replaces `held` + `token` + `extend_while_filling`, and [`finish`]
//! the closing `finish_fill` with its unlock fallback. Counted the same: `lock_waits`,
//! `lock_timeouts`, `lock_takeovers`.

use super::keeper::Keeper;
use super::Engine;
use crate::error::StoreError;
use crate::store::{FillEnd, FillNotice, LockAttempt};
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The keys of one fill. The entry key and lock key must share a cluster slot (a hash tag):
/// the store's lock-or-read and finish scripts touch both.
#[derive(Debug, Clone)]
pub(crate) struct FillKeys {
    /// Where the value lives; fill notices are sent for this key.
    pub(crate) entry: String,
    /// The fill lock.
    pub(crate) lock: String,
    /// The in-process single-flight id (`crate::engine::flight::Flights`), derived by the caller.
    pub(crate) flight: u128,
}

/// What a value found under the entry key means to the caller.
#[derive(Debug)]
pub(crate) enum Judged<V> {
    /// A finished fill's value: done, no load needed.
    Usable(V),
    /// Not (yet) an answer, e.g. an expired value: keep waiting for the fill. Found instead
    /// of the lock, it means load without waiting.
    Wait,
    /// A marker or a value that will not do (hit-for-miss, a foreign writer): stop waiting
    /// and load without the lock.
    Load,
}

/// Judges the values a fill meets: found instead of the lock, or re-read while waiting.
pub(crate) trait Judge: Send + Sync {
    /// What a usable value becomes (a decoded entry, a typed value with its bytes).
    type Value: Send;
    /// Judges `value`, read under the entry key. May read more (a variant behind an index).
    fn judge(&self, value: Bytes) -> impl Future<Output = Judged<Self::Value>> + Send;
}

/// What [`acquire_or_wait`] settled on.
pub(crate) enum Acquire<V> {
    /// The lock is held: load, then [`finish`] with the lease.
    Lead(Lease),
    /// Another's fill ended with this usable value.
    Filled(V),
    /// Load without the lock: another's fill ended unshareable (`NotStorable`), the wait ran
    /// out, or what was found will not do. The result may still be written.
    Load,
    /// The lock is held elsewhere and the caller does not wait (a background refresh).
    Busy,
    /// The store is failing: load without the lock (fail-open); the write is tried anyway.
    StoreDown,
}

/// What a fill asks of [`acquire_or_wait`].
pub(crate) struct FillRequest<'a, J> {
    pub(crate) keys: &'a FillKeys,
    /// How long to wait for another's fill; `None` does not wait (answers [`Acquire::Busy`]).
    pub(crate) wait: Option<Duration>,
    /// The stamp (bytes 4..12) of the stale value this fill refreshes: finding it again is
    /// not finding a fill.
    pub(crate) seen: Option<[u8; 8]>,
    pub(crate) judge: &'a J,
}

/// Takes the fill lock, or waits (bounded) for its holder's fill; see the module docs.
pub(crate) async fn acquire_or_wait<J: Judge>(
    engine: &Arc<Engine>,
    request: FillRequest<'_, J>,
) -> Acquire<J::Value> {
    let FillRequest {
        keys,
        wait,
        seen,
        judge,
    } = request;
    let store = &engine.store;
    let lock_ttl = engine.fills.lock_ttl;
    if let Some(lease) = engine.handoffs.take(&keys.lock, None) {
        return Acquire::Lead(lease);
    }
    let token = lock_token();
    // Subscribe before trying the lock, so a notice sent in between is not missed.
    let mut waiter = store.subscribe_fill(&keys.entry);
    let attempt = store.try_lock_or_read(&keys.entry, &keys.lock, &token, lock_ttl, seen);
    match attempt.await {
        Ok(LockAttempt::Acquired) => return Acquire::Lead(Lease::new(engine, keys, token)),
        Ok(LockAttempt::Found(value)) => return found(judge, value).await,
        Ok(LockAttempt::Held) => {}
        Err(_) => return Acquire::StoreDown,
    }
    let Some(wait) = wait else {
        return Acquire::Busy;
    };
    engine.stats.lock_waits(1);
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let max_poll = (lock_ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(200));
    let mut poll = Duration::from_millis(10).min(max_poll);
    loop {
        let polled = tokio::select! {
            notice = waiter.notice() => match notice {
                FillNotice::NotStorable => return Acquire::Load,
                // The holder let go without filling: try the lock now, not at the next tick.
                FillNotice::Released => true,
                FillNotice::Stored | FillNotice::Changed => false,
            },
            () = tokio::time::sleep(poll) => true,
            () = &mut deadline => {
                engine.stats.lock_timeouts(1);
                return Acquire::Load;
            }
        };
        // The lock may be this process's own, taken by a lookup whose request then followed
        // this fill: it is handed over here rather than let go to the rest of the fleet.
        if let Some(lease) = engine.handoffs.take(&keys.lock, None) {
            return Acquire::Lead(lease);
        }
        match store.get(&keys.entry).await {
            Ok(Some(value)) => match judge.judge(value).await {
                Judged::Usable(value) => return Acquire::Filled(value),
                Judged::Load => return Acquire::Load,
                Judged::Wait => {}
            },
            Ok(None) => {}
            Err(_) => return Acquire::StoreDown,
        }
        if polled {
            let attempt = store.try_lock_or_read(&keys.entry, &keys.lock, &token, lock_ttl, seen);
            match attempt.await {
                Ok(LockAttempt::Acquired) => {
                    engine.stats.lock_takeovers(1);
                    return Acquire::Lead(Lease::new(engine, keys, token));
                }
                Ok(LockAttempt::Found(value)) => return found(judge, value).await,
                Ok(LockAttempt::Held) => {}
                Err(_) => return Acquire::StoreDown,
            }
            poll = (poll * 2).min(max_poll);
        }
    }
}

/// A value found instead of the lock: a usable one is a finished fill; anything else is not
/// worth waiting for.
async fn found<J: Judge>(judge: &J, value: Bytes) -> Acquire<J::Value> {
    match judge.judge(value).await {
        Judged::Usable(value) => Acquire::Filled(value),
        Judged::Wait | Judged::Load => Acquire::Load,
    }
}

/// The held fill lock: extended while the caller loads, released by [`finish`] (or, if
/// dropped unfinished, in a spawned task).
pub(crate) struct Lease {
    engine: Arc<Engine>,
    lock: String,
    token: String,
    /// Whose waiters hear of the lock's release when the lease is dropped unfinished.
    entry: String,
    /// The lock's place in the engine's keeper, which extends it while a slow load runs, so
    /// nobody else loads meanwhile.
    kept: u64,
    finished: bool,
}

impl Lease {
    fn new(engine: &Arc<Engine>, keys: &FillKeys, token: String) -> Self {
        Self::held(engine, &keys.entry, keys.lock.clone(), token)
    }

    /// The lease on a lock taken with `token` for `entry` elsewhere (by a lookup that read
    /// or locked in one round trip: `GuardedStore::read_or_lock`).
    pub(crate) fn held(engine: &Arc<Engine>, entry: &str, lock: String, token: String) -> Self {
        let kept = Keeper::keep(engine, &lock, &token);
        Self {
            engine: Arc::clone(engine),
            lock,
            token,
            entry: entry.to_owned(),
            kept,
            finished: false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.engine.keeper.release(self.kept);
        if self.finished {
            return;
        }
        // The fill was abandoned (its task cancelled, its loader panicked, or another
        // request of this process leads it): let the others go now, and tell its waiters so
        // they take the lock at once, rather than after the lock's expiry.
        let (engine, lock, token, entry) = (
            Arc::clone(&self.engine),
            std::mem::take(&mut self.lock),
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.entry),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = engine.store.unlock(&lock, &token, Some(&entry)).await;
            });
        }
    }
}

/// Fill locks this process's lookups took for requests that then followed another request's
/// fill of the same key in this process (the lock goes to whoever reads first; the flight to
/// whoever gets there first). Released, such a lock would go to another process's waiter and
/// this process's leader would wait for that process's fill; deposited here, it is taken by
/// this process's leader ([`acquire_or_wait`] looks here first and on every wake), and what
/// nobody took is released when its depositor's wait ends.
#[derive(Default)]
pub(crate) struct Handoffs {
    /// A std mutex: held for one map operation, never across an await.
    leases: std::sync::Mutex<std::collections::HashMap<String, Lease>>,
}

impl Handoffs {
    fn leases(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves `lease` for this process's leader; the returned guard releases it (with a
    /// notice to waiters) when dropped, unless the leader took it.
    pub(crate) fn deposit(&self, lease: Lease) -> Deposit<'_> {
        let (lock, token) = (lease.lock.clone(), lease.token.clone());
        let replaced = self.leases().insert(lock.clone(), lease);
        drop(replaced);
        Deposit {
            handoffs: self,
            lock,
            token,
        }
    }

    /// The lease deposited for `lock` (only the one with `token`, when given).
    fn take(&self, lock: &str, token: Option<&str>) -> Option<Lease> {
        let mut leases = self.leases();
        let matches = leases
            .get(lock)
            .is_some_and(|lease| token.is_none_or(|token| lease.token == token));
        matches.then(|| leases.remove(lock)).flatten()
    }
}

/// A deposited lease's release: see [`Handoffs::deposit`].
pub(crate) struct Deposit<'a> {
    handoffs: &'a Handoffs,
    lock: String,
    token: String,
}

impl Drop for Deposit<'_> {
    fn drop(&mut self) {
        // Dropped outside the map's lock: a lease's drop releases its lock.
        let untaken = self.handoffs.take(&self.lock, Some(&self.token));
        drop(untaken);
    }
}

/// How a fill's value is written by [`finish`].
#[derive(Debug)]
pub(crate) struct FillWrite<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: Bytes,
    /// How long the store keeps it.
    pub(crate) keep: Duration,
    /// Write only where nothing is stored (a hit-for-miss marker, which must never replace a
    /// value others are served).
    pub(crate) only_if_absent: bool,
}

impl<'a> FillWrite<'a> {
    /// A value that replaces whatever the key holds.
    pub(crate) fn value(key: &'a str, value: Bytes, keep: Duration) -> Self {
        Self {
            key,
            value,
            keep,
            only_if_absent: false,
        }
    }
}

/// Ends a fill in one store call: the optional write, the notice to every waiter for `entry_key`, and the lease's release. Without a
/// lease (the fill ran unlocked) there is nothing to release. When the call fails, the lock is
/// still released on its own, so waiters go at once rather than at its expiry.
pub(crate) async fn finish(
    engine: &Engine,
    lease: Option<Lease>,
    write: Option<FillWrite<'_>>,
    notice: (&str, FillNotice),
) -> Result<(), StoreError> {
    let only_if_absent = write.as_ref().is_some_and(|w| w.only_if_absent);
    let end = FillEnd {
        write: write.map(|w| (w.key, w.value, w.keep)),
        only_if_absent,
        notice,
        unlock: lease
            .as_ref()
            .map(|lease| (lease.lock.as_str(), lease.token.as_str())),
    };
    let result = engine.store.finish_fill(end).await;
    if let Some(mut lease) = lease {
        if result.is_err() {
            let entry = Some(lease.entry.as_str());
            let _ = engine.store.unlock(&lease.lock, &lease.token, entry).await;
        }
        lease.finished = true;
    }
    result
}

/// A token no other lock holder has: 128 random bits drawn once per process (so no two
/// processes share them), the second half advanced by a counter (so no two locks of this
/// process do). Drawing the randomness once keeps a miss from paying for it (it was ~1% of a
/// miss's CPU when drawn per token).
pub(crate) fn lock_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    static BASE: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (high, low) = *BASE.get_or_init(|| {
        let seed = (std::process::id(), std::time::SystemTime::now());
        (
            RandomState::new().hash_one(seed),
            RandomState::new().hash_one(seed),
        )
    });
    let n = COUNTER.fetch_add(1, Relaxed);
    format!("{high:016x}{:016x}", low.wrapping_add(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_are_distinct_fixed_length_hex() {
        let tokens: std::collections::HashSet<String> = (0..1000).map(|_| lock_token()).collect();
        assert_eq!(tokens.len(), 1000);
        assert!(tokens
            .iter()
            .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
