#!/usr/bin/env bash
# Instructions per redirect, counted by valgrind's callgrind: the same for the
# same binary and inputs whatever else the machine is doing, so two builds
# compare on a noisy machine where wall-clock throughput moves by 20% run to
# run. User space only.
#
# `signpost up` (embedded backends, click capture on) runs under callgrind with
# one dump per thread; oha sends 2,000 redirects of /bench to warm up, then the
# counted REQUESTS (default 20,000) with 16 connections. Reported: the
# connection threads (reading, the middleware, the handler, the journal
# append, writing) and everything else (the click pipeline: journal drainer,
# bus, analytics), whose share per request depends on how the pipeline batches
# at callgrind's slow pace: compare builds by the first number. Then nginx
# (one process in the foreground, `return 302` for the same path) is counted
# the same way, for the distance to the peer.
#
# Needs: valgrind, oha, python3.
# Usage: bench/redirect/instructions.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS="${1:-20000}"
source bench/common.sh
SP=18093
OUT="$WORK/callgrind.redirect"
trap 'kill "${SP_PID:-}" 2>/dev/null || true' EXIT
SP_WRAP="valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=$OUT --instr-atstart=no" \
    start_signpost "$SP"
create_bench_link "$SP" > /dev/null
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SP/bench")" = 302 || { echo "no redirect"; exit 1; }
URL="http://127.0.0.1:$SP/bench"
oha --no-tui --redirect 0 -n 2000 -c 16 "$URL" > /dev/null
callgrind_control -i on "$SP_PID" > /dev/null 2>&1
oha --no-tui --output-format json --redirect 0 -n "$REQUESTS" -c 16 "$URL" > "$WORK/redirect.json"
# Let the pipeline take what the load left before counting.
sleep 5
callgrind_control -d "$SP_PID" > /dev/null 2>&1
callgrind_control -i off "$SP_PID" > /dev/null 2>&1
kill "$SP_PID"; wait "$SP_PID" 2>/dev/null || true
echo "== instructions per redirect (callgrind, $REQUESTS requests, oha -c 16; dumps in $WORK)"
python3 - "$OUT" "$REQUESTS" "$WORK/redirect.json" <<'PY'
import glob, json, re, subprocess, sys
out, n, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = other = 0
for f in sorted(glob.glob(out + ".*")):
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", f], capture_output=True, text=True).stdout
    m = re.search(r"([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", text)
    if not m:
        continue
    total = int(m.group(1).replace(",", ""))
    if "ConnThreads::spawn::{{closure}}" in text:
        conn += total
    else:
        other += total
codes = json.load(open(report)).get("statusCodeDistribution", {})
print(f"connection threads: {conn / n / 1000:.1f}k instructions per redirect")
print(f"click pipeline and the rest: {other / n / 1000:.1f}k per redirect; statuses {codes}")
PY

# The peer: nginx in the foreground, one process, what callgrind follows.
NGX=18094
nginx_redirect_conf "$NGX" "daemon off; master_process off; worker_processes 1;"
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.nginx" --instr-atstart=no \
    "$(command -v nginx)" -c "$WORK/nginx.conf" > "$WORK/nginx.log" 2>&1 &
NGX_PID=$!
trap 'kill "${SP_PID:-}" "${NGX_PID:-}" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$NGX/bench" && break; sleep 0.2; done
oha --no-tui --redirect 0 -n 2000 -c 16 "http://127.0.0.1:$NGX/bench" > /dev/null
callgrind_control -i on "$NGX_PID" > /dev/null 2>&1
oha --no-tui --output-format json --redirect 0 -n "$REQUESTS" -c 16 "http://127.0.0.1:$NGX/bench" > "$WORK/nginx.json"
callgrind_control -d "$NGX_PID" > /dev/null 2>&1
callgrind_control -i off "$NGX_PID" > /dev/null 2>&1
# The dump is written; nginx under valgrind may not act on SIGTERM.
kill -9 "$NGX_PID"; wait "$NGX_PID" 2>/dev/null || true
python3 - "$WORK/callgrind.nginx" "$REQUESTS" "$WORK/nginx.json" <<'PY'
import glob, json, re, subprocess, sys
out, n, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
total = 0
for f in glob.glob(out + ".*"):
    text = subprocess.run(["callgrind_annotate", f], capture_output=True, text=True).stdout
    m = re.search(r"([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", text)
    total += int(m.group(1).replace(",", "")) if m else 0
codes = json.load(open(report)).get("statusCodeDistribution", {})
print(f"nginx return 302: {total / n / 1000:.1f}k instructions per redirect; statuses {codes}")
PY
