//! What build is this? The prefetch key describes the go command that
//! started us, so that the next run of the *same* command on another machine
//! finds the list of entries this one used.
//!
//! Everything comes from what go hands its GOCACHEPROG (checked with go1.27):
//! the working directory, and the environment, in which go exports its
//! resolved settings (`GOVERSION`, `GOOS`, `GOARCH`, `GOAMD64`,
//! `CGO_ENABLED`, ...) even when the user set none of them. The module
//! comes from the nearest `go.mod` above the working directory, and the go
//! subcommand (`build`, `test`, `vet`, ...) from the parent process's
//! command line (Linux `/proc`; elsewhere it is left out), together with
//! the flags that change what go builds ([`output_flags`]: `-race`, `-tags`,
//! `-cover`, `-gcflags`, ...), so that `go test ./...` and
//! `go test -race ./...` in one checkout keep separate manifests. The key
//! leaves out absolute paths when there is a module, so CI checkouts in
//! different places share it, and leaves out flags that do not change
//! outputs (`-run`, `-count`, `-v`, `-json`, `-timeout`, `-p`, `-o`, profile
//! paths) and package patterns (a changed package list just makes the next
//! manifest differ; manifests are merged, so shards add up).
//!
//! A build whose exact key has no manifest yet (a new flag set, a new
//! directory) falls back to broader keys ([`BuildContext::descriptions`]):
//! the project without directory, command and flags, then just the
//! toolchain and target.

use std::path::{Path, PathBuf};

/// Environment variables that change which actions a build runs. go exports
/// the resolved value of most of them to its GOCACHEPROG. (Not GOROOT: it
/// differs between machines with the same toolchain; GOVERSION is enough.)
pub const KEY_ENV: [&str; 14] = [
    "GOVERSION",
    "GOOS",
    "GOARCH",
    "GOAMD64",
    "GOARM",
    "GOARM64",
    "GO386",
    "GOPPC64",
    "GORISCV64",
    "GOWASM",
    "GOEXPERIMENT",
    "GOFIPS140",
    "GOFLAGS",
    "CGO_ENABLED",
];

/// A description of the running go command, for the prefetch key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildContext {
    /// The module path, the user's `--prefetch-key`, or (outside any module)
    /// the working directory.
    pub project: String,
    /// The working directory relative to the module root ("" outside a module).
    pub dir: String,
    /// go's subcommand, e.g. `build` or `test` ("" if unknown).
    pub command: String,
    /// The flags that change outputs, normalized (`-name=value`) and sorted.
    pub flags: Vec<String>,
    /// [`KEY_ENV`] as set (unset ones left out).
    pub env: Vec<(&'static str, String)>,
}

impl BuildContext {
    /// Gathers the context of this process. `project` replaces the module
    /// and directory (`--prefetch-key`). Cheap: a few small file reads.
    pub fn of_this_process(project: Option<&str>) -> BuildContext {
        let cwd = std::env::current_dir().unwrap_or_default();
        let (project, dir) = match project {
            Some(p) => (p.to_string(), String::new()),
            None => match find_module(&cwd) {
                Some((root, module)) => (module, relative(&cwd, &root)),
                None => (cwd.to_string_lossy().into_owned(), String::new()),
            },
        };
        let args = parent_args().unwrap_or_default();
        let command = go_subcommand(&args);
        let flags = output_flags(&args);
        let env = KEY_ENV.iter().filter_map(|&k| std::env::var(k).ok().map(|v| (k, v))).collect();
        BuildContext { project, dir, command, flags, env }
    }

    /// The text hashed into the prefetch key: one `name=value` line each.
    pub fn description(&self) -> String {
        let mut s = format!("project={}\ndir={}\ncommand={}\n", self.project, self.dir, self.command);
        if !self.flags.is_empty() {
            s.push_str(&format!("flags={}\n", self.flags.join(" ")));
        }
        self.push_env(&mut s, |_| true);
        s
    }

    /// The descriptions to try, most specific first: this exact build; the
    /// project (any directory, command and flags); the toolchain and target
    /// alone. A manifest is stored under each, so a build with no manifest
    /// of its own starts from its project's, or its toolchain's.
    pub fn descriptions(&self) -> [String; 3] {
        let mut project = format!("fallback=project\nproject={}\n", self.project);
        self.push_env(&mut project, |_| true);
        let mut toolchain = "fallback=toolchain\n".to_string();
        self.push_env(&mut toolchain, |k| matches!(k, "GOVERSION" | "GOOS" | "GOARCH"));
        [self.description(), project, toolchain]
    }

