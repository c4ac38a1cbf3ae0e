//! cairn: a remote build cache shared by Bazel (REAPI v2) and Go (GOCACHEPROG).
//!
//! # Layout
//! - [`proto`]: generated REAPI, ByteStream and google.rpc types (from `proto/`).
//! - [`digest`]: digests, digest functions and ByteStream resource names, parsed
//!   and validated once at the edge; nothing inward handles raw strings.
//! - [`error`]: the library's one error type.
//! - [`store`]: the storage engine (RocksDB column families plus blob files),
//!   byte accounting, uploads in progress.
//! - [`server`]: one file per gRPC service; the only place errors become
//!   `tonic::Status`. [`server::run`] is the whole server; `main.rs` and the
//!   tests call the same function.
//! - [`client`]: the one typed REAPI client, shared by the Go shim and the bench.
//! - [`bench`]: `cairn bench`, the load generator behind BENCHMARKS.md.
//! - [`gocache`]: `cairn gocacheprog`, Go's cache protocol and its local tier.
//!
//! Layers only look down: server → store → digest/error; gocache → client → digest.

pub mod bench;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
pub mod gocache;
pub mod proto;
pub mod server;
pub mod store;
