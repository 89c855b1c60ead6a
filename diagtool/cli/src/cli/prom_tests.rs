//! `query_range` decoding and the synthetic snapshots built from it.

use super::*;
use crate::analysis::Options;
use crate::model::{Overall, Verdict};

/// (instance, site, points) of one series.
type Spec<'a> = (&'a str, &'a str, Vec<(f64, &'a str)>);

/// A matrix answer: per (instance, site), `(t, value)` points.
fn matrix(series: &[Spec<'_>]) -> String {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|(instance, site, points)| {
            serde_json::json!({
                "metric": {"__name__": "shipper_tasks_live", "instance": instance, "job": "shipper", "site": site},
                "values": points.iter().map(|(t, v)| serde_json::json!([t, v])).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": result}})
        .to_string()
}

fn decode(series: &[Spec<'_>]) -> Vec<Series> {
    decode_matrix(&matrix(series)).expect("decodes")
}

/// `n` points from t0 every `step` s, values from `f(i)`.
fn points(t0: f64, step: f64, n: usize, f: impl Fn(usize) -> f64) -> Vec<(f64, String)> {
    (0..n)
        .map(|i| (t0 + step * i as f64, f(i).to_string()))
        .collect()
}

fn borrow(p: &[(f64, String)]) -> Vec<(f64, &str)> {
    p.iter().map(|(t, v)| (*t, v.as_str())).collect()
}

#[test]
fn a_matrix_decodes_with_labels_and_drops_non_finite_values() {
    let got = decode(&[(
        "10.0.0.1:8401",
        "a.rs:1:1",
        vec![(1.0, "3"), (2.0, "NaN"), (3.0, "+Inf"), (4.0, "5")],
    )]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels["instance"], "10.0.0.1:8401");
    assert_eq!(got[0].points, vec![(1.0, 3.0), (4.0, 5.0)]);
}

#[test]
fn a_refusal_carries_prometheus_message_and_other_shapes_are_named() {
    let err = decode_matrix(
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:20: parse error: unexpected \"(\""}"#,
    )
    .expect_err("refused");
    assert!(err.contains("bad_data: invalid parameter"), "{err}");
    let err = decode_matrix("<html>").expect_err("not json");
    assert!(err.contains("is --prometheus its base URL"), "{err}");
    let err = decode_matrix(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
        .expect_err("vector");
    assert!(err.contains("matrix"), "{err}");
}

#[test]
fn a_leaking_instance_is_named_and_a_clean_one_is_not() {
    let leak = points(1000.0, 15.0, 60, |i| 4.0 * (i / 2) as f64 + 1.0);
    let flat = points(1000.0, 15.0, 60, |_| 3.0);
    let old = points(1000.0, 15.0, 60, |i| 500.0 + 15.0 * i as f64);
    let live = decode(&[
        ("a:1", "leaklab.rs:1:1", borrow(&leak)),
        ("a:1", "pool.rs:1:1", borrow(&flat)),
        ("b:1", "leaklab.rs:1:1", borrow(&flat)),
        ("b:1", "pool.rs:1:1", borrow(&flat)),
    ]);
    let ages = decode(&[
        ("a:1", "leaklab.rs:1:1", borrow(&old)),
        ("a:1", "pool.rs:1:1", borrow(&old)),
        ("b:1", "pool.rs:1:1", borrow(&old)),
    ]);
    // The median series, told apart by `__name__`, reaches the snapshots too.
    let median = points(1000.0, 15.0, 60, |i| 250.0 + 7.5 * i as f64);
    let mut ages = ages;
    let mut medians = decode(&[("a:1", "leaklab.rs:1:1", borrow(&median))]);
    medians[0]
        .labels
        .insert("__name__".into(), "shipper_tasks_median_age_seconds".into());
    ages.extend(medians);
    let snaps = snapshots(&live, &ages);
    let last = snaps["a:1"].last().expect("snapshots");
    let leak_site = last
        .sites
        .iter()
        .find(|s| s.site == "leaklab.rs:1:1")
        .expect("site");
    assert!(leak_site.median_age_s > 600.0, "{leak_site:?}");
    assert!(leak_site.oldest_age_s > 1000.0, "{leak_site:?}");
    let views = judge(&live, &ages, &Options::default());
    let doc = super::super::fleet::report("p", &views, 1.0);
    assert_eq!(doc.verdict, Overall::Leak);
    let leaks: Vec<_> = doc
        .sites
        .iter()
        .filter(|s| s.verdict == Verdict::Leak)
        .collect();
    assert_eq!(leaks.len(), 1, "{doc:#?}");
    assert_eq!(leaks[0].instance.as_deref(), Some("a:1"));
    assert_eq!(leaks[0].site, "leaklab.rs:1:1");
    assert!(
        leaks[0].oldest_age_s > 1000.0,
        "ages come from the age series: {doc:#?}"
    );
}

#[test]
fn a_gap_gives_no_snapshot_and_a_missing_site_reads_zero() {
    // Instance a scraped at 0..5 and 8..10 (a gap at 5..8); its second site appears at 3.
    let mut first = points(0.0, 1.0, 5, |_| 2.0);
    first.extend(points(8.0, 1.0, 3, |_| 2.0));
    let second = points(3.0, 1.0, 2, |_| 1.0);
    let live = decode(&[
        ("a:1", "x.rs:1:1", borrow(&first)),
        ("a:1", "y.rs:1:1", borrow(&second)),
    ]);
    let snaps = snapshots(&live, &[]);
    let a = &snaps["a:1"];
    let times: Vec<u64> = a.iter().map(|s| s.taken_at_ms / 1000).collect();
    assert_eq!(times, vec![0, 1, 2, 3, 4, 8, 9, 10]);
    let y_at = |i: usize| {
        a[i].sites
            .iter()
            .find(|s| s.site == "y.rs:1:1")
            .map(|s| s.live)
    };
    assert_eq!(y_at(0), Some(0), "before the site showed");
    assert_eq!(y_at(3), Some(1));
    assert_eq!(y_at(5), Some(0), "after its series went stale");
    // Without age series the uptime follows the clock: no restart is seen.
    assert!(a.windows(2).all(|w| w[1].uptime_s > w[0].uptime_s));
}

#[test]
fn a_stopped_instance_keeps_its_history_and_does_not_leak() {
    // Instance b stops at t=20 (its series go stale); a goes on to 60.
    let b_live = points(0.0, 1.0, 20, |_| 4.0);
    let a_live = points(0.0, 1.0, 60, |_| 4.0);
    let live = decode(&[
        ("a:1", "s.rs:1:1", borrow(&a_live)),
        ("b:1", "s.rs:1:1", borrow(&b_live)),
    ]);
    let views = judge(&live, &[], &Options::default());
    assert_eq!(views.len(), 2);
    let b = views.iter().find(|v| v.name == "b:1").expect("b judged");
    let analysis = b.analysis.as_ref().expect("analysed");
    assert_eq!(analysis.samples, 20);
    assert_eq!(analysis.verdict(), Overall::Ok);
}

#[test]
fn a_restart_mid_window_resets_the_uptime_so_only_the_new_run_is_judged() {
    // Ages grow to 40 s, the process restarts at t=45 (ages from 1 s again), and the live count
    // of a site that was high before the restart starts low after it.
    let mut ages = points(0.0, 1.0, 41, |i| 100.0 + i as f64);
    ages.extend(points(45.0, 1.0, 20, |i| 1.0 + i as f64));
    let mut live = points(0.0, 1.0, 41, |_| 50.0);
    live.extend(points(45.0, 1.0, 20, |_| 5.0));
    let live = decode(&[("a:1", "s.rs:1:1", borrow(&live))]);
    let ages = decode(&[("a:1", "s.rs:1:1", borrow(&ages))]);
    let snaps = &snapshots(&live, &ages)["a:1"];
    let restart = snaps.windows(2).position(|w| w[1].uptime_s < w[0].uptime_s);
    assert_eq!(
        restart,
        Some(40),
        "the uptime falls at the first sample after the restart"
    );
    let analysis = analyze(snaps, &Options::default());
    assert_eq!(analysis.restarts.len(), 1);
    assert_eq!(analysis.analysed, 20);
    assert_eq!(
        analysis.verdict(),
        Overall::Ok,
        "the drop from 50 to 5 is a restart, not a trend"
    );
}

#[test]
fn an_oldest_task_that_ends_is_not_a_restart() {
    // The oldest task (age 300) ends at t=10: the max age falls to 20, older than the step.
    let ages = points(0.0, 1.0, 20, |i| {
        if i < 10 {
            300.0 + i as f64
        } else {
            20.0 + i as f64
        }
    });
    let live = points(0.0, 1.0, 20, |_| 2.0);
    let live = decode(&[("a:1", "s.rs:1:1", borrow(&live))]);
    let ages = decode(&[("a:1", "s.rs:1:1", borrow(&ages))]);
    let snaps = &snapshots(&live, &ages)["a:1"];
    assert!(snaps.windows(2).all(|w| w[1].uptime_s > w[0].uptime_s));
}

#[test]
fn selectors_must_be_braced_matchers() {
    assert_eq!(selector(None).expect("none"), "");
    assert_eq!(
        selector(Some(" {job=\"shipper\"} ")).expect("ok"),
        "{job=\"shipper\"}"
    );
    let err = selector(Some("job=shipper")).expect_err("no braces");
    assert!(err.to_string().contains("--selector"), "{err}");
}

#[test]
fn an_instance_silent_for_two_steps_is_marked_but_still_judged() {
    let a = points(0.0, 1.0, 60, |_| 4.0);
    let b = points(0.0, 1.0, 20, |_| 4.0);
    let live = decode(&[
        ("a:1", "s.rs:1:1", borrow(&a)),
        ("b:1", "s.rs:1:1", borrow(&b)),
    ]);
    let mut views = judge(&live, &[], &Options::default());
    note_stale(&mut views, &live, 59.5, Duration::from_secs(1));
    let b = views.iter().find(|v| v.name == "b:1").expect("b");
    assert!(
        b.error
            .as_deref()
            .is_some_and(|e| e.contains("no sample in the last 40")),
        "{b:?}"
    );
    assert!(b.analysis.is_some());
    assert!(
        views
            .iter()
            .find(|v| v.name == "a:1")
            .expect("a")
            .error
            .is_none()
    );
}
