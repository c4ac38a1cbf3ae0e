#!/usr/bin/env bash
# Sets up everything the tests need (clang, Bazel, Go, Garage; idempotent) and runs
# the whole suite: unit tests, gRPC integration tests against the real
# server, and the end-to-end tests with real Bazel and real Go.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./scripts/setup.sh | grep -E '^CAIRN_(GO|GARAGE)=')"
export CAIRN_GO CAIRN_GARAGE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
# Release mode: RocksDB is compiled once, and the 100 MiB and Bazel tests hash at real speed.
cargo test --release --all-targets -- "$@"
