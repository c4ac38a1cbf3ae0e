//! A day of per-minute lookup counters in memory, for the hit rates of the
//! last hour and day and the charts on the status page. Prometheus keeps the
//! long history; this ring only lets the page answer without one.

use std::collections::VecDeque;

/// Minutes kept: one day.
pub const MINUTES: usize = 24 * 60;

/// Who asked, as the status page groups clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolClass {
    /// Bazel (RequestMetadata tool_name `bazel`).
    Bazel,
    /// cairn's Go shim (tool_name `cairn-gocacheprog`).
    Go,
    /// Any other client, or one that sent no RequestMetadata.
    Other,
}

impl ToolClass {
    /// Every class, in the order of [`Slot`]'s rows.
    pub const ALL: [ToolClass; 3] = [ToolClass::Bazel, ToolClass::Go, ToolClass::Other];

    /// The class of a RequestMetadata tool name.
    pub fn of(tool_name: &str) -> ToolClass {
        match tool_name {
            "bazel" => ToolClass::Bazel,
            // The Go shim's name (client::GOCACHEPROG_TOOL_NAME; the server
            // does not import the client, a test keeps the two equal).
            "cairn-gocacheprog" => ToolClass::Go,
            _ => ToolClass::Other,
        }
    }

    /// Key in `/status` and on the page.
    pub fn key(self) -> &'static str {
        match self {
            ToolClass::Bazel => "bazel",
            ToolClass::Go => "go",
            ToolClass::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    AcHit,
    AcMiss,
    CasHit,
    CasMiss,
}

/// Counts of one minute (or a sum of minutes) for one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// GetActionResult calls that returned a result.
    pub ac_hits: u64,
    /// GetActionResult calls answered NOT_FOUND.
    pub ac_misses: u64,
    /// Blobs found by FindMissingBlobs, BatchReadBlobs and ByteStream Read.
    pub cas_hits: u64,
    /// Blobs those calls did not find.
    pub cas_misses: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.ac_hits += o.ac_hits;
        self.ac_misses += o.ac_misses;
        self.cas_hits += o.cas_hits;
        self.cas_misses += o.cas_misses;
    }

    /// ActionCache hits over lookups; None when there were none.
    pub fn ac_hit_rate(&self) -> Option<f64> {
        rate(self.ac_hits, self.ac_misses)
    }

    /// CAS blobs found over blobs asked for; None when none were asked for.
    pub fn cas_hit_rate(&self) -> Option<f64> {
        rate(self.cas_hits, self.cas_misses)
    }
}

fn rate(hits: u64, misses: u64) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 / total as f64)
}

/// One minute: a row of counts per [`ToolClass`].
type Slot = [Counts; 3];

/// The ring. Minutes are numbered by the caller (minutes since start);
/// minutes with no lookups are zero slots, filled in as time moves on.
#[derive(Debug, Default)]
pub struct Window {
    /// The minute of the ring's last slot.
    newest: u64,
    /// Oldest first; at most [`MINUTES`] long.
    slots: VecDeque<Slot>,
}

impl Window {
    /// Moves the ring to `minute`, dropping what is older than a day.
    fn advance(&mut self, minute: u64) {
        if self.slots.is_empty() {
            self.newest = minute;
            self.slots.push_back(Slot::default());
            return;
        }
        // A clock that stepped back keeps counting into the newest slot.
        let gap = minute.saturating_sub(self.newest).min(MINUTES as u64) as usize;
        for _ in 0..gap {
            if self.slots.len() == MINUTES {
                self.slots.pop_front();
            }
            self.slots.push_back(Slot::default());
        }
        self.newest = self.newest.max(minute);
    }

    /// Counts `n` lookups of `class` with `outcome` in `minute`.
    pub fn record(&mut self, minute: u64, class: ToolClass, outcome: Outcome, n: u64) {
        self.advance(minute);
        let c = &mut self.slots.back_mut().expect("advance leaves a slot")[class.index()];
        match outcome {
            Outcome::AcHit => c.ac_hits += n,
            Outcome::AcMiss => c.ac_misses += n,
            Outcome::CasHit => c.cas_hits += n,
            Outcome::CasMiss => c.cas_misses += n,
        }
    }

