//! Go's side of a `cairn gocacheprog` session driven in process (the shim's
//! `serve` over in-memory pipes), one request at a time, and the configs the
//! remote-tier tests start it with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cairn::gocache::protocol::{ActionId, OutputId};
use cairn::gocache::remote::RemoteConfig;
use cairn::gocache::{serve, Background, Error, GoCacheConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::task::JoinHandle;

/// Bound on anything that should be quick; a hang fails the test.
pub const LIMIT: Duration = Duration::from_secs(30);

pub fn aid(n: u32) -> ActionId {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&n.to_be_bytes());
    a[31] = 0x60; // keep these apart from other tests' IDs on a shared server
    ActionId(a)
}

pub fn remote(url: &str, key: &str) -> RemoteConfig {
    RemoteConfig {
        url: url.to_string(),
        instance: String::new(),
        timeout: Duration::from_secs(2),
        prefetch: true,
        prefetch_key: Some(key.to_string()),
        wait_for_uploads: false,
        security: Default::default(),
        zstd: true,
    }
}

pub fn config(dir: &Path, remote: RemoteConfig) -> GoCacheConfig {
    GoCacheConfig {
        dir: dir.to_path_buf(),
        max_local_size: 1 << 30,
        remote: Some(remote),
        finish_timeout: Duration::from_secs(10),
        go_cache: None,
        trim_after_hits: None,
    }
}

/// go's side of one session, one request at a time.
pub struct Go {
    stdin: Option<DuplexStream>,
    stdout: Lines<BufReader<DuplexStream>>,
    server: JoinHandle<Result<Background, Error>>,
    next_id: i64,
}

impl Go {
    pub async fn start(config: GoCacheConfig) -> Go {
        let (stdin, their_in) = tokio::io::duplex(1 << 20);
        let (their_out, stdout) = tokio::io::duplex(1 << 20);
        let mut go = Go {
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            server: tokio::spawn(serve(config, their_in, their_out)),
            next_id: 1,
        };
        assert_eq!(go.recv().await["ID"], 0, "handshake");
        go
    }

    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(LIMIT, self.stdout.next_line())
            .await
            .expect("reply in time")
            .unwrap()
            .expect("a reply, not EOF");
        serde_json::from_str(&line).unwrap()
    }

    pub async fn request(&mut self, wire: String) -> Value {
        self.stdin.as_mut().unwrap().write_all(wire.as_bytes()).await.unwrap();
        let reply = self.recv().await;
        assert_eq!(reply["ID"], self.next_id, "one request at a time");
        self.next_id += 1;
        reply
    }

    pub async fn put(&mut self, action: ActionId, body: &[u8]) -> Value {
        let id = self.next_id;
        let mut w = format!(
            "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\"",
            action.to_base64(),
            OutputId::of(body).to_base64()
        );
        if body.is_empty() {
            w.push_str("}\n\n");
        } else {
            w.push_str(&format!(",\"BodySize\":{}}}\n\n\"{}\"\n", body.len(), STANDARD.encode(body)));
        }
        let reply = self.request(w).await;
        assert!(reply["DiskPath"].is_string(), "put stored: {reply}");
        reply
    }

    pub async fn get(&mut self, action: ActionId) -> Value {
        let id = self.next_id;
        self.request(format!("{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n", action.to_base64())).await
    }

    /// Sends close, then finishes the background work within `bound`.
    pub async fn close(mut self, bound: Duration) {
        let id = self.next_id;
        let reply = self.request(format!("{{\"ID\":{id},\"Command\":\"close\"}}\n\n")).await;
        assert!(reply.get("Err").is_none(), "{reply}");
        self.stdin = None;
        let background =
            tokio::time::timeout(LIMIT, self.server).await.expect("serve returns").unwrap().expect("serve succeeds");
        tokio::time::timeout(bound + Duration::from_secs(5), background.finish(bound))
            .await
            .expect("finish keeps its bound");
    }
}

/// Asserts a get hit whose file holds `body`; returns the reply.
pub fn assert_hit(reply: &Value, body: &[u8]) -> PathBuf {
    assert!(reply.get("Miss").is_none(), "expected a hit: {reply}");
    assert_eq!(reply["OutputID"], OutputId::of(body).to_base64(), "{reply}");
    assert_eq!(reply["Size"].as_u64().unwrap_or(0), body.len() as u64, "{reply}");
    let path = PathBuf::from(reply["DiskPath"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), body, "content of {}", path.display());
    path
}

pub fn big_body() -> Vec<u8> {
    // > 1 MiB: goes through ByteStream both ways.
    (0..3 * 1024 * 1024 + 17).map(|i| (i * 7 % 251) as u8).collect()
}
