//! Reads that cost fewer bytes or round trips on a slow link: blobs fetched
//! zstd-compressed (`compressed-blobs/zstd/…`, when the server's
//! capabilities offer it), and ActionResults asked for with their small
//! output files inlined.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tonic::Code;

use super::{rpc, Client, ClientError, Result};
use crate::digest::Digest;
use crate::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest};
use crate::proto::reapi::{self, action_cache_client::ActionCacheClient};
use crate::wire::zstd::BoundedZstd;

impl Client {
    /// True if the server's capabilities list zstd among the compressors
    /// it reads and writes blobs with.
    pub async fn offers_zstd(&self) -> Result<bool> {
        let caps = self.clone().capabilities().await?;
        Ok(caps
            .cache_capabilities
            .is_some_and(|c| c.supported_compressors.contains(&(reapi::compressor::Value::Zstd as i32))))
    }

    /// [`Client::read_to_file`] with the blob sent zstd-compressed
    /// (`compressed-blobs/zstd/{hash}/{size}`): decompressed as it arrives,
    /// bounded by the declared size, verified like a plain read. Only for
    /// servers that [offer zstd](Client::offers_zstd).
    pub async fn read_to_file_zstd(&self, d: &Digest, dest: &Path) -> Result<bool> {
        let name = format!("{}compressed-blobs/zstd/{}/{}", self.prefix(), d.hex(), d.size);
        let resp = ByteStreamClient::new(self.conn())
            .read(ReadRequest { resource_name: name, read_offset: 0, read_limit: 0 })
            .await;
        let mut stream = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(false),
            Err(s) => return Err(ClientError::Rpc { rpc: "ByteStream.Read", status: s }),
        };
        let io = |source| ClientError::Io { context: format!("writing {}", dest.display()), source };
        let corrupt = |why: String| ClientError::Corrupt { digest: d.to_string(), why };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = d.function.hasher();
        let outcome: Result<()> = async {
            let mut decoder = BoundedZstd::new(d.size).map_err(|e| corrupt(e.to_string()))?;
            let mut out = Vec::new();
            while let Some(msg) = stream.message().await.map_err(rpc("ByteStream.Read"))? {
                out.clear();
                decoder
                    .feed(&msg.data, &mut |chunk| {
                        out.extend_from_slice(chunk);
                        Ok(())
                    })
                    .map_err(|e| corrupt(e.to_string()))?;
                hasher.update(&out);
                file.write_all(&out).await.map_err(io)?;
            }
            decoder.finish().map_err(|e| corrupt(e.to_string()))?;
            file.flush().await.map_err(io)?;
            let got = decoder.produced();
            if got != d.size || hasher.clone().finalize() != d.hash {
                return Err(corrupt(format!("{got} bytes after zstd decoding, wrong hash")));
            }
            Ok(())
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        outcome.map(|_| true)
    }

    /// [`Client::get_action_result`] asking the server to inline the
    /// contents of the output files at `paths` (REAPI
    /// `inline_output_files`); a server may still leave them out, so read
    /// `OutputFile.contents` only when non-empty and check it against the
    /// file's digest.
    pub async fn get_action_result_inline(
        &self,
        action: &Digest,
        paths: &[&str],
    ) -> Result<Option<reapi::ActionResult>> {
        let r = ActionCacheClient::new(self.conn())
            .get_action_result(reapi::GetActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.to_proto()),
                digest_function: self.function.to_proto() as i32,
                inline_output_files: paths.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ClientError::Rpc { rpc: "GetActionResult", status: s }),
        }
    }
}
