#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: the same
# for the same binary and inputs whatever else the machine is doing, so two
# builds (or the gateway and nginx) compare on a noisy machine where wall-clock
# throughput moves by 20% run to run. User space only: the system calls per
# request are the same for all of them (strace -c: 2 recvfrom + 2 writev).
#
# Each proxy runs alone under callgrind in front of one nginx upstream
# (`return 200`); oha sends 2,000 authenticated GETs to warm up, then the
# counted REQUESTS (default 20,000) with 16 connections.
#
# Needs: valgrind, nginx (Debian nginx-light), oha, python3.
# Usage: bench/gateway/instructions.sh [REQUESTS [NAME...]]
# NAMEs (nginx, affine, floor, gateway; all by default) pick the proxies. The
# callgrind dumps stay in the WORK directory printed first, for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS="${1:-20000}"
shift $(( $# > 0 ? 1 : 0 ))
ONLY=("${@:-nginx affine floor gateway}")
ONLY=" ${ONLY[*]} "
DURATION=0
source bench/common.sh
UP=18080 PORT=18090
find_floor

start_nginx_upstream "$UP"
# The nginx proxy in the foreground, one process: what callgrind follows.
nginx_proxy_conf "$PORT" "$UP" "daemon off; master_process off; worker_processes 1;"
trap 'nginx -c "$WORK/upstream.conf" -s stop 2>/dev/null || true' EXIT
TOKEN=$(python3 bench/hs256_token.py "$SECRET" "$ISSUER")

# count NAME COMMAND...: instructions per request of COMMAND serving on $PORT.
count() {
    local name=$1; shift
    [[ "$ONLY" == *" $name "* ]] || return 0
    local out="$WORK/callgrind.$name"
    NAME=$name with_gateway_env \
        valgrind --tool=callgrind --callgrind-out-file="$out" --instr-atstart=no "$@" > "$WORK/$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/v1/bench/x" && break; sleep 0.2; done
    oha --no-tui -n 2000 -c 16 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/v1/bench/x" > /dev/null
    callgrind_control -i on "$pid" > /dev/null 2>&1
    oha --no-tui --output-format json -n "$REQUESTS" -c 16 -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$PORT/v1/bench/x" > "$WORK/$name.json"
    callgrind_control -d "$pid" > /dev/null 2>&1
    callgrind_control -i off "$pid" > /dev/null 2>&1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$out".1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    python3 - "$name" "$total" "$REQUESTS" "$WORK/$name.json" <<'PY'
import json, sys
name, total, n, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
codes = json.load(open(report)).get("statusCodeDistribution", {})
print(f"{name}: {total / n / 1000:.1f}k instructions per request; statuses {codes}")
PY
}

echo "== instructions per proxied request (callgrind, $REQUESTS requests, oha -c 16; dumps in $WORK)"
count nginx "$(command -v nginx)" -c "$WORK/proxy.conf"
count affine "$FLOOR" proxy-affine "127.0.0.1:$PORT" "127.0.0.1:$UP"
count floor "$FLOOR" proxy "127.0.0.1:$PORT" "127.0.0.1:$UP"
count gateway "$BIN" serve gateway --listen "127.0.0.1:$PORT"
