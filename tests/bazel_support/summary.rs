//! Parses Bazel's closing process summary, e.g.
//! `INFO: 78 processes: 65 remote cache hit, 13 internal.`, into counts per
//! runner. A green Bazel build proves nothing about the cache (Bazel silently
//! runs an action itself when the cache can't supply it), so the tests assert
//! on these numbers instead.

use std::collections::BTreeMap;

/// Runner name Bazel uses for actions it handles itself (symlink trees,
/// params files, ...); these never go to a remote cache.
pub const INTERNAL: &str = "internal";
/// Runner name of an action whose result came from the remote (or disk) cache.
pub const REMOTE_CACHE_HIT: &str = "remote cache hit";

/// The counts of one `INFO: N processes: ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSummary {
    /// The leading N.
    pub total: u64,
    /// Count per runner (`internal`, `remote cache hit`, `linux-sandbox`,
    /// `processwrapper-sandbox`, `local`, ...), in no particular order.
    pub by_runner: BTreeMap<String, u64>,
}

impl ProcessSummary {
    /// Parses one summary line; `Err` says why a line that looks like a
    /// summary is not one we understand (e.g. counts that don't add up).
    /// `Ok(None)` means the line is not a summary at all.
    pub fn parse_line(line: &str) -> Result<Option<ProcessSummary>, String> {
        let Some(rest) = line.trim().strip_prefix("INFO: ") else {
            return Ok(None);
        };
        // "<N> process[es]" then either "." or ": <list>."
        let Some((total, rest)) = rest.split_once(' ') else {
            return Ok(None);
        };
        let Ok(total) = total.parse::<u64>() else {
            return Ok(None);
        };
        let rest = if let Some(r) = rest.strip_prefix("processes") {
            r
        } else if let Some(r) = rest.strip_prefix("process") {
            r
        } else {
            return Ok(None);
        };
        let mut by_runner = BTreeMap::new();
        if rest != "." {
            let Some(list) = rest.strip_prefix(": ").and_then(|l| l.strip_suffix('.')) else {
                return Err(format!("unexpected process summary: {line:?}"));
            };
            for item in list.split(", ") {
                let (count, runner) = item.split_once(' ').ok_or_else(|| format!("bad item {item:?} in {line:?}"))?;
                let count: u64 = count.parse().map_err(|_| format!("bad count {count:?} in {line:?}"))?;
                if runner.is_empty() || by_runner.insert(runner.to_string(), count).is_some() {
                    return Err(format!("bad or repeated runner {runner:?} in {line:?}"));
                }
            }
        }
        let sum: u64 = by_runner.values().sum();
        if sum != total {
            return Err(format!("counts add up to {sum}, not {total}: {line:?}"));
        }
        Ok(Some(ProcessSummary { total, by_runner }))
    }

    /// The last summary line in Bazel's output (stderr); Err if there is none
    /// or it can't be parsed.
    pub fn from_output(output: &str) -> Result<ProcessSummary, String> {
        let mut last = None;
        for line in output.lines() {
            if let Some(summary) = Self::parse_line(line)? {
                last = Some(summary);
            }
        }
        last.ok_or_else(|| "no `INFO: N processes: ...` line in Bazel's output".to_string())
    }

    /// Count for one runner name (0 if absent).
    pub fn count(&self, runner: &str) -> u64 {
        self.by_runner.get(runner).copied().unwrap_or(0)
    }

    /// Processes Bazel ran itself and never sends to a cache.
    pub fn internal(&self) -> u64 {
        self.count(INTERNAL)
    }

    /// Processes whose result came from the cache.
    pub fn remote_cache_hits(&self) -> u64 {
        self.count(REMOTE_CACHE_HIT)
    }

    /// Every non-internal process: what the cache could have supplied.
    pub fn cacheable(&self) -> u64 {
        self.total - self.internal()
    }

