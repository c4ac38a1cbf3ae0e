#!/usr/bin/env bash
# Generates the Bazel workspace that tests/bazel_e2e.rs builds against cairn.
#
# Usage: gen_workspace.sh DIR [EDIT]
#
#   DIR   where to write the workspace (created if missing; files are overwritten
#         with identical content on a re-run, so re-running is harmless).
#   EDIT  the content of the single "editable" source, //edit:input.txt
#         (default: "original"). Changing it re-runs exactly the 3 actions of the
#         //edit chain (EDIT_DEPENDENT_ACTIONS below) and nothing else.
#
# Everything is deterministic: same arguments, same bytes. Works offline with
# Debian's Bazel 4.2.3 (see /work/shared/BAZEL.md):
#   - chain/p0..p3: 4 packages x 10 genrules, each step reading the step before
#     it (step 0 of package N reads the last step of package N-1)    = 40 actions
#   - cc/...: a generated header, 4 chained cc_library + 1 cc_binary, and a
#     genrule that runs the binary (compile/archive/.so/link actions)
#   - tree: a Starlark rule producing a directory (tree artifact) with nested
#     files and an empty file, plus a genrule that reads the directory
#   - big: a 5 MiB file generated with awk, plus a genrule that checksums it
#   - empty: a 0-byte output and an action with one empty + one non-empty output
#   - edit: the 3-step chain fed by //edit:input.txt (crosses into edit/down)
# `bazel build //...` gives 65 cacheable (non-internal) processes (+13 internal).
#
# The C++ rules load @rules_cc and @rules_java, which Bazel 4 would download;
# local shim repositories under _shims/ (hidden from //... by .bazelignore)
# re-export Bazel's native rules instead.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 DIR [EDIT]" >&2
  exit 2
fi
ROOT=$1
EDIT=${2:-original}
# Packages and steps of the genrule chain.
CHAIN_PACKAGES=4
CHAIN_STEPS=10
# C++ libraries in the dependency chain cc/lib0 <- cc/lib1 <- ... <- cc/app.
CC_LIBS=4

mkdir -p "$ROOT"
cd "$ROOT"

# write FILE: writes stdin to FILE, creating its directory.
write() {
  mkdir -p "$(dirname "$1")"
  cat >"$1"
}

# ---------------------------------------------------------------- workspace ---
write WORKSPACE <<'EOF'
workspace(name = "cairn_e2e")

# Offline stand-ins for the rule repositories Bazel 4's C++ support loads.
local_repository(name = "rules_cc", path = "_shims/rules_cc")
local_repository(name = "rules_java", path = "_shims/rules_java")
EOF
write .bazelignore <<'EOF'
_shims
EOF
write BUILD <<'EOF'
EOF

write _shims/rules_cc/WORKSPACE <<'EOF'
workspace(name = "rules_cc")
EOF
write _shims/rules_cc/BUILD <<'EOF'
EOF
write _shims/rules_cc/cc/BUILD <<'EOF'
EOF
# Every C++ rule Bazel's own tools/ and the autoconfigured toolchain load.
write _shims/rules_cc/cc/defs.bzl <<'EOF'
def cc_binary(**kwargs):
    native.cc_binary(**kwargs)

def cc_import(**kwargs):
    native.cc_import(**kwargs)

def cc_library(**kwargs):
    native.cc_library(**kwargs)

def cc_proto_library(**kwargs):
    native.cc_proto_library(**kwargs)

def cc_test(**kwargs):
    native.cc_test(**kwargs)

def cc_toolchain(**kwargs):
    native.cc_toolchain(**kwargs)

def cc_toolchain_suite(**kwargs):
    native.cc_toolchain_suite(**kwargs)

def fdo_prefetch_hints(**kwargs):
    native.fdo_prefetch_hints(**kwargs)

def fdo_profile(**kwargs):
    native.fdo_profile(**kwargs)

def objc_import(**kwargs):
    native.objc_import(**kwargs)

def objc_library(**kwargs):
    native.objc_library(**kwargs)
EOF

write _shims/rules_java/WORKSPACE <<'EOF'
workspace(name = "rules_java")
EOF
write _shims/rules_java/BUILD <<'EOF'
EOF
write _shims/rules_java/java/BUILD <<'EOF'
EOF
write _shims/rules_java/java/defs.bzl <<'EOF'
def java_binary(**kwargs):
    native.java_binary(**kwargs)

