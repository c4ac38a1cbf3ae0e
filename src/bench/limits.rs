//! Reference points measured in the same run, so every cairn figure can be
//! read as a fraction of what this machine can do at all:
//! - SHA-256 and BLAKE3 on one core over the same bytes (a verified upload
//!   can go no faster than its hash);
//! - a file written and fsynced, and one read back from the page cache (what
//!   a large-blob write or read has to do besides gRPC);
//! - the store without gRPC (`cairn::store::Store`, same RocksDB options as
//!   the server): ActionCache get/put, FindMissing of 10k, small-blob put/read
//!   (only when the target is cairn: it is cairn's ceiling, not a peer's);
//! - a loopback gRPC unary echo: the standard health Check, against an
//!   in-process tonic server (the floor for any Rust gRPC unary call here)
//!   and against the target.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::data::{self, Blob, Rng};
use super::report::{Row, Samples};
use super::server::ScratchDir;
use super::{err, timed, Ctx};
use crate::client::Client;
use crate::digest::DigestFunction;
use crate::store::{Limits, Store};

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("limits");
    let secs = ctx.duration();
    for (name, f) in [("SHA-256", DigestFunction::Sha256), ("BLAKE3", DigestFunction::Blake3)] {
        let mbs = tokio::task::spawn_blocking(move || hash_speed(f, secs)).await?;
        let key = format!("{}_mb_s", f.name());
        ctx.report.limits.insert(key, mbs);
        ctx.report.push(Row::value("limit: hash, 1 core", name, format!("{} MB/s", super::report::num(mbs))));
    }
    let quick = ctx.args.seconds < 0.5;
    let file_len: usize = if quick { 8 << 20 } else { 256 << 20 };
    let (w, r) = tokio::task::spawn_blocking(move || file_speed(file_len, secs)).await??;
    ctx.report.limits.insert("file_write_mb_s".into(), w);
    ctx.report.limits.insert("file_read_mb_s".into(), r);
    let size = super::server::mib(file_len as u64);
    ctx.report.push(Row::value(
        "limit: file",
        &format!("write + fdatasync {size}"),
        format!("{} MB/s", super::report::num(w)),
    ));
    ctx.report.push(Row::value(
        "limit: file",
        &format!("read from page cache {size}"),
        format!("{} MB/s", super::report::num(r)),
    ));
    // The store's own ceiling only means something when the target is cairn.
    if ctx.args.name == "cairn" {
        store_limits(ctx).await?;
    }
    echo(ctx).await?;
    Ok(())
}