    /// Non-internal processes that were executed (any sandbox or local
    /// runner) rather than taken from the cache.
    pub fn executed(&self) -> u64 {
        self.cacheable() - self.remote_cache_hits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, total, internal, hits, executed)
    const GOOD: &[(&str, u64, u64, u64, u64)] = &[
        ("INFO: 186 processes: 26 internal, 160 remote cache hit.", 186, 26, 160, 0),
        ("INFO: 78 processes: 65 remote cache hit, 13 internal.", 78, 13, 65, 0),
        ("INFO: 78 processes: 13 internal, 65 linux-sandbox.", 78, 13, 0, 65),
        ("INFO: 78 processes: 62 remote cache hit, 13 internal, 3 linux-sandbox.", 78, 13, 62, 3),
        ("INFO: 12 processes: 3 internal, 3 linux-sandbox, 5 local, 1 processwrapper-sandbox.", 12, 3, 0, 9),
        ("INFO: 4 processes: 3 remote cache hit, 1 internal.", 4, 1, 3, 0),
        ("INFO: 1 process: 1 internal.", 1, 1, 0, 0),
        ("INFO: 1 process: 1 remote cache hit.", 1, 0, 1, 0),
        ("INFO: 0 processes.", 0, 0, 0, 0),
        ("  INFO: 2 processes: 2 internal.  ", 2, 2, 0, 0),
    ];

    #[test]
    fn parses_summaries() {
        for &(line, total, internal, hits, executed) in GOOD {
            let s = ProcessSummary::parse_line(line).unwrap().unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                (s.total, s.internal(), s.remote_cache_hits(), s.executed()),
                (total, internal, hits, executed),
                "{line}"
            );
            assert_eq!(s.cacheable(), total - internal, "{line}");
        }
    }

    #[test]
    fn keeps_each_runner() {
        let line = "INFO: 12 processes: 3 internal, 3 linux-sandbox, 5 local, 1 processwrapper-sandbox.";
        let s = ProcessSummary::parse_line(line).unwrap().unwrap();
        assert_eq!(s.count("linux-sandbox"), 3);
        assert_eq!(s.count("local"), 5);
        assert_eq!(s.count("processwrapper-sandbox"), 1);
        assert_eq!(s.count("worker"), 0);
    }

    #[test]
    fn ignores_other_lines() {
        for line in [
            "",
            "INFO: Build completed successfully, 78 total actions",
            "INFO: Elapsed time: 5.080s, Critical Path: 1.70s",
            "INFO: Invocation ID: 89c0d0ad-4bab-40b4-a5ab-b54886557dcd",
            "WARNING: 3 processes: 3 internal.",
            "78 processes: 78 internal.",
            "INFO: 3 targets: foo",
        ] {
            assert_eq!(ProcessSummary::parse_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn rejects_malformed_summaries() {
        for line in [
            "INFO: 5 processes: 3 internal, 1 remote cache hit.", // doesn't add up
            "INFO: 2 processes: 2 internal",                      // no final dot
            "INFO: 2 processes: two internal.",
            "INFO: 2 processes: 1 internal, 1 internal.",
            "INFO: 2 processes: 2.",
            "INFO: 2 processes; 2 internal.",
        ] {
            assert!(ProcessSummary::parse_line(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn takes_the_last_summary_of_an_output() {
        let out = "Starting local Bazel server and connecting to it...\n\
                   INFO: 1 process: 1 internal.\n\
                   INFO: Elapsed time: 6.369s, Critical Path: 0.51s\n\
                   INFO: 78 processes: 65 remote cache hit, 13 internal.\n\
                   INFO: Build completed successfully, 78 total actions\n";
        let s = ProcessSummary::from_output(out).unwrap();
        assert_eq!((s.total, s.remote_cache_hits(), s.executed()), (78, 65, 0));
        assert!(ProcessSummary::from_output("ERROR: no such package\n").is_err());
    }
}
