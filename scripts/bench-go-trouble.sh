#!/usr/bin/env bash
# Benchmarks `cairn gocacheprog` against servers in trouble (issue 10), on
# loopback (the shim's timeouts and back-off, not the link, decide these):
#   full server   the server's disk is full: writes are refused
#                 (RESOURCE_EXHAUSTED) while reads work. The module's
#                 `go build ./...` is put on the server first; then a fresh
#                 machine's `go vet ./...` must compile nothing (every
#                 compile it needs is a remote hit, although each of its
#                 own uploads is refused). With CAIRN_WAIT_FOR_UPLOADS=1,
#                 so the refusals happen while go still runs (and show on
#                 its stderr); the server's /metrics count them.
#   readonly      the same with a read-only token (writes refused with
#                 PERMISSION_DENIED): `go vet ./...` must compile nothing.
#   stalled       a cold `go build ./...` of the module with GOCACHEPROG
#                 pointing at a server that accepts connections and never
#                 answers, and at one that completes the HTTP/2 handshake
#                 and then says nothing, against the same build with no
#                 GOCACHEPROG at all: goal ≤ 1.2×.
# Each is the median of $REPS runs, every run with an empty GOCACHE; the
# stalled variants are interleaved run by run so load drifts hit all three
# alike. Prints Markdown tables. Run as `scripts/bench-go.sh trouble`.
#
# Needs root (the full server's data lives on a small tmpfs). Env: REPS (3),
# BENCH_DIR (/var/tmp/cairn-bench-go-trouble), NO_BUILD=1 to use the built
# binary as is, SCENARIOS ("full readonly stalled").
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-go trouble: needs root (mounts a tmpfs)" >&2; exit 1; }
BENCH="bench-go trouble"
# shellcheck source=scripts/bench-go-lib.sh
source scripts/bench-go-lib.sh
build_cairn
REPS=${REPS:-3}
read -r -a SCENARIOS <<<"${SCENARIOS:-full readonly stalled}"
WORK=${BENCH_DIR:-/var/tmp/cairn-bench-go-trouble}
cleanup() {
  kill_tracked
  mountpoint -q "$WORK/full" && umount -l "$WORK/full"
  rm -rf "$WORK/runs"
}
mkdir -p "$WORK"
trap cleanup EXIT
rm -rf "$WORK/runs"; mkdir -p "$WORK/bin" "$WORK/runs" "$WORK/full"
cp "$CARGO_TARGET_DIR/release/cairn" "$WORK/bin/" # a copy: the target dir may be rebuilt meanwhile
CAIRN=$WORK/bin/cairn
COMMIT=$(commit_id)
MOD=$WORK/module
make_module "$MOD"

go_env
PROG="$CAIRN gocacheprog"

