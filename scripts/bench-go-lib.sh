#!/usr/bin/env bash
# What the Go benchmarks share: scripts/bench-go.sh and the scripts it runs
# (bench-go-net.sh, bench-go-trouble.sh) source this from the repository's
# root after setting BENCH (their name in messages). It defines functions
# only, and PIDS, the background processes to end at exit (each also
# appended to $PIDFILE when that is set, so a later run can end leftovers).
PIDS=()

# build_cairn [CARGO-ARGS...]: Go for the benchmarks (sets CAIRN_GO), and
# cairn built in release (plus what CARGO-ARGS name) unless NO_BUILD=1.
build_cairn() {
  eval "$(./scripts/setup.sh | grep '^CAIRN_GO=')"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cairn-target}
  [ "${NO_BUILD:-0}" = 1 ] || cargo build --release --bin cairn "$@" >&2
}

# commit_id: the commit the benchmark ran ("+changes" if src/ differs from it).
commit_id() { echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo "+changes")"; }

# track PID: a background process to end at exit (see kill_tracked).
track() {
  PIDS+=("$1")
  [ -z "${PIDFILE:-}" ] || echo "$1" >>"$PIDFILE"
}
# bg CMD...: runs CMD in the background, tracked.
bg() { "$@" & track $!; }
# kill_tracked: ends the processes this run started.
kill_tracked() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}

# start_bg LOG VAR CMD...: runs CMD in the background (tracked), waits for
# "listening on ADDR" in LOG (its output), and sets VAR to ADDR.
start_bg() { start_matching 'listening on' "$@"; }
# start_server LOG VAR ARGS...: `$CAIRN serve ARGS` on free loopback ports
# (gRPC and admin); VAR = its gRPC address.
start_server() {
  local log=$1 var=$2
  shift 2
  start_matching 'cairn listening on' "$log" "$var" "$CAIRN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@"
}
# admin_addr LOG: the admin address a `cairn serve` started by start_server logged.
admin_addr() { sed -n 's/.*admin listening on \([0-9.:]*\).*/\1/p' "$1" | head -n1; }
# requests_total ADMIN REGEX...: the sum of the server's cairn_requests_total
# samples (from its /metrics) whose line matches every REGEX.
requests_total() {
  local admin=$1
  shift
  curl -s "http://$admin/metrics" | awk -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    /^cairn_requests_total/ { for (i = 1; i <= n; i++) if ($0 !~ w[i]) next; s += $NF }
    END { print s + 0 }'
}
# start_matching WORDS LOG VAR CMD...: start_bg, waiting for "WORDS ADDR".
start_matching() {
  local words=$1 log=$2 var=$3 addr=""
  shift 3
  "$@" >"$log" 2>&1 &
  track $!
  for _ in $(seq 1 600); do
    addr=$(sed -n "s/.*$words \([0-9.:]*\).*/\1/p" "$log" | head -n1)
    [ -z "$addr" ] || break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "$BENCH: $* did not start; log:" >&2; cat "$log" >&2; exit 1; }
  printf -v "$var" '%s' "$addr"
}

# go_env: Go as in the tests (offline, no cgo, no user config, GOPATH under
# $WORK), and none of the caller's cairn or GOCACHEPROG settings.
go_env() {
  export GOTOOLCHAIN=local GOENV=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 GOPATH=$WORK/gopath
  unset CAIRN_REMOTE CAIRN_DIR CAIRN_PREFETCH CAIRN_WAIT_FOR_UPLOADS GOCACHEPROG
}

# median: the median of the numbers on stdin, one a line ("-" if none).
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "-" }'; }

# make_module DIR: the multi-package, stdlib-only Go module the benchmarks
# test, vet and build (8 packages importing net/http, text/template,
# go/parser, archive/zip, ... each with a test).
make_module() {
  local MOD=$1 i=0 imports imp
  rm -rf "$MOD"; mkdir -p "$MOD"
  printf 'module example.com/netbench\n\ngo 1.24\n' >"$MOD/go.mod"
  i=0
  for imports in '"encoding/json" "strings"' '"net/http" "net/http/httptest" "io"' '"text/template" "bytes"' \
    '"compress/gzip" "bytes" "io"' '"crypto/sha256" "encoding/hex"' '"regexp" "sort"' '"archive/zip" "bytes"' \
    '"go/parser" "go/token"'; do
    i=$((i + 1)); mkdir -p "$MOD/p$i"
    {
      echo "package p$i"; echo; echo "import ("
      for imp in $imports; do echo "	$imp"; done
      echo ")"
      # Uses each import so the file compiles; the test only checks it runs.
      echo "var _ = []any{"
      for imp in $imports; do
        case $imp in
          '"encoding/json"') echo "	json.Marshal," ;; '"strings"') echo "	strings.ToUpper," ;;
          '"net/http"') echo "	http.NewRequest," ;; '"net/http/httptest"') echo "	httptest.NewRecorder," ;;
          '"io"') echo "	io.ReadAll," ;; '"text/template"') echo "	template.New," ;; '"bytes"') echo "	bytes.NewReader," ;;
          '"compress/gzip"') echo "	gzip.NewReader," ;; '"crypto/sha256"') echo "	sha256.Sum256," ;;
          '"encoding/hex"') echo "	hex.EncodeToString," ;; '"regexp"') echo "	regexp.MustCompile," ;;
          '"sort"') echo "	sort.Strings," ;; '"archive/zip"') echo "	zip.NewReader," ;;
          '"go/parser"') echo "	parser.ParseFile," ;; '"go/token"') echo "	token.NewFileSet," ;;
        esac
      done
      echo "}"; echo; echo "// N is package p$i's number."; echo "func N() int { return $i }"
    } >"$MOD/p$i/p.go"
    printf 'package p%d\n\nimport "testing"\n\nfunc TestN(t *testing.T) {\n\tif N() != %d {\n\t\tt.Fatal(N())\n\t}\n}\n' \
      "$i" "$i" >"$MOD/p$i/p_test.go"
  done
}
