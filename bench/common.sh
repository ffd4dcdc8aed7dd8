# Sourced by the benchmark scripts after they cd to the repository root:
# builds the release binary and sets BIN, WORK (a fresh temporary directory),
# and SECRET and ISSUER (the HS256 key and issuer signpost is started with,
# which bench/hs256_token.py signs with).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/signpost-target}"
# SIGNPOST_BENCH_BIN runs a binary built elsewhere (to compare two builds).
if [ -n "${SIGNPOST_BENCH_BIN:-}" ]; then
    BIN="$SIGNPOST_BENCH_BIN"
else
    cargo build --release --quiet
    BIN="$CARGO_TARGET_DIR/release/signpost"
fi
WORK=$(mktemp -d)
SECRET=bench-secret-0123456789abcdef0123456789
ISSUER=https://bench.signpost.local

# Starts `signpost up` on 127.0.0.1:$1 (embedded backends unless DATABASE_URL,
# REDIS_URL or NATS_URL say otherwise), its data in $WORK/data and its log in
# $WORK/signpost.log; sets SP_PID (set the script's exit trap before calling),
# waits for /healthz and sets TOKEN, a bearer token it accepts. SP_WRAP, when
# set, is a command (valgrind …) that runs signpost.
start_signpost() {
    # shellcheck disable=SC2086 # SP_WRAP is a command with its arguments
    SIGNPOST_DATA_DIR="$WORK/data" SIGNPOST_LOG=warn SIGNPOST_LOG_FORMAT=json \
    JWT_SECRET_KEY="$SECRET" SIGNPOST_JWT_ISSUER="$ISSUER" \
        ${SP_WRAP:-} "$BIN" up --listen "127.0.0.1:$1" > "$WORK/signpost.log" 2>&1 &
    SP_PID=$!
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.1; done
    TOKEN=$(python3 bench/hs256_token.py "$SECRET" "$ISSUER")
}

# Points the next start_signpost at PostgreSQL + Redis + NATS JetStream on their
# standard local ports, with a fresh database and stream (both named
# $SCALEOUT_NAME); drop_scaleout_backends removes them (call it after signpost stopped).
use_scaleout_backends() {
    SCALEOUT_NAME="bench_$(date +%s)_$$"
    psql -q -h 127.0.0.1 -U postgres -c "create database $SCALEOUT_NAME" postgres
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$SCALEOUT_NAME" REDIS_URL=redis://127.0.0.1:6379 \
        NATS_URL=nats://127.0.0.1:4222 SIGNPOST_NATS_STREAM="$SCALEOUT_NAME"
}
drop_scaleout_backends() {
    [ -n "${SCALEOUT_NAME:-}" ] || return 0
    # JetStream's stream-delete API, sent over the plain NATS protocol.
    python3 - "$SCALEOUT_NAME" <<'PY' || true
import socket, sys
s = socket.create_connection(("127.0.0.1", 4222))
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' % sys.argv[1].encode())
s.recv(4096)
PY
    psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $SCALEOUT_NAME with (force)" postgres || true
}

