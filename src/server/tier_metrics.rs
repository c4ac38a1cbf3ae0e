//! The tier's Prometheus families, read at scrape time: the write-behind
//! queue's depth and bytes, failed tier calls by operation, and fills.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::store::tiered::Tiered;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Reads the tier's figures on each scrape.
pub(super) struct TierCollector(pub Tiered);

impl fmt::Debug for TierCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierCollector").finish_non_exhaustive()
    }
}

impl Collector for TierCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(s) = self.0.stats() else { return Ok(()) };
        let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
        };
        gauge(
            &mut enc,
            "cairn_tier_up",
            "1 while the tier answers, 0 from a failed call to the next good one.",
            s.up.into(),
        )?;
        gauge(
            &mut enc,
            "cairn_tier_queue_entries",
            "Blobs and action results waiting to be written to the tier.",
            s.queue.entries as i64,
        )?;
        gauge(&mut enc, "cairn_tier_queue_bytes", "Bytes the queued entries stand for.", s.queue.bytes as i64)?;
        counter(
            &mut enc,
            "cairn_tier_queue_dropped",
            "Queued entries dropped because the queue was full (--tier-queue-max-entries, --tier-queue-max-size).",
            s.queue.dropped,
        )?;
        counter(
            &mut enc,
            "cairn_tier_fills",
            "Blobs and action results fetched from the tier into the local store.",
            s.fills,
        )?;
        let c = ConstCounter::new(0u64);
        let mut family = enc.encode_descriptor(
            "cairn_tier_errors",
            "Failed tier calls by operation (timeouts, unreachable, refused, wrong bytes).",
            None,
            c.metric_type(),
        )?;
        for (op, n) in s.errors {
            ConstCounter::new(n).encode(family.encode_family(&OpLabels { op })?)?;
        }
        Ok(())
    }
}
