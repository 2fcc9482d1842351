//! Where values live: the [`Store`] trait, its two implementations, and what a custom store
//! needs to implement it.
//!
//! The trait is small on purpose: plain get/put/delete, a token lock with expiry, and fill
//! notices (plus, with defaults, the typed face's batch read, prefix delete and ping).
//! Everything smarter (timeouts, the circuit breaker, counting, the near tier) is done once,
//! for every store, by the crate's guard around it, so a store implementation only talks to
//! its backend. The notice and lock plumbing ([`FillNotice`], [`FillNotices`], [`FillEnd`],
//! [`LockAttempt`], [`Change`], [`ChangeWatcher`]) lives here rather than at the crate root:
//! only a custom store needs it.

mod guard;
mod memory;
mod near;
mod notices;
mod presence;
mod redis;

pub(crate) use guard::GuardedStore;
pub use memory::MemoryStore;
pub use notices::{FillNotices, FillWaiter};
#[cfg(feature = "tls")]
pub use redis::RedisTls;
pub use redis::{RedisStore, RedisStoreBuilder, DEFAULT_NOTICE_CHANNEL};

use crate::error::StoreError;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How a fill ended, as announced to the requests waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillNotice {
    /// The entry was written: read it.
    Stored,
    /// The origin's answer may not be shared: stop waiting and ask the origin yourself.
    NotStorable,
    /// The value under the key was written or deleted: drop any copy held in memory. Sent
    /// by every write and delete, in the same store call; waiters for a fill do not see it.
    Changed,
    /// The fill lock was released without a fill (its holder gave up or handed over): a
    /// waiter should try to take the lock at once rather than at its next poll.
    Released,
}

/// What a store tells a near tier about the values every process of the fleet changes.
///
/// A near tier serves its copies only while the feed proves itself current: it needs a
/// [`Change::UpTo`] at least every few tens of milliseconds, and drops every copy on
/// [`Change::Lost`]. A store whose feed cannot give that (or has no feed) returns `false` from
/// [`Store::watch_changes`], and the near tier stays off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change<'a> {
    /// The value under this key was written or removed, by this process or another.
    Key(&'a str),
    /// Every key starting with this prefix may have changed.
    Prefix(&'a str),
    /// Changes may have been missed (the feed's connection dropped, was re-established, or
    /// lagged behind): every copy must go, and copies read before now must not be kept.
    Lost,
    /// Every change whose store call completed before this instant (on this process's
    /// clock) has been reported: the feed is current up to it. The store sends these as
    /// heartbeats through the very channel that carries the changes, so one arriving proves
    /// that every change before it arrived too.
    UpTo(Instant),
}

/// How often a store that reports changes should report [`Change::UpTo`] (the Redis store
/// sends a heartbeat round this often). A near tier stops serving when it has heard none for
/// [`NEAR_STALENESS_BOUND`].
pub const CHANGE_HEARTBEAT: Duration = Duration::from_millis(20);

/// The longest a near tier serves a copy after the value changed elsewhere: a read from the
/// near tier at time `t` reflects every change completed before `t - NEAR_STALENESS_BOUND`
/// (five heartbeats, so a late one or two do not switch the tier off). Typically the gap is
/// the pub/sub delivery time, well under a millisecond on one network.
pub const NEAR_STALENESS_BOUND: Duration = Duration::from_millis(100);

/// Receives a store's [`Change`]s; see [`Store::watch_changes`].
pub type ChangeWatcher = Arc<dyn Fn(Change<'_>) + Send + Sync>;

/// How a fill ends, for [`Store::finish_fill`]: at most one write, one notice, and the lock's
/// release. All keys are in one cluster slot (they share the resource's `{hash}` tag).
#[derive(Debug)]
pub struct FillEnd<'a> {
    /// The value to write (the entry, or a hit-for-miss marker), under which key, for how long.
    pub write: Option<(&'a str, Bytes, Duration)>,
    /// Write only if the key holds nothing (`SET NX`): set for hit-for-miss markers, which
    /// must never replace an entry others are served.
    pub only_if_absent: bool,
    /// The key whose waiters are told, and what they are told.
    pub notice: (&'a str, FillNotice),
    /// The lock to release if this token still holds it: (lock key, token).
    pub unlock: Option<(&'a str, &'a str)>,
}

/// The purges recorded in a store (see [`Store::record_purge`]), as read by
/// [`Store::purges`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeRecords {
    /// The store's clock when it answered (Unix µs), so a process can tell how far its own
    /// clock is from the store's.
    pub now_us: u64,
    /// Every value stamped before this instant (Unix µs, store clock) counts as purged: the
    /// oldest records, trimmed to bound the list, leave their time here.
    pub floor_us: u64,
    /// Each purge: what was purged (an opaque member string) and when (Unix µs, the store's
    /// clock).
    pub records: Vec<(String, u64)>,
}

/// What a store tells the engines sharing it about purges; see [`Store::watch_purges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgeEvent<'a> {
    /// A purge was recorded under `records`: `member` as of `at_us` (store clock).
    Recorded {
        /// The records key it was recorded under.
        records: &'a str,
        /// What was purged.
        member: &'a str,
        /// When, on the store's clock (Unix µs).
        at_us: u64,
    },
    /// Events may have been missed (the feed's connection dropped or lagged): read the
    /// records again.
    Lost,
}

/// Receives a store's [`PurgeEvent`]s.
pub type PurgeWatcher = Arc<dyn Fn(PurgeEvent<'_>) + Send + Sync>;

/// The answer of a [`Store`] method the store does not implement (the trait's defaults).
fn unsupported<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::from_kind(
        crate::error::StoreErrorKind::Unsupported,
    ))))
}

