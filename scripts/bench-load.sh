#!/usr/bin/env bash
# Load benchmark, one command: nginx (proxy_cache) next to the caching proxy (examples/proxy,
# Redis store) with its defaults, the same proxy with --near-cache-ms 0 (every hit through Redis)
# and the tower-http-cache peer (../shared/peers/peer-thc), all in front of one origin
# (examples/bench_origin.rs) and one redis-server, on this machine. Prints a markdown table with
# ratios against nginx, also saved to target/bench-load.md.
#
# Scenarios (wrk -t1 -c$LOAD_CONNS --latency, $LOAD_SECS s per run):
#   hit1k, hit64k  one warmed key (checked: the second answer must say X-Cache: HIT)
#   miss           every request a new key under /1k/ (benches/load/unique.lua), no origin delay
#   storm          for each of LOAD_STORM_KEYS fresh /slow/ keys (20 ms origin), LOAD_CONNS
#                  connections ask at once (benches/load/storm.py); origin calls per key, p99
# Every scenario runs LOAD_ROUNDS rounds; each round restarts the proxies with a new --prefix and
# runs every server in turn (the order rotates), so a slow spell does not land on one server.
# Cells are medians over rounds: requests/s, ratio to nginx, p99, CPU µs per request of the
# server process (nginx: its worker) and of redis-server (utime+stime from /proc/PID/stat around
# each run, divided by the requests completed; 10 ms tick resolution). For misses, Redis commands
# per miss (INFO commandstats after CONFIG RESETSTAT) and round trips per miss (Redis socket
# reads, total_reads_processed, in a 1 s run with one connection, so no request overlaps).
#
# Settings (environment): LOAD_SECS (6), LOAD_ROUNDS (3), LOAD_CONNS (64), LOAD_STORM_KEYS (50),
# LOAD_SCENARIOS (subset of hit1k,hit64k,miss,storm), LOAD_SERVERS (subset of
# nginx,proxy,proxy-redis,thc), LOAD_PROXY_FLAGS (extra flags for both proxies, e.g.
# "--workers 0" to compare with a work-stealing runtime on every CPU), LOAD_PIN=1 (every server,
# Redis and the origin on CPU 1, the load generator on CPU 0, with taskset: on a 2-core VM the
# kernel otherwise often runs a server and wrk on one CPU, and the same binary's 64 KiB hits
# come out at 17K or 40K req/s from run to run; pinned, Redis and the origin share the servers'
# one CPU, which weighs on misses and on hits through Redis). Missing tools are installed with
# apt-get (as root or via sudo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"   # nginx lives in /usr/sbin
BEGAN=$SECONDS
CMDLINE="$(env | { grep -E '^LOAD_[A-Z_]+=' || true; } | sort | tr '\n' ' ')$0${*:+ $*}"
SECS=${LOAD_SECS:-6} ROUNDS=${LOAD_ROUNDS:-3} CONNS=${LOAD_CONNS:-64} KEYS=${LOAD_STORM_KEYS:-50}
IFS=, read -ra SCENARIOS <<<"${LOAD_SCENARIOS:-hit1k,hit64k,miss,storm}"
IFS=, read -ra SERVERS <<<"${LOAD_SERVERS:-nginx,proxy,proxy-redis,thc}"
read -ra PROXY_FLAGS <<<"${LOAD_PROXY_FLAGS:-}"
SERVER_PIN=() CLIENT_PIN=()
if [ "${LOAD_PIN:-0}" = 1 ]; then SERVER_PIN=(taskset -c 1) CLIENT_PIN=(taskset -c 0); fi
die() { echo "error: $*" >&2; exit 1; }
log() { echo "-- $*" >&2; }
NOTES=()
note() { echo "warning: $*" >&2; NOTES+=("$*"); }
has() { local x=$1; shift; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }
for s in "${SCENARIOS[@]}"; do has "$s" hit1k hit64k miss storm || die "unknown scenario $s"; done
for s in "${SERVERS[@]}"; do has "$s" nginx proxy proxy-redis thc || die "unknown server $s"; done
kept=(); for s in nginx proxy proxy-redis thc; do has "$s" "${SERVERS[@]}" && kept+=("$s"); done
SERVERS=("${kept[@]}")   # in the table's order

