#!/usr/bin/env bash
# The kill -9 loop of issue 9: ROUNDS times (default 100), start `cairn serve`
# on one data dir, run mixed concurrent writes, kill -9 it at a random moment,
# restart and check that every acknowledged write survived, that the counters
# equal what is stored and that the orphan reclaim leaves no stray file.
# The work is `cairn bench --crash-loop` (src/bench/crash.rs); this script only
# builds and runs it. Extra arguments go to `cairn bench`, e.g.
#
#   scripts/crash-loop.sh                         100 rounds (about 5 minutes)
#   ROUNDS=20 scripts/crash-loop.sh --crash-writers 16
#   scripts/crash-loop.sh --serve-arg=--max-open-files=256
#
# Exits non-zero when anything was lost, left orphaned or miscounted.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
export CAIRN_BENCH_TMP=${CAIRN_BENCH_TMP:-/var/tmp}
cargo build --release --quiet
work=$(mktemp -d "$CAIRN_BENCH_TMP/cairn-crash-loop.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A private copy: colleagues may rebuild the target dir during the run.
cp "$CARGO_TARGET_DIR/release/cairn" "$work/cairn"
"$work/cairn" bench --crash-loop "${ROUNDS:-100}" "$@"
