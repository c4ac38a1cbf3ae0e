//! The soak's misbehaving clients, each on connections of its own, looping
//! until the deadline: stalled reads and writes, disconnects in the middle of
//! a write and of a read, zstd bombs (BatchUpdateBlobs and compressed-blobs
//! ByteStream writes of a tiny frame declaring a huge output), instance names
//! over 255 bytes, and wrong or malformed digests. Every outcome is tallied by
//! gRPC code; an outcome that accepts the bad input (or leaves a partial blob
//! readable) is counted as an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::data::{BigBlobs, Rng};
use super::report::Samples;
use crate::client::{Client, ClientError};
use crate::digest::{Digest, DigestFunction};
use crate::proto::bytestream::{byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest};
use crate::proto::reapi::{self, content_addressable_storage_client::ContentAddressableStorageClient};

/// Size of the blob stalled and dropped reads ask for: more than HTTP/2's
/// flow-control windows, so the server really has to wait on the reader.
const READ_BLOB: u64 = 32 << 20;
/// Bytes a stalled or dropped write sends before stopping.
const WRITE_PREFIX: usize = 256 * 1024;
/// Size a stalled or dropped write declares.
const WRITE_DECLARED: u64 = 64 << 20;
/// Instance name length of the oversized-name client (the cap is 255 bytes).
const LONG_INSTANCE: usize = 300;
/// Decompressed size a declared-size bomb really holds: 2048 RLE blocks of
/// 128 KiB = 256 MiB from an 8 KiB frame (bounded so that a server without
/// limits costs the soak seconds, not its disk).
const BOMB_BLOCKS: usize = 2048;
/// Size the bombs' digests declare.
const BOMB_DECLARED: u64 = 64 << 30;

/// The kinds of misbehaviour, assigned to the hostile clients round-robin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    StalledRead,
    StalledWrite,
    DropWrite,
    DropRead,
    ZstdBombBatch,
    ZstdBombStream,
    LongInstance,
    WrongDigest,
}

/// Every kind, in report order.
pub const KINDS: [Kind; 8] = [
    Kind::StalledRead,
    Kind::StalledWrite,
    Kind::DropWrite,
    Kind::DropRead,
    Kind::ZstdBombBatch,
    Kind::ZstdBombStream,
    Kind::LongInstance,
    Kind::WrongDigest,
];

impl Kind {
    /// The row name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::StalledRead => "stalled read (never consumed)",
            Kind::StalledWrite => "stalled write (first chunk only)",
            Kind::DropWrite => "disconnect mid-write",
            Kind::DropRead => "disconnect mid-read",
            Kind::ZstdBombBatch => "zstd bomb, BatchUpdateBlobs",
            Kind::ZstdBombStream => "zstd bomb, ByteStream",
            Kind::LongInstance => "instance name > 255 bytes",
            Kind::WrongDigest => "wrong or malformed digest",
        }
    }

    /// Pause between attempts: bombs cost a server without limits CPU and disk.
    fn pause(self) -> Duration {
        match self {
            Kind::ZstdBombBatch | Kind::ZstdBombStream => Duration::from_secs(5),
            _ => Duration::from_secs(1),
        }
    }
}

/// Outcomes of one kind of misbehaviour.
#[derive(Default)]
pub struct KindTally {
    /// Time to each outcome; errors are the wrong outcomes.
    pub samples: Samples,
    /// Outcome (gRPC code, or what happened) → count.
    pub outcomes: BTreeMap<String, u64>,
}

/// What a hostile client needs.
#[derive(Clone)]
pub struct Hostile {
    /// `http://host:port`, for connections of their own.
    pub uri: String,
    pub url: String,
    pub deadline: Instant,
    /// How long a stalled stream is held before giving up on it.
    pub stall: Duration,
    pub seed: u64,
}

/// One observed outcome: its label and whether it was wrong.
type Outcome = (String, bool);

fn code_name(c: Code) -> String {
    format!("{c:?}")
}

/// Whether `c` is a clear refusal of bad input (not success, not a crash).
fn clear(c: Code) -> bool {
    !matches!(c, Code::Ok | Code::Unknown | Code::Internal | Code::Unavailable)
}

/// A refusal outcome: right when it is clear.
fn refused(what: &str, c: Code) -> Outcome {
    (format!("{what}{}", code_name(c)), !clear(c))
}

/// An outcome that must be INVALID_ARGUMENT.
fn must_be_invalid(what: &str, c: Code) -> Outcome {
    (format!("{what}{}", code_name(c)), c != Code::InvalidArgument)
}

