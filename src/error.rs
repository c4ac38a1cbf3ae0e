//! The library's one error type. Variants say whose fault a failure is: the
//! client's (answered, never logged as an error) or ours (logged once, with
//! context). `server::status` turns them into gRPC statuses, in one place.

use std::io;

/// Every failure the store, digest parsing and services can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad digest, bad resource name, hash mismatch...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named blob or action result is not stored.
    #[error("{0}")]
    NotFound(String),
    /// A read offset or limit points outside the blob.
    #[error("{0}")]
    OutOfRange(String),
    /// A limit was hit: disk full, too many uploads in progress.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Something the request needs is present but not in a usable state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A tier behind the local store (object store, upstream server) cannot
    /// be reached or refused the call; callers degrade to local answers.
    #[error("{0}")]
    Unavailable(String),
    /// Filesystem trouble, with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// RocksDB trouble.
    #[cfg(feature = "server")]
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A broken invariant inside cairn.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an io::Error with what cairn was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// True when the failure is a full disk (ENOSPC / EDQUOT), from the
    /// filesystem or from RocksDB; the caller answers RESOURCE_EXHAUSTED.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => is_disk_full_io(source),
            #[cfg(feature = "server")]
            Error::Db(e) => {
                let msg = e.to_string();
                msg.contains("No space left") || msg.contains("Disk quota exceeded")
            }
            Error::ResourceExhausted(_) => true,
            _ => false,
        }
    }
}

fn is_disk_full_io(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
