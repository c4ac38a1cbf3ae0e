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
//! command line (Linux `/proc`; elsewhere it is left out). The key leaves out
//! absolute paths when there is a module, so CI checkouts in different
//! places share it, and leaves out the rest of the command line (`-o` paths
//! and package patterns vary run to run; a changed package list just makes
//! the next manifest differ, and the build after that is right again).

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
        let command = parent_args().map(|a| go_subcommand(&a)).unwrap_or_default();
        let env = KEY_ENV.iter().filter_map(|&k| std::env::var(k).ok().map(|v| (k, v))).collect();
        BuildContext { project, dir, command, env }
    }

    /// The text hashed into the prefetch key: one `name=value` line each.
    pub fn description(&self) -> String {
        let mut s = format!("project={}\ndir={}\ncommand={}\n", self.project, self.dir, self.command);
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v}\n"));
        }
        s
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
            env: vec![("GOOS", "linux".into()), ("GOARCH", "amd64".into())],
        };
        assert_eq!(base.description(), "project=example.com/m\ndir=cmd\ncommand=build\nGOOS=linux\nGOARCH=amd64\n");
        let variants = [
            BuildContext { project: "example.com/n".into(), ..base.clone() },
            BuildContext { dir: "".into(), ..base.clone() },
            BuildContext { command: "test".into(), ..base.clone() },
            BuildContext { env: vec![("GOOS", "darwin".into()), ("GOARCH", "amd64".into())], ..base.clone() },
        ];
        for v in variants {
            assert_ne!(v.description(), base.description(), "{v:?}");
        }
    }
}
