#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: builds cairn, runs `cairn bench` against a cairn
# it starts and against every peer in PEERS, and writes the machine, the date,
# the exact commands and the tables above the hand-written part of the file
# (everything after the END GENERATED marker is kept as it is).
#
# The light workloads run REPEATS times and each figure is the median (the
# machine's 2 cores are shared, so single runs are noisy); the heavy ones
# (1 GiB streams, start-up over 1M entries + 10 GiB, the LRU trace) run once.
#
#   scripts/bench.sh                    full run (about 20-30 minutes)
#   QUICK=1 scripts/bench.sh            small sizes, to try the script (minutes)
#   PEERS="" scripts/bench.sh           cairn only
#   SOAK=0 scripts/bench.sh             without the soak (SOAK_DURATION, default 10m)
#   COLD_TIER=0 scripts/bench.sh        without the cold node over a warm bucket (needs
#                                       Garage: CAIRN_GARAGE, or where scripts/setup.sh puts it)
#
# Adding a peer: write scripts/peer-NAME.sh answering `install`, `start DIR`
# (print "URL PID") and `stop DIR` (see scripts/peer-buildgrid.sh), and add
# NAME to PEERS below.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=(${PEERS-buildgrid})
REPEATS=${REPEATS:-3}
QUICK=${QUICK:-0}
SOAK=${SOAK:-1}
SOAK_DURATION=${SOAK_DURATION:-10m}
COLD_TIER=${COLD_TIER:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
export CAIRN_BENCH_TMP=${CAIRN_BENCH_TMP:-/var/tmp}
STARTUP_DIR=${STARTUP_DIR:-$CAIRN_BENCH_TMP/cairn-bench-startup}

# The commit the numbers belong to (taken before building).
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo " plus uncommitted changes" || true)
cargo build --release --quiet
work=$(mktemp -d "$CAIRN_BENCH_TMP/cairn-bench-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A private copy: colleagues may rebuild the target dir during the run.
bin="$work/cairn"
cp "$CARGO_TARGET_DIR/release/cairn" "$bin"

light=(--only limits,find-missing,ac,batch,bytestream,replay)
large=(--only bytestream --stream-sizes 1GiB)
startup=(--only startup --startup-entries 1000000 --startup-bytes 10GiB --startup-dir "$STARTUP_DIR")
lru=(--only lru)
soak=(--soak --soak-duration "$SOAK_DURATION")
cold=(--cold-tier)
if [[ $QUICK == 1 ]]; then
    REPEATS=1
    light+=(--seconds 0.5 --batch-bytes 8MiB --stream-sizes 1MiB,16MiB --replay-actions 300 --go-scale 0.1)
    large=(--only bytestream --stream-sizes 128MiB)
    startup=(--only startup --startup-entries 100000 --startup-bytes 1GiB --startup-dir "$STARTUP_DIR-quick")
    lru+=(--lru-accesses 50000)
    cold+=(--cold-tier-digests 1000 --cold-tier-actions 100 --cold-tier-mib-blobs 16 --cold-tier-large-blobs 1)
    soak=(--soak --soak-duration 30s --soak-clients 32 --soak-max-size 512MiB --soak-stream-max 32MiB
        --soak-huge-size 128MiB)
fi

commands=()
run() { # name, json, args...
    local name=$1 json=$2
    shift 2
    commands+=("cairn bench $*")
    echo "== $name: cairn bench $*" >&2
    "$bin" bench "$@" --json "$json" >"$json.md" || echo "(exit $? — see the errors column)" >&2
}

for i in $(seq 1 "$REPEATS"); do
    run "cairn light $i" "$work/cairn-light-$i.json" --start-cairn "${light[@]}"
done
run "cairn 1 GiB" "$work/cairn-large.json" --start-cairn "${large[@]}"
run "cairn start-up" "$work/cairn-startup.json" --start-cairn "${startup[@]}"
run "cairn LRU" "$work/cairn-lru.json" --start-cairn "${lru[@]}"
if [[ $SOAK == 1 ]]; then
    run "cairn soak" "$work/cairn-soak.json" --start-cairn "${soak[@]}"
fi
if [[ $COLD_TIER == 1 ]]; then
    run "cairn cold tier" "$work/cairn-cold.json" "${cold[@]}"
fi
existing() { for f in "$@"; do [[ -e $f ]] && echo "$f"; done; }
mapfile -t jsons < <(existing "$work"/cairn-light-*.json "$work"/cairn-{large,startup,lru}.json)
"$bin" bench --merge "${jsons[@]}" --json "$work/merged-cairn.json" --markdown "$work/merged-cairn.md" >/dev/null || true

peer_md=()
merged=("$work/merged-cairn.json")
for peer in "${PEERS[@]}"; do
    script="scripts/peer-$peer.sh"
    if ! "$script" install >&2; then
        peer_md+=("### $peer"$'\n\n'"Could not be installed here: see the output of \`$script install\`."$'\n')
        continue
    fi
    version=$("$script" version 2>/dev/null || echo "$peer")
    for i in $(seq 1 "$REPEATS") large; do
        dir="$work/peer-$peer-$i"
        mkdir -p "$dir"
        read -r url pid < <("$script" start "$dir")
        args=("${light[@]}")
        [[ $i == large ]] && args=("${large[@]}")
        # Peers get a bound: a slow peer must not stall the whole run.
        commands+=("$script start DIR; cairn bench --target URL --name $peer --server-pid PID ${args[*]}")
        echo "== $peer $i: cairn bench --target $url ${args[*]}" >&2
        timeout 1800 "$bin" bench --target "$url" --name "$peer" --server-pid "$pid" "${args[@]}" \
            --json "$work/$peer-$i.json" >"$work/$peer-$i.md" || echo "($peer run $i failed or timed out)" >&2
        "$script" stop "$dir"
        rm -rf "$dir"
    done
    mapfile -t jsons < <(existing "$work/$peer"-[0-9]*.json "$work/$peer"-large.json)
    if [[ ${#jsons[@]} -gt 0 ]]; then
        "$bin" bench --merge "${jsons[@]}" --json "$work/merged-$peer.json" --markdown "$work/merged-$peer.md" \
            >/dev/null || true
        merged+=("$work/merged-$peer.json")
        peer_md+=("$(head -1 "$work/merged-$peer.md")"$'\n\n'"$version, configured by scripts/peer-$peer.yml."$'\n\n'"$(tail -n +2 "$work/merged-$peer.md")")
    else
        peer_md+=("### $peer"$'\n\n'"No run completed; see the log of this script."$'\n')
    fi
done
compare=$("$bin" bench --compare "${merged[@]}")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'sha_ni|avx2|avx512f' | sort -u | tr '\n' ' ')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)

hand=""
if [[ -f BENCHMARKS.md ]] && grep -q '^<!-- END GENERATED' BENCHMARKS.md; then
    hand=$(sed -n '/^<!-- END GENERATED/,$p' BENCHMARKS.md | tail -n +2)
fi
{
    echo "# cairn benchmarks"
    echo
    echo "Generated by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), cairn built from commit $rev$dirty."
    echo "Everything above the END GENERATED marker is rewritten by the script; the analysis below it is kept."
    echo
    echo "## Machine"
    echo
    echo "- CPU: $cpu, $(nproc) cores (flags: $flags), $mem RAM, Linux $(uname -r)"
    echo "- Disk: the data dirs live under $CAIRN_BENCH_TMP ($(df -h "$CAIRN_BENCH_TMP" | awk 'NR==2 {print $1", "$2}'))"
    echo "- Client and server share the same $(nproc) cores, and other jobs (Bazel, Go, rustc) ran on them"
    echo "  during the run: figures are medians of $REPEATS runs for the light workloads and single runs"
    echo "  for the heavy ones; expect ±30%."
    echo
    echo "## Commands"
    echo
    echo '```'
    printf '%s\n' "${commands[@]}" | awk '!seen[$0]++'
    echo '```'
    echo
    echo "## Goals (cairn)"
    echo
    sed -n '/^#### Goals/,$p' "$work/merged-cairn.md" | tail -n +3
    echo
    if [[ -s $work/cairn-soak.json.md ]]; then
        echo "## Soak (cairn)"
        echo
        echo "One server at its size limit under well-behaved and misbehaving clients at once"
        echo "(README.md, "Proof at scale", says what each row checks)."
        echo
        sed -n '/^| workload/,/^$/p' "$work/cairn-soak.json.md"
        sed -n '/^#### Goals/,$p' "$work/cairn-soak.json.md" | tail -n +3
        echo
    fi
    if [[ -s $work/cairn-cold.json.md ]]; then
        echo "## A cold node over a warm bucket (cairn)"
        echo
        echo "Node A writes through its local store and the write-behind queue drains it to the bucket;"
        echo "node B starts with an empty data dir over the same bucket and reads it all (DEPLOYMENT.md"
        echo "says what the figures mean for a deployment). Each cold figure is followed by the same"
        echo "reads again through B, now local; the note is the object-store calls B made for it."
        echo
        head -1 "$work/cairn-cold.json.md" | sed 's/^### //'
        echo
        sed -n '/^| workload/,/^$/p' "$work/cairn-cold.json.md"
    fi
    echo "## cairn against its peers"
    echo
    echo "Headline figure per workload (MB/s where bytes move, else ops/s), p99 latency, and the speed ratio."
    echo
    echo "$compare"
    echo
    echo "## cairn, all figures"
    echo
    echo "\"vs limit\" is each figure as a fraction of the reference point measured in the same run."
    echo
    sed -n '/^| workload/,/^$/p' "$work/merged-cairn.md"
    for md in "${peer_md[@]}"; do
        echo
        echo "## Peer: $(echo "$md" | head -1 | sed 's/^### //; s/ at grpc.*//')"
        echo
        echo "$md" | tail -n +2 | sed '/^#### Goals/,$d'
    done
    echo
    echo "<!-- END GENERATED: scripts/bench.sh keeps everything below this line -->"
    echo "$hand"
} >BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