fn client_code(e: &ClientError) -> Code {
    match e {
        ClientError::Rpc { status, .. } => status.code(),
        _ => Code::Unavailable,
    }
}

async fn connect(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(uri.to_string())
        .expect("checked uri")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB zeros that declares
/// `declared` bytes of content. With `window` the frame names that window
/// size (so a decoder with a window limit accepts it); without, it is a
/// single-segment frame whose window is the whole declared size.
pub fn bomb_frame(declared: u64, blocks: usize, window: Option<u8>) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    match window {
        // Frame_Header_Descriptor: 8-byte content size, window descriptor follows.
        Some(log) => f.extend_from_slice(&[0xC0, (log - 10) << 3]),
        // 8-byte content size, single segment.
        None => f.push(0xE0),
    }
    f.extend_from_slice(&declared.to_le_bytes());
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block_Header: last flag, type 1 (RLE), size 128 KiB; then the byte.
        let h = last | (1 << 1) | ((128 * 1024) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// A digest that names `size` bytes nobody has.
fn fake_digest(rng: &mut Rng, size: u64) -> Digest {
    let mut hash = [0u8; 32];
    rng.fill(&mut hash);
    Digest { function: DigestFunction::Sha256, hash, size }
}

/// The ByteStream name of `d` under `c`'s instance.
fn read_name(c: &Client, d: &Digest) -> String {
    let prefix = if c.instance().is_empty() { String::new() } else { format!("{}/", c.instance()) };
    format!("{prefix}blobs/{}/{}", d.hex(), d.size)
}

/// Makes sure the server holds this client's big blob; the digest to read.
async fn ensure_big(c: &Client, big: &BigBlobs, k: u64, d: &Digest) -> Result<(), Code> {
    if c.find_missing(&[*d]).await.map_err(|e| client_code(&e))?.is_empty() {
        return Ok(());
    }
    c.write_chunks(d, big.chunks(k, d.size)).await.map_err(|e| client_code(&e))
}

async fn stalled_read(h: &Hostile, c: &Client, d: &Digest) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let req = ReadRequest { resource_name: read_name(c, d), read_offset: 0, read_limit: 0 };
    let mut stream = match ByteStreamClient::new(ch).read(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return vec![refused("refused: ", s.code())],
    };
    let hold = h.stall.min(h.deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(hold).await;
    // Now drain: did the server end the stream while it was stalled?
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return vec![(format!("held {}s, then read to the end", hold.as_secs()), false)],
            Err(s) => return vec![(format!("ended by server: {}", code_name(s.code())), false)],
        }
    }
}

async fn stalled_write(h: &Hostile, rng: &mut Rng) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let d = fake_digest(rng, WRITE_DECLARED);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    let first = WriteRequest {
        resource_name: format!("uploads/{}/blobs/{}/{}", uuid::Uuid::new_v4(), d.hex(), d.size),
        write_offset: 0,
        finish_write: false,
        data: Bytes::from(vec![7u8; WRITE_PREFIX]),
    };
    let _ = tx.send(first).await;
    let hold = h.stall.min(h.deadline.saturating_duration_since(Instant::now()));
    let mut bs = ByteStreamClient::new(ch);
    let call = bs.write(tokio_stream::wrappers::ReceiverStream::new(rx));
    let out = match tokio::time::timeout(hold, call).await {
        Ok(Ok(_)) => ("OK (accepted a partial blob!)".into(), true),
        Ok(Err(s)) => (format!("ended by server: {}", code_name(s.code())), !clear(s.code())),
        Err(_) => (format!("still open after {}s", hold.as_secs()), false),
    };
    drop(tx);
    vec![out]
}

/// Starts a write on a connection of its own, sends a few chunks, then drops
/// the connection; the partial blob must not become readable.
async fn drop_write(h: &Hostile, c: &Client, rng: &mut Rng) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let data = super::data::bytes(rng.next_u64(), 4 * WRITE_PREFIX);
    let d = DigestFunction::Sha256.digest_of(&data);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    let name = format!("uploads/{}/blobs/{}/{}", uuid::Uuid::new_v4(), d.hex(), d.size);
    let call =
        tokio::spawn(
            async move { ByteStreamClient::new(ch).write(tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        );
    for i in 0..3 {
        let msg = WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * WRITE_PREFIX) as i64,
            finish_write: false,
            data: data.slice(i * WRITE_PREFIX..(i + 1) * WRITE_PREFIX),
        };
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Dropping the task drops the call and its channel: the connection closes.
    call.abort();
    let _ = call.await;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    match c.find_missing(&[d]).await {
        Ok(m) if m.contains(&d) => vec![("disconnected; partial blob absent".into(), false)],
        Ok(_) => vec![("disconnected; partial blob REPORTED PRESENT".into(), true)],
        Err(e) => vec![(format!("check failed: {}", code_name(client_code(&e))), true)],
    }
}

