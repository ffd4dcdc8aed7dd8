#!/usr/bin/env bash
# End-to-end click ingest in scale-out: `signpost up` on PostgreSQL + Redis +
# NATS JetStream (a fresh database and stream, removed afterwards), one link,
# `wrk -t1 -c64` on its slug, then until the link's summary counts every
# answered redirect (polled every 0.2 s). Prints redirects/s, clicks counted
# per second from the start of the load to the last click counted, and the
# CPU time per click of signpost, nats-server, redis-server and PostgreSQL
# (every postgres process) over that whole time, read from /proc.
#
# Needs: wrk, python3, psql, the three servers on their standard local ports.
# Usage: bench/redirect/scaleout.sh [DURATION_SECONDS]
# (SIGNPOST_BENCH_BIN=<binary> compares builds; see bench/common.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
source bench/common.sh
SP=18094
use_scaleout_backends
# The summary is polled five times a second, past the default 100 a minute.
export SIGNPOST_RATE_LIMIT_TENANT=100000/60s

cleanup() {
    kill "${SP_PID:-}" 2>/dev/null || true
    sleep 1
    drop_scaleout_backends
}
trap cleanup EXIT
start_signpost "$SP"
LINK_ID=$(create_bench_link "$SP")
curl -sf -o /dev/null "http://127.0.0.1:$SP/bench"
counted() {
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SP/v1/analytics/links/$LINK_ID/summary" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["clicks"])'
}
# Every live postgres process's CPU time, plus what the postmaster's exited
# children used (autovacuum workers come and go during the run).
postgres_ticks() {
    local master
    master=$(pgrep -o -x postgres)
    {
        for p in $(pgrep -x postgres); do cat "/proc/$p/stat" 2>/dev/null || true; done | sed 's/.*) //' \
            | awk '{t += $12 + $13} END {print t + 0}'
        sed 's/.*) //' "/proc/$master/stat" | awk '{print $14 + $15}'
    } | awk '{t += $1} END {print t}'
}
NATS_PID=$(pgrep -x nats-server | head -n1)
REDIS_PID=$(pgrep -x redis-server | head -n1)
read -r s0 n0 r0 <<<"$(cpu_ticks "$SP_PID") $(cpu_ticks "$NATS_PID") $(cpu_ticks "$REDIS_PID")"
p0=$(postgres_ticks)
T0=$(date +%s.%N)
out=$(wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$SP/bench")
T1=$(date +%s.%N)
SENT=$(( $(echo "$out" | awk '/requests in/ {print $1}') + 1 ))
echo "redirects: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, $SENT answered"
for _ in $(seq 1 1500); do C=$(counted || echo 0); [ "$C" -ge "$SENT" ] && break; sleep 0.2; done
T2=$(date +%s.%N)
read -r s1 n1 r1 <<<"$(cpu_ticks "$SP_PID") $(cpu_ticks "$NATS_PID") $(cpu_ticks "$REDIS_PID")"
p1=$(postgres_ticks)
python3 -c "t = $T2 - $T0; print('counted %d of %d; end to end %.1f s (%.1f s after the load): %.0f clicks/s' % ($C, $SENT, t, $T2 - $T1, $C / t))"
per_click() { cpu_per_request "$1" "$2" "$SENT"; }
echo "CPU µs per click: signpost $(per_click "$s0" "$s1"), nats-server $(per_click "$n0" "$n1"), redis $(per_click "$r0" "$r1"), postgres $(per_click "$p0" "$p1")"