# --- tools and builds ---------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
cargo build --release --example bench_origin --example proxy --features metrics >&2
PROXY_BIN=target/release/examples/proxy ORIGIN_BIN=target/release/examples/bench_origin
THC_BIN=/tmp/peer-thc-target/release/peer-thc
if has thc "${SERVERS[@]}" && ! (cd ../shared/peers/peer-thc &&
        CARGO_TARGET_DIR=/tmp/peer-thc-target cargo build --release >&2); then
    note "the tower-http-cache peer (../shared/peers/peer-thc) did not build: skipped"
    kept=(); for s in "${SERVERS[@]}"; do [ "$s" = thc ] || kept+=("$s"); done; SERVERS=("${kept[@]}")
fi
HZ=$(getconf CLK_TCK)

# --- processes: started in the background, all stopped on any exit ------------------------------
RUN=$PWD/target/bench-load/run
SHM=$RUN/cache; [ -d /dev/shm ] && SHM=/dev/shm/trc-bench-load-$$   # nginx cache on tmpfs
rm -rf "$RUN"; mkdir -p "$RUN/nginx/logs" "$SHM"
declare -A PID PORT
stop() {   # NAME: SIGTERM, then SIGKILL after 3 s
    local p=${PID[$1]:-}; [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; unset "PID[$1]"
}
cleanup() { for n in "${!PID[@]}"; do stop "$n"; done; rm -rf "$SHM"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
NEXT_PORT=$((20000 + RANDOM % 20000))
free_port() {   # sets FREE to a port nothing listens on
    while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
    FREE=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + 1))
}
start() {   # NAME COMMAND...: runs it on a free port ($FREE in COMMAND), waits until it accepts
    local name=$1 log=$RUN/$1.log; shift
    PORT[$name]=$FREE
    ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$@" >>"$log" 2>&1 &
    PID[$name]=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$name]}") 2>/dev/null && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || { tail -5 "$log" >&2; die "$name exited"; }
        sleep 0.05
    done
    die "$name is not listening on port ${PORT[$name]} after 10 s (see $log)"
}
free_port; start redis redis-server --port "$FREE" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN"
REDIS=redis://127.0.0.1:${PORT[redis]}
rcli() { redis-cli -p "${PORT[redis]}" "$@"; }
free_port; start origin "$ORIGIN_BIN" --listen "127.0.0.1:$FREE"
ORIGIN=http://127.0.0.1:${PORT[origin]}
if has nginx "${SERVERS[@]}"; then
    free_port
    sed -e "s|@USER@|$([ "$(id -u)" -eq 0 ] && echo 'user root;')|" -e "s|@DIR@|$RUN/nginx|g" \
        -e "s|@CACHE@|$SHM/nginx|" -e "s|@PORT@|$FREE|" -e "s|@ORIGIN_PORT@|${PORT[origin]}|" \
        benches/load/nginx.conf >"$RUN/nginx/nginx.conf"
    start nginx nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
    for _ in $(seq 100); do   # CPU is charged to the one worker
        read -r WORKER _ <"/proc/${PID[nginx]}/task/${PID[nginx]}/children" || true
        [ -n "${WORKER:-}" ] && break; sleep 0.05
    done
    [ -n "${WORKER:-}" ] || die "no nginx worker"
