//! Streaming reads of a stored blob, from memory (inline blobs) or from its
//! file in bounded chunks, so serving a 10 GiB blob holds one chunk at a time.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};

/// A range of one blob, handed out chunk by chunk.
pub struct BlobReader {
    source: Source,
    /// Bytes still to hand out.
    remaining: u64,
}

enum Source {
    Inline(Bytes),
    File(File),
}

/// Why a blob file could not be opened.
pub(super) enum OpenError {
    /// The file is missing or has the wrong size: the blob is lost.
    Gone(String),
    /// Anything else (EMFILE, ENFILE, EIO, EACCES...): the blob may be fine.
    Io(std::io::Error),
}

/// Opens a blob file positioned at `offset`, checking it still has the size its
/// record says (an open file stays readable even if eviction unlinks it).
pub(super) fn open_file(path: &Path, size: u64, offset: u64, len: u64) -> Result<BlobReader, OpenError> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => OpenError::Gone("no such file".into()),
        _ => OpenError::Io(e),
    };
    let mut f = File::open(path).map_err(io)?;
    let actual = f.metadata().map_err(io)?.len();
    if actual != size {
        return Err(OpenError::Gone(format!("file has {actual} bytes, record says {size}")));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    Ok(BlobReader { source: Source::File(f), remaining: len })
}

/// True only when the blob file at `path` is certainly lost: missing, or not
/// `size` bytes long. Any other failure to look (EMFILE, EIO) is false.
pub(super) fn file_is_gone(path: &Path, size: u64) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.len() != size,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The error for a blob file that exists but can't be opened now. Running out
/// of file descriptors is a limit (RESOURCE_EXHAUSTED, which clients retry).
pub(super) fn read_error(path: &Path, e: std::io::Error) -> Error {
    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
        return Error::ResourceExhausted(format!(
            "the server is out of file descriptors and cannot open {} now ({e}); retry, \
             and raise the server's open-file limit (ulimit -n)",
            path.display()
        ));
    }
    Error::io(format!("opening blob file {}", path.display()), e)
}

impl BlobReader {
    pub(super) fn inline(data: Vec<u8>, offset: u64, len: u64) -> BlobReader {
        let data = Bytes::from(data).slice(offset as usize..(offset + len) as usize);
        BlobReader { source: Source::Inline(data), remaining: len }
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next chunk of at most `max` bytes; `None` at the end. Blocking I/O
    /// for file blobs: call from a blocking-capable context.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let n = (self.remaining.min(max as u64)) as usize;
        let chunk = match &mut self.source {
            Source::Inline(data) => data.split_to(n),
            Source::File(f) => {
                let mut buf = vec![0u8; n];
                f.read_exact(&mut buf).map_err(|e| Error::io("reading blob file", e))?;
                Bytes::from(buf)
            }
        };
        self.remaining -= n as u64;
        Ok(Some(chunk))
    }
}
