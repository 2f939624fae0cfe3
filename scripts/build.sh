#!/usr/bin/env bash
# The one release build that `make up`, `make test` and CI share: engine and sink binaries (the workspace's
# default members), in the release profile, into $CARGO_TARGET_DIR. `make test` then compiles only the test
# crates on top of it (same profile, see Cargo.toml), so a fresh machine compiles every dependency once.
#
# Cargo prints one line per crate; when that goes to a log or a pipe nobody sees how far it is, so every
# `Compiling` line is prefixed with a count against the number of crates in the build and the elapsed time.
#
#   scripts/build.sh            build the engine and sink binaries
#   scripts/build.sh --tests    also compile the test binaries (cargo test --release --no-run)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}

# Crates in the build (an estimate: build scripts and proc macros count once each).
total=$(cargo tree --workspace --exclude flashsale-loadtest -e normal,build --prefix none 2>/dev/null \
    | sed 's/ (\*)//; s/ (proc-macro)//' | sort -u | wc -l || echo '?')

with_progress() {
    local n=0 line
    local start=$SECONDS
    "$@" 2>&1 | while IFS= read -r line; do
        case $line in
            *Compiling\ *)
                n=$((n + 1))
                printf '[build %3d/%s, %3ss] %s\n' "$n" "$total" "$((SECONDS - start))" "${line#"${line%%[! ]*}"}"
                ;;
            *) printf '%s\n' "$line" ;;
        esac
    done
    return "${PIPESTATUS[0]}"
}

t0=$SECONDS
echo "[build] cargo build --release --bins (about $total crates; CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
with_progress cargo build --release --bins
if [ "${1:-}" = --tests ]; then
    echo "[build] cargo test --release --no-run (test crates only; the dependencies are built)"
    with_progress cargo test --release --no-run
fi
echo "[build] done in $((SECONDS - t0))s"