fi
start_proxies() {   # TAG: (re)starts the proxies and the peer with --prefix <server>-TAG
    local s
    for s in proxy proxy-redis thc; do
        has "$s" "${SERVERS[@]}" || continue
        stop "$s"; free_port
        local common=(--listen "127.0.0.1:$FREE" --upstream "$ORIGIN" --redis "$REDIS" --prefix "$s-$1")
        case $s in
            proxy) start proxy "$PROXY_BIN" "${common[@]}" ${PROXY_FLAGS[@]+"${PROXY_FLAGS[@]}"} ;;
            proxy-redis) start proxy-redis "$PROXY_BIN" "${common[@]}" --near-cache-ms 0 \
                ${PROXY_FLAGS[@]+"${PROXY_FLAGS[@]}"} ;;
            # The crate never caches application/octet-stream by default (the origin's type):
            # the peer's one switch for that, or its "hits" would all be misses.
            thc) start thc env PEER_THC_CACHE_ALL_TYPES=1 "$THC_BIN" "${common[@]}" --ttl 300 ;;
        esac
    done
}
cpu_pid() { if [ "$1" = nginx ]; then echo "$WORKER"; else echo "${PID[$1]}"; fi; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# --- measuring ------------------------------------------------------------------------------
declare -A VAL   # "scenario|server|metric" -> values over rounds, space-separated
add() { VAL[$1|$2|$3]="${VAL[$1|$2|$3]:-} $4"; }
per_req() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
x_cache() { curl -s -o /dev/null -D - "$1" | tr -d '\r' | awk -F': *' 'tolower($1) == "x-cache" { print $2 }'; }
warm() {   # SERVER PATH: one request, then the second answer must be a hit
    local url="http://127.0.0.1:${PORT[$1]}$2" got
    curl -sf -o /dev/null "$url" || die "$1: GET $2 failed"
    got=$(x_cache "$url")
    if [ "$got" != HIT ]; then
        sleep 0.2
        note "$1 $2: second answer X-Cache: ${got:-none}, not HIT (after 0.2 s: $(x_cache "$url"))"
    fi
}
run() {   # SCENARIO SERVER COMMAND...: one measured run; COMMAND prints a LOAD-RESULT/STORM line
    local sc=$1 sv=$2 pid; pid=$(cpu_pid "$2"); shift 2
    local c0 r0 out n; c0=$(ticks "$pid"); r0=$(ticks "${PID[redis]}")
    out=$("$@" | grep -E '^(LOAD-RESULT|STORM) ') || die "$sc/$sv: no result from $*"
    n=$(field requests "$out")
    add "$sc" "$sv" cpu "$(per_req $(($(ticks "$pid") - c0)) "$n")"
    add "$sc" "$sv" rcpu "$(per_req $(($(ticks "${PID[redis]}") - r0)) "$n")"
    add "$sc" "$sv" p99 "$(field p99_us "$out")"
    [ "$(field errors "$out")" = 0 ] || note "$sc/$sv: $(field errors "$out") errors ($out)"
    LAST=$out N=$n
}
wrk_run() {   # SCENARIO SERVER PATH [UNIQUE-PREFIX]
    local lua=report.lua; [ -n "${4:-}" ] && lua=unique.lua
    run "$1" "$2" ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "benches/load/$lua" \
        "http://127.0.0.1:${PORT[$2]}$3" ${4:+-- "$4"}
    add "$1" "$2" rps "$(awk -v n="$N" -v d="$(field duration_us "$LAST")" 'BEGIN { printf "%.0f", n * 1e6 / d }')"
}
redis_counts() {   # commands per miss, and the per-command calls for the notes
    local info; info=$(rcli INFO commandstats | tr -d '\r')
    awk -F'[:=,]' -v n="$1" '/^cmdstat_/ && $1 !~ /cmdstat_(info|config)/ {
        sub("cmdstat_", "", $1); total += $3; if ($3 / n >= 0.005) list = list sprintf(" %s %.2f,", $1, $3 / n) }
        END { printf "%.2f|%s\n", total / n, list }' <<<"$info"
}
reads() { rcli INFO stats | tr -d '\r' | sed -n 's/^total_reads_processed://p'; }
order() {   # ROUND: the servers, rotated by the round number
    local i k=${#SERVERS[@]}; for ((i = 0; i < k; i++)); do echo "${SERVERS[(i + $1) % k]}"; done
}
declare -A DETAIL
for ((round = 1; round <= ROUNDS; round++)); do
    start_proxies "r$round"
    for sc in hit1k hit64k miss storm; do
        has "$sc" "${SCENARIOS[@]}" || continue
        for sv in $(order "$round"); do
            log "round $round/$ROUNDS: $sc on $sv"
            case $sc in
                hit1k | hit64k)
                    path=/${sc#hit}/hot-$sv-r$round; warm "$sv" "$path"; wrk_run "$sc" "$sv" "$path" ;;
                miss)
                    [ "$sv" = nginx ] || rcli CONFIG RESETSTAT >/dev/null
                    wrk_run miss "$sv" / "/1k/miss-$sv-r$round-"
                    [ "$sv" = nginx ] && continue
                    sleep 0.3   # writes after the last answer
                    counts=$(redis_counts "$N"); add miss "$sv" cmds "${counts%%|*}"
                    [ "$round" -gt 1 ] || DETAIL["miss, $sv"]="Redis calls per miss:${counts#*|} socket reads per miss under load $(awk -v r="$(reads)" -v n="$N" 'BEGIN { printf "%.2f", r / n }')"
                    # Round trips: one connection, so no two requests share a Redis read.
                    rcli CONFIG RESETSTAT >/dev/null
                    seq=$(wrk -t1 -c1 -d1s -s benches/load/unique.lua "http://127.0.0.1:${PORT[$sv]}/" \
                        -- "/1k/seq-$sv-r$round-" | grep LOAD-RESULT); sleep 0.2
                    add miss "$sv" rtt "$(awk -v r="$(reads)" -v n="$(field requests "$seq")" 'BEGIN { printf "%.2f", r / n }')" ;;
                storm)
                    c0=$(curl -s "$ORIGIN/__calls")
                    run storm "$sv" ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} python3 benches/load/storm.py 127.0.0.1 "${PORT[$sv]}" \
                        "/slow/storm-$sv-r$round-" "$KEYS" "$CONNS"
                    add storm "$sv" calls "$(awk -v a="$c0" -v b="$(curl -s "$ORIGIN/__calls")" -v k="$KEYS" 'BEGIN { printf "%.2f", (b - a) / k }')"
                    [ "$round" -gt 1 ] || DETAIL["storm, $sv"]="X-Cache $(field xcache "$LAST"), wall $(field wall_ms "$LAST") ms" ;;
            esac
        done
    done
