//! `cairn serve --config FILE`: a TOML file whose keys are the subcommand's
//! long flags (`max-size = "50GiB"`, `listen = "0.0.0.0:9092"`), and
//! `--print-config`. Built on clap's own description of the flags, so every
//! flag is a key without a list to keep in step: a key whose flag was not
//! given on the command line or by its `CAIRN_*` variable is fed to clap as
//! if it had been, and clap parses and validates it like any flag. So the
//! precedence is flag > environment > file > default.
//!
//! A mistake in the file (unknown key, bad value, bad TOML) is one line
//! naming the file and the key, and exit code 2, like a bad flag.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::error::ContextKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Id of the flag naming the file (`--config`).
const CONFIG_ID: &str = "config";
/// Id of the flag that prints the effective configuration (`--print-config`).
const PRINT_ID: &str = "print_config";
/// Flags that are no settings: never file keys, never printed.
const NOT_KEYS: [&str; 4] = ["help", "version", CONFIG_ID, PRINT_ID];

/// Why the command line could not be resolved.
#[derive(Debug)]
pub enum Failure {
    /// A mistake on the command line or in the environment: clap reports it.
    Clap(clap::Error),
    /// A mistake in the config file: one line, exit code 2.
    File(String),
}

/// The parsed command line, with the config file applied.
pub struct Resolved {
    pub matches: ArgMatches,
    /// The effective configuration as TOML, when `--print-config` asked for it.
    pub print: Option<String>,
}

/// Parses the process's command line into `T` like `T::parse()`, applying
/// `subcommand`'s `--config` file and answering its `--print-config`.
/// Exits on errors (code 2) and after printing the configuration.
pub fn parse<T: clap::Parser>(subcommand: &str) -> T {
    match resolve(T::command(), std::env::args_os().collect(), subcommand) {
        Ok(Resolved { print: Some(text), .. }) => {
            print!("{text}");
            std::process::exit(0);
        }
        Ok(Resolved { matches, .. }) => T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
        Err(Failure::Clap(e)) => e.exit(),
        Err(Failure::File(line)) => {
            eprintln!("error: {line}");
            std::process::exit(2);
        }
    }
}

/// Parses `args` with `cmd`, then applies the config file of `subcommand`.
pub fn resolve(mut cmd: Command, args: Vec<OsString>, subcommand: &str) -> Result<Resolved, Failure> {
    cmd.build();
    let matches = cmd.clone().try_get_matches_from(&args).map_err(Failure::Clap)?;
    let Some(sub_cmd) = cmd.find_subcommand(subcommand).cloned() else {
        return Ok(Resolved { matches, print: None });
    };
    let Some(sub) = matches.subcommand_matches(subcommand) else {
        return Ok(Resolved { matches, print: None });
    };
    let path = sub.get_raw(CONFIG_ID).and_then(|mut v| v.next()).map(|p| Path::new(p).to_path_buf());
    let mut from_file = HashSet::new();
    let matches = match &path {
        None => matches,
        Some(path) => {
            let extra = file_args(&sub_cmd, sub, path, &mut from_file)?;
            let mut args = args;
            args.extend(extra);
            cmd.clone().try_get_matches_from(&args).map_err(|e| file_error(e, &sub_cmd, path, &from_file))?
        }
    };
    let sub = matches.subcommand_matches(subcommand).expect("parsed above");
    let print = sub.get_flag(PRINT_ID).then(|| render(&sub_cmd, sub, &from_file, path.as_deref()));
    Ok(Resolved { matches, print })
}

/// The settings of `sub_cmd`: every argument with a long name that is not in [`NOT_KEYS`].
fn settings(sub_cmd: &Command) -> impl Iterator<Item = &clap::Arg> {
    sub_cmd.get_arguments().filter(|a| a.get_long().is_some() && !NOT_KEYS.contains(&a.get_id().as_str()))
}

/// Reads the file and turns each key not already set by a flag or variable
/// into command-line arguments (`--key=value`), noting which in `from_file`.
fn file_args(
    sub_cmd: &Command,
    sub: &ArgMatches,
    path: &Path,
    from_file: &mut HashSet<String>,
) -> Result<Vec<OsString>, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| Failure::File(format!("cannot read {shown}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        Failure::File(format!("{shown}{at}: not valid TOML: {}", e.message().trim()))
    })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settings(sub_cmd).find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(Failure::File(format!(
                "{shown}: unknown key {key:?}: keys are the long flags of `cairn serve` without the dashes \
                 (e.g. max-size); see `cairn serve --help`"
            )));
        };
        let id = arg.get_id().as_str();
        if matches!(sub.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let bad = |why: &str| Failure::File(format!("{shown}: key {key:?}: {why}"));
        let flag = format!("--{key}");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => out.push(flag.into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("must be true or false")),
            }
        } else {
            let values = match value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
                other => scalar(other).map(|v| vec![v]),
            }
            .ok_or_else(|| bad("must be a string, a number or a boolean"))?;
            out.extend(values.into_iter().map(|v| OsString::from(format!("{flag}={v}"))));
        }
        from_file.insert(id.to_string());
    }
    Ok(out)
}

