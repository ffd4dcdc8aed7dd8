#!/usr/bin/env bash
# How long a link's new destination takes to reach redirects during a flood of
# redirects of that very link: `signpost up` (embedded backends), the /bench
# link, `wrk -t2 -c128` on it, and after 5 s, ROUNDS times: PATCH the link's
# url, then GET /bench every 50 ms until it answers with the new Location.
# Prints, per round, the seconds from the PATCH's start to the first redirect
# to the new address, and how long the PATCH itself took. BUSY busy loops at
# nice 0 beside it make the machine saturated for the background lanes too
# (the worst case for consumers that run below request handling).
# SIGNPOST_BENCH_SCALEOUT=1 runs it on PostgreSQL + Redis + NATS JetStream (a
# fresh database and stream, removed afterwards) instead.
#
# Needs: wrk, python3 (and psql and the three servers for scale-out).
# Usage: bench/redirect/update_lag.sh [ROUNDS] [BUSY]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
BUSY="${2:-0}"
source bench/common.sh
SP=18093
BUSY_PIDS=""

if [ "${SIGNPOST_BENCH_SCALEOUT:-0}" = 1 ]; then use_scaleout_backends; fi

cleanup() {
    kill "${WRK_PID:-}" ${BUSY_PIDS} "${SP_PID:-}" 2>/dev/null || true
    sleep 1
    drop_scaleout_backends
}
trap cleanup EXIT
start_signpost "$SP"
LINK_ID=$(create_bench_link "$SP")
for _ in $(seq 1 "$BUSY"); do
    (while :; do :; done) &
    BUSY_PIDS="$BUSY_PIDS $!"
done
wrk -t2 -c128 -d"$((ROUNDS * 20 + 10))s" "http://127.0.0.1:$SP/bench" > "$WORK/wrk.txt" &
WRK_PID=$!
sleep 5
python3 - "$SP" "$TOKEN" "$LINK_ID" "$ROUNDS" <<'PY'
import http.client, json, sys, time
port, token, link, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def location():
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    c.request("GET", "/bench")
    r = c.getresponse()
    r.read()
    c.close()
    return r.getheader("location")

for n in range(1, rounds + 1):
    url = f"https://example.com/round-{n}"
    start = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
    c.request("PATCH", f"/v1/links/{link}", body=json.dumps({"url": url}),
              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    patched = time.monotonic() - start
    assert r.status == 200, f"PATCH answered {r.status}"
    while location() != url:
        if time.monotonic() - start > 120:
            sys.exit(f"round {n}: the new destination was not served within 120 s")
        time.sleep(0.05)
    print(f"round {n}: new destination served after {time.monotonic() - start:.2f} s (PATCH took {patched:.2f} s)")
    time.sleep(10)
PY
