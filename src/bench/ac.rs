//! ActionCache: GetActionResult hits and misses and UpdateActionResult at
//! each concurrency level. Stored results name real CAS blobs (two output
//! files and stdout), so a server that checks completeness does that work.

use std::sync::Arc;

use super::data::{self, Blob, Rng};
use super::report::Row;
use super::{err, timed, Ctx};
use crate::digest::Digest;
use crate::proto::reapi;

/// Results stored before measuring hits.
const STORED: usize = 2000;

/// A result like a compile action's: two outputs and stdout.
pub fn action_result(outputs: &[&Blob], stdout: Option<&Blob>) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, b)| reapi::OutputFile {
                path: format!("bazel-out/k8-fastbuild/bin/pkg/out_{i}_{}.o", &b.digest.hex()[..8]),
                digest: Some(b.digest.to_proto()),
                is_executable: false,
                ..Default::default()
            })
            .collect(),
        stdout_digest: stdout.map(|b| b.digest.to_proto()),
        exit_code: 0,
        ..Default::default()
    }
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("ac");
    let seed = ctx.seed(41);
    let mut rng = Rng::new(seed);
    // Small output blobs: completeness checks only need them present.
    let blobs: Vec<Blob> =
        (0..STORED * 3).map(|_| Blob::new(data::bytes(rng.next_u64(), 100 + rng.below(2000) as usize))).collect();
    for chunk in blobs.chunks(500) {
        let batch: Vec<_> = chunk.iter().map(|b| (b.digest, b.data.clone())).collect();
        ctx.clients[0].batch_upload(&batch).await?;
    }
    let mut actions = Vec::with_capacity(STORED);
    for i in 0..STORED {
        let action = data::absent_digest(&mut rng);
        let result = action_result(&[&blobs[3 * i], &blobs[3 * i + 1]], Some(&blobs[3 * i + 2]));
        ctx.clients[0].update_action_result(&action, result).await?;
        actions.push(action);
    }
    let actions = Arc::new(actions);
    let template = action_result(&[&blobs[0], &blobs[1]], Some(&blobs[2]));

    for c in ctx.args.concurrency.clone() {
        let a = Arc::clone(&actions);
        let (s, wall) = timed(ctx, c, ctx.duration(), u64::MAX, move |client, i| {
            let action = a[(i as usize).wrapping_mul(7919) % a.len()];
            async move {
                match client.get_action_result(&action).await {
                    Ok(Some(_)) => Ok(0),
                    Ok(None) => Err(format!("stored action {action} reported missing")),
                    Err(e) => Err(err(e)),
                }
            }
        })
        .await;
        let row = s.into_row("AC GetActionResult hit", &format!("c={c}"), wall);
        push_versus_echo(ctx, row, c);

        let miss_seed = ctx.seed(42 + c as u64);
        let (s, wall) = timed(ctx, c, ctx.duration(), u64::MAX, move |client, i| {
            let action = data::absent_digest(&mut Rng::new(miss_seed ^ i));
            async move {
                match client.get_action_result(&action).await {
                    Ok(None) => Ok(0),
                    Ok(Some(_)) => Err(format!("never-stored action {action} reported as a hit")),
                    Err(e) => Err(err(e)),
                }
            }
        })
        .await;
        let row = s.into_row("AC GetActionResult miss", &format!("c={c}"), wall);
        push_versus_echo(ctx, row, c);

        let upd_seed = ctx.seed(43 + c as u64);
        let t = template.clone();
        let (s, wall) = timed(ctx, c, ctx.duration(), u64::MAX, move |client, i| {
            let action: Digest = data::absent_digest(&mut Rng::new(upd_seed ^ i));
            let result = t.clone();
            async move { client.update_action_result(&action, result).await.map(|_| 0).map_err(err) }
        })
        .await;
        let row = s.into_row("AC UpdateActionResult", &format!("c={c}"), wall);
        push_versus_echo(ctx, row, c);
    }
    Ok(())
}

/// Adds a unary-call row as a fraction of the target's own echo rate (at
/// c=1 for c=1, else its saturated c=64 rate), or the in-process echo's.
fn push_versus_echo(ctx: &mut Ctx, row: Row, c: usize) {
    let at = if c == 1 { 1 } else { 64 };
    let (limit, name) = match ctx.limit(&format!("target_echo_c{at}_ops_s")) {
        Some(l) => (Some(l), format!("target echo c={at}")),
        None => (ctx.limit(&format!("echo_c{at}_ops_s")), format!("tonic echo c={at}")),
    };
    let ops = row.ops_per_sec;
    ctx.report.push(row.versus(ops, limit, &name));
}