async fn drop_read(h: &Hostile, c: &Client, d: &Digest) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let req = ReadRequest { resource_name: read_name(c, d), read_offset: 0, read_limit: 0 };
    let out = match ByteStreamClient::new(ch).read(req).await {
        Ok(r) => {
            let mut s = r.into_inner();
            match s.message().await {
                Ok(Some(_)) => ("disconnected after the first message".to_string(), false),
                Ok(None) => ("stream ended at once".to_string(), false),
                Err(e) => refused("read failed: ", e.code()),
            }
        }
        Err(s) => refused("refused: ", s.code()),
    };
    vec![out]
}

async fn bomb_batch(h: &Hostile, rng: &mut Rng) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let cases = [
        ("4 KiB digest, frame declares 1 TiB: ", fake_digest(rng, 4096), bomb_frame(1 << 40, 64, None)),
        (
            "64 GiB digest and frame, 256 MiB inside: ",
            fake_digest(rng, BOMB_DECLARED),
            bomb_frame(BOMB_DECLARED, BOMB_BLOCKS, Some(23)),
        ),
    ];
    let mut out = Vec::new();
    for (what, d, frame) in cases {
        let req = reapi::BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: Bytes::from(frame),
                compressor: reapi::compressor::Value::Zstd as i32,
            }],
            digest_function: 0,
        };
        out.push(match ContentAddressableStorageClient::new(ch.clone()).batch_update_blobs(req).await {
            Ok(r) => {
                let code = r.into_inner().responses.first().and_then(|x| x.status.as_ref()).map_or(0, |s| s.code);
                refused(what, Code::from(code))
            }
            Err(s) => refused(what, s.code()),
        });
    }
    out
}

async fn bomb_stream(h: &Hostile, rng: &mut Rng) -> Vec<Outcome> {
    let Ok(ch) = connect(&h.uri).await else { return vec![("connect failed".into(), true)] };
    let d = fake_digest(rng, BOMB_DECLARED);
    let msg = WriteRequest {
        resource_name: format!("uploads/{}/compressed-blobs/zstd/{}/{}", uuid::Uuid::new_v4(), d.hex(), d.size),
        write_offset: 0,
        finish_write: true,
        data: Bytes::from(bomb_frame(BOMB_DECLARED, BOMB_BLOCKS, Some(23))),
    };
    match ByteStreamClient::new(ch).write(futures::stream::iter([msg])).await {
        Ok(_) => vec![("64 GiB declared, 256 MiB inside: OK".into(), true)],
        Err(s) => vec![refused("64 GiB declared, 256 MiB inside: ", s.code())],
    }
}

async fn long_instance(h: &Hostile, rng: &mut Rng) -> Vec<Outcome> {
    let name = format!("soak-{}", "x".repeat(LONG_INSTANCE - 5));
    let c = match Client::connect(&h.url, &name, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => return vec![(format!("connect failed: {e}"), true)],
    };
    let blob = super::data::bytes(rng.next_u64(), 1000);
    let d = DigestFunction::Sha256.digest_of(&blob);
    let code = |r: Result<(), ClientError>| r.err().map_or(Code::Ok, |e| client_code(&e));
    vec![
        must_be_invalid("FindMissingBlobs: ", code(c.find_missing(&[d]).await.map(|_| ()))),
        must_be_invalid("BatchUpdateBlobs: ", code(c.batch_upload(&[(d, blob.clone())]).await)),
        must_be_invalid("ByteStream.Write: ", code(c.write_bytes(&d, blob).await)),
        must_be_invalid("GetActionResult: ", code(c.get_action_result(&d).await.map(|_| ()))),
        must_be_invalid("UpdateActionResult: ", code(c.update_action_result(&d, reapi::ActionResult::default()).await)),
    ]
}