/// What [`Store::try_lock_or_read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The lock is now held with the caller's token.
    Acquired,
    /// Someone else holds the lock.
    Held,
    /// The entry key holds this value (and no lock was taken).
    Found(Bytes),
}

/// A place to keep encoded entries, shared by every instance that should share a cache.
///
/// Keys arrive fully formed (`{prefix}:{hash}:e`, `…:l` for locks) and values are opaque
/// bytes. Implementations must not panic and should return promptly; the layer bounds every
/// call with a timeout anyway.
pub trait Store: Send + Sync + 'static {
    /// Reads a value.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>>;
    /// Writes a value that expires after `ttl`.
    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()>;
    /// Removes a value; removing a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
    /// Takes the lock `key` for `ttl` if nobody holds it; `true` when taken.
    fn try_lock<'a>(&'a self, key: &'a str, token: &'a str, ttl: Duration)
        -> StoreFuture<'a, bool>;
    /// Takes the lock `lock_key` unless `entry_key` already holds a value, in one step, so a
    /// fill that ended between a lookup and a lock attempt is found rather than repeated. A
    /// value whose stamp (bytes 4..12: an entry's `stored_at_ms`) equals `seen` counts as
    /// absent: it is the stale entry the caller is about to refresh. The default reads, then
    /// locks, in two calls: a fill that ends between them (its write after the read, its
    /// unlock before the lock) is then repeated, so a store that can do both in one step
    /// should.
    fn try_lock_or_read<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> StoreFuture<'a, LockAttempt> {
        Box::pin(async move {
            if let Some(value) = self.get(entry_key).await? {
                if value.get(4..12) != seen.as_ref().map(|s| &s[..]) {
                    return Ok(LockAttempt::Found(value));
                }
            }
            Ok(match self.try_lock(lock_key, token, ttl).await? {
                true => LockAttempt::Acquired,
                false => LockAttempt::Held,
            })
        })
    }
    /// Reads `entry_key` or, when it holds nothing, takes the lock `lock_key`, in one round
    /// trip if the store can: a lookup that fills on a miss calls it instead of
    /// [`get`](Self::get), so an uncontended miss needs no separate lock call. The value must come
    /// back as stored (a large value copied through a script costs the store more than the
    /// read itself). The default is [`try_lock_or_read`](Self::try_lock_or_read).
    fn read_or_lock<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, LockAttempt> {
        self.try_lock_or_read(entry_key, lock_key, token, ttl, None)
    }
    /// Extends the lock to `ttl` from now if `token` still holds it; `false` when it does not.
    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Releases the lock if `token` still holds it. With `entry_key`, a released lock is
    /// announced to that entry's waiters ([`FillNotice::Released`]), so they take it at once.
    fn unlock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        entry_key: Option<&'a str>,
    ) -> StoreFuture<'a, ()>;
    /// Tells every waiter for `entry_key`, in every process sharing the store, how its fill ended.
    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()>;
    /// Registers interest in the next fill notice for `entry_key`. Register before checking the
    /// lock, so a notice sent in between is not missed.
    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter;
    /// Ends a fill: writes, announces, releases the lock, in that order. The default makes the
    /// three calls in turn; a store that can do it in one round trip (Redis, with a script)
    /// should, as every miss pays for it.
    fn finish_fill<'a>(&'a self, end: FillEnd<'a>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if let Some((key, value, ttl)) = end.write {
                // Not atomic; a store that can check and write in one step should.
                if !end.only_if_absent || self.get(key).await?.is_none() {
                    self.put(key, value, ttl).await?;
                }
            }
            self.publish_fill(end.notice.0, end.notice.1).await?;
            if let Some((key, token)) = end.unlock {
                self.unlock(key, token, None).await?;
            }
            Ok(())
        })
    }
    /// Starts reporting every change made to the store, by any process, to `watcher`, and
    /// returns `true`; see [`Change`]. A store that cannot report other processes' changes
    /// returns `false` (the default), and no near tier is put in front of it: a copy that
    /// nobody invalidates would be served after the value changed elsewhere. Every write and
    /// delete of such a store must announce itself in the same call that makes it (a crash
    /// between two calls would leave the other processes' copies stale).
    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        let _ = watcher;
        false
    }
    /// Reads many values, answering in the order of `keys` (`None` for a missing one). The
    /// typed face's `get_many` rests on it, so a store should do it in as few round trips as
    /// its backend allows (Redis: one `MGET` per cluster slot, sent together). The default
    /// reads one key after another.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        })
    }
    /// Deletes every key that starts with `prefix`, taken literally (no pattern characters),
    /// and returns how many were deleted. It walks the whole keyspace (Redis: `SCAN`), so it
    /// is an administrative operation, not one for every request. The default reports
    /// [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported).
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let _ = prefix;
        unsupported()
    }
    /// Removes a value and says whether there was one (the typed face's `delete` reports
    /// it). The default reads, then deletes, in two calls.
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let existed = self.get(key).await?.is_some();
            self.delete(key).await?;
            Ok(existed)
        })
    }
    /// Records a purge under the `records` key: `member` (what was purged, opaque to the
    /// store) as of the store's clock, which it returns (Unix µs); announces it to every
    /// process's [`watch_purges`](Self::watch_purges) watcher in the same call; and keeps at
    /// most `keep` records, folding the oldest into the floor (see [`PurgeRecords`]). Purges
    /// by tag and prefix rest on it. The default reports
    /// [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported).
    fn record_purge<'a>(
        &'a self,
        records: &'a str,
        member: &'a str,
        keep: usize,
    ) -> StoreFuture<'a, u64> {
        let _ = (records, member, keep);
        unsupported()
    }
    /// Every purge recorded under `records`, with the store's clock. The default reports
    /// [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported).
    fn purges<'a>(&'a self, records: &'a str) -> StoreFuture<'a, PurgeRecords> {
        let _ = records;
        unsupported()
    }
    /// Starts reporting purges recorded by any process to `watcher`, and returns `true`. A
    /// store that cannot (the default) returns `false`; the engine then reads the records
    /// again every second.
    fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        let _ = watcher;
        false
    }
    /// Checks that the store answers, for health checks. The default reads a key nobody
    /// writes.
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.get("tower-redis-cache:ping").await.map(drop) })
    }
    /// Whether the store's connections are up, as far as it knows without asking (the
    /// default: `true`, for stores without connections).
    fn is_connected(&self) -> bool {
        true
    }
    /// Takes the lock `key` for `ttl` if nobody holds it and, in the same atomic step,
    /// increments the counter `fence_key` (never expiring), answering its new value: the
    /// fencing token of this holding, strictly greater than every earlier holder's, in every
    /// process. `None` when the lock is held. The typed face's named locks rest on it; the
    /// default reports [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported),
    /// as a lock and a counter taken in two steps would not order holders.
    fn try_lock_fenced<'a>(
        &'a self,
        key: &'a str,
        fence_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        let _ = (key, fence_key, token, ttl);
        unsupported()
    }
}

