//! A tier in memory for unit tests of the composition and the drain: it
//! records the order of its writes, and can be made to fail, stall or lie.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;

use super::tier::{Body, Chunks, Tier, Used};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// A tier in memory; `log` lists writes in order ("blob HEX", "action HEX").
#[derive(Default)]
pub struct MemoryTier {
    pub blobs: Mutex<HashMap<Digest, Bytes>>,
    pub actions: Mutex<HashMap<Digest, Bytes>>,
    pub log: Mutex<Vec<String>>,
    pub down: AtomicBool,
    /// Every call waits forever (a tier that accepted the connection and hangs).
    pub stalled: AtomicBool,
    /// Reads return the blob with its first byte flipped.
    pub lying: AtomicBool,
    /// Blob reads asked for so far.
    pub reads: AtomicUsize,
    /// When set, each blob read waits for a permit from it.
    pub read_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// When set, each result write waits until as many as the barrier
    /// counts are in flight at once.
    pub action_barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
    /// Local hits noted as uses, in order ("blob HEX", "action HEX").
    pub used: Mutex<Vec<String>>,
}

impl MemoryTier {
    async fn check(&self) -> Result<()> {
        if self.stalled.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(Error::Unavailable("memory tier is down".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Tier for MemoryTier {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.check().await?;
        let blobs = self.blobs.lock().unwrap();
        Ok(digests.iter().filter(|d| !blobs.contains_key(d)).copied().collect())
    }
    async fn read(&self, d: &Digest) -> Result<Option<Chunks>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let gate = self.read_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _permit = gate.acquire().await;
        }
        self.check().await?;
        let mut got = self.blobs.lock().unwrap().get(d).cloned();
        if self.lying.load(Ordering::Relaxed) {
            got = got.filter(|b| !b.is_empty()).map(|b| {
                let mut v = b.to_vec();
                v[0] ^= 0xff;
                Bytes::from(v)
            });
        }
        Ok(got.map(|b| futures::stream::once(async { Ok(b) }).boxed()))
    }
    async fn write(&self, d: &Digest, body: Body) -> Result<()> {
        self.check().await?;
        let bytes = match body {
            Body::Whole(b) => b,
            Body::Stream(mut s) => {
                let mut all = Vec::new();
                while let Some(c) = s.next().await {
                    all.extend_from_slice(&c?);
                }
                all.into()
            }
        };
        assert_eq!(d.function.digest_of(&bytes), *d, "the drain sent the wrong bytes");
        self.blobs.lock().unwrap().insert(*d, bytes);
        self.log.lock().unwrap().push(format!("blob {}", d.hex()));
        Ok(())
    }
    async fn get_action(&self, _instance: &str, action: &Digest) -> Result<Option<Bytes>> {
        self.check().await?;
        Ok(self.actions.lock().unwrap().get(action).cloned())
    }
    async fn put_action(&self, _instance: &str, action: &Digest, result: Bytes) -> Result<()> {
        self.check().await?;
        let barrier = self.action_barrier.lock().unwrap().clone();
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
        self.actions.lock().unwrap().insert(*action, result);
        self.log.lock().unwrap().push(format!("action {}", action.hex()));
        Ok(())
    }
    fn note_used(&self, used: Used<'_>) {
        let mut noted = self.used.lock().unwrap();
        match used {
            Used::Blobs(blobs) => noted.extend(blobs.iter().map(|d| format!("blob {}", d.hex()))),
            Used::Action { action, .. } => noted.push(format!("action {}", action.hex())),
        }
    }
}
