#!/usr/bin/env bash
# Runs the whole test suite: unit, integration (tests/http on a MemoryStore, then on Redis;
# tests/redis, tests/proxy, tests/cluster.rs and tests/scale_out.rs against real redis-server
# processes the tests start on free ports), example, bench (one quick pass each) and doc tests,
# README included.
#
# Needs only the Rust toolchain: when `redis-server` is not on PATH it is installed with
# apt-get (as root, or through sudo). Extra arguments go to both `cargo test` runs, e.g.
# `./scripts/test.sh coalesc` runs only the tests whose names contain "coalesc".
# Set REDIS_URL to run the tests against a Redis you started yourself instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: redis-server is missing and installing it needs root or sudo" >&2
        exit 1
    fi
}

# redis-server for every integration test, redis-cli (redis-tools) to build the test Cluster.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "redis-server or redis-cli not found: installing them with apt-get" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
fi
redis-server --version

# `--all-targets` covers the lib, tests, examples and benches, but not doctests.
cargo test --all-features --all-targets "$@"
# The HTTP behaviour tests (tests/http) run on a MemoryStore above; again on Redis here, so the
# Redis store is held to every one of those behaviours too.
TRC_TEST_STORE=redis cargo test --all-features --test http "$@"
cargo test --all-features --doc "$@"
