//! cairn: a remote build cache shared by Bazel (REAPI v2) and Go (GOCACHEPROG).
//!
//! # Layout
//! - [`proto`]: generated REAPI, ByteStream and google.rpc types (from `proto/`).
//! - [`config_file`]: `cairn serve --config FILE` (TOML keys named like the
//!   flags) and `--print-config`, on top of clap.
//! - [`digest`]: digests, digest functions and ByteStream resource names, parsed
//!   and validated once at the edge; nothing inward handles raw strings.
//! - [`error`]: the library's one error type.
//! - [`store`]: the storage engine (RocksDB column families plus blob files),
//!   byte accounting, uploads in progress.
//! - [`server`]: one file per gRPC service; the only place errors become
//!   `tonic::Status`. [`server::run`] is the whole server; `main.rs` and the
//!   tests call the same function.
//! - [`auth`]: the tokens file and the one access decision (who may read or
//!   write which instance), shared by every front end; no transport.
//! - [`tls`]: rustls for the listeners: PEM loading, reload, handshakes.
//! - [`client`]: the one typed REAPI client, shared by the Go shim and the bench.
//! - [`bench`]: `cairn bench`, the load generator behind BENCHMARKS.md.
//! - [`launch`]: starting `cairn serve` as a child and reading its address
//!   from its log, for the bench and the tests alike.
//! - [`gocache`]: `cairn gocacheprog`, Go's cache protocol and its local tier.
//! - [`wire`]: pure decoding of what clients send, with its limits (bounded
//!   zstd, the digests an ActionResult or Tree names): no storage, no I/O.
//! - [`fuzzing`]: the entry points the fuzz targets (`fuzz/`) and the corpus
//!   replay test share.
//!
//! Layers only look down: server → store → wire → digest/error; gocache → client → digest.
//!
//! The default `server` feature builds the server, its RocksDB store and the
//! bench; without it (the fuzz crate) only the pure parsers and the client build.

pub mod auth;
#[cfg(feature = "server")]
pub mod bench;
pub mod client;
pub mod config;
pub mod config_file;
pub mod digest;
pub mod error;
pub mod fuzzing;
pub mod gocache;
pub mod launch;
pub mod proto;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
pub mod tls;
pub mod wire;
