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
