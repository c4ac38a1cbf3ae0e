//! Decoding zstd uploads without letting a small input cost much more than
//! the blob it claims to be. Output past the declared (uncompressed) size is
//! refused at once, and a frame may not ask for a larger back-reference
//! window than the blob could use (see [`window_log_max`]): the decoder's
//! memory follows the declared size, not what the frame header says.

use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, Result};

/// Smallest window (log2 bytes) a frame may always use: 8 MiB. Streaming
/// compressors that don't know the input size up front (Bazel's zstd-jni
/// streams, Go's klauspost encoder) declare their level's window even for a
/// 5-byte blob: up to 2^23 for levels 1-19 and Go's default. Refusing those
/// would break real clients, and 8 MiB per upload in flight is affordable.
pub const MIN_WINDOW_LOG: u32 = 23;

/// Largest window (log2 bytes) ever allowed: 128 MiB, zstd's own default
/// limit. Frames made with `--long` beyond it are refused, whatever the size.
pub const MAX_WINDOW_LOG: u32 = 27;

/// Decoded bytes handed to the sink at a time; also the decoder's scratch
/// buffer, allocated once per upload.
const OUT_CHUNK: usize = 64 << 10;

/// The window limit (log2 bytes) for a blob of `declared` bytes: the blob's
/// size rounded up to a power of two, within [`MIN_WINDOW_LOG`] and
/// [`MAX_WINDOW_LOG`]. A back-reference can never reach further than the
/// blob is long, so a larger window is only a way to make us allocate.
pub fn window_log_max(declared: u64) -> u32 {
    let ceil_log2 = 64 - declared.saturating_sub(1).leading_zeros();
    ceil_log2.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// A streaming zstd decoder for one blob of a declared uncompressed size.
/// Accepts one frame or several concatenated (skippable frames included).
pub struct BoundedZstd {
    decoder: Decoder<'static>,
    declared: u64,
    /// Uncompressed bytes produced so far.
    produced: u64,
    /// Compressed bytes consumed so far.
    consumed: u64,
    /// True between frames: nothing half-decoded is pending.
    at_frame_end: bool,
    scratch: Vec<u8>,
}

impl BoundedZstd {
    /// A decoder for a blob that must decompress to exactly `declared` bytes.
    pub fn new(declared: u64) -> Result<BoundedZstd> {
        let mut decoder = Decoder::new().map_err(|e| Error::Internal(format!("creating a zstd decoder: {e}")))?;
        decoder
            .set_parameter(DParameter::WindowLogMax(window_log_max(declared)))
            .map_err(|e| Error::Internal(format!("limiting the zstd window: {e}")))?;
        Ok(BoundedZstd { decoder, declared, produced: 0, consumed: 0, at_frame_end: true, scratch: vec![0; OUT_CHUNK] })
    }

    /// Compressed bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Uncompressed bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Decodes `input`, passing the output to `sink` a chunk at a time. Fails
    /// with INVALID_ARGUMENT on data that is not zstd, on a frame whose window
    /// is over the limit, and as soon as the output passes the declared size
    /// (nothing past it reaches the sink); the sink's own errors pass through.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if input.is_empty() {
            // Nothing is pending between calls (each drains the decoder), and
            // asking the decoder anyway would report a frame "in progress".
            return Ok(());
        }
        let mut input = InBuffer::around(input);
        loop {
            let mut out = OutBuffer::around(&mut self.scratch[..]);
            let before = input.pos;
            let ran = self.decoder.run(&mut input, &mut out);
            let n = out.pos();
            let hint = ran.map_err(|e| invalid(self.declared, e))?;
            // Only a call that did something tells where we are: asked again
            // after a frame ended, the decoder answers as if the next began.
            if n > 0 || input.pos > before {
                self.at_frame_end = hint == 0;
            }
            if n > 0 {
                self.produced += n as u64;
                if self.produced > self.declared {
                    return Err(Error::InvalidArgument(format!(
                        "zstd data decompresses to more than the {} bytes its digest declares; nothing was stored",
                        self.declared
                    )));
                }
                sink(&self.scratch[..n])?;
            }
            // Done when the input is used up and the decoder had room to
            // spare (a full buffer may mean more output is pending).
            if input.pos == input.src.len() && n < self.scratch.len() {
                self.consumed += input.pos as u64;
                return Ok(());
            }
        }
    }

    /// Checks that the data ended on a frame boundary (a truncated frame is
    /// the client's error). The size itself is the caller's to verify.
    pub fn finish(&self) -> Result<()> {
        if !self.at_frame_end {
            return Err(Error::InvalidArgument(format!(
                "zstd data ends in the middle of a frame after {} compressed bytes",
                self.consumed
            )));
        }
        Ok(())
    }
}

/// The client's error for data the decoder refused.
fn invalid(declared: u64, e: std::io::Error) -> Error {
    // libzstd's words for a frame whose window is over `WindowLogMax`.
    if e.to_string().contains("too much memory") {
        return Error::InvalidArgument(format!(
            "zstd frame asks for a window larger than the {} bytes allowed for a blob of {declared} bytes ({e})",
            1u64 << window_log_max(declared)
        ));
    }
    Error::InvalidArgument(format!("upload is not valid zstd data ({e})"))
}

