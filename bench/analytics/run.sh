#!/usr/bin/env bash
# Analytics benchmark: loads CLICKS synthetic clicks (1000 links, 30 days) through
# analytics' own consumer code, then times 30-day summaries, on SQLite and on
# PostgreSQL, and reports the storage used. Usage: bench/analytics/run.sh [CLICKS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/signpost-target}"
CLICKS="${1:-10000000}"
BATCH="${2:-2000}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --release -p analytics --example analytics_bench
BIN="$CARGO_TARGET_DIR/release/examples/analytics_bench"

dir=$(mktemp -d)
echo "== SQLite ($dir)"
SIGNPOST_DATA_DIR="$dir" "$BIN" "$CLICKS" "$BATCH"
echo "storage: analytics.db with its WAL, $(find "$dir" -name 'analytics.db*' -exec du -sb {} + | awk '{s+=$1} END {printf "%.1f MiB", s/1048576}')"
rm -rf "$dir"

db="signpost_bench_$$"
psql "$PG_ADMIN" -qc "create database $db" >/dev/null
echo "== PostgreSQL ($db)"
dir=$(mktemp -d)
SIGNPOST_DATA_DIR="$dir" DATABASE_URL="${PG_ADMIN%/*}/$db" "$BIN" "$CLICKS" "$BATCH"
psql "${PG_ADMIN%/*}/$db" -Atc "select 'storage: raw events ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname like 'events%'))
    || ', cube ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'cube'))
    || ', hourly ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'hourly'))
    || ', sketches ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'sketches'))
    || ', pairs ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'pairs'))
    || ', value_sketches ' || pg_size_pretty(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'value_sketches'))
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'analytics' and c.relkind = 'r'"
rm -rf "$dir"
psql "$PG_ADMIN" -qc "drop database $db" >/dev/null
