#!/usr/bin/env bash
# The floor under a redirect: the same load, in one run, against
#   nginx        nginx `return 302` (2 workers);
#   hyper        the least a hyper server does: HTTP/1, one service_fn, on
#                Signpost's connection threads (no axum, no middleware);
#   hyper-timer  plus hyper's header-read timeout;
#   auto         hyper-util's HTTP/1 + HTTP/2 builder instead of HTTP/1 alone;
#   axum         hyper's HTTP/1 with an axum Router as the service;
#   server       kernel::server::serve with one axum route: the server every
#                Signpost process runs, with nothing of Signpost's on top;
#   signpost     `signpost up` redirecting /bench, click capture on.
# What separates hyper from nginx is the HTTP stack the architecture
# prescribes; what separates signpost from server is Signpost itself.
#
# Needs: nginx (Debian nginx-light), wrk, python3; oha for the latency run.
# Usage: bench/redirect/floor.sh [DURATION_SECONDS]
# The latency runs at half load go in LATENCY_ROUNDS rounds (default 3), the
# peers in turn within each; the medians over the rounds are the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
source bench/common.sh
find_floor
NGX=18091 SP=18092
MODES="hyper hyper-timer auto axum server"
declare -A PORT PID
port=18093
for m in $MODES; do
    PORT[$m]=$port; port=$((port + 1))
done

start_nginx_redirect "$NGX"
for m in $MODES; do
    "$FLOOR" "$m" "127.0.0.1:${PORT[$m]}" & PID[$m]=$!
done
PORT[nginx]=$NGX
cleanup() {
    kill "${SP_PID:-}" "${PID[@]}" 2>/dev/null || true
    nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
}
trap cleanup EXIT
start_signpost "$SP"
create_bench_link "$SP" >/dev/null
PORT[signpost]=$SP PID[signpost]=$SP_PID
PID[nginx]=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
for port in "${PORT[@]}"; do
    test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/bench")" = 302 || { echo "no redirect on $port"; exit 1; }
done

echo "== maximum throughput (wrk -t1 -c64 -d${DURATION}s)"
declare -A RPS
for name in nginx $MODES signpost; do
    port=${PORT[$name]} pids=${PID[$name]}
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/bench")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    RPS[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo "$name: ${RPS[$name]} req/s ($(python3 -c "print('%.2f' % (${RPS[$name]} / ${RPS[nginx]}))")× nginx); $(cpu_per_request "$before" "$after" "$n") µs CPU per request during the load"
done

if command -v oha >/dev/null; then
    RATE=$(python3 -c "print(int(${RPS[signpost]} / 2))")
    echo "== latency at half of signpost's maximum: $RATE req/s (oha -z ${DURATION}s -q $RATE -c 32 --latency-correction), $LATENCY_ROUNDS rounds"
    latency_round() {
        for name in nginx hyper server signpost; do oha_redirects "$name.$1" "$RATE" "${PORT[$name]}"; done
    }
    latency_rounds latency_round
fi