def java_import(**kwargs):
    native.java_import(**kwargs)

def java_library(**kwargs):
    native.java_library(**kwargs)

def java_lite_proto_library(**kwargs):
    native.java_lite_proto_library(**kwargs)

def java_package_configuration(**kwargs):
    native.java_package_configuration(**kwargs)

def java_plugin(**kwargs):
    native.java_plugin(**kwargs)

def java_proto_library(**kwargs):
    native.java_proto_library(**kwargs)

def java_runtime(**kwargs):
    native.java_runtime(**kwargs)

def java_test(**kwargs):
    native.java_test(**kwargs)

def java_toolchain(**kwargs):
    native.java_toolchain(**kwargs)
EOF

# ------------------------------------------------------------ genrule chain ---
# Each step appends a line derived from its input (line count + checksum) and
# its package's own source file, so every output differs from every other.
for ((p = 0; p < CHAIN_PACKAGES; p++)); do
  pkg=chain/p$p
  printf 'seed of package %d\n' "$p" | write "$pkg/seed.txt"
  ((p > 0)) || printf 'start of the chain\n' | write "$pkg/start.txt"
  {
    echo 'package(default_visibility = ["//visibility:public"])'
    echo
    for ((s = 0; s < CHAIN_STEPS; s++)); do
      if ((s > 0)); then
        prev=":step$((s - 1))"
      elif ((p > 0)); then
        prev="//chain/p$((p - 1)):step$((CHAIN_STEPS - 1))"
      else
        prev="start.txt"
      fi
      cat <<EOF
genrule(
    name = "step$s",
    srcs = ["$prev", "seed.txt"],
    outs = ["step$s.txt"],
    cmd = "cat \$(location $prev) > \$@ && " +
          "echo \"p$p/step$s \$\$(wc -l < \$(location $prev)) \$\$(cksum < \$(location $prev))\" >> \$@ && " +
          "cat \$(location seed.txt) >> \$@",
)

EOF
    done
  } | write "$pkg/BUILD"
done

# ---------------------------------------------------------------------- C++ ---
# A genrule writes a header that cc/lib0 includes, so C++ depends on a genrule.
write cc/gen/BUILD <<'EOF'
load("@rules_cc//cc:defs.bzl", "cc_library")

package(default_visibility = ["//visibility:public"])

genrule(
    name = "version_h",
    srcs = ["//chain/p0:step3"],
    outs = ["version.h"],
    cmd = "echo \"#define CAIRN_E2E_VERSION $$(cksum < $(location //chain/p0:step3) | cut -d' ' -f1)\" > $@",
)

cc_library(
    name = "version",
    hdrs = [":version_h"],
    include_prefix = "gen",
)
EOF
for ((i = 0; i < CC_LIBS; i++)); do
  pkg=cc/lib$i
  if ((i == 0)); then
    dep='"//cc/gen:version"'
    include='#include "gen/version.h"'
    body='return CAIRN_E2E_VERSION % 1000 + x;'
  else
    dep="\"//cc/lib$((i - 1)):lib$((i - 1))\""
    include="#include \"cc/lib$((i - 1))/lib$((i - 1)).h\""
    body="return lib$((i - 1))_value(x) * 3 + $i;"
  fi
  write "$pkg/BUILD" <<EOF
load("@rules_cc//cc:defs.bzl", "cc_library")

cc_library(
    name = "lib$i",
    srcs = ["lib$i.cc"],
    hdrs = ["lib$i.h"],
    deps = [$dep],
    visibility = ["//visibility:public"],
)
EOF
  write "$pkg/lib$i.h" <<EOF
#pragma once
long lib${i}_value(long x);
EOF
  write "$pkg/lib$i.cc" <<EOF
#include "cc/lib$i/lib$i.h"
$include

long lib${i}_value(long x) { $body }
EOF
done
last=$((CC_LIBS - 1))
write cc/app/BUILD <<EOF
load("@rules_cc//cc:defs.bzl", "cc_binary")

cc_binary(
    name = "app",
    srcs = ["main.cc"],
    deps = ["//cc/lib$last:lib$last"],
)

