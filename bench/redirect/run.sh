#!/usr/bin/env bash
# Redirect benchmark: GET /{slug} answered (a) by `signpost up` (embedded
# backends, click capture on: every answer waits until its click is in the
# journal, and analytics counts every click)
# and (b) by nginx `return 302` for the same path, with the same load generator,
# on this machine, in one run.
#
# Needs: nginx (Debian nginx-light), wrk, python3; oha (cargo install oha) for
# the latency run at half load (skipped without it).
# Usage: bench/redirect/run.sh [DURATION_SECONDS]
# The latency runs at half load go in LATENCY_ROUNDS rounds (default 3), the
# peers in turn within each; the medians over the rounds are the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-15}"
source bench/common.sh
NGX=18091 SP=18092

start_nginx_redirect "$NGX"

cleanup() {
    kill "${SP_PID:-}" 2>/dev/null || true
    nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
}
trap cleanup EXIT
start_signpost "$SP"
LINK_ID=$(create_bench_link "$SP")
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SP/bench")" = 302 || { echo "no redirect"; exit 1; }
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX/bench")" = 302 || { echo "nginx: no redirect"; exit 1; }
echo "signpost RSS at idle: $(ps -o rss= -p "$SP_PID") KiB"

echo "== maximum throughput (wrk -t1 -c64 -d${DURATION}s)"
declare -A RPS
SENT=1  # the check above
SUMMARY="http://127.0.0.1:$SP/v1/analytics/links/$LINK_ID/summary"
counted() { curl -sf -H "Authorization: Bearer $TOKEN" "$SUMMARY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clicks"])'; }
wait_counted() { # until analytics has counted $SENT clicks (at most 5 minutes)
    for _ in $(seq 1 600); do
        COUNTED=$(counted)
        [ "$COUNTED" -ge "$SENT" ] && return 0
        sleep 0.5
    done
}
NGX_WORKERS=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
for name in nginx signpost; do
    case $name in nginx) port=$NGX; pids=$NGX_WORKERS;; signpost) port=$SP; pids=$SP_PID;; esac
    [ "$name" = signpost ] && T0=$(date +%s.%N)
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/bench")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    RPS[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    [ "$name" = signpost ] && { SENT=$((SENT + n)); SP_BEFORE=$before; SP_N=$n; }
    echo "$name: ${RPS[$name]} req/s; $(echo "$out" | awk '/ 50%/ {p50=$2} / 99%/ {p99=$2} /Non-2xx/ {n=$NF} END {print "p50 " p50 ", p99 " p99 ", non-2xx " n}'); $(cpu_per_request "$before" "$after" "$n") µs CPU per request during the load"
    [ "$name" = signpost ] && echo "signpost RSS under load: $(ps -o rss= -p "$SP_PID") KiB"
done
# End to end: from the first redirect until analytics' summary shows them all.
wait_counted
python3 -c "t = $(date +%s.%N) - $T0; print('end to end: %d clicks counted by analytics %.1f s after the load began: %.0f clicks/s' % ($COUNTED, t, $COUNTED / t))"
echo "signpost CPU per redirect, click pipeline included (until analytics counted them): $(cpu_per_request "$SP_BEFORE" "$(cpu_ticks "$SP_PID")" "$SP_N") µs"
python3 -c "print('signpost / nginx throughput ratio: %.2f' % (${RPS[signpost]} / ${RPS[nginx]}))"

if command -v oha >/dev/null; then
    RATE=$(python3 -c "print(int(${RPS[signpost]} / 2))")
    echo "== latency at half of signpost's maximum: $RATE req/s (oha -z ${DURATION}s -q $RATE -c 32 --latency-correction), $LATENCY_ROUNDS rounds"
    latency_round() {
        oha_redirects "nginx.$1" "$RATE" "$NGX"
        oha_redirects "signpost.$1" "$RATE" "$SP"
    }
    latency_rounds latency_round
    SENT=$((SENT + $(python3 -c "import glob, json; print(sum(sum(json.load(open(f))['statusCodeDistribution'].values()) for f in glob.glob('$WORK/lat/signpost.*.json')))")))
else
    echo "(oha not installed: no latency run at half load)"
fi

# Every answered redirect is counted: analytics' total for the link must reach
# the number of redirects answered.
echo "redirects answered by signpost: $SENT"
wait_counted
echo "clicks counted by analytics: $COUNTED"