done

# --- report ---------------------------------------------------------------------------------
med() {   # KEY [PRINTF-FORMAT]: the median of a cell's values over rounds
    tr ' ' '\n' <<<"${VAL[$1]:-}" | grep . | sort -g | awk -v f="${2:-%s}" '{ v[NR] = $1 }
        END { if (NR) printf f, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf " (%.2f×)", a / b }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }
cell() {   # SCENARIO SERVER
    local k="$1|$2" cpu="cpu $(med "$1|$2|cpu" %.1f) µs"
    [ "$2" = nginx ] || cpu="$cpu + redis $(med "$1|$2|rcpu" %.1f) µs"
    if [ "$1" = storm ]; then
        echo "$(med "$k|calls" %.2f) calls/key · p99 $(ms "$(med "$k|p99")")$(ratio "$(med "$k|p99")" "$(med "storm|nginx|p99")") · $cpu"
    else
        local rps; rps=$(med "$k|rps" %.0f)
        local extra=""; [ "$1" = miss ] && [ "$2" != nginx ] &&
            extra=" · $(med "$k|cmds" %.2f) cmds, $(med "$k|rtt" %.2f) round trips/miss"
        echo "$rps req/s$(ratio "$rps" "$(med "$1|nginx|rps")") · p99 $(ms "$(med "$k|p99")") · $cpu$extra"
    fi
}
declare -A TITLE=([nginx]="nginx" [proxy]="proxy (defaults: near tier on)"
    [proxy-redis]="proxy --near-cache-ms 0 (every hit via Redis)" [thc]="tower-http-cache peer")
declare -A ROW=([hit1k]="hit 1 KiB" [hit64k]="hit 64 KiB" [miss]="miss unique keys"
    [storm]="cold storm (20 ms origin)")
default_of() { "$PROXY_BIN" --help | awk -v flag="$1" '$0 ~ flag { f = 1 } f && /\[default:/ { gsub(/.*default: *|\].*/, ""); print; exit }'; }
{
    echo "## Load benchmark: caching proxy vs nginx"
    echo
    echo "- machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(uname -sr)"
    echo "- versions: $(nginx -v 2>&1), $(redis-server --version | cut -d' ' -f1-3), git $(git describe --always --dirty 2>/dev/null || echo '?')"
    echo "- command: \`$CMDLINE\` ($SECS s per wrk run, rounds: $ROUNDS, wrk -t1 -c$CONNS; storm: $KEYS keys × $CONNS connections)"
    echo "- proxy defaults (from its --help): --near-cache-ms $(default_of --near-cache-ms), --workers $(default_of --workers)${LOAD_PROXY_FLAGS:+; both proxies ran with $LOAD_PROXY_FLAGS}${SERVER_PIN[*]:+; servers pinned to CPU 1, wrk to CPU 0}"
    echo
    printf '| scenario |'; for sv in "${SERVERS[@]}"; do printf ' %s |' "${TITLE[$sv]}"; done; echo
    printf '|---|'; for _ in "${SERVERS[@]}"; do printf -- '---|'; done; echo
    for sc in hit1k hit64k miss storm; do
        has "$sc" "${SCENARIOS[@]}" || continue
        printf '| %s |' "${ROW[$sc]}"; for sv in "${SERVERS[@]}"; do printf ' %s |' "$(cell "$sc" "$sv")"; done; echo
    done
    echo
    echo "Cells: medians over rounds; (×) is the ratio to nginx (requests/s; for the storm, p99);"
    echo "cpu is µs of CPU per request of the server process (nginx: its worker) + of redis-server;"
    echo "round trips: Redis socket reads per miss with one connection. nginx's storm p99 reflects"
    echo "proxy_cache_lock: waiting requests re-check the lock every 500 ms."
    for k in "${!DETAIL[@]}"; do echo "- $k (round 1): ${DETAIL[$k]}"; done | sort
    for n in "${NOTES[@]}"; do echo "- warning: $n"; done
    echo "- wall time: $((SECONDS - BEGAN)) s"
} | tee target/bench-load.md