# go_run GOCACHE ENV... -- GOARGS...: runs go in the module with -x; prints
# "seconds compiles warnings" (warnings: cairn's lines on go's stderr).
go_run() {
  local gocache=$1; shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  local err=$WORK/go.err t0 t1
  t0=$(date +%s.%N)
  (cd "$MOD" && env GOCACHE="$gocache" "${envs[@]}" "$CAIRN_GO" "$1" -x "${@:2}" 2>"$err" >/dev/null) ||
    { echo "bench-go trouble: go $* failed:" >&2; tail -n 30 "$err" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v c="$(awk '$1 ~ /\/compile$/ { n++ } END { print n + 0 }' "$err")" \
    -v w="$(grep -c 'cairn gocacheprog' "$err" || true)" 'BEGIN { printf "%.3f %d %d\n", b - a, c, w }'
}

date -u +"start %H:%M:%S, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
  full)
    # The server's disk: a tmpfs of 1 GiB, filled once the build is on it.
    umount -l "$WORK/full" 2>/dev/null || true
    mount -t tmpfs -o size=1g tmpfs "$WORK/full"
    start_server "$WORK/full-server.log" FULL --data-dir "$WORK/full/data" --max-size 900MiB
    seed=$(go_run "$WORK/runs/seed" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$FULL" CAIRN_WAIT_FOR_UPLOADS=1 \
      CAIRN_FINISH_TIMEOUT=300s -- build ./...)
    echo "full: seeded with a cold go build ./... ($seed)" >&2
    # Fill the disk to the last byte, so that every write the server tries
    # fails (ENOSPC: RESOURCE_EXHAUSTED); its reads need no space.
    fallocate -l "$(df -B1 --output=avail "$WORK/full" | tail -n1)" "$WORK/full/filler" || true
    dd if=/dev/zero of="$WORK/full/filler2" bs=4k 2>/dev/null || true
    ADMIN=$(admin_addr "$WORK/full-server.log")
    refused() { requests_total "$ADMIN" RESOURCE_EXHAUSTED; }
    hits() { requests_total "$ADMIN" 'rpc="GetActionResult"' 'code="OK"'; }
    rows=()
    for rep in $(seq 1 "$REPS"); do
      r0=$(refused); h0=$(hits)
      r=$(go_run "$WORK/runs/full-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$FULL" CAIRN_WAIT_FOR_UPLOADS=1 -- vet ./...)
      r="$r $(($(refused) - r0)) $(($(hits) - h0))"
      rows+=("$r"); echo "full: fresh go vet ./... run $rep: $r (seconds compiles warnings refused-calls remote-hits)" >&2
      rm -rf "$WORK/runs/full-$rep"
    done
    t=$(printf '%s\n' "${rows[@]}" | cut -d' ' -f1 | median)
    FULL_ROW=$(printf '%s\n' "${rows[@]}" | awk -v t="$t" '
      { c = c (NR > 1 ? ", " : "") $2; w = w (NR > 1 ? ", " : "") $3; x = x (NR > 1 ? ", " : "") $4
        h = h (NR > 1 ? ", " : "") $5; if ($2 > 0) bad = 1; if ($4 == 0) untested = 1 }
      END {
        printf "| full server (writes refused: RESOURCE_EXHAUSTED), fresh `go vet ./...` | no compiles | %s compiles (%.2f s median); remote hits %s; writes refused %s; cairn warnings %s | %s |",
          c, t, h, x, w, untested ? "not tested (no write was refused)" : (bad ? "**not met**" : "met")
      }')
    umount -l "$WORK/full" || true
    ;;
  readonly)
    # A read-only token: every write is refused (PERMISSION_DENIED), reads
    # work; the shim treats it as it treats RESOURCE_EXHAUSTED.
    mkdir -p "$WORK/ro"
    { "$CAIRN" token new writer rw; "$CAIRN" token new reader ro; } >"$WORK/ro/new.txt"
    sed -n 2p "$WORK/ro/new.txt" >"$WORK/ro/tokens"; sed -n 4p "$WORK/ro/new.txt" >>"$WORK/ro/tokens"
    RW=$(sed -n 1p "$WORK/ro/new.txt" | awk '{ print $1 }'); RO=$(sed -n 3p "$WORK/ro/new.txt" | awk '{ print $1 }')
    rm -rf "$WORK/ro/data"
    start_server "$WORK/ro-server.log" ROSRV --data-dir "$WORK/ro/data" --tokens "$WORK/ro/tokens" --anonymous none
    seed=$(go_run "$WORK/runs/ro-seed" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$ROSRV" CAIRN_TOKEN="$RW" \
      CAIRN_WAIT_FOR_UPLOADS=1 CAIRN_FINISH_TIMEOUT=300s -- build ./...)
    echo "readonly: seeded with a cold go build ./... ($seed)" >&2
    ADMIN=$(admin_addr "$WORK/ro-server.log")
    denied() { requests_total "$ADMIN" PERMISSION_DENIED; }
    rows=()
    for rep in $(seq 1 "$REPS"); do
      d0=$(denied)
      r=$(go_run "$WORK/runs/ro-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$ROSRV" CAIRN_TOKEN="$RO" \
        CAIRN_WAIT_FOR_UPLOADS=1 -- vet ./...)
      r="$r $(($(denied) - d0))"
      rows+=("$r"); echo "readonly: fresh go vet ./... run $rep: $r (seconds compiles warnings refused-calls)" >&2
      rm -rf "$WORK/runs/ro-$rep"
    done
    t=$(printf '%s\n' "${rows[@]}" | cut -d' ' -f1 | median)
    RO_ROW=$(printf '%s\n' "${rows[@]}" | awk -v t="$t" '
      { c = c (NR > 1 ? ", " : "") $2; w = w (NR > 1 ? ", " : "") $3; x = x (NR > 1 ? ", " : "") $4
        if ($2 > 0) bad = 1; if ($4 == 0) untested = 1 }
      END {
        printf "| read-only token (writes refused: PERMISSION_DENIED), fresh `go vet ./...` | no compiles | %s compiles (%.2f s median); writes refused %s; cairn warnings %s | %s |",
          c, t, x, w, untested ? "not tested (no write was refused)" : (bad ? "**not met**" : "met")
      }')
    ;;
  stalled)
    # Two silent servers: one never reads or answers (the TCP handshake is
    # the kernel's), one sends the HTTP/2 server preface and then nothing.
    python3 - "$WORK/stall.ports" <<'EOF' &
import socket, sys, threading
def serve(s, h2):
    conns = []
    while True:
        c, _ = s.accept(); conns.append(c)
        if h2:
            c.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00") # SETTINGS, no parameters
            threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(65536), b"")], daemon=True).start()
