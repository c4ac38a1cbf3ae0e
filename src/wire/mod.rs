//! Pure decoding of what clients send, and the limits that keep it cheap: no
//! storage, no I/O, so the fuzz targets can drive it and protocol knowledge
//! sits above the storage interface.
//! - [`zstd`]: a zstd decoder bounded by the blob's declared size.
//! - [`refs`]: which CAS digests an ActionResult, a Tree or a Directory names.

pub mod refs;
pub mod zstd;

/// The largest HTTP/2 frame cairn accepts, as client and as server (the
/// protocol's default is 16 KiB). A peer may then send a 1 MiB chunk of a
/// blob as one DATA frame instead of 64, which halves the per-byte CPU of
/// large reads and writes on both ends; peers that keep sending 16 KiB
/// frames are unaffected.
pub const HTTP2_MAX_FRAME: u32 = 1 << 20;
