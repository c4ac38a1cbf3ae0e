//! Reads the file Bazel writes for `--execution_log_json_file`: one JSON
//! object per spawn, concatenated. It names each action, so a test can say
//! *which* actions missed the cache, not only how many.

use serde::Deserialize;

/// The fields of one SpawnExec entry the tests use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spawn {
    /// E.g. `Executing genrule //edit:e1` or `Compiling cc/lib0/lib0.cc`.
    #[serde(default)]
    pub progress_message: String,
    /// E.g. `Genrule`, `CppCompile`, `TreeGen`.
    #[serde(default)]
    pub mnemonic: String,
    /// `remote cache hit`, `linux-sandbox`, ...
    #[serde(default)]
    pub runner: String,
    #[serde(default)]
    pub remote_cache_hit: bool,
}

/// Parses a whole execution log (an empty file gives no spawns).
pub fn parse(text: &str) -> Result<Vec<Spawn>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Spawn>()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad execution log: {e}"))
}

/// `mnemonic: progress message` of every spawn that was not a cache hit, sorted.
pub fn misses(spawns: &[Spawn]) -> Vec<String> {
    let mut out: Vec<String> = spawns
        .iter()
        .filter(|s| !s.remote_cache_hit)
        .map(|s| format!("{}: {}", s.mnemonic, s.progress_message))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_concatenated_objects() {
        let log = r#"{
  "commandArgs": ["/bin/bash", "-c", "echo"],
  "progressMessage": "Executing genrule //edit:e1",
  "mnemonic": "Genrule",
  "runner": "linux-sandbox",
  "remoteCacheHit": false,
  "exitCode": 0
}{
  "progressMessage": "Executing genrule //big:blob5m",
  "mnemonic": "Genrule",
  "runner": "remote cache hit",
  "remoteCacheHit": true
}"#;
        let spawns = parse(log).unwrap();
        assert_eq!(spawns.len(), 2);
        assert_eq!(spawns[1].runner, "remote cache hit");
        assert_eq!(misses(&spawns), vec!["Genrule: Executing genrule //edit:e1".to_string()]);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("{\"mnemonic\": ").is_err());
    }
}
