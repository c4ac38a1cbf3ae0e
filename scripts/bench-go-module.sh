#!/usr/bin/env bash
# Makes the multi-package, stdlib-only Go module the Go benchmarks test,
# vet and build: `make_module DIR` (8 packages importing net/http,
# text/template, go/parser, archive/zip, ... each with a test). Sourced by
# scripts/bench-go-net.sh and scripts/bench-go-trouble.sh.
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
