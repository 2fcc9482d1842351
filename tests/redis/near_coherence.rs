//! Coherence of the near tier on a real Redis: three instances (each its own pool and
//! subscriber) share keys; 10,000 randomized reads, writes and purges run across them, with
//! a `CLIENT KILL TYPE pubsub` and a Redis restart mid-run; afterwards the whole log is
//! checked: no read returned a value older than a change that completed before the read
//! began, beyond `NEAR_STALENESS_BOUND`.
//!
//! Twelve tasks draw ops from one counter; each op's instance, key and kind come from the
//! seed and the op's number. Six busy keys take 80% reads, 15% writes (`set` of a version
//! allocated per key before the write starts), 5% purges (`delete`); two read-mostly keys
//! take 97% / 2.5% / 0.5%, so near copies are read many times after changes elsewhere and a
//! missed invalidation shows up as a read far past the bound.
//!
//! Seed: printed; `NEAR_COHERENCE_SEED=<u64>` replays the same operation sequence (the
//! interleaving of the concurrent tasks still varies from run to run).
//!
//! The rule checked, for a read that began at `t` and returned version `v` of a key:
//! with `cutoff = t - NEAR_STALENESS_BOUND`, there must be no change of that key (a write
//! or delete that returned `Ok`, or the Redis restart, which empties every key) that began
//! after `v`'s write returned `Ok` and completed before `cutoff`. That is "older than the
//! last write that completed before the read began" in real-time order: two writes that
//! overlap in time may land in either order, so a lower version that *completed* later is
//! not stale, and is not flagged. A write or delete that returned `Err` may or may not have
//! landed: it never counts as a change, and a read returning its value is not judged. A read
//! returning `None` is accepted (the restart wipes values; absence is never cached).

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tower_redis_cache::store::NEAR_STALENESS_BOUND;
use tower_redis_cache::{BoxError, Cache, RedisStore};

const OPS: usize = 10_000;
const TASKS: usize = 12;
const INSTANCES: usize = 3;
const KEYS: usize = 8;
/// Keys `0..BUSY_KEYS` are written often; the others are read-mostly.
const BUSY_KEYS: usize = 6;
/// The op numbers at which the subscribers are killed, and Redis restarted (local only).
const KILL_AT: usize = 3_000;
const RESTART_AT: usize = 6_000;
/// A second kill, after the restart, while copies are being served again.
const KILL_AGAIN_AT: usize = 8_500;
/// Pause after a failed call, so a Redis restart (and the open circuit breaker that follows
/// it) does not burn through the run's operations as errors.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
const TTL: Duration = Duration::from_secs(600);