/// A shared store is a store: lets an application choose its store at run time
/// (`Arc<dyn Store>`) or hand one store to several layers.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        (**self).get(key)
    }
    fn put<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        (**self).put(key, value, ttl)
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        (**self).delete(key)
    }
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).try_lock(key, token, ttl)
    }
    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).extend_lock(key, token, ttl)
    }
    fn unlock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        entry_key: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        (**self).unlock(key, token, entry_key)
    }
    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()> {
        (**self).publish_fill(entry_key, notice)
    }
    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        (**self).subscribe_fill(entry_key)
    }
    fn finish_fill<'a>(&'a self, end: FillEnd<'a>) -> StoreFuture<'a, ()> {
        (**self).finish_fill(end)
    }
    fn try_lock_or_read<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        seen: Option<[u8; 8]>,
    ) -> StoreFuture<'a, LockAttempt> {
        (**self).try_lock_or_read(entry_key, lock_key, token, ttl, seen)
    }
    fn watch_changes(&self, watcher: ChangeWatcher) -> bool {
        (**self).watch_changes(watcher)
    }
    fn read_or_lock<'a>(
        &'a self,
        entry_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, LockAttempt> {
        (**self).read_or_lock(entry_key, lock_key, token, ttl)
    }
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        (**self).get_many(keys)
    }
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        (**self).delete_prefix(prefix)
    }
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        (**self).remove(key)
    }
    fn record_purge<'a>(
        &'a self,
        records: &'a str,
        member: &'a str,
        keep: usize,
    ) -> StoreFuture<'a, u64> {
        (**self).record_purge(records, member, keep)
    }
    fn purges<'a>(&'a self, records: &'a str) -> StoreFuture<'a, PurgeRecords> {
        (**self).purges(records)
    }
    fn watch_purges(&self, watcher: PurgeWatcher) -> bool {
        (**self).watch_purges(watcher)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        (**self).ping()
    }
    fn is_connected(&self) -> bool {
        (**self).is_connected()
    }
    fn try_lock_fenced<'a>(
        &'a self,
        key: &'a str,
        fence_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<u64>> {
        (**self).try_lock_fenced(key, fence_key, token, ttl)
    }
}
