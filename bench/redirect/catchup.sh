#!/usr/bin/env bash
# Click pipeline catch-up: `signpost up` on embedded backends, one link,
# `wrk -t1 -c64` on its slug, then the pipeline alone: the backlog when wrk
# stops divided by the time until the link's summary counts every redirect
# (polled every 0.1 s). Also prints analytics.db's size per click.
#
# Needs: wrk, python3. Usage: bench/redirect/catchup.sh [DURATION_SECONDS]
# (SIGNPOST_BENCH_BIN=<binary> compares builds; see bench/common.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
source bench/common.sh
SP=18093

trap 'kill "${SP_PID:-}" 2>/dev/null || true' EXIT
start_signpost "$SP"
LINK_ID=$(create_bench_link "$SP")
counted() {
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SP/v1/analytics/links/$LINK_ID/summary" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["clicks"])'
}
out=$(wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$SP/bench")
T0=$(date +%s.%N); C0=$(counted)
SENT=$(echo "$out" | awk '/requests in/ {print $1}')
for _ in $(seq 1 3000); do [ "$(counted)" -ge "$SENT" ] && break; sleep 0.1; done
T1=$(date +%s.%N)
DB=$(stat -c %s "$WORK/data/analytics.db")
python3 -c "print('redirects %d, backlog when wrk stopped %d, catch-up %.0f clicks/s, analytics.db %d bytes (%.0f a click)' \
    % ($SENT, $SENT - $C0, ($SENT - $C0) / ($T1 - $T0), $DB, $DB / $SENT))"
