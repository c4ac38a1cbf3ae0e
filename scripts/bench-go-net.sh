#!/usr/bin/env bash
# Benchmarks `cairn gocacheprog` over a real network (issue 10): the server
# runs in a network namespace joined to the host by two TUN devices and
# `cairn bench link`, which delays every packet $DELAY each way and paces
# each direction to a rate, so RTT and bandwidth act on real packets and real
# TCP (this kernel has no netem qdisc). Run as `scripts/bench-go.sh net`.
#
# Steps: measure the link (RTT over an established TCP connection, bulk
# rate of one TCP stream from the namespace); fill the server once per
# workload (a cold build through the shim, then one fresh-machine run that
# writes the workload's prefetch manifest); then, for each rate, per
# workload, the median of $REPS runs of
#   Go's own warm cache      GOCACHE warm, no GOCACHEPROG
#   fresh machine            empty GOCACHE, GOCACHEPROG="cairn gocacheprog
#                            --remote grpc://NS_ADDR:9092" against the warm server
# with the compiles each run did (`go ... -x`: compiler invocations) and the
# bytes the fresh machine fetched (counted by the forwarder). The wire floor
# is those bytes divided by the measured bulk rate. Prints a Markdown table.
# Each workload runs in a directory of its own, so each has its own
# prefetch manifest, as each CI job in its own checkout would. The fresh
# GOCACHEs are deleted only at the end: on ext4, creating thousands of files
# right after deleting thousands is slow (recently deleted inodes), which
# would land on the next runs and which no fresh CI machine suffers.
# FRESH_ENV (e.g. CAIRN_ZSTD=0) is added to the fresh runs' environment.
#
# Needs root and /dev/net/tun. Env: REPS (3), DELAY (5ms), RATES
# ("unlimited 100Mbit"), MTU (1500), WORKLOADS ("build-std build-std-cmd
# test-module"), BENCH_DIR (/var/tmp/cairn-bench-go-net; Go's own warm
# cache is kept there between runs, everything else is made afresh),
# NO_BUILD=1 to use the built binary as is. Re-running is safe: leftovers
# of an earlier run (namespace, processes it recorded) are removed first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-go net: needs root (network namespace, TUN devices)" >&2; exit 1; }
[ -c /dev/net/tun ] || { echo "bench-go net: /dev/net/tun is missing (modprobe tun)" >&2; exit 1; }
BENCH="bench-go net"
# shellcheck source=scripts/bench-go-lib.sh
source scripts/bench-go-lib.sh
build_cairn
REPS=${REPS:-3}
DELAY=${DELAY:-5ms}
read -r -a RATES <<<"${RATES:-unlimited 100Mbit}"
read -r -a WORKLOADS <<<"${WORKLOADS:-build-std build-std-cmd test-module}"
MTU=${MTU:-1500}
FRESH_ENV=${FRESH_ENV:-}
WORK=${BENCH_DIR:-/var/tmp/cairn-bench-go-net}
NS=cairn-bgn TA=cbgn-host TB=cbgn-ns HOST_IP=10.203.0.1 NS_IP=10.203.0.2
PIDFILE=$WORK/pids

