//! zstd on the wire: uploads of `compressed-blobs/zstd/...` (and zstd items
//! of BatchUpdateBlobs) are decompressed as they stream in, into an ordinary
//! [`BlobWriter`] that verifies the uncompressed digest; reads compress on the
//! fly. Decoding is [`wire::zstd::BoundedZstd`]: its window follows the
//! declared size and it stops as soon as the output passes it, so a zstd bomb
//! costs at most its declared size (itself bounded by `--max-blob-size` and
//! reserved from the upload budget when the writer begins).

use std::io::Write;

use bytes::Bytes;

use super::{BlobReader, BlobWriter};
use crate::error::{Error, Result};
use crate::wire::zstd::BoundedZstd;

/// Compression level for blobs served compressed: cheap, still a good ratio.
const READ_LEVEL: i32 = 1;

/// An upload whose bytes arrive zstd-compressed.
pub struct ZstdUpload {
    decoder: BoundedZstd,
    writer: BlobWriter,
}

impl ZstdUpload {
    /// Decompresses into `writer`, bounded by the size its digest declares.
    pub fn new(writer: BlobWriter) -> Result<ZstdUpload> {
        Ok(ZstdUpload { decoder: BoundedZstd::new(writer.digest().size)?, writer })
    }

    /// Compressed bytes received so far.
    pub fn compressed_written(&self) -> u64 {
        self.decoder.consumed()
    }

    /// Feeds compressed bytes. INVALID_ARGUMENT for data that is not zstd
    /// or decompresses past the declared size; the writer's own errors (a
    /// full disk) pass through.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let writer = &mut self.writer;
        self.decoder.feed(data, &mut |chunk| writer.write(chunk))
    }

    /// Checks the last frame is complete, then verifies and publishes as any upload.
    pub fn commit(self) -> Result<()> {
        self.decoder.finish()?;
        self.writer.commit()
    }
}

/// Serves a blob zstd-compressed, chunk by chunk.
pub struct ZstdReader {
    raw: BlobReader,
    encoder: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
}

impl ZstdReader {
    pub fn new(raw: BlobReader) -> Result<ZstdReader> {
        let encoder = zstd::stream::write::Encoder::new(Vec::new(), READ_LEVEL)
            .map_err(|e| Error::Internal(format!("creating a zstd encoder: {e}")))?;
        Ok(ZstdReader { raw, encoder: Some(encoder) })
    }

    /// The next chunk of compressed output; `None` once the frame is complete.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        loop {
            let Some(enc) = self.encoder.as_mut() else {
                return Ok(None);
            };
            match self.raw.next_chunk(max)? {
                Some(raw) => {
                    enc.write_all(&raw).map_err(|e| Error::Internal(format!("zstd compression: {e}")))?;
                    let out = std::mem::take(enc.get_mut());
                    if !out.is_empty() {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
                None => {
                    let enc = self.encoder.take().expect("checked above");
                    let out = enc.finish().map_err(|e| Error::Internal(format!("zstd compression: {e}")))?;
                    return Ok(Some(Bytes::from(out)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::store::Store;

    #[test]
    fn compressed_upload_and_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let d = DigestFunction::Sha256.digest_of(&data);
        let compressed = zstd::encode_all(data.as_slice(), 3).unwrap();
        let mut up = ZstdUpload::new(store.begin_write(d).unwrap()).unwrap();
        for c in compressed.chunks(1000) {
            up.write(c).unwrap();
        }
        assert_eq!(up.compressed_written(), compressed.len() as u64);
        up.commit().unwrap();
        let mut r = ZstdReader::new(store.read(&d, 0, None).unwrap().unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk(64 << 10).unwrap() {
            out.extend_from_slice(&c);
        }
        assert_eq!(zstd::decode_all(out.as_slice()).unwrap(), data);
    }

    #[test]
    fn bombs_and_garbage_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let small = b"hello".to_vec();
        let d = DigestFunction::Sha256.digest_of(&small);
        // Decompresses to far more than the declared 5 bytes.
        let bomb = zstd::encode_all(vec![0u8; 10 << 20].as_slice(), 19).unwrap();
        let mut up = ZstdUpload::new(store.begin_write(d).unwrap()).unwrap();
        let err = up.write(&bomb).unwrap_err().to_string();
        assert!(err.contains("more than the 5 bytes"), "{err}");
        let mut up = ZstdUpload::new(store.begin_write(d).unwrap()).unwrap();
        let err = up.write(b"definitely not zstd").unwrap_err().to_string();
        assert!(err.contains("zstd"), "{err}");
        assert_eq!(store.find_missing(&[d]).unwrap(), vec![d]);
    }
}