/// A TOML scalar as the text clap would be given on the command line.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Rewords clap's error about a value that came from the file as one line
/// naming the file and the key; errors about flags stay clap's.
fn file_error(e: clap::Error, sub_cmd: &Command, path: &Path, from_file: &HashSet<String>) -> Failure {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(s)) => s.clone(),
        _ => return Failure::Clap(e),
    };
    // "--max-size <MAX_SIZE>" -> "max-size"
    let key = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or("").to_string();
    let from_the_file = settings(sub_cmd)
        .find(|a| a.get_long() == Some(key.as_str()))
        .is_some_and(|a| from_file.contains(a.get_id().as_str()));
    if !from_the_file {
        return Failure::Clap(e);
    }
    let value = match e.get(ContextKind::InvalidValue) {
        Some(clap::error::ContextValue::String(v)) => format!(" {v:?}"),
        _ => String::new(),
    };
    let why = match std::error::Error::source(&e) {
        Some(s) => s.to_string(),
        None => e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string(),
    };
    Failure::File(format!("{}: key {key:?}: bad value{value}: {why}", path.display()))
}

/// The effective configuration as TOML: every setting with its value and
/// where the value came from; unset ones commented out, so the text is
/// itself a valid config file.
fn render(sub_cmd: &Command, sub: &ArgMatches, from_file: &HashSet<String>, path: Option<&Path>) -> String {
    let mut out = String::from(
        "# Effective configuration of `cairn serve` (precedence: flag > CAIRN_* variable > config file > default).\n",
    );
    if let Some(p) = path {
        out.push_str(&format!("# Config file: {}\n", p.display()));
    }
    for arg in settings(sub_cmd) {
        let key = arg.get_long().expect("settings have long names");
        let id = arg.get_id().as_str();
        if let Some(help) = arg.get_help() {
            out.push_str(&format!("\n# {}\n", help.to_string().lines().next().unwrap_or("")));
        }
        let Some(raw) = sub.get_raw(id) else {
            out.push_str(&format!("# {key} = (not set)\n"));
            continue;
        };
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let values: Vec<String> = raw.map(|v| toml_value(v, flag)).collect();
        let value = if values.len() == 1 { values[0].clone() } else { format!("[{}]", values.join(", ")) };
        let source = if from_file.contains(id) {
            "config file".to_string()
        } else {
            match sub.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".into(),
                Some(ValueSource::EnvVariable) => {
                    format!("{} variable", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default())
                }
                _ => "default".into(),
            }
        };
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    out
}

/// One value as TOML: booleans for flags, integers where the text is one,
/// strings otherwise (all read back the same way by [`scalar`]).
fn toml_value(v: &OsStr, flag: bool) -> String {
    let s = v.to_string_lossy();
    if flag && (s == "true" || s == "false") {
        return s.into_owned();
    }
    if !s.is_empty() && s.len() < 19 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.into_owned();
    }
    toml::Value::String(s.into_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t").subcommand(
            Command::new("serve")
                .arg(
                    Arg::new("max_size")
                        .long("max-size")
                        .default_value("10GiB")
                        .value_parser(crate::config::parse_size),
                )
                .arg(Arg::new("listen").long("listen").default_value("127.0.0.1:9092"))
                .arg(Arg::new("verbose").long("verbose").action(ArgAction::SetTrue))
                .arg(Arg::new(CONFIG_ID).long("config"))
                .arg(Arg::new(PRINT_ID).long("print-config").action(ArgAction::SetTrue)),
        )
    }

    fn run(file: &str, flags: &[&str]) -> Result<Resolved, Failure> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["t".into(), "serve".into(), "--config".into(), path.into()];
        args.extend(flags.iter().map(OsString::from));
        resolve(cmd(), args, "serve")
    }

    fn one(r: &Resolved, id: &str) -> String {
        let sub = r.matches.subcommand_matches("serve").unwrap();
        sub.get_raw(id).unwrap().next().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let r =
            run("max-size = \"50GiB\"\nlisten = \"0.0.0.0:1\"\nverbose = true\n", &["--listen", "1.2.3.4:5"]).unwrap();
        let sub = r.matches.subcommand_matches("serve").unwrap();
        assert_eq!(*sub.get_one::<u64>("max_size").unwrap(), 50 << 30);
        assert_eq!(one(&r, "listen"), "1.2.3.4:5", "the flag beats the file");
        assert!(sub.get_flag("verbose"));
    }

    #[test]
    fn file_mistakes_name_the_file_and_key() {
        for (file, want) in [
            ("maxsize = \"1GiB\"\n", "unknown key \"maxsize\""),
            ("max-size = \"ten gigs\"\n", "key \"max-size\": bad value \"ten gigs\""),
            ("verbose = \"yes\"\n", "key \"verbose\": must be true or false"),
            ("listen = { a = 1 }\n", "key \"listen\": must be a string"),
            ("config = \"x\"\n", "unknown key \"config\""),
            ("max-size = \n", "(line 1): not valid TOML"),
        ] {
            match run(file, &[]) {
                Err(Failure::File(line)) => {
                    assert!(line.contains(want) && line.contains("cairn.toml"), "{file:?}: {line}");
                    assert!(!line.contains('\n'), "one line: {line}");
                }
                other => panic!("{file:?}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn prints_every_setting_as_toml_that_reads_back() {
        let r = run("max-size = \"50GiB\"\n", &["--print-config", "--verbose"]).unwrap();
        let text = r.print.unwrap();
        assert!(text.contains("max-size = \"50GiB\"  # config file"), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:9092\"  # default"), "{text}");
        assert!(text.contains("verbose = true  # flag"), "{text}");
        assert!(!text.contains("print-config") && !text.contains("\nconfig"), "{text}");
        let back: toml::Table = text.parse().unwrap();
        assert_eq!(back.len(), 3, "{back:?}");
        assert!(run(&text, &[]).is_ok(), "the printed config is a valid config file");
    }
}
