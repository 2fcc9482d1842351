//! Purges by tag and by prefix, for both faces: lazy invalidation against a table of purge
//! records every process keeps.
//!
//! A purge does not find and delete the values it covers (that would cost a walk over the
//! keyspace, or an index per tag and prefix written by every fill). It records *what* was
//! purged and *when*, on the store's clock, in one store call that also tells every process
//! ([`Store::record_purge`](crate::store::Store::record_purge)); every value carries the time
//! its fill began (on the same clock, before the origin was asked), its tags and its name (an
//! HTTP entry's URL, a typed value's key); and a value read from the store or the near tier
//! counts as missing when a record covering it is not older than its fill. A purge therefore
//! costs one store call whatever it covers, a read costs a few hash lookups in memory (none
//! while nothing was purged), and purged values leave the store when they expire.
//!
//! A fill racing a purge cannot bring the purged content back: its stamp is taken before the
//! origin is asked, so a purge recorded while it ran is newer than the stamp and covers what it
//! writes, on every process. Clocks: purges are stamped by the clock of the store node holding
//! the records, and fills by this process's clock corrected by its offset to that same node's
//! clock, measured whenever the records are read (so node-to-node skew on a Cluster does not
//! enter), in microseconds, so a write and a purge in one millisecond are still ordered.
//! Stamps may err early, never late: the measurement errs early by the reply's travel time,
//! and stamps are taken [`DEFAULT_CLOCK_MARGIN`] earlier still, for this clock's drift between
//! measurements; an early stamp only makes a fill begun just after a purge count as before it
//! (refilled once more, harmless). And a fill that begins after this process learned of a
//! purge is stamped past it (it certainly began after it), so a write right after a purge (or
//! a prefix delete) is never covered by it.
//!
//! The table is read in full when the engine starts, again whenever the store reports that
//! its purge feed may have missed something (a reconnection), and every 30 seconds (every
//! second for a store without a feed). The store keeps at most [`DEFAULT_PURGE_RECORDS`] records; the
//! oldest ones fold into a floor that covers every value stamped before it.

use crate::engine::Engine;
use crate::store::{PurgeEvent, PurgeRecords};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

/// How much earlier than this process's estimate of the store's clock fills are stamped: the
/// drift allowed between two measurements of the offset (a stamp may err early, never late).
pub(crate) const DEFAULT_CLOCK_MARGIN: Duration = Duration::from_millis(2);

/// How many purge records a store keeps before folding the oldest into its floor.
pub(crate) const DEFAULT_PURGE_RECORDS: usize = 10_000;

/// How often the records are read again when the store announces purges.
const RELOAD_WATCHED: Duration = Duration::from_secs(30);

/// How often the records are read again when the store cannot announce them.
const RELOAD_UNWATCHED: Duration = Duration::from_secs(1);

/// After a failed read of the records, the next try.
const RELOAD_RETRY: Duration = Duration::from_millis(500);

