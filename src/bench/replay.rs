//! Replayed builds: the RPC sequence a Bazel build with a remote cache makes,
//! and the one `go build std cmd` makes through a GOCACHEPROG shim, cold
//! (everything misses and is uploaded) and then warm (everything hits and is
//! downloaded). The shapes are synthesized from what the real tools do:
//! - Bazel, per action: GetActionResult (miss) → run locally →
//!   FindMissingBlobs(outputs, stdout, Action, Command) → BatchUpdateBlobs for
//!   the small missing ones, ByteStream for those over 1 MiB →
//!   UpdateActionResult. Warm: GetActionResult (hit) → BatchReadBlobs /
//!   ByteStream Read of every output (`--remote_download_all`), or nothing
//!   more (`--remote_download_minimal`).
//! - Go (numbers from /work/shared/GOCACHEPROG.md, `go build std cmd` on this
//!   machine): cold 1715 gets and 3715 puts (964 of them empty, 2455 distinct
//!   outputs, median 1.6 KB, p99 3.8 MB, largest 47 MB), at most `-p`+1 = 3
//!   requests in flight; warm 2650 gets of which 21 miss. A get is
//!   GetActionResult then a download; a put is FindMissingBlobs, an upload
//!   when missing, then UpdateActionResult.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::ac::action_result;
use super::data::{self, Blob, Rng};
use super::{each, err, Ctx};
use crate::client::{Client, BATCH_BLOB_MAX};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi;

/// One action of the replayed Bazel build.
struct Action {
    digest: Digest,
    /// Action and Command protos, uploaded with the outputs.
    protos: [Blob; 2],
    outputs: Vec<Blob>,
    stdout: Option<Blob>,
}

/// Synthesizes the actions: 1–3 outputs from the small mix, 1% of outputs
/// 1–8 MiB, 10% of outputs identical to an earlier action's, 30% with stdout.
fn bazel_plan(seed: u64, n: usize) -> Vec<Action> {
    let mut rng = Rng::new(seed);
    let mut earlier: Vec<Blob> = Vec::new();
    (0..n)
        .map(|_| {
            let outputs: Vec<Blob> = (0..1 + rng.below(3))
                .map(|_| {
                    if !earlier.is_empty() && rng.below(10) == 0 {
                        return earlier[rng.below(earlier.len() as u64) as usize].clone();
                    }
                    let len = if rng.below(100) == 0 {
                        (1 << 20) + rng.below(7 << 20) as usize
                    } else {
                        data::small_size(&mut rng)
                    };
                    Blob::new(data::bytes(rng.next_u64(), len))
                })
                .collect();
            earlier.extend(outputs.iter().filter(|b| b.data.len() < 1 << 20).cloned());
            let (action, command) = action_protos(&mut rng, &outputs);
            let stdout =
                (rng.below(10) < 3).then(|| Blob::new(data::bytes(rng.next_u64(), 50 + rng.below(2000) as usize)));
            Action { digest: action.digest, protos: [action, command], outputs, stdout }
        })
        .collect()
}

/// The fields of REAPI's Command that a compile action sets (cairn's trimmed
/// protos leave Command out: the cache never reads it).
#[derive(Clone, PartialEq, prost::Message)]
struct CommandProto {
    #[prost(string, repeated, tag = "1")]
    arguments: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    output_paths: Vec<String>,
}

/// The fields of REAPI's Action that every action sets.
#[derive(Clone, PartialEq, prost::Message)]
struct ActionProto {
    #[prost(message, optional, tag = "1")]
    command_digest: Option<reapi::Digest>,
    #[prost(message, optional, tag = "2")]
    input_root_digest: Option<reapi::Digest>,
}

/// A real Command (a compiler call) and the Action naming it, encoded as
/// Bazel uploads them: servers may decode the Action on GetActionResult.
fn action_protos(rng: &mut Rng, outputs: &[Blob]) -> (Blob, Blob) {
    let n = rng.next_u64();
    let command = CommandProto {
        arguments: ["/usr/bin/gcc", "-O2", "-c", "-o"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("bazel-out/k8-fastbuild/bin/pkg/f{n:x}.o"), format!("pkg/f{n:x}.c")])
            .collect(),
        output_paths: (0..outputs.len()).map(|i| format!("bazel-out/k8-fastbuild/bin/pkg/f{n:x}_{i}.o")).collect(),
    };
    let command = Blob::new(Bytes::from(command.encode_to_vec()));
    let action = ActionProto {
        command_digest: Some(command.digest.to_proto()),
        input_root_digest: Some(DigestFunction::Sha256.empty().to_proto()),
    };
    (Blob::new(Bytes::from(action.encode_to_vec())), command)
}

