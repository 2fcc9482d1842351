//! Named distributed locks with fencing tokens, extended while held, waited for with backoff.
//!
//! A lock is `SET NX PX` of a random token under `{prefix}:lock:{name}`, taken in the same
//! atomic step (a Lua script on Redis: the store's `try_lock_fenced`) as an `INCR` of the
//! name's counter `{prefix}:lock:{name}:fence`, whose new value is the holding's fencing
//! token: strictly greater than every earlier holder's, in every process. Extending and
//! releasing compare the random token first (compare-and-delete), so a holder whose lock
//! expired, and was taken by another, can neither extend nor release the other's lock. The
//! release also sends a notice on the lock's key, so waiters in every process try again at
//! once instead of at their next backoff tick.
//!
//! Mutual exclusion holds while the holder keeps its lock alive: the guard extends it every
//! third of its ttl. A holder that stalls for longer than the ttl (a long GC-like pause, a
//! partition) loses the lock, and two holders may then overlap: `with_lock` reports it
//! ([`LockError::Lost`]) when it notices, and what the work wrote downstream is protected only
//! where the downstream checks the fencing token (rejects a write carrying a token lower than
//! one it has seen).

use crate::engine::fill::lock_token;
use crate::engine::Engine;
use crate::error::LockError;
use crate::store::{FillEnd, FillNotice};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lock lives unless extended, and how long to wait for it. A [`Duration`]
/// converts: that ttl, no wait.
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
    /// of `ttl` while held). Tries once ([`LockError::Busy`] when held) unless
    /// [`wait`](Self::wait) says otherwise.
    pub const fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            wait: Duration::ZERO,
        }
    }

    /// Waits up to `max_wait` for a lock held by another, retrying with exponential backoff
    /// (with jitter, so waiters do not retry in step) and at once when it is released.
    pub const fn wait(mut self, max_wait: Duration) -> Self {
        self.wait = max_wait;
        self
    }
}

impl From<Duration> for LockOptions {
    fn from(ttl: Duration) -> Self {
        Self::new(ttl)
    }
}

impl From<&LockOptions> for LockOptions {
    fn from(options: &LockOptions) -> Self {
        *options
    }
}

/// What the work under [`Cache::with_lock`](crate::Cache::with_lock) knows of its lock:
/// its fencing token and whether it is still held. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HeldLock {
    fence: u64,
    lost: Arc<AtomicBool>,
}

impl HeldLock {
    /// The holding's fencing token: strictly greater than every earlier holding's of this
    /// name, in every process sharing the store. Send it with the writes the lock protects,
    /// and have the receiver refuse a token lower than the highest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// `false` once an extension found the lock expired or taken by another.
    pub fn is_held(&self) -> bool {
        !self.lost.load(SeqCst)
    }
}

/// A held lock. Release it with [`release`](Self::release); one dropped without it is
/// released in a spawned task (or expires after its ttl where no runtime is left).
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    engine: Arc<Engine>,
    key: String,
    token: String,
    ttl: Duration,
    held: HeldLock,
    extender: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.held.fence)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The store key of the lock.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This holding's fencing token; see [`HeldLock::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.held.fence
    }

    /// `false` once an extension found the lock expired or taken by another.
    pub fn is_held(&self) -> bool {
        self.held.is_held()
    }

    /// What the work under the lock is handed: the token and the held flag.
    pub fn held(&self) -> HeldLock {
        self.held.clone()
    }

    /// Asks the store whether this guard still holds the lock (extending it when it does):
    /// [`LockError::Lost`] when it expired or went to another meanwhile.
    pub async fn check(&self) -> Result<(), LockError> {
        let still = self
            .engine
            .store
            .extend_lock(&self.key, &self.token, self.ttl);
        if still.await? && self.is_held() {
            return Ok(());
        }
        self.held.lost.store(true, SeqCst);
        self.engine.stats.typed_lock_lost(1);
        Err(LockError::Lost)
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

/// Takes the lock `key` (its fencing counter beside it), waiting as `options` allow.
pub(crate) async fn acquire(
    engine: &Arc<Engine>,
    key: String,
    options: LockOptions,
) -> Result<LockGuard, LockError> {
    if options.ttl.is_zero() {
        return Err(LockError::Invalid("lock ttl is zero"));
    }
    let token = lock_token();
    let fence_key = format!("{key}:fence");
    let started = Instant::now();
    let mut backoff = Duration::from_millis(2);
    let max_backoff = (options.ttl / 4).clamp(Duration::from_millis(2), Duration::from_millis(50));
    loop {
        // Subscribe before trying, so a release in between wakes this waiter.
        let mut released = engine.store.subscribe_fill(&key);
        let attempt = engine
            .store
            .try_lock_fenced(&key, &fence_key, &token, options.ttl);
        if let Some(fence) = attempt.await? {
            return Ok(guard(engine, key, token, options.ttl, fence));
        }
        if options.wait.is_zero() {
            engine.stats.typed_lock_busy(1);
            return Err(LockError::Busy);
        }
        let waited = started.elapsed();
        let Some(left) = options.wait.checked_sub(waited).filter(|d| !d.is_zero()) else {
            engine.stats.typed_lock_timeouts(1);
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

fn guard(engine: &Arc<Engine>, key: String, token: String, ttl: Duration, fence: u64) -> LockGuard {
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
        ttl,
        held: HeldLock { fence, lost },
        extender: Some(extender),
        released: false,
    }
}