ports = []
for h2 in (False, True):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64); ports.append(s.getsockname()[1])
    threading.Thread(target=serve, args=(s, h2), daemon=True).start()
open(sys.argv[1], "w").write("%d %d\n" % tuple(ports))
threading.Event().wait()
EOF
    track $!
    for _ in $(seq 1 100); do [ -s "$WORK/stall.ports" ] && break; sleep 0.1; done
    read -r SILENT H2SILENT <"$WORK/stall.ports"
    declare -A T
    for rep in $(seq 1 "$REPS"); do
      for v in none silent h2; do
        case $v in
          none) r=$(go_run "$WORK/runs/stall-$v-$rep" -- build ./...) ;;
          silent) r=$(go_run "$WORK/runs/stall-$v-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://127.0.0.1:$SILENT" -- build ./...) ;;
          h2) r=$(go_run "$WORK/runs/stall-$v-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://127.0.0.1:$H2SILENT" -- build ./...) ;;
        esac
        T[$v]="${T[$v]:-} ${r%% *}"
        echo "stalled: cold go build ./... $v run $rep: $r (seconds compiles warnings)" >&2
        rm -rf "$WORK/runs/stall-$v-$rep"
      done
    done
    none=$(tr ' ' '\n' <<<"${T[none]}" | grep . | median)
    STALL_ROWS=()
    for v in silent h2; do
      t=$(tr ' ' '\n' <<<"${T[$v]}" | grep . | median)
      what="accepts connections, never answers"
      [ "$v" = silent ] || what="completes the HTTP/2 handshake, then nothing"
      STALL_ROWS+=("$(awk -v t="$t" -v n="$none" -v w="$what" -v all="${T[$v]}" -v alln="${T[none]}" 'BEGIN {
        printf "| stalled server (%s), cold `go build ./...` | ≤ 1.2 × no GOCACHEPROG | %.2f s vs %.2f s: %.2f× (runs:%s vs%s) | %s |",
          w, t, n, t / n, all, alln, (t <= 1.2 * n) ? "met" : "**not met**" }')")
    done
    ;;
  esac
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "| scenario | goal | measured | met |"
echo "|---|---|---|---|"
[ -z "${FULL_ROW:-}" ] || echo "$FULL_ROW"
[ -z "${RO_ROW:-}" ] || echo "$RO_ROW"
for row in "${STALL_ROWS[@]:-}"; do [ -z "$row" ] || echo "$row"; done
echo
echo "(REPS=$REPS; $(nproc) CPUs; load average $LOAD_START at the start, $LOAD_END at the end;" \
  "$("$CAIRN_GO" version); cairn $COMMIT; $(date -u '+%Y-%m-%d %H:%M UTC'))"