/// Uploads what the server lacks of `blobs` the way Bazel does; returns bytes sent.
async fn upload_missing(client: &Client, blobs: &[&Blob]) -> Result<u64, String> {
    let digests: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
    let missing = client.find_missing(&digests).await.map_err(err)?;
    let mut small = Vec::new();
    let mut sent = 0u64;
    for d in &missing {
        let Some(b) = blobs.iter().find(|b| b.digest == *d) else {
            return Err(format!("server reported {d} missing, which was not asked"));
        };
        sent += b.data.len() as u64;
        if b.data.len() as u64 <= BATCH_BLOB_MAX {
            small.push((b.digest, b.data.clone()));
        } else {
            client.write_bytes(&b.digest, b.data.clone()).await.map_err(err)?;
        }
    }
    if !small.is_empty() {
        client.batch_upload(&small).await.map_err(err)?;
    }
    Ok(sent)
}

/// Downloads (and verifies) `blobs`: batched when small, streamed when large.
async fn download(client: &Client, blobs: &[&Blob]) -> Result<u64, String> {
    let mut got = 0u64;
    let small: Vec<Digest> = blobs
        .iter()
        .filter(|b| b.data.len() as u64 <= BATCH_BLOB_MAX && !b.digest.is_empty_blob())
        .map(|b| b.digest)
        .collect();
    if !small.is_empty() {
        for (d, b) in small.iter().zip(client.batch_read(&small).await.map_err(err)?) {
            got += b.ok_or_else(|| format!("output {d} of a hit is missing"))?.len() as u64;
        }
    }
    for b in blobs.iter().filter(|b| b.data.len() as u64 > BATCH_BLOB_MAX) {
        got += client
            .read_blob(&b.digest, true)
            .await
            .map_err(err)?
            .ok_or_else(|| format!("output {} of a hit is missing", b.digest))?;
    }
    Ok(got)
}

pub async fn bazel(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("replay: bazel");
    let (n, jobs, seed) = (ctx.args.replay_actions, ctx.args.replay_jobs, ctx.seed(61));
    let plan = Arc::new(tokio::task::spawn_blocking(move || bazel_plan(seed, n)).await?);
    let setting = format!("{n} actions, {jobs} jobs");

    let p = Arc::clone(&plan);
    let (s, wall) = each(ctx, jobs, n as u64, move |client, i| {
        let p = Arc::clone(&p);
        async move {
            let a = &p[i as usize];
            if client.get_action_result(&a.digest).await.map_err(err)?.is_some() {
                return Err(format!("cold action {} reported as a hit", a.digest));
            }
            let mut blobs: Vec<&Blob> = a.outputs.iter().chain(a.stdout.iter()).collect();
            blobs.extend(a.protos.iter());
            let sent = upload_missing(&client, &blobs).await?;
            let outs: Vec<&Blob> = a.outputs.iter().collect();
            let result = action_result(&outs, a.stdout.as_ref());
            client.update_action_result(&a.digest, result).await.map_err(err)?;
            Ok(sent)
        }
    })
    .await;
    ctx.report.push(s.into_row("replay: Bazel cold build", &setting, wall).with_note("ops = actions; MB/s uploaded"));

    for (minimal, what) in [(false, "download all"), (true, "download minimal")] {
        let p = Arc::clone(&plan);
        let (s, wall) = each(ctx, jobs, n as u64, move |client, i| {
            let p = Arc::clone(&p);
            async move {
                let a = &p[i as usize];
                let hit = client.get_action_result(&a.digest).await.map_err(err)?;
                let Some(result) = hit else {
                    return Err(format!("warm action {} missed", a.digest));
                };
                if result.output_files.len() != a.outputs.len() {
                    return Err(format!("action {} came back with other outputs", a.digest));
                }
                if minimal {
                    return Ok(0);
                }
                let blobs: Vec<&Blob> = a.outputs.iter().chain(a.stdout.iter()).collect();
                download(&client, &blobs).await
            }
        })
        .await;
        ctx.report
            .push(s.into_row(&format!("replay: Bazel warm build, {what}"), &setting, wall).with_note("ops = actions"));
    }
    Ok(())
}

