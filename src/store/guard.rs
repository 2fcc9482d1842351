//! Timeouts, a circuit breaker and error counting around any [`Store`].
//!
//! Every store call made by the request path goes through here, so the fail-open rules hold
//! for every store alike: a call that errs or outlives its timeout is counted and reported as
//! an error for the caller to route around; after `threshold` consecutive failures the breaker
//! opens and calls are skipped outright for `cooldown`, so an outage costs no latency per
//! request. After the cool-down the next calls go through; one success closes the breaker,
//! one failure reopens it at once.
//!
//! The optional near cache lives here too: an in-process [`MemoryStore`] holding the values
//! this process read or wrote lately, for at most its TTL. Reads it can answer cost no store
//! round trip. Writes and deletes go to the shared store first and then announce a
//! [`FillNotice::Changed`], and every notice from any process drops the near copy of its key,
//! so a copy outlives a change elsewhere only if the notice is lost, and never past the TTL.
//! Entries carry their own freshness, so a near copy is never served past it.

use super::{FillEnd, FillNotice, FillWaiter, LockAttempt, MemoryStore, Store, StoreFuture};
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
    near: Option<NearCache>,
}

/// The near cache, and this layer's id in the change notices it sends.
struct NearCache {
    copies: Arc<MemoryStore>,
    ttl: Duration,
    /// Prefixes the key in this layer's `Changed` notices, so it can ignore its own.
    sender: String,
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
        }
    }

    /// Adds a near cache of at most `max_bytes`, keeping copies for at most `ttl`.
    pub(crate) fn with_near_cache(mut self, max_bytes: u64, ttl: Duration) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let copies = Arc::new(MemoryStore::new(max_bytes));
        let sender = format!("{:016x}", RandomState::new().hash_one(std::process::id()));
        let (listener, own) = (Arc::clone(&copies), sender.clone());
        self.store.listen(Arc::new(move |key: &str, notice| {
            // Only another layer's change matters: fill notices come with a `Changed` of
            // their own from the writer, and this layer's own changes are already applied.
            if notice != FillNotice::Changed || key.get(..own.len()) == Some(own.as_str()) {
                return;
            }
            listener.delete_now(key.get(own.len()..).unwrap_or(key));
        }));
        self.near = Some(NearCache {
            copies,
            ttl,
            sender,
        });
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
            return self.call(self.read_timeout, self.store.get(key)).await;
        };
        if let Some(value) = near.copies.get_now(key) {
            self.stats.near_hits(1);
            return Ok(Some(value));
        }
        let value = self.call(self.read_timeout, self.store.get(key)).await?;
        if let Some(value) = &value {
            near.copies.put_now(key, value.clone(), near.ttl);
            self.stats.near_bytes(near.copies.weighted_size());
        }
        Ok(value)
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let Some(near) = &self.near else {
            return self
                .call(self.write_timeout, self.store.put(key, value, ttl))
                .await;
        };
        self.call(self.write_timeout, self.store.put(key, value.clone(), ttl))
            .await?;
        self.announce_change(near, key).await;
        near.copies.put_now(key, value, ttl.min(near.ttl));
        self.stats.near_bytes(near.copies.weighted_size());
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let result = self.call(self.write_timeout, self.store.delete(key)).await;
        if let Some(near) = &self.near {
            near.copies.delete_now(key);
            self.stats.near_bytes(near.copies.weighted_size());
            self.announce_change(near, key).await;
        }
        result
    }

    /// Removes a value, saying whether there was one; near copies go too.
    pub(crate) async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let result = self.call(self.write_timeout, self.store.remove(key)).await;
        if let Some(near) = &self.near {
            near.copies.delete_now(key);
            self.stats.near_bytes(near.copies.weighted_size());
            self.announce_change(near, key).await;
        }
        result
    }

    /// Ends a fill (write, notice, unlock) in one call; see [`Store::finish_fill`].
    pub(crate) async fn finish_fill(&self, end: FillEnd<'_>) -> Result<(), StoreError> {
        let near = self.near.as_ref();
        // A conditional write may not have happened: keep no near copy of it.
        let written = near
            .filter(|_| !end.only_if_absent)
            .and(end.write.as_ref())
            .map(|(key, value, ttl)| (key.to_string(), value.clone(), *ttl));
        self.call(self.write_timeout, self.store.finish_fill(end))
            .await?;
        if let (Some(near), Some((key, value, ttl))) = (near, written) {
            self.announce_change(near, &key).await;
            near.copies.put_now(&key, value, ttl.min(near.ttl));
            self.stats.near_bytes(near.copies.weighted_size());
        }
        Ok(())
    }

    /// Tells the other layers' near caches to drop their copy of `key`.
    async fn announce_change(&self, near: &NearCache, key: &str) {
        let tagged = format!("{}{key}", near.sender);
        let notice = self.store.publish_fill(&tagged, FillNotice::Changed);
        let _ = self.call(self.write_timeout, notice).await;
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

    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        self.call(self.write_timeout, self.store.unlock(key, token))
            .await
    }

    pub(crate) fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        self.store.subscribe_fill(entry_key)
    }

    /// Takes a lock with a token, for the typed face's named locks.
    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.call(self.write_timeout, self.store.try_lock(key, token, ttl))
            .await
    }

    /// Reads many values in as few round trips as the store can; near copies answer first.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let Some(near) = &self.near else {
            return self
                .call(self.read_timeout, self.store.get_many(keys))
                .await;
        };
        let mut values: Vec<Option<Bytes>> = keys.iter().map(|k| near.copies.get_now(k)).collect();
        let (wanted, missing): (Vec<usize>, Vec<String>) = keys
            .iter()
            .zip(&values)
            .enumerate()
            .filter(|(_, (_, value))| value.is_none())
            .map(|(index, (key, _))| (index, key.clone()))
            .unzip();
        self.stats
            .near_hits(u64::try_from(keys.len().saturating_sub(wanted.len())).unwrap_or(0));
        if wanted.is_empty() {
            return Ok(values);
        }
        let fetched = self
            .call(self.read_timeout, self.store.get_many(&missing))
            .await?;
        for (index, value) in wanted.into_iter().zip(fetched) {
            if let (Some(value), Some(key)) = (&value, keys.get(index)) {
                near.copies.put_now(key, value.clone(), near.ttl);
                self.stats.near_bytes(near.copies.weighted_size());
            }
            if let Some(slot) = values.get_mut(index) {
                *slot = value;
            }
        }
        Ok(values)
    }

    /// Deletes every key starting with `prefix`, bounded by `timeout` (a walk over the
    /// keyspace outlasts any per-request bound). Near copies here go too; other processes'
    /// near copies live out their (short) ttl.
    pub(crate) async fn delete_prefix(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let deleted = self.call(timeout, self.store.delete_prefix(prefix)).await;
        if let Some(near) = &self.near {
            near.copies.delete_prefix_now(prefix);
        }
        deleted
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
