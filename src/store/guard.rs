//! Timeouts, a circuit breaker and error counting around any [`Store`].
//!
//! Every store call made by the request path goes through here, so the fail-open rules hold
//! for every store alike: a call that errs or outlives its timeout is counted and reported as
//! an error for the caller to route around; after `threshold` consecutive failures the breaker
//! opens and calls are skipped outright for `cooldown`, so an outage costs no latency per
//! request. After the cool-down the next calls go through; one success closes the breaker,
//! one failure reopens it at once.
//!
//! The near tier (`near`), when on, answers reads before the store and hears of every
//! change the guard makes, at once, besides what the store's change feed reports.

use super::near::{FreshUntil, NearTier};
use super::presence::Presence;
use super::{FillEnd, FillWaiter, LockAttempt, PurgeRecords, PurgeWatcher, Store, StoreFuture};
use crate::error::{StoreError, StoreErrorKind};
use crate::stats::Counters;
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) struct GuardedStore {
    store: Arc<dyn Store>,
    read_timeout: Duration,
    write_timeout: Duration,
    breaker: Breaker,
    stats: Arc<Counters>,
    near: Option<Arc<NearTier>>,
    /// Which keys lately held a value, so their lookups read before trying to lock.
    presence: Presence,
}

impl GuardedStore {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        read_timeout: Duration,
        write_timeout: Duration,
        threshold: u32,
        cooldown: Duration,
        stats: Arc<Counters>,
    ) -> Self {
        let breaker = Breaker {
            threshold,
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            ..Breaker::default()
        };
        Self {
            store,
            read_timeout,
            write_timeout,
            breaker,
            stats,
            near: None,
            presence: Presence::new(),
        }
    }

    /// Adds a near tier of at most `max_bytes`, keeping copies for at most `ttl` (and never
    /// past what `fresh_until` reads from a value), if the store reports every change made
    /// to it; a store that cannot gets no near tier, as its copies could not be kept coherent.
    pub(crate) fn with_near_tier(
        mut self,
        max_bytes: u64,
        ttl: Duration,
        fresh_until: FreshUntil,
    ) -> Self {
        let tier = Arc::new(NearTier::new(
            max_bytes,
            ttl,
            fresh_until,
            Arc::clone(&self.stats),
        ));
        // Weak: a store outliving this layer (shared with others) must not keep its tier.
        let watcher = Arc::downgrade(&tier);
        let watched = self.store.watch_changes(Arc::new(move |change| {
            if let Some(tier) = watcher.upgrade() {
                tier.apply(change);
            }
        }));
        self.near = watched.then_some(tier);
        self
    }

    async fn call<T>(
        &self,
        timeout: Duration,
        future: StoreFuture<'_, T>,
    ) -> Result<T, StoreError> {
        if !self.breaker.allows() {
            self.stats.store_skipped(1);
            return Err(StoreError::from_kind(StoreErrorKind::CircuitOpen));
        }
        let result = match tokio::time::timeout(timeout, future).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::from_kind(StoreErrorKind::Timeout)),
        };
        match &result {
            Ok(_) => {
                if self.breaker.success() {
                    self.stats.breaker_open(false);
                }
            }
            // A store without the operation is not failing: nothing to count or trip.
            Err(error) if error.kind() == StoreErrorKind::Unsupported => {}
            // One Cluster primary is down while the others answer: counted, but the breaker
            // stays closed for the keys on the live ones.
            Err(error) if error.kind() == StoreErrorKind::NodeDown => {
                self.stats.store_errors(1);
            }
            Err(error) => {
                self.stats.store_errors(1);
                tracing::debug!(%error, "cache store call failed");
                if self.breaker.failure() {
                    self.stats.breaker_open(true);
                    tracing::warn!(%error, "cache store failing: skipping it for {} ms", self.breaker.cooldown_ms);
                }
            }
        }
        result
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let Some(near) = &self.near else {
            let value = self.call(self.read_timeout, self.store.get(key)).await?;
            self.saw(key, value.is_some());
            return Ok(value);
        };
        if let Some(value) = near.get(key) {
            return Ok(Some(value));
        }
        let ticket = near.ticket(key);
        let value = self.call(self.read_timeout, self.store.get(key)).await?;
        self.saw(key, value.is_some());
        if let Some(value) = &value {
            near.offer(key, value, ticket);
        }
        Ok(value)
    }

    /// Whether `key` lately held a value, as far as this process saw: its lookup then reads
    /// before it tries to lock (see `presence`).
    pub(crate) fn likely_present(&self, key: &str) -> bool {
        self.presence.likely_present(key)
    }

    /// Remembers whether `key` held a value when last read.
    fn saw(&self, key: &str, present: bool) {
        match present {
            true => self.presence.present(key),
            false => self.presence.absent(key),
        }
    }

    /// The near tier's copy of `key`, if it holds one it may serve.
    pub(crate) fn near_copy(&self, key: &str) -> Option<Bytes> {
        self.near.as_ref()?.get(key)
    }

    /// Asks the store to read `entry_key` or, when it holds nothing, take the fill lock, in
    /// one round trip: what a miss needs first, at the price of a read. The near tier is not
    /// asked (the caller did, with [`near_copy`](Self::near_copy), before making a token);
    /// a value found is offered to it.
    pub(crate) async fn read_or_lock(
        &self,
        entry_key: &str,
        lock_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<LockAttempt, StoreError> {
        let ticket = self.near.as_ref().map(|near| near.ticket(entry_key));
        let attempt = self.store.read_or_lock(entry_key, lock_key, token, ttl);
        let attempt = self.call(self.read_timeout, attempt).await?;
        match &attempt {
            LockAttempt::Found(value) => {
                self.presence.present(entry_key);
                if let (Some(near), Some(ticket)) = (&self.near, ticket) {
                    near.offer(entry_key, value, ticket);
                }
            }
            LockAttempt::Acquired | LockAttempt::Held => self.presence.absent(entry_key),
        }
        Ok(attempt)
    }

    /// Tells the near tier of a change this process made (or may have made: a call that timed
    /// out may still have landed), so its next read goes to the store. Copies of one's own
    /// writes are not kept: the write's announcement, arriving later, would void them anyway.
    fn changed(&self, key: &str) {
        if let Some(near) = &self.near {
            near.changed(key);
        }
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let result = self
            .call(self.write_timeout, self.store.put(key, value, ttl))
            .await;
        self.changed(key);
        result
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let result = self.call(self.write_timeout, self.store.delete(key)).await;
        self.changed(key);
        self.presence.absent(key);
        result
    }

    /// Records a purge; see [`Store::record_purge`].
    pub(crate) async fn record_purge(
        &self,
        records: &str,
        member: &str,
        keep: usize,
    ) -> Result<u64, StoreError> {
        let recorded = self.store.record_purge(records, member, keep);
        self.call(self.write_timeout, recorded).await
    }

    /// Reads the purge records; see [`Store::purges`].
    pub(crate) async fn purges(&self, records: &str) -> Result<PurgeRecords, StoreError> {
        self.call(self.read_timeout, self.store.purges(records))
            .await
    }

    /// See [`Store::watch_purges`].
    pub(crate) fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        self.store.watch_purges(watcher)
    }

    /// Removes a value, saying whether there was one.
    pub(crate) async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let result = self.call(self.write_timeout, self.store.remove(key)).await;
        self.changed(key);
        self.presence.absent(key);
        result
    }

    /// Ends a fill (write, notice, unlock) in one call; see [`Store::finish_fill`].
    pub(crate) async fn finish_fill(&self, end: FillEnd<'_>) -> Result<(), StoreError> {
        // The keys borrow from the caller, not from `end`: no copies are needed to name them
        // after the call.
        let written = end.write.as_ref().map(|(key, _, _)| *key);
        let notice_key = end.notice.0;
        let result = self
            .call(self.write_timeout, self.store.finish_fill(end))
            .await;
        if let Some(key) = written {
            self.changed(key);
            if result.is_ok() {
                self.presence.present(key);
            }
        }
        self.changed(notice_key);
        result
    }

    pub(crate) async fn try_lock_or_read(
        &self,
        entry_key: &str,
        lock_key: &str,
        token: &str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> Result<LockAttempt, StoreError> {
        let attempt = self
            .store
            .try_lock_or_read(entry_key, lock_key, token, ttl, seen);
        self.call(self.read_timeout, attempt).await
    }

    pub(crate) async fn extend_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.call(self.write_timeout, self.store.extend_lock(key, token, ttl))
            .await
    }

    pub(crate) async fn unlock(
        &self,
        key: &str,
        token: &str,
        entry_key: Option<&str>,
    ) -> Result<(), StoreError> {
        self.call(self.write_timeout, self.store.unlock(key, token, entry_key))
            .await
    }

    pub(crate) fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        self.store.subscribe_fill(entry_key)
    }

    /// Takes a lock with a token, for the typed face's named locks.
    /// Takes a named lock with its fencing token (see `Store::try_lock_fenced`).
    pub(crate) async fn try_lock_fenced(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let attempt = self.store.try_lock_fenced(key, fence_key, token, ttl);
        self.call(self.write_timeout, attempt).await
    }

    /// Reads many values in as few round trips as the store can; near copies answer first.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let Some(near) = &self.near else {
            return self
                .call(self.read_timeout, self.store.get_many(keys))
                .await;
        };
        let mut values: Vec<Option<Bytes>> = keys.iter().map(|k| near.get(k)).collect();
        let mut wanted = Vec::new();
        let mut missing = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            if values.get(index).is_some_and(Option::is_none) {
                wanted.push((index, near.ticket(key)));
                missing.push(key.clone());
            }
        }
        if wanted.is_empty() {
            return Ok(values);
        }
        let fetched = self
            .call(self.read_timeout, self.store.get_many(&missing))
            .await?;
        for ((index, ticket), value) in wanted.into_iter().zip(fetched) {
            if let (Some(value), Some(key)) = (&value, keys.get(index)) {
                near.offer(key, value, ticket);
            }
            if let Some(slot) = values.get_mut(index) {
                *slot = value;
            }
        }
        Ok(values)
    }

    /// Pings the store (through the breaker and the read timeout) and times the answer.
    pub(crate) async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.call(self.read_timeout, self.store.ping()).await?;
        Ok(started.elapsed())
    }

    /// Whether the store reports its connections up.
    pub(crate) fn is_connected(&self) -> bool {
        self.store.is_connected()
    }

    /// How long calls are still skipped for, when the breaker is open.
    pub(crate) fn breaker_open_for(&self) -> Option<Duration> {
        let until = self.breaker.open_until_ms.load(Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Consecutive failures counted by the breaker.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.breaker.consecutive_failures.load(Relaxed)
    }
}

#[derive(Debug, Default)]
struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch()` until which calls are skipped.
    open_until_ms: AtomicU64,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Breaker {
    fn allows(&self) -> bool {
        self.open_until_ms.load(Relaxed) <= now_ms()
    }

    /// Records a success; `true` when it closed a breaker that had opened.
    fn success(&self) -> bool {
        let failures = self.consecutive_failures.load(Relaxed);
        if failures != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        failures >= self.threshold
    }

    /// Records a failure; `true` when it opened the breaker.
    fn failure(&self) -> bool {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1);
        if failures >= self.threshold {
            self.open_until_ms
                .store(now_ms().saturating_add(self.cooldown_ms), Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_success() {
        let breaker = Breaker {
            threshold: 3,
            cooldown_ms: 60_000,
            ..Breaker::default()
        };
        assert!(!breaker.failure());
        assert!(!breaker.failure());
        assert!(breaker.allows());
        assert!(breaker.failure());
        assert!(!breaker.allows());
        breaker.open_until_ms.store(0, Relaxed);
        assert!(breaker.allows());
        breaker.success();
        assert!(!breaker.failure());
    }
}