cleanup() {
  # Only processes this script started: their ids are in $PIDFILE, and
  # whatever still runs inside our namespace.
  if [ -f "$PIDFILE" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$PIDFILE"
    rm -f "$PIDFILE"
  fi
  if ip netns list | grep -qw "$NS"; then
    for p in $(ip netns pids "$NS"); do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    ip netns del "$NS" 2>/dev/null || true
  fi
  rm -rf "$WORK/fresh" "$WORK/seed" "$WORK/server"
}
mkdir -p "$WORK"
cleanup
trap cleanup EXIT
mkdir -p "$WORK/bin" "$WORK/fresh" "$WORK/seed" "$WORK/own"
# A copy: other checkouts sharing the target dir may rebuild it meanwhile.
cp "$CARGO_TARGET_DIR/release/cairn" "$WORK/bin/"
COMMIT=$(commit_id)
CAIRN=$WORK/bin/cairn

# The namespace and the server live for the whole run; the link is
# restarted for each rate (its TUN devices go with it).
ip netns add "$NS"
ip -n "$NS" link set lo up
bg ip netns exec "$NS" "$CAIRN" serve --listen 0.0.0.0:9092 --data-dir "$WORK/server" --max-size 20GiB \
  >"$WORK/server.log" 2>&1
# A TCP sink in the namespace for the link measurements: each line "N"
# is answered with N bytes.
bg ip netns exec "$NS" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9099)); s.listen(4)
buf = bytes(1 << 20)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for line in c.makefile("rb"):
            n = int(line)
            while n > 0:
                c.sendall(buf[:min(n, len(buf))]); n -= len(buf)
    except (OSError, ValueError):
        pass
    c.close()
' >"$WORK/sink.log" 2>&1

LINK_LOG=
link_up() { # $1: rate
  if [ -n "${LINK_PID:-}" ]; then kill "$LINK_PID" 2>/dev/null || true; wait "$LINK_PID" 2>/dev/null || true; fi
  LINK_LOG=$WORK/link-$1.log
  : >"$WORK/link.out"
  "$CAIRN" bench link --tun-a "$TA" --tun-b "$TB" --delay "$DELAY" --rate "$1" --stats-every 100ms \
    >"$WORK/link.out" 2>"$LINK_LOG" &
  LINK_PID=$!
  track "$LINK_PID"
  for _ in $(seq 1 100); do grep -q ready "$WORK/link.out" && break; sleep 0.1; done
  grep -q ready "$WORK/link.out" || { echo "bench-go net: the link did not start:" >&2; cat "$LINK_LOG" >&2; exit 1; }
  ip addr add "$HOST_IP" peer "$NS_IP" dev "$TA"
  ip link set "$TA" mtu "$MTU" up
  ip link set "$TB" netns "$NS"
  ip -n "$NS" addr add "$NS_IP" peer "$HOST_IP" dev "$TB"
  ip -n "$NS" link set "$TB" mtu "$MTU" up
}
# Counters of the forwarder's namespace-to-host direction: "bytes dropped".
link_counters() {
  sleep 0.3 # the forwarder prints every 100 ms
  tail -n 1 "$LINK_LOG" | sed -n 's/.*; [^:]*: [0-9]* packets, \([0-9]*\) bytes, \([0-9]*\) dropped (queue full), \([0-9]*\) dropped (wire full).*/\1 \2 \3/p' |
    awk '{ print $1, $2 + $3 } END { if (NR == 0) print 0, 0 }'
}
# Prints "RTT-ms bulk-bit/s" of the current link.
measure_link() {
  python3 - "$NS_IP" <<'EOF'
import socket, statistics, sys, time
host = sys.argv[1]
for _ in range(100):
    try:
        s = socket.create_connection((host, 9099), timeout=2); break
    except OSError:
        time.sleep(0.1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(20):
    t = time.perf_counter(); s.sendall(b"1\n"); s.recv(1); rtts.append(time.perf_counter() - t)
s.close()
s = socket.create_connection((host, 9099)); s.sendall(b"%d\n" % (1 << 40))
buf = bytearray(1 << 20); got = 0
s.recv_into(buf); t0 = time.perf_counter()
while time.perf_counter() - t0 < 4:
    got += s.recv_into(buf)
dt = time.perf_counter() - t0
s.close()
print("%.2f %.0f" % (statistics.median(rtts) * 1e3, got * 8 / dt))
EOF
}

go_env
PROG="$CAIRN gocacheprog"
REMOTE=grpc://$NS_IP:9092

# The multi-package, stdlib-only module of the test workload.
MOD=$WORK/run/test-module
make_module "$MOD"

args_of() {
  case $1 in
    build-std) echo "build std" ;;
    build-std-cmd) echo "build std cmd" ;;
    test-module) echo "test ./..." ;;
    newtags-*) echo "test -tags ${1#newtags-} ./..." ;; # the module, with a build tag never used before
  esac
}
dir_of() { # each workload has its own directory (and so its own prefetch manifest)
  case $1 in
    test-module | newtags-*) echo "$MOD" ;;
    *) mkdir -p "$WORK/run/$1"; echo "$WORK/run/$1" ;;
  esac
}