    fn push_env(&self, s: &mut String, keep: impl Fn(&str) -> bool) {
        for (k, v) in self.env.iter().filter(|(k, _)| keep(k)) {
            s.push_str(&format!("{k}={v}\n"));
        }
    }
}

/// The nearest directory at or above `dir` with a `go.mod`, and its module path.
fn find_module(dir: &Path) -> Option<(PathBuf, String)> {
    for d in dir.ancestors() {
        if let Ok(text) = std::fs::read_to_string(d.join("go.mod")) {
            return module_path(&text).map(|m| (d.to_path_buf(), m));
        }
    }
    None
}

/// The path in a go.mod's `module` directive (quoted or not, comments ignored).
pub fn module_path(go_mod: &str) -> Option<String> {
    for line in go_mod.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("module") else {
            continue;
        };
        if !rest.starts_with([' ', '\t', '"']) {
            continue; // e.g. "modulex"
        }
        let path = rest.trim().trim_matches(|c| c == '"' || c == '`');
        if !path.is_empty() {
            return Some(path.to_string());
        }
    }
    None
}

fn relative(dir: &Path, root: &Path) -> String {
    dir.strip_prefix(root).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The parent process's arguments, if it is go (Linux only).
fn parent_args() -> Option<Vec<String>> {
    let ppid = std::os::unix::process::parent_id();
    let raw = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let prog = Path::new(args.first()?).file_name()?.to_string_lossy().into_owned();
    (prog == "go" || prog == "go.exe").then_some(args)
}

/// Flags of go's build and test commands that take no value (all others
/// do, as `-name value` or `-name=value`).
const BOOL_FLAGS: &[&str] = &[
    "a",
    "n",
    "x",
    "v",
    "race",
    "msan",
    "asan",
    "cover",
    "trimpath",
    "linkshared",
    "modcacherw",
    "json",
    "work",
    "i",
    "failfast",
    "short",
    "benchmem",
    "fullpath",
    "buildvcs",
    "compile",
    "e",
    "m",
    "u",
    "t",
    "f",
    "deps",
];

/// Flags that do not change what go builds or caches: what runs or is
/// shown, parallelism, and where files go.
const KEY_IGNORED_FLAGS: &[&str] = &[
    "run",
    "skip",
    "count",
    "v",
    "json",
    "timeout",
    "p",
    "o",
    "x",
    "n",
    "parallel",
    "failfast",
    "shuffle",
    "bench",
    "benchtime",
    "benchmem",
    "cpu",
    "list",
    "fullpath",
    "C",
    "modfile",
    "work",
    "outputdir",
    "coverprofile",
    "cpuprofile",
    "memprofile",
    "memprofilerate",
    "blockprofile",
    "blockprofilerate",
    "mutexprofile",
    "mutexprofilefraction",
    "trace",
    "debugactiongraph",
    "debugtrace",
    "debug-trace",
    "toolexec",
];

/// The flags in go's command line that change outputs, as `-name` or
/// `-name=value`, sorted (order on the command line does not matter).
/// Stops at `-args` (the rest belongs to the test binary) and skips
/// package patterns and the subcommand.
pub fn output_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        if a == "-args" || a == "--args" || a == "--" {
            break;
        }
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            continue; // the subcommand or a package pattern
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None if BOOL_FLAGS.contains(&flag) => (flag, None),
            None => (flag, rest.next().cloned()),
        };
        let name = name.strip_prefix("test.").unwrap_or(name);
        if name.is_empty() || KEY_IGNORED_FLAGS.contains(&name) {
            continue;
        }
        out.push(match value {
            Some(v) => format!("-{name}={v}"),
            None => format!("-{name}"),
        });
    }
    out.sort();
    out.dedup();
    out
}

