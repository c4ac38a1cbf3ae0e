//! The CAS's small-blob calls: FindMissingBlobs with 1,000 and 10,000 digests
//! (half of them present), and BatchUpdateBlobs / BatchReadBlobs of the
//! 1–64 KiB mix, one batch per call at concurrency 1 and 8.

use std::sync::Arc;

use super::data::{self, Blob, Rng};
use super::{each, err, timed, Ctx};

/// Uploads `blobs` in calls of at most `limit` bytes (setup, not measured).
async fn upload_all(ctx: &Ctx, blobs: &[Blob], limit: u64) -> anyhow::Result<()> {
    for group in groups(blobs, limit) {
        let batch: Vec<_> = group.iter().map(|b| (b.digest, b.data.clone())).collect();
        ctx.clients[0].batch_upload(&batch).await?;
    }
    Ok(())
}

/// Splits blobs into batches of at most `limit` payload bytes.
fn groups(blobs: &[Blob], limit: u64) -> Vec<Vec<Blob>> {
    let mut out: Vec<Vec<Blob>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for b in blobs {
        let cost = b.data.len() as u64 + 100;
        if bytes + cost > limit && !out.last().expect("one group").is_empty() {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += cost;
        out.last_mut().expect("one group").push(b.clone());
    }
    out.retain(|g| !g.is_empty());
    out
}

/// The batch size to use: 90% of what the server advertises (4 MiB at most).
async fn batch_limit(ctx: &Ctx) -> anyhow::Result<u64> {
    let mut c = ctx.clients[0].clone();
    let caps = c.capabilities().await?;
    let advertised =
        caps.cache_capabilities.map(|c| c.max_batch_total_size_bytes).filter(|&n| n > 0).unwrap_or(4 << 20) as u64;
    Ok(advertised.min(4 << 20) * 9 / 10)
}

pub async fn find_missing(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("find-missing");
    let most = ctx.args.find_missing.iter().copied().max().unwrap_or(0);
    let present = Arc::new(data::small_blobs(ctx.seed(21), most / 2));
    let limit = batch_limit(ctx).await?;
    upload_all(ctx, &present, limit).await?;
    for n in ctx.args.find_missing.clone() {
        let (half, seed) = (n / 2, ctx.seed(22 + n as u64));
        // A few prepared requests, cycled, so building them is not timed.
        let mut rng = Rng::new(seed);
        let asks: Arc<Vec<Vec<_>>> = Arc::new(
            (0..16)
                .map(|_| {
                    let start = rng.below((present.len() - half + 1) as u64) as usize;
                    let mut ask: Vec<_> = present[start..start + half].iter().map(|b| b.digest).collect();
                    ask.extend((0..n - half).map(|_| data::absent_digest(&mut rng)));
                    ask
                })
                .collect(),
        );
        let (s, wall) = timed(ctx, 1, ctx.duration(), u64::MAX, move |client, i| {
            let asks = Arc::clone(&asks);
            async move {
                match client.find_missing(&asks[i as usize % asks.len()]).await {
                    Ok(m) if m.len() == n - half => Ok(0),
                    Ok(m) => Err(format!("{} reported missing, expected {}", m.len(), n - half)),
                    Err(e) => Err(err(e)),
                }
            }
        })
        .await;
        let row = s.into_row("FindMissingBlobs", &format!("{n} digests, half present, c=1"), wall);
        let row = match (n, ctx.limit("store_fm10k_p50_ms")) {
            (10_000, Some(store)) => {
                let p50 = row.p50_ms;
                row.versus(1.0 / p50, Some(1.0 / store), "store find_missing speed")
            }
            _ => row,
        };
        ctx.report.push(row);
    }
    Ok(())
}

pub async fn batches(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("batch");
    let limit = batch_limit(ctx).await?;
    for c in [1usize, 8] {
        let mut rng = Rng::new(ctx.seed(31 + c as u64));
        // About batch_bytes of the mix: its mean is about 15 KiB.
        let n = (ctx.args.batch_bytes / 15_000).max(8) as usize;
        let blobs: Vec<Blob> =
            (0..n).map(|_| Blob::new(data::bytes(rng.next_u64(), data::small_size(&mut rng)))).collect();
        let groups = Arc::new(groups(&blobs, limit));
        let per_call = n / groups.len();
        let g = Arc::clone(&groups);
        let (s, wall) = each(ctx, c, groups.len() as u64, move |client, i| {
            let batch: Vec<_> = g[i as usize].iter().map(|b| (b.digest, b.data.clone())).collect();
            async move {
                let bytes = batch.iter().map(|(_, d)| d.len() as u64).sum();
                client.batch_upload(&batch).await.map(|_| bytes).map_err(err)
            }
        })
        .await;
        let row = s.into_row("BatchUpdateBlobs", &format!("1–64 KiB mix, c={c}"), wall);
        let mb = row.mb_per_sec.unwrap_or(0.0);
        let row = row.versus(mb, ctx.limit("store_put_mb_s"), "store put (1 core)");
        ctx.report.push(row.with_note(format!("~{per_call} blobs per call")));

        let g = Arc::clone(&groups);
        let (s, wall) = each(ctx, c, groups.len() as u64, move |client, i| {
            let digests: Vec<_> = g[i as usize].iter().map(|b| b.digest).collect();
            async move {
                // batch_read verifies every blob's hash, as a build client does.
                let got = client.batch_read(&digests).await.map_err(err)?;
                let missing = got.iter().filter(|b| b.is_none()).count();
                if missing > 0 {
                    return Err(format!("{missing} of {} uploaded blobs not found", digests.len()));
                }
                Ok(got.iter().flatten().map(|b| b.len() as u64).sum())
            }
        })
        .await;
        let row = s.into_row("BatchReadBlobs", &format!("1–64 KiB mix, c={c}"), wall);
        let mb = row.mb_per_sec.unwrap_or(0.0);
        let row = row.versus(mb, ctx.limit("store_read_mb_s"), "store read (1 core)");
        ctx.report.push(row.with_note(format!("~{per_call} blobs per call, each verified by the client")));
    }
    Ok(())
}
