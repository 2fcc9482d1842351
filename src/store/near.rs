//! The near tier: copies of store values in this process, dropped whenever any process of the
//! fleet changes the value, served only while the store's change feed is proven current.
//!
//! Coherence rests on three rules, each closing one way a copy could go stale:
//!
//! 1. **Every change is announced with the change itself.** The store's writes and deletes
//!    publish their change in the same call (a Redis script), and the store reports every
//!    announcement, this process's own included, as [`Change::Key`]: the copy goes.
//! 2. **A read racing a change loses.** A value read from the store is offered with a
//!    [`Ticket`] taken before the read was sent: a per-key-stripe change counter and the
//!    tier's epoch. It is kept only if neither moved by the time it is inserted, and checked
//!    again after inserting (a change landing in between removes it). So a reply that left
//!    the store before a change, whose announcement arrived while the reply travelled, is
//!    never kept (Redis's client-side-caching documentation describes this race; we close it
//!    with counters instead of placeholder entries).
//! 3. **No proof, no serving.** Announcements can be lost (a dropped connection, a lagging
//!    reader). The store reports those as [`Change::Lost`], which drops every copy and bumps
//!    the epoch, so no read begun before it is kept; and it reports [`Change::UpTo`] as its
//!    heartbeats come back through the same channel. A copy is served only while the feed has
//!    been proven current within [`NEAR_STALENESS_BOUND`]; otherwise reads go to the store.
//!
//! A copy also never outlives the value's own freshness (values in both faces' formats carry
//! it; the caller tells how to read it), nor the tier's ttl, and the tier is bounded in bytes.

use super::{Change, NEAR_STALENESS_BOUND};
use crate::stats::Counters;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Change counters, one per stripe of keys: enough that unrelated writes rarely void a read.
const STRIPES: usize = 4096;

/// Memory a copy costs beyond its key and value bytes (moka's node, the `Bytes` handle).
const COPY_OVERHEAD: usize = 96;

/// Reads when a value stops being fresh (Unix ms), for values that carry it.
pub(crate) type FreshUntil = fn(&[u8]) -> Option<u64>;

#[derive(Clone)]
struct Copy {
    value: Bytes,
    ttl: Duration,
}

struct CopyExpiry;

impl moka::Expiry<String, Copy> for CopyExpiry {
    fn expire_after_create(&self, _: &String, copy: &Copy, _: Instant) -> Option<Duration> {
        Some(copy.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        copy: &Copy,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(copy.ttl)
    }
}

/// What a read saw before it was sent: [`NearTier::offer`] keeps its value only if nothing
/// changed since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    changes: u64,
    epoch: u64,
}

pub(crate) struct NearTier {
    copies: moka::sync::Cache<String, Copy>,
    ttl: Duration,
    fresh_until: FreshUntil,
    stripes: Box<[AtomicU64]>,
    /// Bumped by every loss (and prefix change): voids every ticket taken before.
    epoch: AtomicU64,
    /// Microseconds since `base` up to which the feed is proven current (0: not since the
    /// last loss).
    current_to_us: AtomicU64,
    /// When the last loss was reported (µs since `base`): proofs older than it prove nothing.
    lost_at_us: AtomicU64,
    base: Instant,
    stats: Arc<Counters>,
}

impl NearTier {
    pub(crate) fn new(
        max_bytes: u64,
        ttl: Duration,
        fresh_until: FreshUntil,
        stats: Arc<Counters>,
    ) -> Self {
        let evictions = Arc::clone(&stats);
        let copies = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, copy: &Copy| {
                u32::try_from(key.len() + copy.value.len() + COPY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(CopyExpiry)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.near_evictions(1);
                }
            })
            .build();
        Self {
            copies,
            ttl,
            fresh_until,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            current_to_us: AtomicU64::new(0),
            lost_at_us: AtomicU64::new(0),
            base: Instant::now(),
            stats,
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether the feed has been proven current within the staleness bound.
    fn is_current(&self) -> bool {
        let current_to = self.current_to_us.load(SeqCst);
        current_to != 0
            && self.micros(Instant::now()).saturating_sub(current_to)
                <= NEAR_STALENESS_BOUND.as_micros() as u64
    }

    /// The copy of `key`, if one is held and may be served.
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let copy = self.is_current().then(|| self.copies.get(key)).flatten();
        match copy {
            Some(copy) => {
                self.stats.near_hits(1);
                Some(copy.value)
            }
            None => {
                self.stats.near_misses(1);
                None
            }
        }
    }

