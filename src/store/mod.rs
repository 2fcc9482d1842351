//! Where entries live: the [`Store`] trait and its two implementations.
//!
//! The trait is small on purpose: plain get/put/delete, a token lock with expiry, and fill
//! notices. Everything smarter (timeouts, the circuit breaker, counting) is done once, for every
//! store, by the crate's guard around it, so a store implementation only talks to its backend.

mod guard;
mod memory;
mod notices;
mod redis;

pub(crate) use guard::GuardedStore;
pub use memory::MemoryStore;
pub use notices::{FillNotices, FillWaiter};
pub use redis::{RedisStore, RedisStoreBuilder, DEFAULT_NOTICE_CHANNEL};

use crate::error::StoreError;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
    /// when a layer keeps a near cache; waiters for a fill do not see it.
    Changed,
}

/// Told of every fill notice a store receives, from this process or another.
pub type NoticeListener = Arc<dyn Fn(&str, FillNotice) + Send + Sync>;

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
    /// Extends the lock to `ttl` from now if `token` still holds it; `false` when it does not.
    fn extend_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Releases the lock if `token` still holds it.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, ()>;
    /// Tells every waiter for `entry_key`, in every process sharing the store, how its fill ended.
    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()>;
    /// Registers interest in the next fill notice for `entry_key`. Register before checking the
    /// lock, so a notice sent in between is not missed.
    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter;
    /// Calls `listener` with every notice this store receives, for any key. A store that
    /// cannot deliver notices across processes may ignore it (the default).
    fn listen(&self, listener: NoticeListener) {
        let _ = listener;
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
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, ()> {
        (**self).unlock(key, token)
    }
    fn publish_fill<'a>(&'a self, entry_key: &'a str, notice: FillNotice) -> StoreFuture<'a, ()> {
        (**self).publish_fill(entry_key, notice)
    }
    fn subscribe_fill(&self, entry_key: &str) -> FillWaiter {
        (**self).subscribe_fill(entry_key)
    }
    fn listen(&self, listener: NoticeListener) {
        (**self).listen(listener)
    }
}
