//! `cairn_object_store_requests_total{op}`: the object-store tier's calls by
//! kind, read from its counters at scrape time, so an operator can price
//! what the bucket costs per build (DEPLOYMENT.md); and
//! `cairn_object_store_uses_dropped_total`, uses the use log had no room for.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use crate::store::tiered::Tiered;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Reads the tier's call counts on each scrape.
pub struct ObjectStoreCollector(pub Tiered);

impl fmt::Debug for ObjectStoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreCollector").finish_non_exhaustive()
    }
}

impl Collector for ObjectStoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let kind = ConstCounter::new(0u64);
        let mut family = enc.encode_descriptor(
            "cairn_object_store_requests",
            "Calls to the object store (--object-store), by kind: S3 bills put, list and the \
             multipart calls in one class, get and head in a cheaper one, delete not at all.",
            None,
            kind.metric_type(),
        )?;
        for (op, n) in self.0.tier_calls() {
            ConstCounter::new(n).encode(family.encode_family(&OpLabels { op })?)?;
        }
        let dropped = ConstCounter::new(self.0.uses_dropped());
        let metric = enc.encode_descriptor(
            "cairn_object_store_uses_dropped",
            "Uses of bucket objects this node did not log because its pending use log was full \
             (the objects look older to the bucket's eviction than they are).",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)?;
        Ok(())
    }
}