async fn wrong_digest(h: &Hostile, c: &Client, rng: &mut Rng) -> Vec<Outcome> {
    let blob = super::data::bytes(rng.next_u64(), 5000);
    let liar = fake_digest(rng, blob.len() as u64);
    let code = |r: Result<(), ClientError>| r.err().map_or(Code::Ok, |e| client_code(&e));
    let mut out = vec![
        must_be_invalid("BatchUpdateBlobs, hash mismatch: ", code(c.batch_upload(&[(liar, blob.clone())]).await)),
        must_be_invalid("ByteStream.Write, hash mismatch: ", code(c.write_bytes(&liar, blob.clone()).await)),
    ];
    let Ok(ch) = connect(&h.uri).await else { return out };
    let req = reapi::FindMissingBlobsRequest {
        instance_name: String::new(),
        blob_digests: vec![reapi::Digest { hash: "not-a-hash".into(), size_bytes: -5 }],
        digest_function: 0,
    };
    let c2 = match ContentAddressableStorageClient::new(ch).find_missing_blobs(req).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    out.push(must_be_invalid("FindMissingBlobs, malformed digest: ", c2));
    out
}

/// One hostile client's loop until the deadline.
async fn client_loop(h: Hostile, kind: Kind, c: Client, index: u64) -> KindTally {
    let mut t = KindTally::default();
    let mut rng = Rng::new(h.seed ^ index.wrapping_mul(0x9E37_79B9));
    let big = Arc::new(BigBlobs::new(h.seed ^ index, 1 << 20));
    let k = h.seed ^ index;
    let needs_blob = matches!(kind, Kind::StalledRead | Kind::DropRead);
    let big_digest = if needs_blob {
        let b = Arc::clone(&big);
        tokio::task::spawn_blocking(move || b.digest(k, READ_BLOB)).await.ok()
    } else {
        None
    };
    while Instant::now() < h.deadline {
        let started = Instant::now();
        let outcomes = match (kind, big_digest) {
            (Kind::StalledRead | Kind::DropRead, Some(d)) => match ensure_big(&c, &big, k, &d).await {
                Err(code) => vec![(format!("setup upload failed: {}", code_name(code)), false)],
                Ok(()) if kind == Kind::StalledRead => stalled_read(&h, &c, &d).await,
                Ok(()) => drop_read(&h, &c, &d).await,
            },
            (Kind::StalledRead | Kind::DropRead, None) => vec![("setup failed".into(), true)],
            (Kind::StalledWrite, _) => stalled_write(&h, &mut rng).await,
            (Kind::DropWrite, _) => drop_write(&h, &c, &mut rng).await,
            (Kind::ZstdBombBatch, _) => bomb_batch(&h, &mut rng).await,
            (Kind::ZstdBombStream, _) => bomb_stream(&h, &mut rng).await,
            (Kind::LongInstance, _) => long_instance(&h, &mut rng).await,
            (Kind::WrongDigest, _) => wrong_digest(&h, &c, &mut rng).await,
        };
        let took = started.elapsed();
        for (label, is_wrong) in outcomes {
            *t.outcomes.entry(label.clone()).or_default() += 1;
            t.samples.record(took, if is_wrong { Err(label) } else { Ok(0) });
        }
        let pause = kind.pause().min(h.deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
    t
}

/// Runs `n` hostile clients (kinds round-robin); their tallies by kind.
pub async fn run(h: Hostile, n: usize, c: &Client) -> BTreeMap<Kind, KindTally> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let kind = KINDS[i % KINDS.len()];
            (kind, tokio::spawn(client_loop(h.clone(), kind, c.clone(), i as u64)))
        })
        .collect();
    let mut by_kind: BTreeMap<Kind, KindTally> = BTreeMap::new();
    for (kind, task) in tasks {
        let t = task.await.unwrap_or_else(|e| {
            let mut t = KindTally::default();
            t.samples.record(Duration::ZERO, Err(format!("bench task panicked: {e}")));
            t
        });
        let all = by_kind.entry(kind).or_default();
        all.samples.merge(t.samples);
        for (k, v) in t.outcomes {
            *all.outcomes.entry(k).or_default() += v;
        }
    }
    by_kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bomb_frames_decode_to_what_they_hold() {
        // A frame whose declared size matches its blocks decodes to zeros.
        let f = bomb_frame(4 * 128 * 1024, 4, Some(23));
        let out = zstd::stream::decode_all(&f[..]).expect("valid frame");
        assert_eq!(out.len(), 4 * 128 * 1024);
        assert!(out.iter().all(|&b| b == 0));
        let f = bomb_frame(2 * 128 * 1024, 2, None);
        assert_eq!(zstd::stream::decode_all(&f[..]).expect("valid frame").len(), 2 * 128 * 1024);
        // The bombs are tiny next to what they declare.
        assert!(bomb_frame(BOMB_DECLARED, BOMB_BLOCKS, Some(23)).len() < 10_000);
    }
}