/// MB/s of one core hashing a 16 MiB buffer for about `secs`.
fn hash_speed(f: DigestFunction, secs: Duration) -> f64 {
    let buf = data::bytes(1, 16 << 20);
    let start = Instant::now();
    let mut bytes = 0u64;
    while bytes == 0 || start.elapsed() < secs {
        let mut h = f.hasher();
        h.update(&buf);
        std::hint::black_box(h.finalize());
        bytes += buf.len() as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// MB/s of writing `len` bytes to a file in 1 MiB writes plus fdatasync, and
/// of reading it back (from the page cache) repeatedly for about `secs`.
fn file_speed(len: usize, secs: Duration) -> std::io::Result<(f64, f64)> {
    let dir = ScratchDir::new("file")?;
    let path = dir.path().join("f");
    let chunk = data::bytes(2, 1 << 20);
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..len / chunk.len() {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    let write = len as f64 / start.elapsed().as_secs_f64() / 1e6;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while bytes == 0 || start.elapsed() < secs {
        let mut f = std::fs::File::open(&path)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    Ok((write, bytes as f64 / start.elapsed().as_secs_f64() / 1e6))
}

/// The store on its own: the ceiling for the gRPC figures.
async fn store_limits(ctx: &mut Ctx) -> anyhow::Result<()> {
    let secs = ctx.duration();
    let seed = ctx.seed(11);
    // Tiny runs (the smoke test) get a tenth of the data.
    let (nblobs, nactions) = if ctx.args.seconds < 0.5 { (500, 1000) } else { (5000, 10_000) };
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(Row, &'static str)>> {
        let dir = ScratchDir::new("store")?;
        let store = Store::open_with(dir.path(), Limits::default())?;
        let mut rows = Vec::new();
        let mut rng = Rng::new(seed);

        // Small blobs: put, then read back.
        let blobs = data::small_blobs(seed, nblobs);
        let mut s = Samples::default();
        let start = Instant::now();
        for b in &blobs {
            let t = Instant::now();
            let r = store.put(b.digest, &b.data).map(|_| b.data.len() as u64).map_err(err);
            s.record(t.elapsed(), r);
        }
        rows.push((s.into_row("limit: store (no gRPC)", "put 1–64 KiB blob", start.elapsed()), "store_put"));
        let mut s = Samples::default();
        let start = Instant::now();
        while s.nanos.is_empty() || start.elapsed() < secs {
            let b = &blobs[rng.below(blobs.len() as u64) as usize];
            let t = Instant::now();
            let r = match store.read_all(&b.digest) {
                Ok(Some(v)) if v.len() == b.data.len() => Ok(v.len() as u64),
                Ok(_) => Err("blob missing or wrong size".to_string()),
                Err(e) => Err(err(e)),
            };
            s.record(t.elapsed(), r);
        }
        rows.push((s.into_row("limit: store (no gRPC)", "read 1–64 KiB blob", start.elapsed()), "store_read"));

        // FindMissing of 10k digests, half present (a twentieth in tiny runs).
        let mut s = Samples::default();
        let start = Instant::now();
        while s.nanos.is_empty() || start.elapsed() < secs {
            let mut ask: Vec<_> = blobs.iter().map(|b| b.digest).collect();
            ask.extend((0..10_000 - nblobs).map(|_| data::absent_digest(&mut rng)));
            let t = Instant::now();
            let r = match store.find_missing(&ask) {
                Ok(m) if m.len() == 10_000 - nblobs => Ok(0),
                Ok(m) => Err(format!("{} missing, expected {}", m.len(), 10_000 - nblobs)),
                Err(e) => Err(err(e)),
            };
            s.record(t.elapsed(), r);
        }
        rows.push((s.into_row("limit: store (no gRPC)", "find_missing 10000", start.elapsed()), "store_fm10k"));

        // ActionCache entries of a realistic size (a few hundred bytes).
        let actions: Vec<_> = (0..nactions as u64).map(|i| Blob::seeded(seed ^ (i << 20), 100).digest).collect();
        let value = data::bytes(seed, 400);
        let mut s = Samples::default();
        let start = Instant::now();
        for a in &actions {
            let t = Instant::now();
            let r = store.put_action("", a, &value).map(|_| 0).map_err(err);
            s.record(t.elapsed(), r);
        }
        rows.push((s.into_row("limit: store (no gRPC)", "put_action", start.elapsed()), "store_ac_put"));
        let mut s = Samples::default();
        let start = Instant::now();
        while s.nanos.is_empty() || start.elapsed() < secs {
            let a = &actions[rng.below(actions.len() as u64) as usize];
            let t = Instant::now();
            let r = match store.get_action("", a) {
                Ok(Some(_)) => Ok(0),
                Ok(None) => Err("stored action missing".to_string()),
                Err(e) => Err(err(e)),
            };
            s.record(t.elapsed(), r);
        }
        rows.push((s.into_row("limit: store (no gRPC)", "get_action hit", start.elapsed()), "store_ac_get"));
        store.close();
        Ok(rows)
    })
    .await??;
    for (row, key) in rows {
        ctx.report.limits.insert(format!("{key}_ops_s"), row.ops_per_sec);
        if let Some(mb) = row.mb_per_sec {
            ctx.report.limits.insert(format!("{key}_mb_s"), mb);
        }
        ctx.report.limits.insert(format!("{key}_p50_ms"), row.p50_ms);
        ctx.report.push(row);
    }
    Ok(())
}

/// The health Check as a unary echo, in-process and against the target.
async fn echo(ctx: &mut Ctx) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, service) = tonic_health::server::health_reporter();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let mut echo_clients = Vec::new();
    for _ in 0..ctx.args.connections.max(1) {
        echo_clients.push(Client::connect(&format!("grpc://{addr}"), "", Duration::from_secs(5)).await?);
    }
    let target_clients = std::mem::replace(&mut ctx.clients, echo_clients);
    for c in [1usize, 64] {
        let (s, wall) = timed(ctx, c, ctx.duration(), u64::MAX, |client, _| async move {
            match client.health_check().await {
                Ok(true) => Ok(0),
                Ok(false) => Err("not serving".into()),
                Err(e) => Err(err(e)),
            }
        })
        .await;
        let row = s.into_row("limit: gRPC unary echo", &format!("in-process tonic, c={c}"), wall);
        ctx.report.limits.insert(format!("echo_c{c}_ops_s"), row.ops_per_sec);
        ctx.report.push(row);
    }
    ctx.clients = target_clients;
    let _ = stop.send(());
    let _ = server.await;

    // The same call against the target: its own floor for unary calls.
    if ctx.clients[0].health_check().await.is_err() {
        ctx.report.push(Row::value("gRPC unary echo", "target's health Check", "not served by the target".into()));
        return Ok(());
    }
    for c in [1usize, 64] {
        let (s, wall) = timed(ctx, c, ctx.duration(), u64::MAX, |client, _| async move {
            client.health_check().await.map(|_| 0).map_err(err)
        })
        .await;
        let row = s.into_row("gRPC unary echo", &format!("target's health Check, c={c}"), wall);
        let row = {
            let ops = row.ops_per_sec;
            row.versus(ops, ctx.limit(&format!("echo_c{c}_ops_s")), "in-process echo")
        };
        ctx.report.limits.insert(format!("target_echo_c{c}_ops_s"), row.ops_per_sec);
        ctx.report.push(row);
    }
    Ok(())
}