/// One request of the replayed Go build.
enum GoOp {
    /// get that misses, then the put go makes after running the action.
    MissThenPut { action: Digest, output: Blob },
    /// put of a derived key (no get before it).
    Put { action: Digest, output: Blob },
}

/// A Go output size: 26% empty, else log-normal with median 1.6 KB and p99
/// 3.8 MB, at most 47 MB.
fn go_size(rng: &mut Rng) -> usize {
    if rng.below(3715) < 964 {
        return 0;
    }
    let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (1600.0 * (3.34 * z).exp()).clamp(1.0, 47e6) as usize
}

pub async fn go(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("replay: go");
    let scale = ctx.args.go_scale.max(0.0);
    let (puts, gets) = ((3715.0 * scale) as usize, (1715.0 * scale) as usize);
    if puts == 0 {
        return Ok(());
    }
    let seed = ctx.seed(71);
    let ops = Arc::new(
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng::new(seed);
            let mut outputs: Vec<Blob> = Vec::new();
            (0..puts)
                .map(|i| {
                    // 2455 distinct outputs for 3715 puts: a third reuse one.
                    let output = if !outputs.is_empty() && rng.below(3715) < 1260 - 964 {
                        outputs[rng.below(outputs.len() as u64) as usize].clone()
                    } else {
                        let b = Blob::new(data::bytes(rng.next_u64(), go_size(&mut rng)));
                        outputs.push(b.clone());
                        b
                    };
                    let action = Blob::new(Bytes::from(rng.next_u64().to_le_bytes().to_vec())).digest;
                    // Gets come before the first `gets` puts, spread evenly.
                    if i * gets / puts.max(1) != (i + 1) * gets / puts.max(1) {
                        GoOp::MissThenPut { action, output }
                    } else {
                        GoOp::Put { action, output }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await?,
    );
    let inflight = 3;
    let o = Arc::clone(&ops);
    let (s, wall) = each(ctx, inflight, ops.len() as u64, move |client, i| {
        let o = Arc::clone(&o);
        async move {
            let (action, output, get_first) = match &o[i as usize] {
                GoOp::MissThenPut { action, output } => (action, output, true),
                GoOp::Put { action, output } => (action, output, false),
            };
            if get_first && client.get_action_result(action).await.map_err(err)?.is_some() {
                return Err(format!("cold go action {action} reported as a hit"));
            }
            let sent = if output.digest.is_empty_blob() { 0 } else { upload_missing(&client, &[output]).await? };
            let result = action_result(&[output], None);
            client.update_action_result(action, result).await.map_err(err)?;
            Ok(sent)
        }
    })
    .await;
    let setting = format!("{puts} puts + {gets} gets, {inflight} in flight");
    ctx.report.push(
        s.into_row("replay: go build std cmd, cold", &setting, wall)
            .with_note("ops = go requests (a get+put pair counts once); MB/s uploaded"),
    );

    // Warm: 2650 gets per 3715 puts, 21 of them misses (link steps).
    let warm_gets = (2650.0 * scale) as usize;
    let misses = ((21.0 * scale) as usize).max(1);
    let o = Arc::clone(&ops);
    let miss_seed = ctx.seed(72);
    let (s, wall) = each(ctx, inflight, warm_gets as u64, move |client, i| {
        let o = Arc::clone(&o);
        async move {
            if (i as usize) < misses {
                let action = data::absent_digest(&mut Rng::new(miss_seed ^ i));
                return match client.get_action_result(&action).await.map_err(err)? {
                    None => Ok(0),
                    Some(_) => Err(format!("never-stored go action {action} hit")),
                };
            }
            let (action, output) = match &o[(i as usize * 7919) % o.len()] {
                GoOp::MissThenPut { action, output } | GoOp::Put { action, output } => (action, output),
            };
            let Some(result) = client.get_action_result(action).await.map_err(err)? else {
                return Err(format!("stored go action {action} missed"));
            };
            let named = result.output_files.first().and_then(|f| f.digest.clone());
            if named.as_ref().map(|d| d.hash.as_str()) != Some(output.digest.hex().as_str()) {
                return Err(format!("go action {action} names another output"));
            }
            if output.digest == DigestFunction::Sha256.empty() {
                return Ok(0);
            }
            download(&client, &[output]).await
        }
    })
    .await;
    ctx.report.push(
        s.into_row(
            "replay: go build std cmd, warm",
            &format!("{warm_gets} gets ({misses} miss), {inflight} in flight"),
            wall,
        )
        .with_note("ops = go gets; MB/s downloaded"),
    );
    Ok(())
}
