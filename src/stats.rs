//! Counters of what the cache did, readable as a [`Stats`] snapshot at any time.
//!
//! Counting is a relaxed atomic add per event, cheap enough for the hit path. With the
//! `metrics` feature every increment is also sent to the `metrics` facade as a counter named
//! `tower_redis_cache_<field>_total`, so any exporter (Prometheus, StatsD, ...) sees them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// A snapshot of the cache's counters since the layer was built.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl Stats {
            /// Every counter with its field name, in declaration order: for exporters and
            /// status pages that should not list the fields by hand.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field),)*].into_iter()
            }
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $($field: AtomicU64,)*
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
                    metrics::counter!(concat!("tower_redis_cache_", stringify!($field), "_total")).increment(n);
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
    /// Store reads answered by the near cache, without a store round trip.
    near_hits,
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
    /// callers served by another caller's load.
    typed_hits,
    /// Typed-cache reads that found nothing usable.
    typed_misses,
    /// Typed-cache loader runs (each `get_or_set` that had to load, background refreshes too).
    typed_loads,
    /// Typed-cache loader runs that failed or hit their hard timeout.
    typed_load_errors,
    /// Typed-cache values that did not decode as the asked type or failed the validator, and
    /// were deleted.
    typed_decode_failures,
    /// Typed-cache answers given from a stale value (stale-while-revalidate, soft timeout) or
    /// a fail-safe one (the loader failed).
    typed_stale,
    /// Typed-cache background refreshes started (stale, eager, or a loader outliving its soft
    /// timeout).
    typed_refreshes,
    /// Distributed locks (`Cache::lock`) that ran out of wait.
    lock_wait_timeouts,
}

/// Records how long a response took in the histogram for its outcome (`metrics` feature):
/// `tower_redis_cache_hit_seconds` for answers from the cache (HIT, STALE), and
/// `tower_redis_cache_forward_seconds` for the rest. The outcome is read back from the
/// response's `X-Cache`, so the histogram always agrees with what clients saw.
#[cfg(feature = "metrics")]
pub(crate) fn record_latency(headers: &http::HeaderMap, elapsed: std::time::Duration) {
    let from_cache = headers
        .get(crate::headers::X_CACHE)
        .is_some_and(|v| v == "HIT" || v == "STALE");
    let name = if from_cache {
        "tower_redis_cache_hit_seconds"
    } else {
        "tower_redis_cache_forward_seconds"
    };
    metrics::histogram!(name).record(elapsed.as_secs_f64());
}

/// Records how long the origin took to answer a fill (`metrics` feature):
/// `tower_redis_cache_fill_seconds`.
#[cfg(feature = "metrics")]
pub(crate) fn record_fill(elapsed: std::time::Duration) {
    metrics::histogram!("tower_redis_cache_fill_seconds").record(elapsed.as_secs_f64());
}
