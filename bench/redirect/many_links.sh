#!/usr/bin/env bash
# Redirect lookups with many links stored: `signpost up` (embedded backends,
# click capture on) is measured on one slug before and after LINKS routes are
# added to routing's read model, then on random slugs among all of them (most
# lookups then miss the per-process cache and read SQLite).
#
# The routes are written straight into routing.db (one transaction): creating a
# million links through the API would take most of an hour here, and the
# redirect reads nothing but this read model.
#
# Needs: oha (cargo install oha), python3.
# Usage: bench/redirect/many_links.sh [LINKS, a power of ten] [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
LINKS="${1:-1000000}"
DURATION="${2:-10}"
source bench/common.sh
SP=18094

trap 'kill "${SP_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_signpost "$SP"
create_bench_link "$SP" >/dev/null
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SP/bench")" = 302 || { echo "no redirect"; exit 1; }

# oha for every phase: it reports the status of every answer (all must be 302).
run_oha() { # label url-or-regex rate(0 = as fast as it goes) [--rand-regex-url]
    local label=$1 url=$2 rate=$3 conns=64 how="maximum"
    local args=(--no-tui --output-format json --redirect 0 -z "${DURATION}s")
    if [ "$rate" != 0 ]; then args+=(-q "$rate" --latency-correction); conns=32; how="at $rate req/s"; fi
    if [ "${4:-}" = regex ]; then args+=(--rand-regex-url); fi
    oha "${args[@]}" -c "$conns" "$url" > "$WORK/oha.json"
    python3 - "$label, $how (oha -c $conns)" "$WORK/oha.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
p = d["latencyPercentiles"]
print(f"{label}: {d['summary']['requestsPerSec']:.0f} req/s, p50 {p['p50']*1000:.3f} ms, p99 {p['p99']*1000:.3f} ms, statuses {d['statusCodeDistribution']}")
PY
}
HOT="http://127.0.0.1:$SP/bench"

echo "== one slug, 1 link stored"
run_oha "hot slug" "$HOT" 0
run_oha "hot slug" "$HOT" 10000

echo "== storing $LINKS more routes in routing's read model"
python3 - "$WORK/data/routing.db" "$LINKS" <<'PY'
import json, sqlite3, sys, time, uuid
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, timeout=30)
tenant = str(uuid.uuid4())
began = time.time()
def rows():
    for i in range(n):
        link = str(uuid.uuid4())
        record = {"tenant_id": tenant, "link_id": link, "domain": "", "slug": f"r{i}",
                  "url": f"https://example.com/{i}", "redirect_type": 302, "version": 1}
        yield ("", f"r{i}", tenant, link, json.dumps(record), 1)
with db:
    db.executemany("insert into routes (domain, slug, tenant_id, link_id, record, version) values (?, ?, ?, ?, ?, ?)", rows())
print(f"{n} routes in {time.time() - began:.1f} s; routes now: {db.execute('select count(*) from routes').fetchone()[0]}")
PY
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SP/r$((LINKS - 1))")" = 302 || { echo "a stored route does not redirect"; exit 1; }

echo "== one slug, $LINKS links stored"
run_oha "hot slug" "$HOT" 0
run_oha "hot slug" "$HOT" 10000
# Slugs r10…0 to r99…9: all stored when LINKS is a power of ten.
DIGITS=$(( ${#LINKS} - 2 ))
echo "== random slugs among $LINKS (mostly cold: the per-process cache keeps 100,000)"
run_oha "random slugs" "http://127.0.0.1:$SP/r[1-9][0-9]{$DIGITS}" 0 regex
run_oha "random slugs" "http://127.0.0.1:$SP/r[1-9][0-9]{$DIGITS}" 10000 regex
echo "signpost RSS after the runs: $(ps -o rss= -p "$SP_PID") KiB"
