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

/// Opens a blob file positioned at `offset`, checking it still has the size its
/// record says (an open file stays readable even if eviction unlinks it).
pub(super) fn open_file(path: &Path, size: u64, offset: u64, len: u64) -> std::io::Result<BlobReader> {
    let mut f = File::open(path)?;
    let actual = f.metadata()?.len();
    if actual != size {
        return Err(std::io::Error::other(format!("file has {actual} bytes, record says {size}")));
    }
    f.seek(SeekFrom::Start(offset))?;
    Ok(BlobReader { source: Source::File(f), remaining: len })
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