# go_run WORKLOAD GOCACHE ENV...: runs the workload with -x; prints "seconds
# compiles fetched-bytes dropped-packets" (fetched: namespace-to-host bytes).
go_run() {
  local w=$1 gocache=$2; shift 2
  local dir; dir=$(dir_of "$w")
  read -r -a args <<<"$(args_of "$w")"
  read -r b0 d0 <<<"$(link_counters)"
  local t0 t1 err=$WORK/go.err
  t0=$(date +%s.%N)
  out=$(cd "$dir" && env GOCACHE="$gocache" "$@" "$CAIRN_GO" "${args[0]}" -x "${args[@]:1}" 2>"$err" >/dev/null; echo "rc=$?")
  t1=$(date +%s.%N)
  [ "$out" = rc=0 ] || { echo "bench-go net: go ${args[*]} failed:" >&2; tail -n 30 "$err" >&2; exit 1; }
  read -r b1 d1 <<<"$(link_counters)"
  local compiles
  compiles=$(awk '$1 ~ /\/compile$/ { n++ } END { print n + 0 }' "$err")
  awk -v a="$t0" -v b="$t1" -v c="$compiles" -v f=$((b1 - b0)) -v d=$((d1 - d0)) \
    'BEGIN { printf "%.3f %d %d %d\n", b - a, c, f, d }'
}
RESULTS=$WORK/results.tsv
: >"$RESULTS"
record() { echo "$*" | tee -a "$RESULTS" >&2; }