# Runs the (target-configuration) binary, so its output is a cached action too.
genrule(
    name = "app_output",
    srcs = [":app"],
    outs = ["app_output.txt"],
    cmd = "\$(location :app) > \$@",
)
EOF
write cc/app/main.cc <<EOF
#include <cstdio>
#include "cc/lib$last/lib$last.h"

int main() {
  for (long i = 0; i < 5; i++) std::printf("%ld -> %ld\\n", i, lib${last}_value(i));
  return 0;
}
EOF

# ------------------------------------------------------------ tree artifact ---
write tree/tree.bzl <<'EOF'
"""A rule whose single output is a directory (a tree artifact)."""

def _tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        inputs = [ctx.file.src],
        outputs = [out],
        arguments = [ctx.file.src.path, out.path, str(ctx.attr.files)],
        command = """
set -eu
src=$1; out=$2; n=$3
mkdir -p "$out/sub/deeper" "$out/other"
i=0
while [ $i -lt $n ]; do
  { echo "file $i"; cat "$src"; } > "$out/sub/f$i.txt"
  i=$((i + 1))
done
cp "$src" "$out/sub/deeper/copy.txt"
echo top > "$out/top.txt"
: > "$out/other/empty.txt"
""",
        mnemonic = "TreeGen",
        progress_message = "Generating tree %s" % out.short_path,
    )
    return [DefaultInfo(files = depset([out]))]

tree = rule(
    implementation = _tree_impl,
    attrs = {
        "src": attr.label(allow_single_file = True),
        "files": attr.int(default = 12),
    },
)
EOF
write tree/BUILD <<'EOF'
load(":tree.bzl", "tree")

tree(
    name = "dir",
    src = "//chain/p1:step2",
)

# Reads every file of the tree, so a hit must restore the whole directory.
genrule(
    name = "manifest",
    srcs = [":dir"],
    outs = ["manifest.txt"],
    cmd = "cd $(location :dir) && find -L . -type f | LC_ALL=C sort | xargs cksum > $$OLDPWD/$@",
)
EOF

# ------------------------------------------------------------ large output ---
# 81920 lines of exactly 64 bytes = 5 MiB, many 16 KiB ByteStream chunks.
write big/BUILD <<'EOF'
genrule(
    name = "blob5m",
    outs = ["blob5m.txt"],
    cmd = "awk 'BEGIN { for (i = 0; i < 81920; i++) " +
          "printf \"%015d %031d %015d\\n\", i, (i * 7919 + 13) % 1000003, (i * i) % 999983 }' > $@",
)

genrule(
    name = "blob5m_sum",
    srcs = [":blob5m"],
    outs = ["blob5m_sum.txt"],
    cmd = "cksum < $(location :blob5m) > $@ && wc -c < $(location :blob5m) >> $@",
)
EOF

# ------------------------------------------------------------ empty outputs ---
write empty/BUILD <<'EOF'
genrule(
    name = "empty",
    outs = ["empty.txt"],
    cmd = "touch $@",
)

genrule(
    name = "mixed",
    srcs = [":empty"],
    outs = ["also_empty.txt", "not_empty.txt"],
    cmd = "cp $(location :empty) $(location also_empty.txt) && " +
          "echo 'empty input had' $$(wc -c < $(location :empty)) bytes > $(location not_empty.txt)",
)
EOF

# ------------------------------------------------------------ editable chain ---
# EDIT_DEPENDENT_ACTIONS=3: e1, e2 and down:e3 are the only consumers.
printf '%s\n' "$EDIT" | write edit/input.txt
write edit/BUILD <<'EOF'
exports_files(["input.txt"])

genrule(
    name = "e1",
    srcs = ["input.txt"],
    outs = ["e1.txt"],
    cmd = "tr a-z A-Z < $(location input.txt) > $@",
)

genrule(
    name = "e2",
    srcs = [":e1"],
    outs = ["e2.txt"],
    cmd = "rev < $(location :e1) > $@",
    visibility = ["//edit/down:__pkg__"],
)
EOF
write edit/down/BUILD <<'EOF'
genrule(
    name = "e3",
    srcs = ["//edit:e2"],
    outs = ["e3.txt"],
    cmd = "cat $(location //edit:e2) $(location //edit:e2) > $@",
)
EOF
