//! Finding a CAS blob by its hash alone, for protocols that name blobs
//! without their size (Bazel's HTTP cache: `GET /cas/{hash}`).

use super::{cas_key, parse_cas_value, Store, CF_CAS};
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;

impl Store {
    /// The full digest of the stored blob with `hash`, or `None` when the CAS
    /// lacks it. The empty blob is always present. Reads only the index and
    /// is not a use of the blob: the read or existence check that follows is.
    pub fn digest_of_hash(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        let probe = Digest { function, hash: *hash, size: 0 };
        if probe.is_empty_blob() {
            return Ok(Some(probe));
        }
        match self.inner.db.get_pinned_cf(self.inner.cf(CF_CAS), cas_key(&probe))? {
            Some(v) => Ok(Some(Digest { size: parse_cas_value(&v)?.1, ..probe })),
            None => Ok(None),
        }
    }
}