/// Decodes a whole in-memory zstd blob of `declared` bytes (tests, fuzzing);
/// the same checks as a streamed upload, plus the exact size.
pub fn decode_all(data: &[u8], declared: u64) -> Result<Vec<u8>> {
    let mut dec = BoundedZstd::new(declared)?;
    let mut out = Vec::new();
    dec.feed(data, &mut |chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    dec.finish()?;
    if out.len() as u64 != declared {
        return Err(Error::InvalidArgument(format!(
            "zstd data decompresses to {} bytes, not the {declared} its digest declares",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made frame: no content size, a window of 2^`window_log` bytes,
    /// one raw block holding `content`.
    fn raw_frame(window_log: u32, content: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, ((window_log - 10) << 3) as u8];
        let header = ((content.len() as u32) << 3) | 1; // raw block, last
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(content);
        f
    }

    /// A frame of `blocks` RLE blocks of 128 KiB zeros: 4 bytes per block.
    fn rle_bomb(blocks: u32) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3];
        for i in 0..blocks {
            let header = (128u32 << 10) << 3 | 1 << 1 | u32::from(i + 1 == blocks);
            f.extend_from_slice(&header.to_le_bytes()[..3]);
            f.push(0);
        }
        f
    }

    #[test]
    fn window_follows_the_declared_size() {
        let cases =
            [(0, 23), (5, 23), (8 << 20, 23), ((8 << 20) + 1, 24), (16 << 20, 24), (100 << 20, 27), (1 << 40, 27)];
        for (declared, want) in cases {
            assert_eq!(window_log_max(declared), want, "{declared}");
        }
    }

    #[test]
    fn frames_with_windows_beyond_the_blob_are_refused() {
        // (frame window log, declared size, accepted)
        let cases = [
            (10, 5, true),
            (23, 5, true),
            (24, 5, false),
            (27, 5, false),
            (24, 16 << 20, true),
            (25, 16 << 20, false),
            (27, 200 << 20, true),
            (28, 1 << 30, false),
        ];
        for (window_log, declared, ok) in cases {
            let mut dec = BoundedZstd::new(declared).unwrap();
            let r = dec.feed(&raw_frame(window_log, b"hello"), &mut |_| Ok(()));
            assert_eq!(r.is_ok(), ok, "window 2^{window_log}, declared {declared}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
                assert!(e.to_string().contains("window larger than the"), "{e}");
            }
        }
    }

    #[test]
    fn output_past_the_declared_size_stops_at_once() {
        // 4 KiB of input that would decompress to 1 GiB.
        let bomb = rle_bomb(8192);
        assert!(bomb.len() < 40 << 10);
        for declared in [5u64, 100 << 10, 1 << 20] {
            let mut dec = BoundedZstd::new(declared).unwrap();
            let mut seen = 0u64;
            let err = dec
                .feed(&bomb, &mut |c| {
                    seen += c.len() as u64;
                    Ok(())
                })
                .unwrap_err();
            assert!(err.to_string().contains("more than the"), "{err}");
            assert!(seen <= declared, "{seen} bytes reached the sink for a {declared}-byte blob");
            assert!(dec.produced() <= declared + OUT_CHUNK as u64);
        }
    }

    #[test]
    fn outputs_of_whole_chunks_end_cleanly() {
        // Output that exactly fills the decoder's buffer at the end of a frame.
        for size in [OUT_CHUNK, 2 * OUT_CHUNK, 16 * OUT_CHUNK, 16 * OUT_CHUNK + 1] {
            let data: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            for level in [1, 19] {
                let z = zstd::encode_all(data.as_slice(), level).unwrap();
                assert_eq!(decode_all(&z, size as u64).unwrap(), data, "{size} bytes at level {level}");
            }
        }
        let blocks = 16;
        let out = decode_all(&rle_bomb(blocks), u64::from(blocks) << 17).unwrap();
        assert_eq!(out.len(), (blocks as usize) << 17);
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let one = zstd::encode_all(data.as_slice(), 3).unwrap();
        assert_eq!(decode_all(&one, data.len() as u64).unwrap(), data);
        // Two frames back to back are one blob.
        let mut two = zstd::encode_all(&data[..1000], 1).unwrap();
        two.extend(zstd::encode_all(&data[1000..], 1).unwrap());
        assert_eq!(decode_all(&two, data.len() as u64).unwrap(), data);
        // Fed in small pieces.
        let mut dec = BoundedZstd::new(data.len() as u64).unwrap();
        let mut out = Vec::new();
        for c in one.chunks(7) {
            dec.feed(c, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        dec.finish().unwrap();
        assert_eq!(dec.consumed(), one.len() as u64);
        assert_eq!(out, data);
        assert_eq!(decode_all(&[], 0).unwrap(), Vec::<u8>::new());

        let cases: [(&[u8], u64, &str); 4] = [
            (b"definitely not zstd", 5, "not valid zstd"),
            (&one[..one.len() / 2], data.len() as u64, "middle of a frame"),
            (&one, data.len() as u64 + 1, "not the"),
            (&one, 10, "more than the 10"),
        ];
        for (input, declared, want) in cases {
            let err = decode_all(input, declared).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }
}
