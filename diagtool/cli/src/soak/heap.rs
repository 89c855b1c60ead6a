//! The soak's heap check: in-use memory per allocation site, judged like `diagtool watch --heap`.
//!
//! The sampler asks the shipper's `/debug/pprof/heap` beside each snapshot. A shipper that serves
//! it is always judged (the steady soak too: warm-up and buffer pools must not read as a leak); one
//! that answers 501 (built without heap profiling) is asked once, and the check then passes
//! saying it was not judged, unless the profile sets `[limits] require_heap = true` (the
//! `leak-memory` profile does), which makes a missing heap profile a failure. The samples taken
//! after the warm-up are judged with `diagtool_model::analysis::heap` and its noise floor; only a
//! `leak` verdict fails the check (memory that grows and then holds is how pools warm up). A
//! leaking site joins the soak document's `leaks`, its `growth_per_min` in bytes per minute.

use crate::analysis::heap::{HeapNoise, HeapSample, analyze_heap};
use crate::model::text::bytes;
use crate::model::{SoakLeak, Verdict};

use super::profile::Limits;

/// What the sampler got from `/debug/pprof/heap` over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeapTally {
    /// The profiles, grouped by allocation site, in order.
    pub samples: Vec<HeapSample>,
    /// Requests that failed (no answer, an unreadable profile).
    pub errors: u64,
    /// The shipper's answer when it cannot serve heap profiles (501); no more requests then.
    pub unsupported: Option<String>,
    /// The last failure, for the report.
    pub last_error: Option<String>,
}

/// One answer of `/debug/pprof/heap`.
#[derive(Debug, Clone, PartialEq)]
pub enum HeapAnswer {
    /// A profile, grouped.
    Sample(HeapSample),
    /// The shipper cannot serve heap profiles (501), and its reason.
    Unsupported(String),
    /// No usable answer, and why.
    Failed(String),
}

impl HeapTally {
    /// Whether the sampler should ask again (not after a 501).
    pub fn wanted(&self) -> bool {
        self.unsupported.is_none()
    }

    /// Records one answer.
    pub fn record(&mut self, answer: HeapAnswer) {
        match answer {
            HeapAnswer::Sample(sample) => self.samples.push(sample),
            HeapAnswer::Unsupported(why) => self.unsupported = Some(why),
            HeapAnswer::Failed(why) => {
                self.errors += 1;
                self.last_error = Some(why);
            }
        }
    }
}

/// The outcome of the heap check.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapCheck {
    /// Whether it passed.
    pub passed: bool,
    /// What was judged, in one sentence.
    pub detail: String,
    /// The leaking allocation sites.
    pub leaks: Vec<SoakLeak>,
}