/// xorshift64*, seeded through splitmix64 so nearby seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `Ok(value)`, or `Err(())` for a failed read.
    Read(Result<Option<u64>, ()>),
    Write {
        version: u64,
        ok: bool,
    },
    Delete {
        ok: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Op {
    n: usize,
    key: usize,
    instance: usize,
    kind: Kind,
    start: Instant,
    end: Instant,
}

/// A mid-run event: a `CLIENT KILL`, or the restart (which empties every key).
#[derive(Debug, Clone, Copy)]
struct Event {
    what: &'static str,
    start: Instant,
    end: Instant,
    /// Near hits of the three instances when it ended.
    near_hits: u64,
}

fn key_name(key: usize) -> String {
    format!("coh:{key}")
}

/// `CLIENT KILL TYPE pubsub`: drops every subscribed connection (the three stores' feeds);
/// returns how many went. A fresh connection each time (one made before a restart does not
/// reconnect), bounded in time.
async fn kill_subscribers(url: &str) -> Result<i64, BoxError> {
    use fred::prelude::*;
    use fred::types::{ClusterHash, CustomCommand};
    let kill = async {
        let client = Builder::from_config(Config::from_url(url)?).build()?;
        client.init().await?;
        let killed: i64 = client
            .custom(
                CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
                vec!["KILL", "TYPE", "pubsub"],
            )
            .await?;
        client.quit().await?;
        Ok::<_, BoxError>(killed)
    };
    tokio::time::timeout(Duration::from_secs(5), kill).await?
}

struct Shared {
    caches: Vec<Cache>,
    versions: Vec<AtomicU64>,
    next_op: AtomicUsize,
    seed: u64,
    server: Mutex<RedisServer>,
    local: bool,
    url: String,
    events: Mutex<Vec<Event>>,
    killed: AtomicU64,
}

impl Shared {
    fn near_hits(&self) -> u64 {
        self.caches.iter().map(|c| c.stats().near_hits).sum()
    }
}

async fn run_task(shared: Arc<Shared>) -> Vec<Op> {
    let mut log = Vec::new();
    loop {
        let n = shared.next_op.fetch_add(1, SeqCst);
        if n >= OPS {
            return log;
        }
        if n == KILL_AT || n == KILL_AGAIN_AT {
            let start = Instant::now();
            match kill_subscribers(&shared.url).await {
                Ok(killed) => {
                    println!("op {n}: CLIENT KILL TYPE pubsub killed {killed} connection(s)");
                    shared.killed.fetch_add(killed.max(0) as u64, SeqCst);
                }
                Err(error) => println!("op {n}: CLIENT KILL failed: {error}"),
            }
            shared.events.lock().unwrap().push(Event {
                what: "client kill",
                start,
                end: Instant::now(),
                near_hits: shared.near_hits(),
            });
        }
        if n == RESTART_AT && shared.local {
            // The harness restarts the process synchronously (kill, spawn, poll for PING).
            let start = Instant::now();
            tokio::task::block_in_place(|| shared.server.lock().unwrap().restart());
            let end = Instant::now();
            println!(
                "op {n}: Redis restarted in {:.1} ms",
                (end - start).as_secs_f64() * 1e3
            );
            shared.events.lock().unwrap().push(Event {
                what: "restart",
                start,
                end,
                near_hits: shared.near_hits(),
            });
        }
        let mut rng = Rng::new(shared.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let instance = rng.below(INSTANCES);
        let key = rng.below(KEYS);
        let roll = rng.below(1000);
        // Busy keys: 80% reads, 15% writes, 5% purges. Read-mostly keys: 97% reads, 2.5%
        // writes, 0.5% purges, so a near copy is read many times after a change elsewhere
        // (a copy that missed its invalidation would be served long past the bound, rather
        // than dropped soon by its own instance's next purge).
        let (reads, writes) = if key < BUSY_KEYS {
            (800, 950)
        } else {
            (970, 995)
        };
        let cache = &shared.caches[instance];
        let name = key_name(key);
        let (kind, start, end) = if roll < reads {
            let start = Instant::now();
            let read = cache.get::<u64>(&name).await.map_err(drop);
            (Kind::Read(read), start, Instant::now())
        } else if roll < writes {
            // Allocated before the write starts: versions increase with start order.
            let version = shared.versions[key].fetch_add(1, SeqCst) + 1;
            let start = Instant::now();
            let ok = cache.set(&name, &version, TTL).await.is_ok();
            (Kind::Write { version, ok }, start, Instant::now())
        } else {
            let start = Instant::now();
            let ok = cache.delete(&name).await.is_ok();
            (Kind::Delete { ok }, start, Instant::now())
        };
        let failed = matches!(
            kind,
            Kind::Read(Err(())) | Kind::Write { ok: false, .. } | Kind::Delete { ok: false }
        );
        log.push(Op {
            n,
            key,
            instance,
            kind,
            start,
            end,
        });
        if failed {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// A change that makes older values stale: (start, end, what).
#[derive(Debug, Clone)]
struct Change {
    start: Instant,
    end: Instant,
    what: String,
}

struct Violation {
    op: Op,
    value: u64,
    why: String,
}

#[derive(Default)]
struct Report {
    violations: Vec<Violation>,
    reads: usize,
    reads_some: usize,
    reads_none: usize,
    read_errors: usize,
    write_errors: usize,
    delete_errors: usize,
    reads_of_unknown_writes: usize,
    /// Reads that would fail the check with a bound of zero (informational: staleness
    /// inside the documented bound), and the largest such staleness (from when the value
    /// was first superseded to when the read began).
    within_bound_stale: usize,
    max_within_bound_lag: Duration,
    /// Reads the simpler version-number rule would flag ("v ≥ the highest version whose
    /// write completed before the cutoff; v > what a completed delete removed"), which
    /// overlapping writes can trip without any staleness (informational).
    version_rule_flags: usize,
}

fn check(ops: &[Op], events: &[Event], base: Instant) -> Report {
    let mut report = Report::default();
    let ms = |at: Instant| (at - base).as_secs_f64() * 1e3;
    // Per key: every write by version, and every completed change.
    let mut writes: HashMap<(usize, u64), Op> = HashMap::new();
    let mut changes: Vec<Vec<Change>> = vec![Vec::new(); KEYS];
    for op in ops {
        match op.kind {
            Kind::Write { version, ok } => {
                writes.insert((op.key, version), *op);
                if ok {
                    changes[op.key].push(Change {
                        start: op.start,
                        end: op.end,
                        what: format!(
                            "write of v{version} (op {}, instance {})",
                            op.n, op.instance
                        ),
                    });
                } else {
                    report.write_errors += 1;
                }
            }
            Kind::Delete { ok: true } => changes[op.key].push(Change {
                start: op.start,
                end: op.end,
                what: format!("delete (op {}, instance {})", op.n, op.instance),
            }),
            Kind::Delete { ok: false } => report.delete_errors += 1,
            Kind::Read(_) => {}
        }
    }
    for event in events.iter().filter(|e| e.what == "restart") {
        for key_changes in &mut changes {
            key_changes.push(Change {
                start: event.start,
                end: event.end,
                what: "Redis restart (every key emptied)".to_owned(),
            });
        }
    }
    // For the version-number rule: per key, the writes that completed (end, version), and
    // each completed delete's (end, highest version completed before it began).
    let mut completed: Vec<Vec<(Instant, u64)>> = vec![Vec::new(); KEYS];
    for op in ops {
        if let Kind::Write { version, ok: true } = op.kind {
            completed[op.key].push((op.end, version));
        }
    }
    let highest_before = |completed: &[(Instant, u64)], at: Instant| {
        completed
            .iter()
            .filter(|(end, _)| *end < at)
            .map(|(_, version)| *version)
            .max()
            .unwrap_or(0)
    };
    let mut purges: Vec<Vec<(Instant, u64)>> = vec![Vec::new(); KEYS];
    for op in ops {
        if let Kind::Delete { ok: true } = op.kind {
            let removed = highest_before(&completed[op.key], op.start);
            purges[op.key].push((op.end, removed));
        }
    }
    for op in ops {
        let Kind::Read(read) = op.kind else { continue };
        report.reads += 1;
        let value = match read {
            Err(()) => {
                report.read_errors += 1;
                continue;
            }
            Ok(None) => {
                report.reads_none += 1;
                continue;
            }
            Ok(Some(value)) => value,
        };
        report.reads_some += 1;
        let Some(write) = writes.get(&(op.key, value)) else {
            report.violations.push(Violation {
                op: *op,
                value,
                why: "no write of this version was ever started".to_owned(),
            });
            continue;
        };
        if write.start > op.end {
            report.violations.push(Violation {
                op: *op,
                value,
                why: format!(
                    "its write began at {:.3} ms, after the read returned",
                    ms(write.start)
                ),
            });
            continue;
        }
        if !matches!(write.kind, Kind::Write { ok: true, .. }) {
            report.reads_of_unknown_writes += 1;
            continue;
        }
        let written = write.end;
        let cutoff = op.start.checked_sub(NEAR_STALENESS_BOUND).unwrap_or(base);
        // Superseding changes: began after the value's write returned and completed before
        // the read began. The earliest to complete is when the value went stale: beyond the
        // bound if that was before the cutoff.
        let earliest = changes[op.key]
            .iter()
            .filter(|c| c.start > written && c.end < op.start)
            .min_by_key(|c| c.end);
        if let Some(change) = earliest.filter(|c| c.end < cutoff) {
            report.violations.push(Violation {
                op: *op,
                value,
                why: format!(
                    "v{value} was written (returned at {:.3} ms) before {} began at {:.3} ms \
                     and completed at {:.3} ms, {:.3} ms before the read began (bound {} ms)",
                    ms(written),
                    change.what,
                    ms(change.start),
                    ms(change.end),
                    (op.start - change.end).as_secs_f64() * 1e3,
                    NEAR_STALENESS_BOUND.as_millis(),
                ),
            });
        } else if let Some(change) = earliest {
            report.within_bound_stale += 1;
            report.max_within_bound_lag = report.max_within_bound_lag.max(op.start - change.end);
        }
        // The simpler rule, on version numbers only (informational).
        let highest = highest_before(&completed[op.key], cutoff);
        let removed = purges[op.key]
            .iter()
            .filter(|(end, _)| *end < cutoff)
            .map(|(_, removed)| *removed)
            .max()
            .unwrap_or(0);
        if value < highest || (removed > 0 && value <= removed) {
            report.version_rule_flags += 1;
        }
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_copies_are_never_stale_beyond_the_bound_across_kills_and_restarts() -> TestResult {
    let seed = match std::env::var("NEAR_COHERENCE_SEED") {
        Ok(seed) => seed.trim().parse::<u64>()?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!("near coherence: NEAR_COHERENCE_SEED={seed}");
    let setup = Instant::now();
    let server = RedisServer::start().await;
    let local = server.is_local();
    if !local {
        println!("external Redis: the restart is skipped");
    }
    let prefix = unique_prefix("near-coherence");
    let mut caches = Vec::new();
    for _ in 0..INSTANCES {
        let store = RedisStore::connect(server.url()).await?;
        let cache = Cache::builder(store)
            .key_prefix(&prefix)
            .read_timeout(Duration::from_secs(2))
            .write_timeout(Duration::from_secs(2))
            .near_cache(1 << 20, TTL)
            .build()?;
        caches.push(cache);
    }
    let url = server.url().to_owned();
    let shared = Arc::new(Shared {
        caches,
        versions: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        next_op: AtomicUsize::new(0),
        seed,
        server: Mutex::new(server),
        local,
        url,
        events: Mutex::default(),
        killed: AtomicU64::new(0),
    });

    println!("set up in {:.2} s", setup.elapsed().as_secs_f64());
    let base = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(run_task(Arc::clone(&shared))))
        .collect();
    let mut ops = Vec::with_capacity(OPS);
    for task in tasks {
        ops.extend(task.await?);
    }
    let elapsed = base.elapsed();
    ops.sort_by_key(|op| op.n);
    let events = shared.events.lock().unwrap().clone();
    let checking = Instant::now();
    let report = check(&ops, &events, base);
    println!("checked in {:.2} s", checking.elapsed().as_secs_f64());

    let stats: Vec<_> = shared.caches.iter().map(Cache::stats).collect();
    let sum = |f: fn(&tower_redis_cache::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    let (near_hits, near_misses, near_flushes) = (
        sum(|s| s.near_hits),
        sum(|s| s.near_misses),
        sum(|s| s.near_flushes),
    );
    println!(
        "seed {seed}: {} ops in {:.2} s across {INSTANCES} instances; events: {}",
        ops.len(),
        elapsed.as_secs_f64(),
        events
            .iter()
            .map(|e| format!(
                "{} at {:.1} ms ({} near hits after it)",
                e.what,
                (e.start - base).as_secs_f64() * 1e3,
                near_hits - e.near_hits
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "reads {} (some {}, none {}, errors {}), write errors {}, delete errors {}, \
         reads of unknown (failed) writes {}",
        report.reads,
        report.reads_some,
        report.reads_none,
        report.read_errors,
        report.write_errors,
        report.delete_errors,
        report.reads_of_unknown_writes,
    );
    println!(
        "near_hits {near_hits}, near_misses {near_misses}, near_flushes {near_flushes}; \
         per instance hits {:?}, flushes {:?}; store_errors {}",
        stats.iter().map(|s| s.near_hits).collect::<Vec<_>>(),
        stats.iter().map(|s| s.near_flushes).collect::<Vec<_>>(),
        sum(|s| s.store_errors),
    );
    println!(
        "stale within the bound: {} read(s), largest lag {:.3} ms; the version-number rule \
         would flag {} read(s) (overlapping writes)",
        report.within_bound_stale,
        report.max_within_bound_lag.as_secs_f64() * 1e3,
        report.version_rule_flags,
    );

    if !report.violations.is_empty() {
        let first: Vec<String> = report
            .violations
            .iter()
            .take(10)
            .map(|v| {
                format!(
                    "  op {} key {} instance {} read began at {:.3} ms, returned v{}: {}",
                    v.op.n,
                    key_name(v.op.key),
                    v.op.instance,
                    (v.op.start - base).as_secs_f64() * 1e3,
                    v.value,
                    v.why
                )
            })
            .collect();
        panic!(
            "seed {seed}: {} of {} reads returned a value stale beyond {} ms; the first:\n{}",
            report.violations.len(),
            report.reads_some,
            NEAR_STALENESS_BOUND.as_millis(),
            first.join("\n")
        );
    }
    assert!(
        near_hits > 0,
        "the near tier never served a read: the run proves nothing"
    );
    if local {
        assert!(
            shared.killed.load(SeqCst) >= 2 * INSTANCES as u64,
            "each CLIENT KILL should drop the three subscribers"
        );
        assert!(
            events.iter().any(|e| e.what == "restart"),
            "the restart ran"
        );
    }
    Ok(())
}