/// go's subcommand in its argument list: the first argument after the
/// program that is not a flag (`go -C dir build ./...` → `build`).
pub fn go_subcommand(args: &[String]) -> String {
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        if a == "-C" || a == "--C" {
            rest.next();
        } else if !a.starts_with('-') {
            return a.clone();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths() {
        let cases = [
            ("module example.com/m\n\ngo 1.24\n", Some("example.com/m")),
            ("// comment\nmodule \"example.com/q\" // trailing\n", Some("example.com/q")),
            ("go 1.22\nmodule\texample.com/t\n", Some("example.com/t")),
            ("modulex foo\n", None),
            ("go 1.22\n", None),
            ("module\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(module_path(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn subcommands() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(go_subcommand(&args("/usr/bin/go build -o x ./...")), "build");
        assert_eq!(go_subcommand(&args("go -C sub test -run X")), "test");
        assert_eq!(go_subcommand(&args("go")), "");
    }

    #[test]
    fn finds_the_module_above() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("go.mod"), "module example.com/x\n").unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let (found, module) = find_module(&root.join("a/b")).unwrap();
        assert_eq!((found.as_path(), module.as_str()), (root, "example.com/x"));
        assert_eq!(relative(&root.join("a/b"), root), "a/b");
    }

    #[test]
    fn descriptions_differ_by_every_part() {
        let base = BuildContext {
            project: "example.com/m".into(),
            dir: "cmd".into(),
            command: "build".into(),
            flags: Vec::new(),
            env: vec![("GOOS", "linux".into()), ("GOARCH", "amd64".into())],
        };
        assert_eq!(base.description(), "project=example.com/m\ndir=cmd\ncommand=build\nGOOS=linux\nGOARCH=amd64\n");
        let variants = [
            BuildContext { project: "example.com/n".into(), ..base.clone() },
            BuildContext { dir: "".into(), ..base.clone() },
            BuildContext { command: "test".into(), ..base.clone() },
            BuildContext { flags: vec!["-race".into()], ..base.clone() },
            BuildContext { env: vec![("GOOS", "darwin".into()), ("GOARCH", "amd64".into())], ..base.clone() },
        ];
        for v in variants {
            assert_ne!(v.description(), base.description(), "{v:?}");
        }
    }

    fn flags_of(line: &str) -> Vec<String> {
        output_flags(&line.split(' ').map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn output_changing_flags_are_in_the_key_and_the_rest_are_not() {
        // Same outputs: differs only in what runs, is shown, or where files go.
        let plain = flags_of("go test ./...");
        assert_eq!(plain, Vec::<String>::new());
        for same in [
            "go test -run TestX -count=1 -v ./...",
            "go test -json -timeout 5m -p 4 ./pkg/...",
            "go build -o /tmp/x ./cmd/app",
            "go test -coverprofile=/tmp/c.out -cpuprofile cpu.out -memprofile=m.out -x ./...",
            "go test ./... -args -race -tags x",
        ] {
            assert_eq!(flags_of(same), plain, "{same}");
        }
        // Different outputs.
        assert_eq!(flags_of("go test -race ./..."), ["-race"]);
        assert_eq!(flags_of("go test -tags integration,slow ./..."), ["-tags=integration,slow"]);
        assert_eq!(
            flags_of("go test --tags=x -cover -covermode atomic ./..."),
            ["-cover", "-covermode=atomic", "-tags=x"]
        );
        assert_eq!(
            flags_of("go build -gcflags=all=-N -ldflags -s -trimpath ."),
            ["-gcflags=all=-N", "-ldflags=-s", "-trimpath"]
        );
        // Order does not matter; a value flag's value is not a package.
        assert_eq!(flags_of("go test -tags x -race ./a"), flags_of("go test -race -tags=x ./b"));
        assert_ne!(flags_of("go test -tags x"), flags_of("go test -tags y"));
    }

    #[test]
    fn fallback_descriptions_drop_dir_command_and_flags() {
        let a = BuildContext {
            project: "example.com/m".into(),
            dir: "cmd".into(),
            command: "test".into(),
            flags: vec!["-race".into()],
            env: vec![("GOVERSION", "go1.27.3".into()), ("GOOS", "linux".into()), ("CGO_ENABLED", "0".into())],
        };
        let b = BuildContext { dir: "".into(), command: "build".into(), flags: Vec::new(), ..a.clone() };
        let (da, db) = (a.descriptions(), b.descriptions());
        assert_ne!(da[0], db[0], "exact keys differ");
        assert_eq!(da[1], db[1], "same project");
        assert_eq!(da[2], db[2], "same toolchain");
        let other = BuildContext { project: "example.com/n".into(), ..a.clone() };
        assert_ne!(other.descriptions()[1], da[1]);
        assert_eq!(other.descriptions()[2], da[2], "the toolchain key is shared across projects");
        assert!(!da[2].contains("CGO_ENABLED") && da[2].contains("GOVERSION=go1.27.3"));
        let upgraded = BuildContext { env: vec![("GOVERSION", "go1.28".into())], ..a.clone() };
        assert_ne!(upgraded.descriptions()[2], da[2]);
    }
}
