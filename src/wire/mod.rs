//! Pure decoding of what clients send, and the limits that keep it cheap: no
//! storage, no I/O, so the fuzz targets can drive it and protocol knowledge
//! sits above the storage interface.
//! - [`zstd`]: a zstd decoder bounded by the blob's declared size.
//! - [`refs`]: which CAS digests an ActionResult, a Tree or a Directory names.

pub mod refs;
pub mod zstd;
