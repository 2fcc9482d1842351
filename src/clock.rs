//! The wall clock in microseconds, as purge stamps and fills record it: shared by the engine and the stores.

/// Unix time in microseconds: purge stamps (see `engine::purge`) are compared across
/// machines, finer than a millisecond so a write and a purge in one millisecond are ordered.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
