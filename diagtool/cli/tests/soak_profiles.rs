//! The shipped profiles in `profiles/`: each parses, at its own length and stretched to the
//! 15 minutes of a run by hand, and each exercises what its name promises.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use diagtool::soak::profile::{FaultKind, Profile, RotationMode};

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles")
}

fn load(name: &str, duration: Option<Duration>) -> Profile {
    let path = profiles_dir().join(format!("{name}.toml"));
    Profile::load(&path, duration).unwrap_or_else(|e| panic!("{e}"))
}

const ALL: [&str; 8] = [
    "steady",
    "leak-poll-spawn",
    "leak-memory",
    "fixed-poll-spawn",
    "rotation-storm",
    "loki-outage",
    "many-files",
    "burst",
];

#[test]
fn every_profile_parses_at_60s_and_at_15m_with_the_same_shape() {
    for name in ALL {
        let short = load(name, Some(Duration::from_secs(60)));
        let long = load(name, Some(Duration::from_secs(900)));
        assert_eq!(short.name, name);
        assert!(!short.description.is_empty(), "{name} has no description");
        let samples = |p: &Profile| p.duration.as_secs_f64() / p.sample_interval.as_secs_f64();
        assert!(
            samples(&short) >= 10.0,
            "{name}: too few samples for the analysis"
        );
        assert!(
            (samples(&short) - samples(&long)).abs() < 0.5,
            "{name}: shape changed"
        );
        assert_eq!(short.faults.len(), long.faults.len());
        assert!(
            short.limits.warmup < short.duration / 2,
            "{name}: warm-up too long"
        );
    }
}

#[test]
fn every_profile_file_is_one_of_the_known_ones() {
    let mut found: Vec<String> = std::fs::read_dir(profiles_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut all: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(found, all, "a new profile needs a test here");
}

#[test]
fn profiles_exercise_what_their_names_say() {
    let steady = load("steady", None);
    assert!(steady.shipper.leak_lab.is_empty() && steady.faults.is_empty());
    assert_eq!(steady.limits.max_missing_ratio, 0.0);

    let leak = load("leak-poll-spawn", None);
    assert_eq!(leak.shipper.leak_lab.len(), 1);
    assert!(leak.shipper.leak_lab[0].starts_with("poll-spawn:"));
    assert_eq!(
        leak.generator, steady.generator,
        "the same workload as steady"
    );

    let fixed = load("fixed-poll-spawn", None);
    assert!(fixed.shipper.leak_lab_fixed && !leak.shipper.leak_lab_fixed);
    assert_eq!(
        (&fixed.shipper.leak_lab, &fixed.generator, fixed.duration),
        (&leak.shipper.leak_lab, &leak.generator, leak.duration),
        "the leak's very spawns and workload, fixed"
    );

    let memory = load("leak-memory", None);
    assert_eq!(memory.shipper.leak_lab, ["memory-cache:256/1000ms"]);
    assert!(memory.limits.require_heap && !steady.limits.require_heap);
    assert_eq!(
        memory.generator, steady.generator,
        "the same workload as steady"
    );
    let stretched = load("leak-memory", Some(Duration::from_secs(900)));
    assert_eq!(
        stretched.shipper.leak_lab,
        ["memory-cache:256/15000ms"],
        "the period scales, the size does not"
    );

    let storm = load("rotation-storm", None);
    assert_eq!(storm.rotation.mode, RotationMode::Alternate);
    assert!(storm.duration.as_secs_f64() / storm.rotation.every.as_secs_f64() >= 10.0);

    let outage = load("loki-outage", None);
    let kinds: Vec<FaultKind> = outage.faults.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FaultKind::Status(429),
            FaultKind::Status(503),
            FaultKind::Hang
        ]
    );

    assert_eq!(load("many-files", None).generator.files, 1000);

    let burst = load("burst", None);
    assert!(!burst.bursts.is_empty() && burst.bursts.iter().all(|b| b.multiplier > 1.0));
}