/// What a purge covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// Every value, of either face, carrying this tag.
    Tag(&'a str),
    /// Every HTTP entry whose URL starts with this (normalised) prefix.
    UrlPrefix(&'a str),
    /// Every typed value whose store key starts with this prefix.
    KeyPrefix(&'a str),
}

impl Target<'_> {
    /// The record's member string in the store: a kind letter, a colon, the subject.
    fn member(&self) -> String {
        let (kind, subject) = match self {
            Target::Tag(tag) => ('t', tag),
            Target::UrlPrefix(prefix) => ('u', prefix),
            Target::KeyPrefix(prefix) => ('k', prefix),
        };
        let mut member = String::with_capacity(subject.len() + 2);
        member.push(kind);
        member.push(':');
        member.push_str(subject);
        member
    }
}

/// What a value is named by, for prefix purges.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name<'a> {
    Url(&'a [u8]),
    Key(&'a [u8]),
}

/// Purges by one prefix kind: the latest time per prefix, and the prefix lengths present, so a
/// check looks up one slice of the name per length instead of walking every prefix.
#[derive(Default)]
struct Prefixes {
    at: HashMap<Box<[u8]>, u64>,
    lengths: BTreeSet<usize>,
}

impl Prefixes {
    fn insert(&mut self, prefix: &str, at_us: u64) {
        self.lengths.insert(prefix.len());
        let latest = self.at.entry(prefix.as_bytes().into()).or_default();
        *latest = (*latest).max(at_us);
    }

    /// The latest purge of a prefix of `name`, if any.
    fn latest(&self, name: &[u8]) -> Option<u64> {
        self.lengths
            .range(..=name.len())
            .filter_map(|&len| self.at.get(&name[..len]).copied())
            .max()
    }
}

#[derive(Default)]
struct Table {
    floor_us: u64,
    tags: HashMap<Box<[u8]>, u64>,
    urls: Prefixes,
    keys: Prefixes,
}

impl Table {
    fn apply(&mut self, member: &str, at_us: u64) {
        match member.split_once(':') {
            Some(("t", tag)) => {
                let latest = self.tags.entry(tag.as_bytes().into()).or_default();
                *latest = (*latest).max(at_us);
            }
            Some(("u", prefix)) => self.urls.insert(prefix, at_us),
            Some(("k", prefix)) => self.keys.insert(prefix, at_us),
            // A kind a newer release records: ignored rather than misread.
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.floor_us == 0
            && self.tags.is_empty()
            && self.urls.at.is_empty()
            && self.keys.at.is_empty()
    }
}

/// The purge table of one engine, and its link to the store's records.
pub(crate) struct Purges {
    /// The store key the records live under (`{<prefix>}:purges`: braced, so the floor key
    /// beside it, `…:floor`, shares its Cluster slot).
    records: String,
    keep: usize,
    margin_us: u64,
    table: RwLock<Table>,
    /// `false` while nothing was ever purged: reads then skip the table's lock.
    any: AtomicBool,
    /// The store's clock minus this process's, in ms, as last measured.
    offset_us: AtomicI64,
    /// The latest purge this process knows of (a record's time, or the floor): a fill that
    /// begins after this process learned of a purge began after that purge, so its stamp is
    /// never below this plus the margin (a write right after a purge is not covered by it).
    latest_us: AtomicU64,
    /// Wakes the loader to read the records again.
    reload: Arc<tokio::sync::Notify>,
    /// Set once the loader task runs.
    started: AtomicBool,
}

impl Purges {
    pub(crate) fn new(records: String, keep: usize, margin: Duration) -> Self {
        Self {
            records,
            keep: keep.max(1),
            margin_us: u64::try_from(margin.as_micros()).unwrap_or(u64::MAX),
            table: RwLock::default(),
            any: AtomicBool::new(false),
            offset_us: AtomicI64::new(0),
            latest_us: AtomicU64::new(0),
            reload: Arc::default(),
            started: AtomicBool::new(false),
        }
    }

    /// Now, on the store's clock as far as this process knows it: what a fill stamps its value
    /// with before it asks the origin.
    pub(crate) fn stamp(&self) -> u64 {
        let local = crate::clock::unix_now_us();
        let offset = self.offset_us.load(Ordering::Relaxed);
        // Early by the margin: a stamp may err early (the value is refilled once more), never
        // late (a purge would miss it). But never at or before a purge this process knows of:
        // a fill that begins now certainly began after it.
        let estimate = local
            .saturating_add_signed(offset)
            .saturating_sub(self.margin_us);
        let known = self.latest_us.load(Ordering::Acquire);
        match known {
            0 => estimate,
            known => estimate.max(known.saturating_add(1)),
        }
    }

    /// Whether a purge covers a value stamped `filled_at_us`, carrying `tags` (separated by
    /// spaces) and named `name`.
    pub(crate) fn covers(&self, filled_at_us: u64, tags: &[u8], name: Name<'_>) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let covered = |at_us: u64| filled_at_us <= at_us;
        if table.floor_us > 0 && covered(table.floor_us) {
            return true;
        }
        let by_tag = !table.tags.is_empty()
            && tags
                .split(|&b| b == b' ')
                .filter(|tag| !tag.is_empty())
                .any(|tag| table.tags.get(tag).is_some_and(|&at| covered(at)));
        by_tag
            || match name {
                Name::Url(url) => table.urls.latest(url).is_some_and(covered),
                Name::Key(key) => table.keys.latest(key).is_some_and(covered),
            }
    }

    fn apply(&self, member: &str, at_us: u64) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(member, at_us);
        self.any.store(true, Ordering::Release);
        self.latest_us.fetch_max(at_us, Ordering::AcqRel);
    }

    fn replace(&self, read: PurgeRecords) {
        let local = crate::clock::unix_now_us();
        let offset = i128::from(read.now_us) - i128::from(local);
        self.offset_us.store(
            offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            Ordering::Relaxed,
        );
        let mut table = Table {
            floor_us: read.floor_us,
            ..Table::default()
        };
        let mut latest = read.floor_us;
        for (member, at_us) in &read.records {
            table.apply(member, *at_us);
            latest = latest.max(*at_us);
        }
        self.latest_us.fetch_max(latest, Ordering::AcqRel);
        let empty = table.is_empty();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
        self.any.store(!empty, Ordering::Release);
    }
}

impl Engine {
    /// The engine's purge table, its loader started on first use (it needs a runtime, which a
    /// builder may be called without).
    pub(crate) fn purges(self: &Arc<Self>) -> &Purges {
        if !self.purges.started.load(Ordering::Acquire) {
            start_loader(self);
        }
        &self.purges
    }

    /// Records a purge in the store (every process learns of it) and in this process's table.
    pub(crate) async fn purge(
        self: &Arc<Self>,
        target: Target<'_>,
    ) -> Result<(), crate::StoreError> {
        let purges = self.purges();
        let member = target.member();
        let at_us = self
            .store
            .record_purge(&purges.records, &member, purges.keep)
            .await?;
        purges.apply(&member, at_us);
        Ok(())
    }
}

/// Subscribes the table to the store's purge feed and spawns the task that reads the records:
/// at once, whenever the feed may have missed something, and periodically.
fn start_loader(engine: &Arc<Engine>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime yet: nothing can be read now; the next use tries again.
        return;
    };
    if engine.purges.started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak: Weak<Engine> = Arc::downgrade(engine);
    let records = engine.purges.records.clone();
    let feed = Weak::clone(&weak);
    let watched = engine.store.watch_purges(Arc::new(move |event| {
        let Some(engine) = feed.upgrade() else {
            return;
        };
        match event {
            PurgeEvent::Recorded {
                records: key,
                member,
                at_us,
            } if key == records => engine.purges.apply(member, at_us),
            PurgeEvent::Lost => engine.purges.reload.notify_one(),
            _ => {}
        }
    }));
    let every = if watched {
        RELOAD_WATCHED
    } else {
        RELOAD_UNWATCHED
    };
    runtime.spawn(async move {
        loop {
            let Some(engine) = weak.upgrade() else {
                return;
            };
            let wait = match engine.store.purges(&engine.purges.records).await {
                Ok(read) => {
                    engine.purges.replace(read);
                    every
                }
                Err(error) if error.kind() == crate::StoreErrorKind::Unsupported => return,
                Err(_) => RELOAD_RETRY,
            };
            // Not holding the engine while waiting: dropping it ends this task.
            let reload = Arc::clone(&engine.purges.reload);
            drop(engine);
            let _ = tokio::time::timeout(wait, reload.notified()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purges() -> Purges {
        Purges::new("p:purges".into(), 10, Duration::from_millis(100))
    }

    #[test]
    fn nothing_purged_covers_nothing() {
        let purges = purges();
        assert!(!purges.covers(0, b"a b", Name::Url(b"http://h/")));
    }

    #[test]
    fn a_tag_covers_values_stamped_at_or_before_it() {
        let purges = purges();
        purges.apply(&Target::Tag("product:1").member(), 10_000);
        assert!(purges.covers(9_000, b"list product:1", Name::Url(b"http://h/p/1")));
        assert!(purges.covers(10_000, b"product:1", Name::Url(b"http://h/p/1")));
        assert!(!purges.covers(10_001, b"product:1", Name::Url(b"http://h/p/1")));
        assert!(!purges.covers(9_000, b"product:10 list", Name::Url(b"http://h/p/1")));
    }

    #[test]
    fn prefixes_match_by_kind_and_by_leading_bytes() {
        let purges = purges();
        purges.apply(&Target::UrlPrefix("http://h/products/").member(), 10_000);
        purges.apply(&Target::KeyPrefix("users:").member(), 10_000);
        assert!(purges.covers(1, b"", Name::Url(b"http://h/products/1?x")));
        assert!(!purges.covers(1, b"", Name::Url(b"http://h/product")));
        assert!(!purges.covers(1, b"", Name::Key(b"http://h/products/1")));
        assert!(purges.covers(1, b"", Name::Key(b"users:7")));
    }

    #[test]
    fn a_reload_replaces_the_table_and_measures_the_clock() {
        let purges = purges();
        purges.apply(&Target::Tag("gone").member(), 10_000);
        let now = crate::clock::unix_now_us();
        purges.replace(PurgeRecords {
            now_us: now + 60_000_000,
            floor_us: 5_000,
            records: vec![("t:kept".into(), 20_000)],
        });
        assert!(!purges.covers(10_000, b"gone", Name::Key(b"k")));
        assert!(purges.covers(19_000, b"kept", Name::Key(b"k")));
        assert!(
            purges.covers(4_000, b"", Name::Key(b"k")),
            "the floor covers all"
        );
        let stamp = purges.stamp();
        assert!(stamp >= now + 59_000_000, "stamps follow the store's clock");
    }

    #[test]
    fn a_fill_begun_after_a_known_purge_is_not_covered_by_it() {
        let purges = purges();
        let far = crate::clock::unix_now_us() + 3_600_000_000;
        purges.apply(&Target::Tag("t").member(), far);
        let stamp = purges.stamp();
        assert!(stamp > far);
        assert!(!purges.covers(stamp, b"t", Name::Key(b"k")));
        assert!(purges.covers(far, b"t", Name::Key(b"k")));
    }
}
