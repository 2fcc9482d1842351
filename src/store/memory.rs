//! The embedded in-process store: bounded by total bytes, entries expire with their TTL.
//!
//! Built on `moka`, a well-kept concurrent cache with size-aware eviction (TinyLFU) and
//! per-entry expiry, rather than a hand-written LRU. Locks and fill notices are process-local
//! here, so the memory store coalesces the requests of one process, not of a fleet.

use super::{
    FillNotice, FillNotices, FillWaiter, LockAttempt, PurgeEvent, PurgeRecords, PurgeWatcher,
    Store, StoreFuture,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Stored {
    value: Bytes,
    ttl: Duration,
}

struct ExpireWithTtl;

impl moka::Expiry<String, Stored> for ExpireWithTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Stored,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// An in-process [`Store`] holding at most `max_bytes` of keys and values.
///
/// ```
/// use tower_redis_cache::{CacheLayer, MemoryStore};
/// let layer = CacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)).build().unwrap();
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: moka::sync::Cache<String, Stored>,
    locks: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    notices: Arc<FillNotices>,
    purges: Arc<Mutex<Purges>>,
    /// The fencing counters of named locks (`try_lock_fenced`), never evicted: a counter
    /// that restarted would hand out tokens already used.
    fences: Arc<Mutex<HashMap<String, u64>>>,
}

