//! Drives a real Bazel over the workspace `tests/bazel/gen_workspace.sh`
//! generates, in a private temp dir with its own `--output_user_root`, so
//! tests never share a Bazel server, an output base or a local cache.
//! Dropping a [`Bazel`] shuts its server down, also when a test panics.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::exec_log::{self, Spawn};
use super::summary::ProcessSummary;

/// Bazel's server exits by itself after this long idle, in case `shutdown`
/// never runs (e.g. the test process is killed).
const MAX_IDLE_SECS: u32 = 300;
/// Lines of Bazel's output quoted when a command fails.
const TAIL_LINES: usize = 60;

/// The Bazel binary: `$CAIRN_BAZEL` or `bazel` on PATH.
fn bazel_bin() -> OsString {
    std::env::var_os("CAIRN_BAZEL").unwrap_or_else(|| "bazel".into())
}

/// A generated workspace plus the Bazel server that builds it.
pub struct Bazel {
    /// Holds the workspace, the output root and the execution logs.
    dir: tempfile::TempDir,
    workspace: PathBuf,
    output_user_root: PathBuf,
    /// Numbers the execution log of each build.
    builds: AtomicUsize,
    /// Extra startup options (before the command), e.g. `--host_jvm_args=…`.
    startup: Vec<String>,
}

/// What one successful `bazel build` did.
pub struct Build {
    pub summary: ProcessSummary,
    /// Every spawn, from `--execution_log_json_file`.
    pub spawns: Vec<Spawn>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Build {
    /// `mnemonic: progress message` of each action that missed the cache.
    pub fn misses(&self) -> Vec<String> {
        exec_log::misses(&self.spawns)
    }

    /// WARNING/ERROR lines about the remote cache: Bazel reports failed
    /// uploads or downloads this way and then carries on without the cache.
    pub fn remote_warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("WARNING:") || l.starts_with("ERROR:"))
            .filter(|l| l.to_ascii_lowercase().contains("remote"))
            .collect()
    }

    /// A cold build into an empty cache went through cleanly: no remote
    /// warnings, the workspace's cacheable actions all ran, none was a hit.
    pub fn assert_cold(&self) {
        assert!(self.remote_warnings().is_empty(), "{:#?}", self.remote_warnings());
        assert!(self.summary.cacheable() >= 50, "{:?}", self.summary);
        assert_eq!(self.summary.remote_cache_hits(), 0);
    }

    /// Every action `cold` could cache was a remote cache hit here, without
    /// remote warnings.
    pub fn assert_every_action_hit(&self, cold: &Build) {
        assert!(self.remote_warnings().is_empty(), "{:#?}", self.remote_warnings());
        assert_eq!(
            self.summary.remote_cache_hits(),
            cold.summary.cacheable(),
            "not every action hit: {:?}\nmisses: {:#?}",
            self.summary,
            self.misses()
        );
    }

    /// One line for the test log.
    pub fn describe(&self) -> String {
        let s = &self.summary;
        format!(
            "{:.1}s: {} processes, {} internal, {} cacheable: {} remote cache hits, {} executed {:?}",
            self.elapsed.as_secs_f64(),
            s.total,
            s.internal(),
            s.cacheable(),
            s.remote_cache_hits(),
            s.executed(),
            s.by_runner,
        )
    }
}