    /// Per-minute counts of the last `minutes` minutes up to `now`, oldest
    /// first, always `minutes` long; `class` None sums every class.
    pub fn series(&mut self, now: u64, minutes: usize, class: Option<ToolClass>) -> Vec<Counts> {
        self.advance(now);
        let minutes = minutes.min(MINUTES);
        let mut out = vec![Counts::default(); minutes.saturating_sub(self.slots.len())];
        for slot in self.slots.iter().skip(self.slots.len().saturating_sub(minutes)) {
            let mut c = Counts::default();
            for (i, row) in slot.iter().enumerate() {
                if class.is_none_or(|k| k.index() == i) {
                    c.add(row);
                }
            }
            out.push(c);
        }
        out
    }

    /// The sum of the last `minutes` minutes for `class`.
    pub fn total(&mut self, now: u64, minutes: usize, class: Option<ToolClass>) -> Counts {
        let mut sum = Counts::default();
        for c in self.series(now, minutes, class) {
            sum.add(&c);
        }
        sum
    }
}

/// Sums consecutive groups of `per` entries (the day chart's hour bars).
pub fn bin(series: &[Counts], per: usize) -> Vec<Counts> {
    series
        .chunks(per.max(1))
        .map(|chunk| {
            let mut sum = Counts::default();
            chunk.iter().for_each(|c| sum.add(c));
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_last_hour_and_day_by_class() {
        let mut w = Window::default();
        w.record(0, ToolClass::Bazel, Outcome::AcHit, 3);
        w.record(0, ToolClass::Go, Outcome::AcMiss, 1);
        w.record(100, ToolClass::Bazel, Outcome::AcMiss, 1);
        w.record(100, ToolClass::Bazel, Outcome::CasHit, 5);
        let hour = w.total(100, 60, Some(ToolClass::Bazel));
        assert_eq!(hour, Counts { ac_hits: 0, ac_misses: 1, cas_hits: 5, cas_misses: 0 });
        let day = w.total(100, MINUTES, Some(ToolClass::Bazel));
        assert_eq!(day, Counts { ac_hits: 3, ac_misses: 1, cas_hits: 5, cas_misses: 0 });
        assert_eq!(day.ac_hit_rate(), Some(0.75));
        assert_eq!(w.total(100, MINUTES, None).ac_misses, 2);
        assert_eq!(w.total(100, 60, Some(ToolClass::Go)).ac_hit_rate(), None);
    }

    #[test]
    fn forgets_after_a_day_and_pads_the_series() {
        let mut w = Window::default();
        w.record(5, ToolClass::Other, Outcome::AcHit, 1);
        let s = w.series(6, 60, None);
        assert_eq!(s.len(), 60);
        assert_eq!(s[58].ac_hits, 1);
        assert_eq!(w.total(5 + MINUTES as u64 - 1, MINUTES, None).ac_hits, 1);
        assert_eq!(w.total(5 + MINUTES as u64, MINUTES, None).ac_hits, 0);
        // A long idle gap does not loop over every missing minute forever.
        assert_eq!(w.total(u64::MAX / 2, 60, None), Counts::default());
        assert!(w.slots.len() <= MINUTES);
    }

    #[test]
    fn knows_the_go_shim_by_the_name_it_sends() {
        assert_eq!(ToolClass::of(crate::client::GOCACHEPROG_TOOL_NAME), ToolClass::Go);
        assert_eq!(ToolClass::of("bazel"), ToolClass::Bazel);
        assert_eq!(ToolClass::of(""), ToolClass::Other);
    }

    #[test]
    fn bins_the_day_into_hours() {
        let series: Vec<Counts> = (0..MINUTES).map(|_| Counts { ac_hits: 1, ..Counts::default() }).collect();
        let hours = bin(&series, 60);
        assert_eq!(hours.len(), 24);
        assert!(hours.iter().all(|h| h.ac_hits == 60));
    }
}
