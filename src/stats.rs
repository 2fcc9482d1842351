//! Counters of what the cache did, readable as a [`Stats`] snapshot at any time.
//!
//! Counting is a relaxed atomic add per event, cheap enough for the hit path. With the
//! `metrics` feature every increment is also sent to the `metrics` facade as a counter named
//! `tower_redis_cache_<field>_total`, so any exporter (Prometheus, StatsD, ...) sees them.
//! Every metric carries a `cache` label (the layer's `cache_name`, so layers on different
//! routes are told apart and one fleet's instances sum); requests are also counted in
//! `tower_redis_cache_requests_total{cache, outcome}`, and latencies go to histograms with
//! the same labels. [`describe_metrics`] registers a help text for each.

use crate::outcome::CacheOutcome;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident),* $(,)?) => {
        /// A snapshot of the cache's counters since the layer was built.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        impl Stats {
            /// Every counter with its field name, in declaration order: for exporters and
            /// status pages that should not list the fields by hand.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field),)*].into_iter()
            }
        }

        pub(crate) struct Counters {
            $($field: AtomicU64,)*
            /// The metric handles, registered once with the `cache` label, so an increment on
            /// the hit path is an atomic add, not a registry lookup that builds a label set.
            #[cfg(feature = "metrics")]
            handles: Handles,
        }

        /// One registered handle per metric of a [`Counters`].
        #[cfg(feature = "metrics")]
        struct Handles {
            $($field: metrics::Counter,)*
            /// `requests_total`, by outcome (see [`CacheOutcome::index`]).
            requests: [metrics::Counter; CacheOutcome::ALL.len()],
            /// `request_seconds`, by outcome.
            latency: [metrics::Histogram; CacheOutcome::ALL.len()],
            fill: metrics::Histogram,
            breaker: metrics::Gauge,
            near: metrics::Gauge,
        }

        #[cfg(feature = "metrics")]
        impl Handles {
            fn register(name: &str) -> Self {
                let label = || metrics::SharedString::from(std::sync::Arc::<str>::from(name));
                Self {
                    $($field: metrics::counter!(
                        concat!("tower_redis_cache_", stringify!($field), "_total"),
                        "cache" => label()
                    ),)*
                    requests: CacheOutcome::ALL.map(|outcome| metrics::counter!(
                        "tower_redis_cache_requests_total",
                        "cache" => label(),
                        "outcome" => outcome.label()
                    )),
                    latency: CacheOutcome::ALL.map(|outcome| metrics::histogram!(
                        "tower_redis_cache_request_seconds",
                        "cache" => label(),
                        "outcome" => outcome.label()
                    )),
                    fill: metrics::histogram!("tower_redis_cache_fill_seconds", "cache" => label()),
                    breaker: metrics::gauge!("tower_redis_cache_breaker_open", "cache" => label()),
                    near: metrics::gauge!("tower_redis_cache_near_bytes", "cache" => label()),
                }
            }
        }

        impl Counters {
            /// Counters whose metrics are labelled `cache=<name>` (registered with the
            /// recorder installed now: install it before building a layer or cache).
            pub(crate) fn named(name: &str) -> Self {
                #[cfg(not(feature = "metrics"))]
                let _ = name;
                Self {
                    $($field: AtomicU64::new(0),)*
                    #[cfg(feature = "metrics")]
                    handles: Handles::register(name),
                }
            }
        }

        /// Registers the help text of every counter with the installed recorder.
        #[cfg(feature = "metrics")]
        fn describe_counters() {
            $(
                metrics::describe_counter!(
                    concat!("tower_redis_cache_", stringify!($field), "_total"),
                    metrics::Unit::Count,
                    concat!($($doc),*).trim()
                );
            )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($field: self.$field.load(Relaxed),)* }
            }

            $(
                #[inline]
                pub(crate) fn $field(&self, n: u64) {
                    self.$field.fetch_add(n, Relaxed);
                    #[cfg(feature = "metrics")]
                    self.handles.$field.increment(n);
                }
            )*
        }
    };
}

