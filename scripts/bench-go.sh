#!/usr/bin/env bash
# Benchmarks `cairn gocacheprog` on `go build std` (and `go vet std`):
#   cold, no cache           Go's own cache, empty
#   warm, Go's own cache     the same GOCACHE again
#   cold, cairn + upload     empty GOCACHE through cairn, uploading to a local server
#   warm local, cairn        the same GOCACHE again through cairn, no remote
#   warm local, cairn+remote the same with the remote configured (manifest check)
#   fresh machine            an empty GOCACHE each run, everything from the warm
#                            server: loopback, +2 ms and +10 ms round-trip time
#                            (examples/delay_proxy.rs), with and without prefetch
# and prints a Markdown table of wall times (median and min of $REPS runs; cold
# runs once). Not a test: numbers depend on the machine and its load. Takes
# about an hour on 2 cores (cold `go vet std` alone is ~5 minutes, and at
# +10 ms without prefetching each fresh `go vet std` takes ~2 minutes), and
# needs a few GB under /var/tmp.
#
# Env: REPS (default 3), BENCH_CMDS (default "build std;vet std"), BENCH_DIR
# (default a new dir under /var/tmp, removed at the end unless KEEP=1).
set -euo pipefail
# `scripts/bench-go.sh net`: the same shim over a real (emulated) network link instead.
[ "${1:-}" != net ] || exec "$(dirname "$0")/bench-go-net.sh" "${@:2}"
# `scripts/bench-go.sh trouble`: against a full server and stalled servers.
[ "${1:-}" != trouble ] || exec "$(dirname "$0")/bench-go-trouble.sh" "${@:2}"
cd "$(dirname "$0")/.."
BENCH=bench-go
# shellcheck source=scripts/bench-go-lib.sh
source scripts/bench-go-lib.sh
build_cairn --example delay_proxy
REPS=${REPS:-3}
IFS=';' read -r -a CMDS <<<"${BENCH_CMDS:-build std;vet std}"
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/cairn-bench-go.XXXXXX)}
mkdir -p "$WORK/run" "$WORK/bin"
# Copies: other checkouts sharing the target dir may rebuild it meanwhile.
cp "$CARGO_TARGET_DIR/release/cairn" "$CARGO_TARGET_DIR/release/examples/delay_proxy" "$WORK/bin/"
CAIRN=$WORK/bin/cairn
PROXY=$WORK/bin/delay_proxy
cleanup() {
  kill_tracked
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

go_env
cd "$WORK/run" # no go.mod here: the prefetch key uses this directory

start_bg "$WORK/server.log" SERVER "$CAIRN" serve --listen 127.0.0.1:0 --data-dir "$WORK/server" --max-size 20GiB
start_bg "$WORK/proxy2.log" P2 "$PROXY" 127.0.0.1:0 "$SERVER" 2
start_bg "$WORK/proxy10.log" P10 "$PROXY" 127.0.0.1:0 "$SERVER" 10

# timed DIR-NAME ENV... -- GOARGS...: runs go with a GOCACHE under $WORK and
# prints the wall time in seconds ("fail" if go failed; its stderr goes to
# ours). It returns when go exits; the $(...) around it also waits for cairn,
# which inherits the substitution's pipe, to finish its background work, so
# no run overlaps the previous one's uploads.
timed() {
  local gocache=$WORK/$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local t0 t1
  t0=$(date +%s.%N)
  env GOCACHE="$gocache" "${envs[@]}" "$CAIRN_GO" "$@" >/dev/null 2>"$WORK/go.err" || {
    echo "bench-go: go $* failed:" >&2; tail -n 40 "$WORK/go.err" >&2; echo fail; return; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' 
}

# stats N-RUNS FUNCTION ARGS...: runs FUNCTION ARGS RUN-NUMBER N times;
# prints "median min" of the runs that worked (and how many failed).
stats() {
  local n=$1; shift
  local ts=()
  for i in $(seq 1 "$n"); do ts+=("$("$@" "$i")"); done
  printf '%s\n' "${ts[@]}" | sort -n | awk '
    $1 == "fail" { failed++; next }
    { a[++k] = $1 }
    END {
      if (k) printf "%.2f %.2f", a[int((k + 1) / 2)], a[1]; else printf "-"
      if (failed) printf " (%d failed)", failed
    }'
}

PROG="$CAIRN gocacheprog"
declare -A RESULT
row() { RESULT["$1|$2"]=$3; echo "  $1 / $2: $3" >&2; }

for cmd in "${CMDS[@]}"; do
  read -r -a args <<<"$cmd"
  tag=${cmd// /-}
  echo "go $cmd" >&2
  row "$cmd" "cold, no cache" "$(timed "own-$tag" -- "${args[@]}") (1 run)"
  own() { timed "own-$tag" -- "${args[@]}"; }
  row "$cmd" "warm, Go's own cache" "$(stats "$REPS" own)"
  row "$cmd" "cold, cairn, uploading to the server" \
    "$(timed "shim-$tag" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$SERVER" CAIRN_WAIT_FOR_UPLOADS=1 CAIRN_FINISH_TIMEOUT=300s -- "${args[@]}") (1 run)"
  shim() { timed "shim-$tag" GOCACHEPROG="$PROG" -- "${args[@]}"; }
  row "$cmd" "warm local, cairn" "$(stats "$REPS" shim)"
  shim_remote() { timed "shim-$tag" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$SERVER" -- "${args[@]}"; }
  row "$cmd" "warm local, cairn with remote" "$(stats "$REPS" shim_remote)"
  for net in "loopback:$SERVER" "+2 ms:$P2" "+10 ms:$P10"; do
    name=${net%%:*}; addr=${net#*:}
    for prefetch in true false; do
      # A new GOCACHE each run. They are deleted after each scenario (go vet
      # std leaves ~1 GB each), then we wait a minute: on ext4, creating
      # files right after deleting thousands makes inode allocation crawl
      # (recently_deleted), which no fresh CI machine suffers from.
      fresh() { # $1: the run's number
        timed "fresh-$tag-${addr//[:.]/_}-$prefetch-$1" GOCACHEPROG="$PROG" CAIRN_REMOTE="grpc://$addr" CAIRN_PREFETCH=$prefetch -- "${args[@]}"
      }
      label="fresh machine, warm server, $name"
      [ "$prefetch" = true ] || label="$label, no prefetch"
      row "$cmd" "$label" "$(stats "$REPS" fresh)"
      rm -rf "$WORK"/fresh-*
      sync
      sleep 65
    done
  done
done

echo
header="| scenario |"; rule="|---|"
for cmd in "${CMDS[@]}"; do header="$header go $cmd |"; rule="$rule---|"; done
echo "$header"; echo "$rule"
scenarios=("cold, no cache" "warm, Go's own cache" "cold, cairn, uploading to the server" "warm local, cairn"
  "warm local, cairn with remote")
for name in loopback "+2 ms" "+10 ms"; do
  scenarios+=("fresh machine, warm server, $name" "fresh machine, warm server, $name, no prefetch")
done
for s in "${scenarios[@]}"; do
  line="| $s |"
  for cmd in "${CMDS[@]}"; do line="$line ${RESULT["$cmd|$s"]} |"; done
  echo "$line"
done
echo
echo "(seconds: median min of $REPS runs; $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1);" \
  "$("$CAIRN_GO" version); $(date -u +%Y-%m-%d))"
