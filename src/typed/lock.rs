//! Named distributed locks: token-fenced, extended while held, waited for with backoff.
//!
//! A lock is `SET NX PX` of a random token under `{prefix}:lock:{name}` (the store's
//! `try_lock`); extending and releasing compare the token first (Lua on Redis), so a holder
//! whose lock expired, and was taken by another, can neither extend nor release the other's
//! lock. The release also sends a notice on the lock's key, so waiters in every process try
//! again at once instead of at their next backoff tick.
//!
//! Mutual exclusion holds while the holder keeps its lock alive: the guard extends it every
//! third of its ttl. A holder that stalls for longer than the ttl (a long GC-like pause, a
//! partition) loses the lock without knowing it until [`LockGuard::is_held`] or
//! [`LockGuard::release`] says so; choose a ttl well above such pauses.

use crate::engine::fill::lock_token;
use crate::engine::Engine;
use crate::error::LockError;
use crate::store::{FillEnd, FillNotice};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lock lives unless extended, and how long to wait for it.
///
/// See [`Cache::with_lock`](crate::Cache::with_lock) for an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LockOptions {
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
}

impl LockOptions {
    /// A lock that expires `ttl` after its last extension (the guard extends it every third
    /// of `ttl` while held). Tries once unless [`wait`](Self::wait) says otherwise.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            wait: Duration::ZERO,
        }
    }

    /// Waits up to `max_wait` for a lock held by another, retrying with exponential backoff
    /// (with jitter, so waiters do not retry in step) and at once when it is released.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.wait = max_wait;
        self
    }
}

/// A held lock. Release it with [`release`](Self::release); one dropped without it is
/// released in a spawned task (or expires after its ttl where no runtime is left).
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    engine: Arc<Engine>,
    key: String,
    token: String,
    /// Set by the extender when an extension found the lock gone.
    lost: Arc<AtomicBool>,
    extender: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The store key of the lock.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `false` once an extension found the lock expired or taken by another.
    pub fn is_held(&self) -> bool {
        !self.lost.load(SeqCst)
    }

    /// Releases the lock if this guard still holds it (compare-and-delete: a lock that
    /// expired and went to another holder is left alone), and wakes its waiters.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        if let Some(extender) = self.extender.take() {
            extender.abort();
        }
        release(&self.engine, &self.key, &self.token).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(extender) = self.extender.take() {
            extender.abort();
        }
        if self.released {
            return;
        }
        let (engine, key, token) = (
            Arc::clone(&self.engine),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = release(&engine, &key, &token).await;
            });
        }
    }
}

/// Compare-and-delete plus a wake-up notice, in one store call.
async fn release(engine: &Engine, key: &str, token: &str) -> Result<(), LockError> {
    let end = FillEnd {
        write: None,
        only_if_absent: false,
        notice: (key, FillNotice::NotStorable),
        unlock: Some((key, token)),
    };
    Ok(engine.store.finish_fill(end).await?)
}

/// Takes the lock `key`, waiting as `options` allow.
pub(crate) async fn acquire(
    engine: &Arc<Engine>,
    key: String,
    options: LockOptions,
) -> Result<LockGuard, LockError> {
    if options.ttl.is_zero() {
        return Err(LockError::Invalid("lock ttl is zero"));
    }
    let token = lock_token();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(2);
    let max_backoff = (options.ttl / 4).clamp(Duration::from_millis(2), Duration::from_millis(50));
    loop {
        // Subscribe before trying, so a release in between wakes this waiter.
        let mut released = engine.store.subscribe_fill(&key);
        if engine.store.try_lock(&key, &token, options.ttl).await? {
            return Ok(guard(engine, key, token, options.ttl));
        }
        let waited = started.elapsed();
        let Some(left) = options.wait.checked_sub(waited).filter(|d| !d.is_zero()) else {
            engine.stats.lock_wait_timeouts(1);
            return Err(LockError::Timeout { waited });
        };
        let pause = jitter(backoff).min(left);
        tokio::select! {
            _ = released.notice() => {}
            () = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// `base` plus up to half of it again, at random.
fn jitter(base: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    let half = u64::try_from(base.as_micros() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    base + Duration::from_micros(random % half)
}

fn guard(engine: &Arc<Engine>, key: String, token: String, ttl: Duration) -> LockGuard {
    let lost = Arc::new(AtomicBool::new(false));
    let extender = {
        let (engine, key, token, lost) = (
            Arc::clone(engine),
            key.clone(),
            token.clone(),
            Arc::clone(&lost),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match engine.store.extend_lock(&key, &token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, SeqCst);
                        break;
                    }
                    // Unreachable for now: try again next tick; the lock may still be ours.
                    Err(_) => {}
                }
            }
        })
    };
    LockGuard {
        engine: Arc::clone(engine),
        key,
        token,
        lost,
        extender: Some(extender),
        released: false,
    }
}