impl Bazel {
    /// Checks that Bazel is installed (panicking with a hint if not: these
    /// tests must fail, not skip, on a machine without it) and generates the
    /// workspace with `edit` as the content of the editable input.
    pub fn new(edit: &str) -> Bazel {
        match Command::new(bazel_bin()).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("`bazel --version` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)),
            Err(e) => panic!(
                "cannot run Bazel ({e}): the Bazel end-to-end tests need it; \
                 run scripts/setup.sh (installs Debian's bazel-bootstrap) or set CAIRN_BAZEL"
            ),
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let bazel = Bazel {
            workspace: dir.path().join("ws"),
            output_user_root: dir.path().join("root"),
            dir,
            builds: AtomicUsize::new(0),
            startup: Vec::new(),
        };
        bazel.generate(edit);
        bazel
    }

    /// Adds startup options (`bazel OPTION… build …`), such as JVM flags;
    /// call before the first command.
    pub fn with_startup(mut self, options: &[String]) -> Bazel {
        self.startup.extend_from_slice(options);
        self
    }

    /// (Re)writes the workspace; only the editable input changes with `edit`.
    pub fn generate(&self, edit: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel/gen_workspace.sh");
        let out =
            Command::new("bash").arg(&script).arg(&self.workspace).arg(edit).output().expect("run gen_workspace.sh");
        assert!(out.status.success(), "gen_workspace.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `bazel build <flags> //...`; panics (quoting Bazel) unless it succeeds
    /// and prints a parseable process summary.
    pub async fn build(&self, flags: &[String]) -> Build {
        let n = self.builds.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("exec-{n}.json"));
        let mut args: Vec<String> = [
            "build",
            "--color=no",
            "--curses=no",
            "--show_progress_rate_limit=30",
            // The system bazelrc turns this on; it floods stderr with mount lines.
            "--nosandbox_debug",
            // Actions see a fixed PATH, not the test runner's environment.
            "--incompatible_strict_action_env",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--execution_log_json_file={}", log.display()));
        args.extend(flags.iter().cloned());
        args.push("//...".into());

        let started = Instant::now();
        let stderr = self.run(args).await;
        let elapsed = started.elapsed();
        let summary = ProcessSummary::from_output(&stderr).unwrap_or_else(|e| panic!("{e}\n{}", tail(&stderr)));
        let text = std::fs::read_to_string(&log).expect("read execution log");
        let spawns = exec_log::parse(&text).expect("parse execution log");
        Build { summary, spawns, stderr, elapsed }
    }

    /// `bazel clean --expunge`: deletes the output base, so the local action
    /// cache and every output are gone and only the remote cache remains.
    pub async fn clean_expunge(&self) {
        self.run(vec!["clean".into(), "--expunge".into()]).await;
    }

    /// A file under `bazel-bin/`.
    pub fn bin_path(&self, rel: &str) -> PathBuf {
        self.workspace.join("bazel-bin").join(rel)
    }

    /// SHA-256 (hex) of every regular file under `bazel-bin/`, by relative
    /// path, skipping runfiles trees (symlinks Bazel makes itself).
    pub fn hash_outputs(&self) -> BTreeMap<String, String> {
        let root = std::fs::canonicalize(self.workspace.join("bazel-bin")).expect("bazel-bin");
        let mut out = BTreeMap::new();
        hash_tree(&root, &root, &mut out);
        out
    }

    /// Runs one Bazel command in the workspace on a blocking thread and
    /// returns its stderr; panics with the tail of its output if it fails.
    async fn run(&self, args: Vec<String>) -> String {
        let mut cmd = self.command();
        cmd.args(&args);
        let out =
            tokio::task::spawn_blocking(move || cmd.output()).await.expect("join Bazel thread").expect("spawn Bazel");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "`bazel {}` failed ({}):\n{}", args.join(" "), out.status, tail(&stderr));
        stderr
    }

    /// `bazel` with this workspace's startup options.
    fn command(&self) -> Command {
        let mut cmd = Command::new(bazel_bin());
        cmd.current_dir(&self.workspace)
            // Keep the system rc (it sets the install base), skip the user's.
            .arg("--nohome_rc")
            .arg(format!("--output_user_root={}", self.output_user_root.display()))
            .arg(format!("--max_idle_secs={MAX_IDLE_SECS}"))
            .args(&self.startup)
            // Bazel run by a test runner that sets this would put its output there.
            .env_remove("TEST_TMPDIR");
        cmd
    }
}

impl Drop for Bazel {
    fn drop(&mut self) {
        // Blocking is fine here: it runs once per test, on a runtime thread.
        if let Ok(out) = self.command().arg("shutdown").output() {
            if !out.status.success() {
                eprintln!("bazel shutdown: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // Bazel leaves read-only directories behind; make them deletable so
        // the TempDir can remove everything.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.dir.path()).status();
    }
}

/// Adds the hash of each regular file below `dir` to `out`.
fn hash_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read output dir") {
        let path = entry.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat output");
        if meta.is_dir() && !path.to_string_lossy().ends_with(".runfiles") {
            hash_tree(root, &path, out);
        } else if meta.is_file() {
            let data = std::fs::read(&path).expect("read output");
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, hex::encode(Sha256::digest(&data)));
        }
    }
}

/// The last lines of a command's output, for failure messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
