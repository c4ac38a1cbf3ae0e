//! Helpers for the end-to-end tests that drive a real Bazel against cairn.
//!
//! - `summary`: parses Bazel's closing `INFO: N processes: ...` line.
//! - `exec_log`: reads `--execution_log_json_file` to name each cache miss.
//! - `runner`: a generated workspace (tests/bazel/gen_workspace.sh) plus its
//!   own Bazel server, shut down on drop.
#![allow(dead_code)]

pub mod exec_log;
pub mod runner;
pub mod summary;
