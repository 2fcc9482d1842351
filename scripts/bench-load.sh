#!/usr/bin/env bash
# Load benchmark in one command: the caching proxy (examples/proxy.rs, Redis store), the same
# proxy with its near cache (--near-cache-ms 1000), nginx (proxy_cache, one worker) and the
# origin itself, under wrk and a cold-key storm. Prints a markdown table (also saved to
# target/bench-load.md). Takes about 3-4 minutes.
#
# Needs only the Rust toolchain: redis-server, nginx (nginx-light) and wrk are installed with
# apt-get when missing (as root, or through sudo). Settings, all optional: LOAD_SECS (5 s per
# wrk run), LOAD_ROUNDS (2), LOAD_CONNS (64), LOAD_STORM_KEYS (50), LOAD_SCENARIOS (some of
# hit1k,hit64k,miss,storm), LOAD_SERVERS (some of proxy,proxy-near,nginx,origin, all four by
# default, and proxy-memory, only when listed: the proxy with its in-process store); REDIS_URL
# uses your Redis instead of a fresh one.
# See benches/load.rs for what is measured and how.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# nginx lives in /usr/sbin, which a normal user's PATH may not have.
export PATH="$PATH:/usr/sbin:/sbin"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: installing $* needs root or sudo" >&2
        exit 1
    fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

cargo build --release --example proxy --features metrics
mkdir -p target
# `cargo bench` passes `--bench` to the (harness = false) binary, which then runs for real.
LOAD_COMMAND="./scripts/bench-load.sh" cargo bench --bench load "$@" | tee target/bench-load.md
