use super::*;

const FULL: &str = r#"
name = "t"
description = "all keys"
duration = "60s"
sample_interval = "3s"
[shipper]
leak_lab = ["poll-spawn:4/5s", "file-add-spawn"]
encoding = "protobuf"
batch_max_wait = "200ms"
[generator]
files = 3
lines_per_sec = 90
line_bytes = 100
special_every = 7
[rotation]
mode = "alternate"
every = "15s"
keep = 3
[[bursts]]
at = "20s"
for = "5s"
multiplier = 4
[[faults]]
at = "10s"
for = "6s"
kind = "429"
[[faults]]
at = "30s"
for = "6s"
kind = "hang"
[limits]
warmup = "12s"
max_missing_ratio = 0.01
"#;

#[test]
fn full_profile_parses_at_its_nominal_duration() {
    let p = Profile::parse(FULL, "t.toml", "stem", None).unwrap();
    assert_eq!(p.name, "t");
    assert_eq!(p.duration, Duration::from_secs(60));
    assert_eq!(p.sample_interval, Duration::from_secs(3));
    assert_eq!(
        p.shipper.leak_lab,
        ["poll-spawn:4/5000ms", "file-add-spawn"]
    );
    assert_eq!(p.shipper.encoding, crate::model::loki::Encoding::Protobuf);
    assert_eq!(p.rotation.mode, RotationMode::Alternate);
    assert_eq!(p.faults[0].kind, FaultKind::Status(429));
    assert_eq!(p.faults[1].kind, FaultKind::Hang);
    assert_eq!(p.bursts[0].multiplier, 4.0);
    assert_eq!(p.limits.max_missing_ratio, 0.01);
    assert_eq!(p.limits.max_duplicate_ratio, 0.0);
}

#[test]
fn workload_times_scale_with_the_duration_and_machine_times_do_not() {
    let p = Profile::parse(FULL, "t.toml", "stem", Some(Duration::from_secs(900))).unwrap();
    assert_eq!(p.duration, Duration::from_secs(900));
    assert_eq!(p.sample_interval, Duration::from_secs(45));
    assert_eq!(p.rotation.every, Duration::from_secs(225));
    assert_eq!(p.bursts[0].window.at, Duration::from_secs(300));
    assert_eq!(p.bursts[0].window.length, Duration::from_secs(75));
    assert_eq!(p.faults[1].window.at, Duration::from_secs(450));
    assert_eq!(p.limits.warmup, Duration::from_secs(180));
    assert_eq!(p.shipper.leak_lab[0], "poll-spawn:4/75000ms");
    // Not scaled: rates and machine times.
    assert_eq!(p.generator.lines_per_sec, 90.0);
    assert_eq!(p.shipper.batch_max_wait, Duration::from_millis(200));
    assert_eq!(p.limits.drain_timeout, Duration::from_secs(60));
    let short = Profile::parse(FULL, "t.toml", "stem", Some(Duration::from_secs(30))).unwrap();
    assert_eq!(short.sample_interval, Duration::from_millis(1500));
}

#[test]
fn minimal_profile_takes_defaults_and_the_file_stem() {
    let text = "duration = \"20s\"\n[generator]\nfiles = 1\nlines_per_sec = 10\n";
    let p = Profile::parse(text, "x/steady.toml", "steady", None).unwrap();
    assert_eq!(p.name, "steady");
    assert_eq!(p.rotation.mode, RotationMode::None);
    assert_eq!(p.generator.line_bytes, 150);
    assert_eq!(p.shipper.encoding, crate::model::loki::Encoding::Json);
    assert!(p.faults.is_empty());
}

fn err(text: &str) -> String {
    Profile::parse(text, "bad.toml", "bad", None)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_profiles_name_the_key() {
    let base = "duration = \"60s\"\n[generator]\nfiles = 1\nlines_per_sec = 10\n";
    let e = err(&format!("{base}[rotation]\nmode = \"sideways\"\n"));
    assert!(e.contains("rotation.mode") && e.contains("sideways"), "{e}");
    let e = err(&format!(
        "{base}[[faults]]\nat = \"10s\"\nfor = \"5s\"\nkind = \"404\"\n"
    ));
    assert!(e.contains("faults[0].kind"), "{e}");
    let e = err(&format!(
        "{base}[[faults]]\nat = \"58s\"\nfor = \"5s\"\nkind = \"503\"\n"
    ));
    assert!(e.contains("faults[0]") && e.contains("ends after"), "{e}");
    let e = err(&base.replace("[generator]", "sample_interval = \"30s\"\n[generator]"));
    assert!(e.contains("sample_interval"), "{e}");
    let e = err("duration = \"soon\"\n[generator]\nfiles = 1\nlines_per_sec = 10\n");
    assert!(e.contains("`duration`") && e.contains("'soon'"), "{e}");
    let e = err("duration = \"60s\"\nbogus = 1\n[generator]\nfiles = 1\nlines_per_sec = 10\n");
    assert!(e.contains("bogus"), "{e}");
    let e = err("duration = \"60s\"\n[generator]\nfiles = 0\nlines_per_sec = 10\n");
    assert!(e.contains("generator.files"), "{e}");
    let e = err(&format!(
        "{base}[shipper]\nleak_lab = [\"poll-spawn:4/soon\"]\n"
    ));
    assert!(e.contains("shipper.leak_lab[0]"), "{e}");
    let e = err(&format!("{base}[shipper]\nleak_lab_fixed = true\n"));
    assert!(e.contains("shipper.leak_lab_fixed"), "{e}");
}