counters! {
    /// Requests answered from a fresh entry (including coalesced followers).
    hits,
    /// Cacheable requests that were not found and went to the origin.
    misses,
    /// Requests answered from a stale entry (stale-while-revalidate, stale-if-error, max-stale).
    stale,
    /// Stale entries the origin confirmed with `304 Not Modified`.
    revalidated,
    /// Background refreshes of stale entries that ran (took the fill lock).
    refreshes,
    /// Entries deleted because an unsafe request to their URL succeeded.
    invalidations,
    /// Store reads answered by the near tier, without a store round trip.
    near_hits,
    /// Store reads the near tier could not answer (no copy, or its change feed not proven
    /// current), which went to the store.
    near_misses,
    /// Near copies evicted to stay within the near tier's bytes.
    near_evictions,
    /// Times the near tier dropped every copy because changes may have been missed (the
    /// store's change feed disconnected, reconnected or lagged).
    near_flushes,
    /// Requests that did not use the cache (method, credentials, store unavailable).
    bypass,
    /// Followers answered by another request's fill, in this process or another.
    coalesced,
    /// Requests that found the fill lock held elsewhere and waited for it.
    lock_waits,
    /// Waits for another's fill that ran out of `lock_wait`.
    lock_timeouts,
    /// Fills taken over from a holder that let its lock expire.
    lock_takeovers,
    /// Store calls that failed or timed out (the request went on without the cache).
    store_errors,
    /// Store calls skipped because the circuit breaker was open.
    store_skipped,
    /// Entries that could not be decoded, and were deleted.
    corrupt,
    /// Purges by tag or prefix recorded through this layer or cache.
    purges,
    /// Reads that found a value a purge by tag or prefix covers (counted as misses).
    purged_reads,
    /// Response tags not kept: invalid, longer than 1,024 bytes, or past 16 KiB per response.
    tags_dropped,
    /// Entries written to the store.
    stored,
    /// Bytes written to the store.
    bytes_stored,
    /// Origin responses that were not stored (policy, size, errors).
    not_stored,
    /// Writes dropped because too many were already in flight.
    writes_dropped,
    /// Fills that stopped buffering (and streamed through uncached) because the fills in
    /// flight already held `max_fill_bytes`.
    fills_over_budget,
    /// Typed-cache reads that found a usable value (`get`, `get_many`, `get_or_set`), including
    /// callers served by another caller's load. (`hits` counts the HTTP face only.)
    typed_hits,
    /// Typed-cache reads that found nothing usable.
    typed_misses,
    /// Typed-cache loader runs (each `get_or_set` that had to load, background refreshes too).
    typed_loads,
    /// Typed-cache loader runs that failed or hit their hard timeout.
    typed_load_errors,
    /// Typed-cache values whose bytes are corrupt (not an envelope, or a payload that does not
    /// decode under its own identity), and were deleted.
    typed_decode_failures,
    /// Typed-cache reads that found a value written under another identity (another type,
    /// version or schema version): a miss, left in place for the next write to replace.
    typed_foreign,
    /// Typed-cache values the handle's validator rejected: a miss, left for the next write.
    typed_rejected,
    /// Typed-cache loader failures answered by the fail-safe value, which was stored fresh
    /// again for the fail-safe throttle (so the failing loader is not re-run on every call).
    typed_throttled,
    /// Typed-cache answers given from a stale value (stale-while-revalidate, soft timeout) or
    /// a fail-safe one (the loader failed).
    typed_stale,
    /// Typed-cache background refreshes started (stale, eager, or a loader outliving its soft
    /// timeout).
    typed_refreshes,
    /// Named locks (`Cache::lock`) that stayed held by another for the whole wait.
    typed_lock_timeouts,
    /// Named locks asked without a wait that were held by another (`LockError::Busy`).
    typed_lock_busy,
    /// Named locks lost while held (expired or taken over; `LockError::Lost`).
    typed_lock_lost,
}

impl Default for Counters {
    fn default() -> Self {
        Self::named("tower-redis-cache")
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// Counts a request by what the cache did with it (`metrics` feature only: [`Stats`]
    /// has a field per outcome).
    #[inline]
    pub(crate) fn request(&self, outcome: CacheOutcome) {
        #[cfg(feature = "metrics")]
        self.handles.requests[outcome.index()].increment(1);
        let _ = outcome;
    }

    /// Records how long a response took, by its outcome (taken from the verdict that marks
    /// the response, so the histogram always agrees with what clients saw):
    /// `tower_redis_cache_request_seconds`.
    #[cfg(feature = "metrics")]
    pub(crate) fn record_latency(&self, outcome: CacheOutcome, elapsed: std::time::Duration) {
        self.handles.latency[outcome.index()].record(elapsed.as_secs_f64());
    }

    /// Records how long the origin took to answer a fill: `tower_redis_cache_fill_seconds`.
    #[cfg(feature = "metrics")]
    pub(crate) fn record_fill(&self, elapsed: std::time::Duration) {
        self.handles.fill.record(elapsed.as_secs_f64());
    }

    /// Whether the store's circuit breaker is open (skipping the store): a gauge, 1 or 0.
    #[inline]
    pub(crate) fn breaker_open(&self, open: bool) {
        #[cfg(feature = "metrics")]
        self.handles.breaker.set(if open { 1.0 } else { 0.0 });
        let _ = open;
    }

    /// The bytes the near tier holds: a gauge.
    #[inline]
    pub(crate) fn near_bytes(&self, bytes: u64) {
        #[cfg(feature = "metrics")]
        self.handles.near.set(bytes as f64);
        let _ = bytes;
    }
}

/// Registers a help text (and unit) for every metric this crate emits with the installed
/// `metrics` recorder, so exporters print `# HELP` lines. Call it after installing the
/// recorder (and before building a layer or cache: their metric handles are registered with
/// the recorder installed when they are built); building a layer calls it too. Calling it
/// again is harmless.
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    describe_counters();
    metrics::describe_counter!(
        "tower_redis_cache_requests_total",
        metrics::Unit::Count,
        "Requests by what the cache did with them (outcome: hit, stale, revalidated, miss, bypass)."
    );
    metrics::describe_histogram!(
        "tower_redis_cache_request_seconds",
        metrics::Unit::Seconds,
        "Time from request to response head, by outcome."
    );
    metrics::describe_histogram!(
        "tower_redis_cache_fill_seconds",
        metrics::Unit::Seconds,
        "Time the origin took to answer a fill."
    );
    metrics::describe_gauge!(
        "tower_redis_cache_breaker_open",
        "1 while the store's circuit breaker skips the store, else 0."
    );
    metrics::describe_gauge!(
        "tower_redis_cache_near_bytes",
        metrics::Unit::Bytes,
        "Bytes held by the in-process near tier."
    );
}