date -u +"start %H:%M:%S, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ri in "${!RATES[@]}"; do
  rate=${RATES[$ri]}
  link_up "$rate"
  read -r rtt bulk <<<"$(measure_link)"
  record "link $rate rtt_ms=$rtt bulk_bps=$bulk"
  if [ "$ri" = 0 ]; then
    # Fill the server (cold, uploads waited for) and Go's own cache.
    for w in "${WORKLOADS[@]}"; do
      record "seed $w cold-shim $(go_run "$w" "$WORK/seed/$w-cold" GOCACHEPROG="$PROG" CAIRN_REMOTE="$REMOTE" \
        CAIRN_WAIT_FOR_UPLOADS=1 CAIRN_FINISH_TIMEOUT=600s)"
      record "seed $w manifest $(go_run "$w" "$WORK/seed/$w-fresh" GOCACHEPROG="$PROG" CAIRN_REMOTE="$REMOTE" \
        CAIRN_WAIT_FOR_UPLOADS=1)"
      record "seed $w own-first $(go_run "$w" "$WORK/own")"
    done
  fi
  for w in "${WORKLOADS[@]}"; do
    for rep in $(seq 1 "$REPS"); do
      [ "$ri" != 0 ] || record "run $w own $rate $rep $(go_run "$w" "$WORK/own")"
      record "run $w fresh $rate $rep $(go_run "$w" "$WORK/fresh/$w-$rate-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="$REMOTE" $FRESH_ENV)"
    done
  done
  # A new flag set's first run (fallback keys): `go test -tags T ./...` of
  # the module with a tag no run used before, so its own manifest key is
  # empty and it starts from the project's (that of `go test ./...`).
  if [[ " ${WORKLOADS[*]} " == *" test-module "* ]]; then
    for rep in $(seq 1 "$REPS"); do
      tag=cairnnew${ri}x$rep$RANDOM
      record "run newtags fresh $rate $rep $(go_run "newtags-$tag" "$WORK/fresh/newtags-$rate-$rep" GOCACHEPROG="$PROG" CAIRN_REMOTE="$REMOTE" $FRESH_ENV)"
    done
  fi
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The report: medians per workload and rate.
col() { # col WORKLOAD KIND RATE FIELD (1 seconds, 2 compiles, 3 fetched bytes, 4 drops)
  awk -v w="$1" -v k="$2" -v r="$3" -v f="$4" '$1 == "run" && $2 == w && $3 == k && $4 == r { print $(5 + f) }' "$RESULTS"
}
echo
echo "| link | workload | Go's own warm cache (s) | fresh machine + cairn (s, median; min–max) | compiles (fresh) | fetched | wire floor (s) | goal ≤ 1.5 × max(own, floor) | met |"
echo "|---|---|--:|--:|--:|--:|--:|--:|---|"
for rate in "${RATES[@]}"; do
  read -r rtt bulk < <(awk -v r="$rate" '$1 == "link" && $2 == r { sub("rtt_ms=", "", $3); sub("bulk_bps=", "", $4); print $3, $4 }' "$RESULTS")
  for w in "${WORKLOADS[@]}"; do
    own=$(col "$w" own "${RATES[0]}" 1 | median)
    fresh=$(col "$w" fresh "$rate" 1 | median)
    range=$(col "$w" fresh "$rate" 1 | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }')
    compiles=$(col "$w" fresh "$rate" 2 | tr '\n' ' ' | sed 's/ $//; s/ /, /g')
    fetched=$(col "$w" fresh "$rate" 3 | median)
    awk -v link="$DELAY each way ($rtt ms RTT), $rate ($(awk -v b="$bulk" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s measured)" \
      -v w="$(args_of "$w")" -v own="$own" -v fresh="$fresh" -v range="$range" -v c="$compiles" -v f="$fetched" -v bulk="$bulk" '
      BEGIN {
        floor = f * 8 / bulk; goal = 1.5 * (own > floor ? own : floor)
        ok = (fresh <= goal) ? "time met" : "time **not met**"
        split(c, cs, ", "); zero = 1; for (i in cs) if (cs[i] + 0 > 0) zero = 0
        ok = ok (zero ? ", no compiles: met" : ", no compiles: **not met**")
        printf "| %s | go %s | %.2f | %.2f; %s | %s | %.0f MiB | %.2f | %.2f | %s |\n", link, w, own, fresh, range, c, f / 1048576, floor, goal, ok
      }'
  done
done
if grep -q '^run newtags' "$RESULTS"; then
  echo
  echo "| link | first run of a new flag set: go test -tags NEW ./... (s, median; min–max) | compiles | prefetched go test ./... (s, median) | goal ≤ 2 × prefetched | met |"
  echo "|---|--:|--:|--:|--:|---|"
  for rate in "${RATES[@]}"; do
    new=$(col newtags fresh "$rate" 1 | median)
    range=$(col newtags fresh "$rate" 1 | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }')
    compiles=$(col newtags fresh "$rate" 2 | tr '\n' ' ' | sed 's/ $//; s/ /, /g')
    base=$(col test-module fresh "$rate" 1 | median)
    awk -v r="$rate" -v n="$new" -v range="$range" -v c="$compiles" -v b="$base" 'BEGIN {
      printf "| %s | %.2f; %s | %s | %.2f | %.2f | %s |\n", r, n, range, c, b, 2 * b, (n <= 2 * b) ? "met" : "**not met**" }'
  done
fi
echo
echo "(REPS=$REPS; MTU $MTU; $(nproc) CPUs; load average $LOAD_START at the start, $LOAD_END at the end;" \
  "$("$CAIRN_GO" version); cairn $COMMIT; $(date -u '+%Y-%m-%d %H:%M UTC'))"
echo "Packets the link dropped (queue full) per fresh run: $(awk '$1 == "run" && $3 == "fresh" { printf "%s ", $9 }' "$RESULTS")"
