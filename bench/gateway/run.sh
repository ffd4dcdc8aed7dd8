#!/usr/bin/env bash
# Gateway benchmark: authenticated GETs (a) through `signpost serve gateway`
# and (b) through nginx proxy_pass with keep-alive, to the same trivial
# upstream (nginx `return 200`), on this machine, in one run. Also the floor
# under the gateway (crates/kernel/examples/floor.rs): hyper's server
# forwarding with nothing else, (c) through hyper-util's pooled client, one
# pool per thread as the gateway keeps them (`floor`), and (d) through one
# upstream connection per client connection (`affine`).
#
# Needs: nginx (Debian nginx-light), wrk, oha (cargo install oha), python3.
# Usage: bench/gateway/run.sh [DURATION_SECONDS]
# The latency runs at half load go in LATENCY_ROUNDS rounds (default 3), the
# peers in turn within each; the medians over the rounds are the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-15}"
source bench/common.sh
UP=18080 NGX=18081 GW=18082 FL=18083 AF=18084
find_floor

# Two nginx instances: the upstream (1 worker) that both proxies call, and the
# nginx proxy (2 workers, like the gateway's 2 runtime threads). Sharing one
# nginx for both roles would give the nginx proxy an in-process upstream.
start_nginx_upstream "$UP"
nginx_proxy_conf "$NGX" "$UP" "worker_processes 2;"
nginx -c "$WORK/proxy.conf"

with_gateway_env "$BIN" serve gateway --listen "127.0.0.1:$GW" > "$WORK/gateway.log" 2>&1 &
GW_PID=$!
"$FLOOR" proxy "127.0.0.1:$FL" "127.0.0.1:$UP" &
FL_PID=$!
"$FLOOR" proxy-affine "127.0.0.1:$AF" "127.0.0.1:$UP" &
AF_PID=$!
cleanup() {
    kill "$GW_PID" "$FL_PID" "$AF_PID" 2>/dev/null || true
    nginx -c "$WORK/proxy.conf" -s stop 2>/dev/null || true
    nginx -c "$WORK/upstream.conf" -s stop 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$GW/healthz" >/dev/null && break; sleep 0.1; done

TOKEN=$(python3 bench/hs256_token.py "$SECRET" "$ISSUER")
AUTH="Authorization: Bearer $TOKEN"
curl -sf -H "$AUTH" "http://127.0.0.1:$GW/v1/bench/x" >/dev/null || { echo "gateway does not proxy"; cat "$WORK/gateway.log"; exit 1; }

echo "== maximum throughput (wrk -t1 -c64 -d${DURATION}s); CPU per request of the proxy's own processes"
# The nginx proxy's workers, and the gateway: what each proxy spends per request
# is steadier on a shared machine than its throughput.
NGX_WORKERS=$(pgrep -P "$(cat "$WORK/proxy.pid")" | tr '\n' ' ')
UP_WORKERS=$(pgrep -P "$(cat "$WORK/upstream.pid")" | tr '\n' ' ')
declare -A RPS
for name in direct nginx floor affine gateway; do
    case $name in
        direct) port=$UP; pids=$UP_WORKERS;;
        nginx) port=$NGX; pids=$NGX_WORKERS;;
        floor) port=$FL; pids=$FL_PID;;
        affine) port=$AF; pids=$AF_PID;;
        gateway) port=$GW; pids=$GW_PID;;
    esac
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$(wrk -t1 -c64 -d"${DURATION}s" --latency -H "$AUTH" "http://127.0.0.1:$port/v1/bench/x")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$name]=$rps
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$name: $rps req/s; $(echo "$out" | awk '/ 50%/ {p50=$2} / 99%/ {p99=$2} END {print "p50 " p50 ", p99 " p99}'); $(cpu_per_request "$before" "$after" "$n") µs CPU per request"
done
python3 -c "print('gateway / nginx throughput ratio: %.2f; floor / nginx: %.2f; affine / nginx: %.2f' % (${RPS[gateway]} / ${RPS[nginx]}, ${RPS[floor]} / ${RPS[nginx]}, ${RPS[affine]} / ${RPS[nginx]}))"

if ! command -v oha >/dev/null; then
    echo "(oha not installed: no latency run at half load)"
    echo "gateway RSS after the run: $(ps -o rss= -p "$GW_PID") KiB"
    exit 0
fi
RATE=$(python3 -c "print(int(${RPS[gateway]} / 2))")
echo "== latency at half the gateway's maximum: $RATE req/s (oha -z ${DURATION}s -q $RATE -c 32 --latency-correction), $LATENCY_ROUNDS rounds"
latency_round() {
    for name in direct nginx floor affine gateway; do
        case $name in direct) port=$UP;; nginx) port=$NGX;; floor) port=$FL;; affine) port=$AF;; gateway) port=$GW;; esac
        oha_rate "$name.$1" "$RATE" "http://127.0.0.1:$port/v1/bench/x" -H "$AUTH"
    done
}
BASELINE=direct latency_rounds latency_round
echo "gateway RSS after the run: $(ps -o rss= -p "$GW_PID") KiB"
