//! glibc's heap trimming, raised before the proxy starts (by executing itself once more), so
//! large values read from Redis do not fault their memory in again on every request.
//!
//! Why: fred reads each Redis reply into a buffer that, once a value is handed out of it, is
//! replaced by a new allocation (the value still points into the old one). glibc gives the
//! memory freed at the top of its heap back to the kernel as soon as more than its trim
//! threshold (128 KiB by default) is free there, so the next buffer faults its pages in
//! again. Measured on a 64 KiB hit through Redis (`perf record`, minor faults from
//! `/proc/PID/stat`): 10-12 page faults and about a fifth of the proxy's CPU per hit; with a
//! 16 MiB threshold, 0.1 faults and 75-82 µs of CPU instead of 98-118 µs. The memory kept is
//! reused by the next allocations, not added to them.
//!
//! glibc reads its tunables once, from `GLIBC_TUNABLES`, when the process starts, and the
//! other way to set the threshold (`mallopt`) needs `unsafe`. So the proxy sets the variable
//! and executes itself again (same process id, arguments and descriptors), unless the
//! variable already names a trim threshold (the operator's choice wins) or
//! `--malloc-trim-threshold 0` asks for glibc's default.

/// The tunable this module sets.
const TRIM_THRESHOLD: &str = "glibc.malloc.trim_threshold";

/// On glibc: re-executes the proxy with `trim_threshold` bytes as glibc's trim threshold,
/// unless it is 0 or `GLIBC_TUNABLES` already names one. Returns only when it did not
/// (then nothing changed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune(trim_threshold: u64) {
    use std::os::unix::process::CommandExt;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if trim_threshold == 0 || current.contains(TRIM_THRESHOLD) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let tunables = match current.is_empty() {
        true => format!("{TRIM_THRESHOLD}={trim_threshold}"),
        false => format!("{current}:{TRIM_THRESHOLD}={trim_threshold}"),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(argv0) = args.next() {
        command.arg0(argv0);
    }
    // `exec` returns only if it failed; the proxy then runs with glibc's defaults.
    let error = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    eprintln!("note: glibc's heap trim threshold left at its default ({error})");
}

/// Elsewhere there is nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune(_trim_threshold: u64) {}