    fn stripe(key: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) % STRIPES
    }

    /// Takes a ticket for a read of `key` about to be sent to the store.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = Self::stripe(key);
        Ticket {
            stripe,
            changes: self.stripes[stripe].load(SeqCst),
            epoch: self.epoch.load(SeqCst),
        }
    }

    fn unchanged(&self, ticket: &Ticket) -> bool {
        self.stripes[ticket.stripe].load(SeqCst) == ticket.changes
            && self.epoch.load(SeqCst) == ticket.epoch
    }

    /// Keeps a copy of `value`, read from the store under `key` with `ticket`, unless
    /// anything changed since the ticket was taken (see the module docs).
    pub(crate) fn offer(&self, key: &str, value: &Bytes, ticket: Ticket) {
        if !self.is_current() || !self.unchanged(&ticket) {
            return;
        }
        let ttl = match (self.fresh_until)(value) {
            Some(until) => {
                let left = until.saturating_sub(unix_now_ms());
                if left == 0 {
                    return;
                }
                self.ttl.min(Duration::from_millis(left))
            }
            None => self.ttl,
        };
        self.copies.insert(
            key.to_owned(),
            Copy {
                value: value.clone(),
                ttl,
            },
        );
        if !self.unchanged(&ticket) {
            self.copies.invalidate(key);
        }
        self.stats.near_bytes(self.copies.weighted_size());
    }

    /// Applies one report of the store's change feed.
    pub(crate) fn apply(&self, change: Change<'_>) {
        match change {
            Change::Key(key) => self.changed(key),
            Change::Prefix(prefix) => {
                self.epoch.fetch_add(1, SeqCst);
                let matching: Vec<_> = self
                    .copies
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .map(|(key, _)| key)
                    .collect();
                for key in matching {
                    self.copies.invalidate(key.as_str());
                }
            }
            Change::Lost => {
                self.lost_at_us.store(self.micros(Instant::now()), SeqCst);
                self.current_to_us.store(0, SeqCst);
                self.epoch.fetch_add(1, SeqCst);
                self.copies.invalidate_all();
                self.stats.near_flushes(1);
            }
            Change::UpTo(at) => {
                let at = self.micros(at).max(1);
                if at > self.lost_at_us.load(SeqCst) {
                    self.current_to_us.fetch_max(at, SeqCst);
                }
            }
        }
    }

    /// Drops the copy of `key` and voids the tickets of reads racing the change.
    pub(crate) fn changed(&self, key: &str) {
        self.stripes[Self::stripe(key)].fetch_add(1, SeqCst);
        self.copies.invalidate(key);
    }
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> NearTier {
        let tier = NearTier::new(1 << 20, Duration::from_secs(60), |_| None, Arc::default());
        tier.apply(Change::UpTo(Instant::now()));
        tier
    }

    #[test]
    fn a_read_racing_a_change_is_not_kept() {
        let tier = tier();
        let ticket = tier.ticket("k");
        tier.apply(Change::Key("k"));
        tier.offer("k", &Bytes::from_static(b"old"), ticket);
        assert_eq!(tier.get("k"), None);
        let ticket = tier.ticket("k");
        tier.offer("k", &Bytes::from_static(b"new"), ticket);
        assert_eq!(tier.get("k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_loss_voids_earlier_reads_and_stops_serving_until_proven_current() {
        let tier = tier();
        let ticket = tier.ticket("k");
        tier.offer("k", &Bytes::from_static(b"v"), ticket);
        let before = Instant::now();
        let late = tier.ticket("other");
        tier.apply(Change::Lost);
        assert_eq!(tier.get("k"), None, "a loss drops every copy");
        tier.offer("other", &Bytes::from_static(b"v"), late);
        tier.apply(Change::UpTo(before));
        assert_eq!(
            tier.get("other"),
            None,
            "a proof older than the loss proves nothing"
        );
        let ticket = tier.ticket("k");
        tier.offer("k", &Bytes::from_static(b"v"), ticket);
        assert_eq!(tier.get("k"), None, "not current: nothing kept");
        std::thread::sleep(Duration::from_millis(1));
        tier.apply(Change::UpTo(Instant::now()));
        let ticket = tier.ticket("k");
        tier.offer("k", &Bytes::from_static(b"v"), ticket);
        assert!(tier.get("k").is_some());
    }

    #[test]
    fn copies_never_outlive_the_value_freshness() {
        let tier = NearTier::new(
            1 << 20,
            Duration::from_secs(60),
            |v| Some(u64::from_be_bytes(v.try_into().ok()?)),
            Arc::default(),
        );
        tier.apply(Change::UpTo(Instant::now()));
        let expired = Bytes::copy_from_slice(&(unix_now_ms() - 1).to_be_bytes());
        let ticket = tier.ticket("k");
        tier.offer("k", &expired, ticket);
        assert_eq!(tier.get("k"), None);
    }

    #[test]
    fn a_prefix_change_drops_its_keys_only() {
        let tier = tier();
        for key in ["a:1", "a:2", "b:1"] {
            let ticket = tier.ticket(key);
            tier.offer(key, &Bytes::from_static(b"v"), ticket);
        }
        tier.apply(Change::Prefix("a:"));
        assert_eq!(tier.get("a:1"), None);
        assert_eq!(tier.get("a:2"), None);
        assert!(tier.get("b:1").is_some());
    }
}