# Creates the link /bench -> https://example.com/landing on the Signpost at
# 127.0.0.1:$1 and prints its id.
create_bench_link() {
    curl -sf -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{"url":"https://example.com/landing","slug":"bench"}' "http://127.0.0.1:$1/v1/links" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# CPU time (user + system, in clock ticks) the processes $* have used so far,
# exited threads included.
cpu_ticks() {
    local total=0 p fields
    for p in "$@"; do
        fields=$(sed 's/.*) //' "/proc/$p/stat")
        set -- $fields
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
TICKS_PER_SECOND=$(getconf CLK_TCK)
# Microseconds of CPU per request: cpu_per_request TICKS_BEFORE TICKS_AFTER REQUESTS
cpu_per_request() {
    python3 -c "print('%.1f' % (($2 - $1) * 1e6 / $TICKS_PER_SECOND / $3))"
}

# Starts nginx (2 workers, like signpost's 2 connection threads on this 2-core
# machine) answering GET /bench with `return 302` on 127.0.0.1:$1; its pid
# file is $WORK/nginx.pid, its configuration $WORK/nginx.conf.
start_nginx_redirect() {
    nginx_redirect_conf "$1" "worker_processes 2;"
    nginx -c "$WORK/nginx.conf"
}

# Writes $WORK/nginx.conf: nginx answering `return 302` for /bench on
# 127.0.0.1:$1; $2 is the process settings (workers, daemon).
nginx_redirect_conf() {
    cat > "$WORK/nginx.conf" <<NGINX
$2
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$1; location = /bench { return 302 https://example.com/landing; } }
}
NGINX
}

# oha at a fixed rate for DURATION seconds: its JSON saved as $WORK/lat/$1.json
# and one line printed: NAME: p50, p99, statuses.
# Usage: oha_rate NAME RATE URL [OHA_ARGS…]
oha_rate() {
    local name=$1 rate=$2 url=$3
    shift 3
    mkdir -p "$WORK/lat"
    oha --no-tui --output-format json -z "${DURATION}s" -q "$rate" -c 32 --latency-correction "$@" \
        "$url" > "$WORK/lat/$name.json"
    python3 - "$name" "$WORK/lat/$name.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
p = d["latencyPercentiles"]
print(f"{name}: p50 {p['p50']*1000:.3f} ms, p99 {p['p99']*1000:.3f} ms, statuses {d['statusCodeDistribution']}")
PY
}

# oha_rate on http://127.0.0.1:$3/bench, redirects not followed.
# Usage: oha_redirects NAME RATE PORT
oha_redirects() {
    oha_rate "$1" "$2" "http://127.0.0.1:$3/bench" --redirect 0
}

# How many latency rounds the scripts run: every peer once per round, in
# turn, so that a spike of the machine lands in one round of one peer and
# the median of the rounds shows what the peers do.
LATENCY_ROUNDS="${LATENCY_ROUNDS:-3}"

# The machine's CPU counters (the `cpu` line of /proc/stat), for steal_share.
cpu_snapshot() { grep '^cpu ' /proc/stat; }
# The share of CPU time the hypervisor gave to other guests between two
# snapshots (steal): a run with much of it measured the host, not the peers.
# Usage: steal_share "$(cpu_snapshot)" "$(cpu_snapshot)"
steal_share() {
    python3 - "$1" "$2" <<'PY'
import sys
a, b = (list(map(int, s.split()[1:9])) for s in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
print(f"{100 * d[7] / max(1, sum(d)):.1f}%")
PY
}

# Runs LATENCY_ROUNDS rounds of "$@" (a function taking the round's number,
# which runs each peer once), then prints, for each peer, its p99 in every
# round and the medians of its p50 and p99 (from $WORK/lat/NAME.ROUND.json);
# with BASELINE set (a peer's name), also each peer's p99 added over that
# peer's in the same round, and its median. The CPU steal during the rounds
# is printed last.
latency_rounds() {
    local before r
    [[ "$LATENCY_ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "LATENCY_ROUNDS must be a positive number"; return 1; }
    before=$(cpu_snapshot)
    for r in $(seq 1 "$LATENCY_ROUNDS"); do "$@" "$r"; done
    python3 - "$WORK/lat" "${BASELINE:-}" <<'PY'
import glob, json, os, statistics, sys
lat, base = sys.argv[1], sys.argv[2]
runs = {}
# In the order they ran.
for path in sorted(glob.glob(os.path.join(lat, "*.*.json")), key=os.path.getmtime):
    name, rnd = os.path.basename(path)[: -len(".json")].rsplit(".", 1)
    p = json.load(open(path))["latencyPercentiles"]
    runs.setdefault(name, {})[int(rnd)] = (p["p50"] * 1000, p["p99"] * 1000)
for name, by_round in runs.items():
    p99s = [by_round[r][1] for r in sorted(by_round)]
    line = (f"{name}: p99 per round {', '.join(f'{x:.2f}' for x in p99s)} ms; median p50 "
            f"{statistics.median(v[0] for v in by_round.values()):.3f} ms, median p99 {statistics.median(p99s):.3f} ms")
    if base and name != base and base in runs:
        added = [by_round[r][1] - runs[base][r][1] for r in sorted(by_round) if r in runs[base]]
        line += f"; p99 added over {base}: median {statistics.median(added):.3f} ms"
    print(line)
PY
    echo "CPU steal during the latency rounds: $(steal_share "$before" "$(cpu_snapshot)")"
}

# Sets FLOOR: the kernel's floor example (crates/kernel/examples/floor.rs),
# built here unless SIGNPOST_BENCH_FLOOR names one built elsewhere.
find_floor() {
    if [ -n "${SIGNPOST_BENCH_FLOOR:-}" ]; then
        FLOOR="$SIGNPOST_BENCH_FLOOR"
    else
        cargo build --release --quiet -p kernel --example floor
        FLOOR="$CARGO_TARGET_DIR/release/examples/floor"
    fi
}

# Starts the trivial upstream of the gateway benchmarks: nginx (1 worker)
# answering `200 ok` on 127.0.0.1:$1, keeping connections open; its
# configuration is $WORK/upstream.conf.
start_nginx_upstream() {
    cat > "$WORK/upstream.conf" <<NGINX
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # Both proxies keep upstream connections open; let them stay open.
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } }
}
NGINX
    nginx -c "$WORK/upstream.conf"
}

# Writes $WORK/proxy.conf: nginx proxy_pass with keep-alive on 127.0.0.1:$1 to
# the upstream on 127.0.0.1:$2; $3 is the process settings (workers, daemon).
nginx_proxy_conf() {
    cat > "$WORK/proxy.conf" <<NGINX
$3
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$2; keepalive 256; }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }
}
NGINX
}

# Runs "$@" (signpost serve gateway, possibly under a tool) with the gateway
# benchmarks' settings: the upstream on 127.0.0.1:$UP as service `bench` at
# /v1/bench, HS256 tokens, no effective rate limit; data in $WORK/data-$NAME.
# The command replaces the shell, so that `with_gateway_env … &` sets $! to its pid.
with_gateway_env() {
    SIGNPOST_DATA_DIR="$WORK/data-${NAME:-gateway}" SIGNPOST_LOG=warn SIGNPOST_LOG_FORMAT=json \
    JWT_SECRET_KEY="$SECRET" SIGNPOST_JWT_ISSUER="$ISSUER" \
    SIGNPOST_UPSTREAMS="bench=http://127.0.0.1:$UP" SIGNPOST_ROUTES="/v1/bench=bench" \
    SIGNPOST_RATE_LIMIT_TENANT="1000000000/60s" \
        exec "$@"
}