/// The purges recorded in a memory store, and the engines to tell (every layer and cache
/// sharing this store).
#[derive(Default)]
struct Purges {
    /// Per records key: the floor and the records, oldest first.
    books: HashMap<String, (u64, std::collections::VecDeque<(String, u64)>)>,
    watchers: Vec<PurgeWatcher>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("weighted_size", &self.entries.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store that evicts the least useful entries once keys and values exceed `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, stored: &Stored| {
                u32::try_from(key.len() + stored.value.len()).unwrap_or(u32::MAX)
            })
            .expire_after(ExpireWithTtl)
            .build();
        Self {
            entries,
            locks: Arc::default(),
            notices: Arc::default(),
            purges: Arc::default(),
            fences: Arc::default(),
        }
    }

    /// Reads a value without going through a future (for the near cache).
    pub(crate) fn get_now(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).map(|stored| stored.value)
    }

    /// Writes a value without going through a future (for the near cache).
    pub(crate) fn put_now(&self, key: &str, value: Bytes, ttl: Duration) {
        self.entries.insert(key.to_owned(), Stored { value, ttl });
    }

    /// Removes a value without going through a future (for the near cache).
    pub(crate) fn delete_now(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Removes every value whose key starts with `prefix`; a walk over every entry, like
    /// Redis's `SCAN`. Returns how many were removed.
    pub(crate) fn delete_prefix_now(&self, prefix: &str) -> u64 {
        let matching: Vec<_> = self
            .entries
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key)
            .collect();
        let removed = matching
            .iter()
            .filter(|key| self.entries.remove(key.as_str()).is_some())
            .count();
        u64::try_from(removed).unwrap_or(u64::MAX)
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes `key` with `token` in `locks` unless a live holder has it.
fn take_lock(
    locks: &mut HashMap<String, (String, Instant)>,
    key: &str,
    token: &str,
    ttl: Duration,
) -> bool {
    let now = Instant::now();
    locks.retain(|_, (_, expires)| *expires > now);
    let taken = !locks.contains_key(key);
    if taken {
        locks.insert(key.to_owned(), (token.to_owned(), now + ttl));
    }
    taken
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(std::future::ready(Ok(self.get_now(key))))
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.put_now(key, value, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.delete_now(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let taken = take_lock(&mut self.locks(), key, token, ttl);
        Box::pin(std::future::ready(Ok(taken)))
    }

    /// Reads and locks in one step, under the locks' mutex: a fill ends by writing, then
    /// unlocking under that mutex, so an attempt finds its value or its lock, never neither.
    /// Read, then locked in two steps (the trait's default), a fill that ended in between
    /// would leave the attempt the lock and no value: a second origin call for a key whose
    /// waiters were about to be served.
    fn try_lock_or_read<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> StoreFuture<'a, LockAttempt> {
        let mut locks = self.locks();
        let found = self
            .get_now(entry_key)
            .filter(|value| value.get(4..12) != seen.as_ref().map(|s| &s[..]));
        let attempt = match found {
            Some(value) => LockAttempt::Found(value),
            None if take_lock(&mut locks, lock_key, token, ttl) => LockAttempt::Acquired,
            None => LockAttempt::Held,
        };
        drop(locks);
        Box::pin(std::future::ready(Ok(attempt)))
    }

    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let held = match self.locks().get_mut(key) {
            Some((holder, expires)) if holder == token && *expires > now => {
                *expires = now + ttl;
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(held)))
    }

    fn unlock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        entry_key: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        let released = {
            let mut locks = self.locks();
            let held = locks.get(key).is_some_and(|(holder, _)| holder == token);
            if held {
                locks.remove(key);
            }
            held
        };
        if let (true, Some(entry_key)) = (released, entry_key) {
            self.notices.dispatch(entry_key, FillNotice::Released);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()> {
        self.notices.dispatch(entry_key, notice);
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        self.notices.register(entry_key)
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        let values = keys.iter().map(|key| self.get_now(key)).collect();
        Box::pin(std::future::ready(Ok(values)))
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(self.entries.remove(key).is_some())))
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(std::future::ready(Ok(self.delete_prefix_now(prefix))))
    }

    fn record_purge<'a>(
        &'a self,
        records: &'a str,
        member: &'a str,
        keep: usize,
    ) -> StoreFuture<'a, u64> {
        let at_us = crate::clock::unix_now_us();
        let watchers = {
            let mut purges = self.purges.lock().unwrap_or_else(PoisonError::into_inner);
            let (floor, book) = purges.books.entry(records.to_owned()).or_default();
            book.retain(|(m, _)| m != member);
            book.push_back((member.to_owned(), at_us));
            while book.len() > keep.max(1) {
                if let Some((_, at)) = book.pop_front() {
                    *floor = (*floor).max(at);
                }
            }
            purges.watchers.clone()
        };
        // Told outside the lock: a watcher may read the records back.
        for watcher in watchers {
            watcher(PurgeEvent::Recorded {
                records,
                member,
                at_us,
            });
        }
        Box::pin(std::future::ready(Ok(at_us)))
    }

    fn purges<'a>(&'a self, records: &'a str) -> StoreFuture<'a, PurgeRecords> {
        let purges = self.purges.lock().unwrap_or_else(PoisonError::into_inner);
        let read = match purges.books.get(records) {
            Some((floor, book)) => PurgeRecords {
                now_us: crate::clock::unix_now_us(),
                floor_us: *floor,
                records: book.iter().cloned().collect(),
            },
            None => PurgeRecords {
                now_us: crate::clock::unix_now_us(),
                ..PurgeRecords::default()
            },
        };
        Box::pin(std::future::ready(Ok(read)))
    }

    fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        self.purges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watchers
            .push(watcher);
        true
    }

    fn try_lock_fenced<'a>(
        &'a self,
        key: &'a str,
        fence_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        let now = Instant::now();
        // The locks' mutex is held while the counter moves, so lock and token are one step.
        let mut locks = self.locks();
        locks.retain(|_, (_, expires)| *expires > now);
        let fence = if locks.contains_key(key) {
            None
        } else {
            locks.insert(key.to_owned(), (token.to_owned(), now + ttl));
            let mut fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
            let counter = fences.entry(fence_key.to_owned()).or_insert(0);
            *counter = counter.saturating_add(1);
            Some(*counter)
        };
        drop(locks);
        Box::pin(std::future::ready(Ok(fence)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A fill that ends (its write, then its unlock) while a lock attempt is under way is
    /// found by the attempt, not repeated. The fill's end here holds the locks' mutex from
    /// before the attempt starts, so an attempt that read before locking would read nothing,
    /// then take the released lock.
    #[test]
    fn a_fill_ending_during_a_lock_attempt_is_found_not_repeated() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(5);
        let taken = store.try_lock("l", "filler", ttl).now_or_never();
        assert!(matches!(taken, Some(Ok(true))));
        let mut locks = store.locks();
        let (started, thread_id) = std::sync::mpsc::channel();
        let attempt = std::thread::spawn({
            let store = store.clone();
            move || {
                let _ = started.send(std::fs::read_link("/proc/thread-self").ok());
                store
                    .try_lock_or_read("e", "l", "waiter", ttl, None)
                    .now_or_never()
            }
        });
        let thread = thread_id.recv().expect("attempt thread started");
        wait_until_blocked(thread.as_deref());
        // Longer than a stamp (bytes 4..12), so it is not taken for the absent stale value.
        let value = Bytes::from_static(b"the filled entry");
        store.put_now("e", value.clone(), ttl);
        locks.remove("l");
        drop(locks);
        let attempt = attempt.join().expect("attempt thread");
        let attempt = attempt.expect("ready at once").expect("no store error");
        assert_eq!(attempt, LockAttempt::Found(value));
    }

    /// Waits until the thread at `/proc/<thread>` sleeps: here, on the locks' mutex, the one
    /// thing the attempt can wait for. Where `/proc` cannot say, returns at once (the test then
    /// still passes with the fix, and may miss the race without it).
    fn wait_until_blocked(thread: Option<&std::path::Path>) {
        let Some(stat) = thread.map(|t| std::path::Path::new("/proc").join(t).join("stat")) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // The state follows the command name's closing parenthesis.
            let Ok(text) = std::fs::read_to_string(&stat) else {
                return;
            };
            if text
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'))
            {
                return;
            }
            std::thread::yield_now();
        }
        panic!("the lock attempt never waited on the locks' mutex");
    }
}
