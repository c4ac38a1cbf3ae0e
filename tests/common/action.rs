//! One action's worth of cache traffic, as a client writes it: a small
//! output, a large one (streamed by ByteStream), stdout, and the result
//! naming them. The tier tests (upstream proxies, bucket nodes) write it
//! through one node and check another serves all of it.

use bytes::Bytes;
use cairn::client::Client;
use cairn::digest::{Digest, DigestFunction};
use cairn::proto::reapi;

/// A blob of `size` bytes that no other seed gives.
pub fn blob(seed: u8, size: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// A result with these output files and stdout.
pub fn result_naming(outputs: &[Digest], stdout: Digest) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, d)| reapi::OutputFile {
                path: format!("out/{i}"),
                digest: Some(d.to_proto()),
                ..Default::default()
            })
            .collect(),
        stdout_digest: Some(stdout.to_proto()),
        ..Default::default()
    }
}

/// Two outputs (the second `large` bytes, above the 1 MiB batch size so it
/// is streamed), stdout, and the result naming them.
pub struct Action {
    pub digest: Digest,
    pub blobs: Vec<(Digest, Bytes)>,
    pub result: reapi::ActionResult,
}

impl Action {
    pub fn new(seed: u8, large: usize) -> Action {
        let blobs = vec![blob(seed, 100), blob(seed.wrapping_add(1), large), blob(seed.wrapping_add(2), 40)];
        let result = result_naming(&[blobs[0].0, blobs[1].0], blobs[2].0);
        Action { digest: DigestFunction::Sha256.digest_of(&[b'a', seed]), blobs, result }
    }

    /// The large output.
    pub fn large(&self) -> Digest {
        self.blobs[1].0
    }

    pub fn digests(&self) -> Vec<Digest> {
        self.blobs.iter().map(|(d, _)| *d).collect()
    }

    /// Uploads the blobs (small ones batched, the large one by ByteStream), then the result.
    pub async fn write(&self, c: &Client) {
        for (d, data) in &self.blobs {
            if data.len() > 1 << 20 {
                c.write_bytes(d, data.clone()).await.expect("ByteStream write");
            } else {
                c.batch_upload(&[(*d, data.clone())]).await.expect("batch upload");
            }
        }
        c.update_action_result(&self.digest, self.result.clone()).await.expect("UpdateActionResult");
    }

    /// Asserts `c` serves the result and every blob with the right bytes.
    pub async fn assert_served(&self, c: &Client, who: &str) {
        let got = c.get_action_result(&self.digest).await.expect("GetActionResult");
        assert_eq!(got.as_ref().map(|r| &r.output_files), Some(&self.result.output_files), "{who}: the result");
        assert!(c.find_missing(&self.digests()).await.expect("FindMissingBlobs").is_empty(), "{who}: blobs missing");
        let large = self.blobs[1].1.len() as u64;
        assert_eq!(c.read_blob(&self.large(), true).await.expect("ByteStream read"), Some(large), "{who}");
        let small = vec![self.blobs[0].0, self.blobs[2].0];
        let read = c.batch_read(&small).await.expect("BatchReadBlobs");
        assert_eq!(read, vec![Some(self.blobs[0].1.clone()), Some(self.blobs[2].1.clone())], "{who}: small blobs");
    }
}
