//! The engine: keyed byte values with lifetimes, shared by both faces.
//!
//! Both faces (the HTTP layer and the typed [`Cache`](crate::Cache)) turn their own values into
//! bytes under keys they derive; the engine owns what is common to them and knows nothing of
//! HTTP or of serde: the store behind its fail-open guard (timeouts, circuit breaker, counting,
//! the optional near tier), the counters, the work running off the caller's path, and the fill
//! protocol ([`fill`]: one load per key across the fleet).
//!
//! An [`Engine`] is shared through an `Arc`, so a layer and a typed cache built from it share
//! one connection pool, one lock protocol and one set of counters.

pub(crate) mod background;
pub(crate) mod config;
pub(crate) mod fill;
pub(crate) mod flight;
pub(crate) mod keeper;
pub(crate) mod purge;

use crate::engine::background::{Background, Running};
pub(crate) use crate::engine::config::{
    EngineConfig, Face, DEFAULT_MAX_FILL_BYTES, DEFAULT_PENDING_WRITES,
};
use crate::stats::Counters;
use crate::store::GuardedStore;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A byte count as semaphore permits (saturating at the most a semaphore holds).
fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// How fills coordinate across the fleet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillSettings {
    /// How long a fill lock lives unless extended (it is extended every third of this while
    /// its holder loads, so it only runs out when the holder died).
    pub(crate) lock_ttl: Duration,
    /// The longest a caller waits for another process's fill before loading itself.
    pub(crate) lock_wait: Duration,
}

/// The core both faces call: a guarded store, counters, background work, fill settings.
pub(crate) struct Engine {
    /// Every store call goes through the guard, so the fail-open rules hold for both faces.
    pub(crate) store: GuardedStore,
    pub(crate) stats: Arc<Counters>,
    /// Fills and refreshes running off the caller's path, so callers can wait for them.
    pub(crate) background: Arc<Background>,
    pub(crate) fills: FillSettings,
    /// Bounds the store writes in flight, so a slow store cannot pile up buffered values.
    pub(crate) writes: Arc<Semaphore>,
    /// Bounds the bytes buffered by fills in flight (one permit per byte), so many large
    /// fills at once (clients asking for many big URLs and hanging up) cannot make the
    /// process hold more than the budget.
    pub(crate) fill_bytes: Arc<Semaphore>,
    /// Extends the fill locks this process holds while their loads run.
    pub(crate) keeper: keeper::Keeper,
    /// Fill locks taken by lookups, left for this process's leader of the key's fill.
    pub(crate) handoffs: fill::Handoffs,
    /// Purges by tag and prefix, checked on every read (reach it through [`Engine::purges`]).
    purges: purge::Purges,
}

/// When a value in either face's format stops being fresh (Unix ms), for the near tier: HTTP
/// entries (`TRC`) and typed values (`TRV`), both at version 2, keep their store stamp at
/// bytes 4..12 and their freshness at 12..20 (see `crate::http::entry` and `crate::typed::codec`).
/// Other values (vary indexes, hit-for-miss markers) carry none.
pub(crate) fn fresh_until(value: &[u8]) -> Option<u64> {
    let header = value.get(..20)?;
    let tagged = (header.starts_with(b"TRC") || header.starts_with(b"TRV")) && header[3] == 2;
    tagged.then(|| {
        let mut until = [0; 8];
        until.copy_from_slice(&header[12..20]);
        u64::from_be_bytes(until)
    })
}

impl Engine {
    pub(crate) fn new(
        store: GuardedStore,
        stats: Arc<Counters>,
        background: Arc<Background>,
        fills: FillSettings,
    ) -> Self {
        Self {
            store,
            stats,
            background,
            fills,
            writes: Arc::new(Semaphore::new(DEFAULT_PENDING_WRITES)),
            fill_bytes: Arc::new(Semaphore::new(permits(DEFAULT_MAX_FILL_BYTES))),
            keeper: keeper::Keeper::default(),
            handoffs: fill::Handoffs::default(),
            purges: purge::Purges::new(
                "{tower-redis-cache}:purges".to_owned(),
                purge::DEFAULT_PURGE_RECORDS,
                purge::DEFAULT_CLOCK_MARGIN,
            ),
        }
    }

    /// Keeps purge records under `records` (each layer or cache prefix has its own), at most
    /// `keep` of them, covering fills up to `margin` after each purge.
    pub(crate) fn with_purges(mut self, records: String, keep: usize, margin: Duration) -> Self {
        self.purges = purge::Purges::new(records, keep, margin);
        self
    }

    /// Sets the write and fill-byte budgets (validated by the caller: both positive).
    pub(crate) fn with_budgets(mut self, writes: usize, fill_bytes: u64) -> Self {
        self.writes = Arc::new(Semaphore::new(writes.min(Semaphore::MAX_PERMITS)));
        self.fill_bytes = Arc::new(Semaphore::new(permits(fill_bytes)));
        self
    }

    /// Runs `work` in its own task, counted as background work until it ends, inside the
    /// caller's tracing span (else its events would not be counted towards that span).
    pub(crate) fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running: Running = self.background.start();
        let work = async move {
            let output = work.await;
            drop(running);
            output
        };
        tokio::spawn(tracing::Instrument::in_current_span(work))
    }
}