/// Judges the heap samples taken `warmup_s` or more after the first one.
pub fn check(limits: &Limits, tally: &HeapTally) -> HeapCheck {
    let pass = |passed: bool, detail: String| HeapCheck {
        passed,
        detail,
        leaks: Vec::new(),
    };
    if let Some(why) = &tally.unsupported {
        return if limits.require_heap {
            pass(
                false,
                format!("the profile requires heap profiles (limits.require_heap), but {why}"),
            )
        } else {
            pass(true, format!("not judged: {why}"))
        };
    }
    let warmup_ms = (limits.warmup.as_secs_f64() * 1000.0) as u64;
    let cut = tally
        .samples
        .first()
        .map_or(0, |s| s.taken_at_ms + warmup_ms);
    let judged: Vec<HeapSample> = tally
        .samples
        .iter()
        .filter(|s| s.taken_at_ms >= cut)
        .cloned()
        .collect();
    if judged.len() < 3 {
        let failures = tally
            .last_error
            .as_ref()
            .map_or_else(String::new, |e| format!("; last failure: {e}"));
        return pass(
            !limits.require_heap,
            format!(
                "only {} heap profiles after the warm-up ({} failed requests){failures}; at least 3 \
                 are needed",
                judged.len(),
                tally.errors
            ),
        );
    }
    let heap = analyze_heap(&judged, 0.0, &HeapNoise::default());
    let analysis = &heap.analysis;
    let leaking: Vec<_> = analysis
        .sites
        .iter()
        .filter(|s| s.row.verdict == Verdict::Leak)
        .collect();
    if leaking.is_empty() {
        return pass(
            true,
            format!(
                "no allocation site leaks over {} heap profiles ({:.0}s); in use {} -> {}",
                analysis.samples,
                analysis.span_s,
                bytes(analysis.total.first),
                bytes(analysis.total.last)
            ),
        );
    }
    let named: Vec<String> = leaking
        .iter()
        .map(|s| {
            let function = heap
                .detail(&s.row.site)
                .map_or_else(String::new, |d| format!(" in {}", d.function));
            format!(
                "{}{function} leaks {}/min, {} in use ({})",
                s.row.site,
                bytes(s.row.growth_per_min.max(0.0) as u64),
                bytes(s.row.live),
                s.why
            )
        })
        .collect();
    HeapCheck {
        passed: false,
        detail: format!("heap grows: {}", named.join("; ")),
        leaks: leaking
            .iter()
            .map(|s| SoakLeak {
                site: s.row.site.clone(),
                growth_per_min: s.row.growth_per_min,
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analysis::heap::HEAP_SAMPLE_SCHEMA;
    use crate::model::heap::HeapSite;

    fn limits(require_heap: bool) -> Limits {
        Limits {
            tasks_growth_per_min: 1.0,
            rss_growth_mib_per_min: 2.0,
            fds_growth_per_min: 2.0,
            max_missing_ratio: 0.0,
            max_duplicate_ratio: 0.0,
            max_sample_errors: 2,
            warmup: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            require_heap,
        }
    }

    /// A sample every 3 s for 60 s: a pool of 2 MiB, and with `leak` a cache keeping 1 MiB more
    /// each sample.
    fn tally(leak: bool) -> HeapTally {
        let mut tally = HeapTally::default();
        for i in 0..=20u64 {
            let mut sites = vec![HeapSite {
                site: "shipper/src/pipeline/batch.rs:77".into(),
                function: "shipper::pipeline::batch::new".into(),
                inuse_bytes: 2 << 20,
                inuse_objects: 4,
                stack: vec![],
            }];
            if leak {
                sites.push(HeapSite {
                    site: "shipper/src/leaklab.rs:140".into(),
                    function: "shipper::leaklab::memory_cache_insert".into(),
                    inuse_bytes: (1 << 20) * (i as i64 + 1),
                    inuse_objects: i as i64 + 1,
                    stack: vec![],
                });
            }
            tally.record(HeapAnswer::Sample(HeapSample {
                schema: HEAP_SAMPLE_SCHEMA.into(),
                taken_at_ms: 3000 * i,
                period_bytes: 1 << 19,
                sites,
            }));
        }
        tally
    }

    #[test]
    fn a_growing_cache_fails_naming_its_allocation_site() {
        let c = check(&limits(true), &tally(true));
        assert!(!c.passed);
        assert_eq!(c.leaks.len(), 1);
        assert_eq!(c.leaks[0].site, "shipper/src/leaklab.rs:140");
        assert!(
            c.detail
                .contains("shipper/src/leaklab.rs:140 in shipper::leaklab::memory_cache_insert"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn a_flat_heap_passes_and_a_missing_one_depends_on_the_profile() {
        let c = check(&limits(false), &tally(false));
        assert!(c.passed, "{}", c.detail);
        assert!(
            c.detail.contains("no allocation site leaks"),
            "{}",
            c.detail
        );
        let mut unsupported = HeapTally::default();
        unsupported.record(HeapAnswer::Unsupported("501: not built in".into()));
        assert!(!unsupported.wanted());
        let c = check(&limits(false), &unsupported);
        assert!(
            c.passed && c.detail.starts_with("not judged: 501"),
            "{}",
            c.detail
        );
        let c = check(&limits(true), &unsupported);
        assert!(
            !c.passed && c.detail.contains("limits.require_heap"),
            "{}",
            c.detail
        );
        let mut failing = HeapTally::default();
        failing.record(HeapAnswer::Failed("refused".into()));
        let c = check(&limits(true), &failing);
        assert!(
            !c.passed && c.detail.contains("last failure: refused"),
            "{}",
            c.detail
        );
    }
}
