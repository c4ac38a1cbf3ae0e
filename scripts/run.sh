#!/usr/bin/env bash
# Sets up the build dependencies, builds cairn in release mode and runs
# `cairn serve` with any arguments given (default: 127.0.0.1:9092, ~/.cache/cairn, 10 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --build >/dev/null
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
cargo build --release --bin cairn
exec "$CARGO_TARGET_DIR/release/cairn" serve "$@"
