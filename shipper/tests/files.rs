//! End to end: the real binary following real files into the file sink.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::Duration;

use support::{Env, counts, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

fn line(i: usize) -> String {
    format!("{i:08} {}", "x".repeat(140))
}

#[test]
fn rename_rotation_under_load_delivers_every_line_once() {
    let env = Env::new();
    let shipper = env.start();
    let total = 60_000;
    let per_file = 10_000;
    let path = env.logs().join("app.log");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..total {
        writeln!(f, "{}", line(i)).unwrap();
        if i % per_file == 0 {
            // The shipper must have found this file once (it cannot follow a file it never saw);
            // the rest of the file is written at full speed and renamed away before it is read.
            wait_until(LIMIT, "the new file followed", || {
                shipper.metric("shipper_read_lines_total").unwrap_or(0.0) > i as f64
            });
        }
        if i % per_file == per_file - 1 {
            // logrotate's default: rename, then the application reopens its file.
            std::fs::rename(&path, path.with_extension(format!("log.{}", i / per_file))).unwrap();
            f = std::fs::File::create(&path).unwrap();
        }
    }
    drop(f);
    wait_until(LIMIT, "every line delivered", || {
        env.delivered().len() >= total
    });
    let got = counts(&env.delivered());
    for i in 0..total {
        assert_eq!(got.get(&line(i)), Some(&1), "line {i}");
    }
    assert_eq!(got.len(), total);
    // Order within the stream is kept per file.
    let status = shipper.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

#[test]
fn copytruncate_is_detected_and_the_file_is_read_again_from_its_start() {
    let env = Env::new();
    let shipper = env.start();
    let first: Vec<String> = (0..2000).map(|i| format!("before {i}")).collect();
    env.append("app.log", (first.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "first part delivered", || {
        env.delivered().len() >= 2000
    });
    // copytruncate: copy away, truncate in place, the writer goes on at offset 0.
    let p = env.logs().join("app.log");
    std::fs::copy(&p, env.logs().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let second: Vec<String> = (0..50).map(|i| format!("after {i}")).collect();
    env.append("app.log", (second.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "second part delivered", || {
        env.delivered().len() >= 2050
    });
    let got = counts(&env.delivered());
    for l in first.iter().chain(&second) {
        assert_eq!(got.get(l), Some(&1), "{l}");
    }
    // Truncated and rewritten past the old size before the reader looks: the fingerprint tells.
    let big: Vec<String> = (0..3000).map(|i| format!("rewritten {i}")).collect();
    let p2 = env.logs().join("app.log");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p2)
        .unwrap();
    f.write_all((big.join("\n") + "\n").as_bytes()).unwrap();
    drop(f);
    wait_until(LIMIT, "rewritten content delivered", || {
        let c = counts(&env.delivered());
        big.iter().all(|l| c.contains_key(l))
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn hostile_lines_arrive_intact_a_2mib_line_is_truncated_and_counted() {
    let env = Env::new();
    let shipper = env.start();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"quotes \" and \\ backslashes \\\" and\ttabs\t{\"json\":1}\n");
    bytes.extend_from_slice(b"bad utf8 \xff\xfe here \xc3\x28 end\n");
    bytes.extend_from_slice(b"emoji \xf0\x9f\x9a\x80 and \xc3\xbc\n");
    bytes.extend_from_slice(&vec![b'L'; 2 * 1024 * 1024]);
    bytes.extend_from_slice(b"\nafter the long line\n\n");
    env.append("hostile.log", &bytes);
    wait_until(LIMIT, "6 lines", || env.delivered().len() >= 6);
    let d = env.delivered();
    let lines: Vec<&str> = d.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(
        lines[0],
        "quotes \" and \\ backslashes \\\" and\ttabs\t{\"json\":1}"
    );
    assert_eq!(lines[1], "bad utf8 \u{fffd}\u{fffd} here \u{fffd}( end");
    assert_eq!(lines[2], "emoji 🚀 and ü");
    assert_eq!(lines[3].len(), 256 * 1024, "truncated to max_line_bytes");
    assert!(lines[3].bytes().all(|b| b == b'L'));
    assert_eq!(lines[4], "after the long line");
    assert_eq!(lines[5], "");
    assert_eq!(d.len(), 6);
    assert_eq!(d[0].labels["job"], "test");
    assert!(d[0].labels["filename"].ends_with("/logs/hostile.log"));
    let ts: Vec<i128> = d.iter().map(|e| e.ts.parse().unwrap()).collect();
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "timestamps strictly increase: {ts:?}"
    );
    assert_eq!(
        shipper.metric("shipper_dropped_entries_total{reason=\"line_too_long\"}"),
        Some(1.0)
    );
    assert_eq!(shipper.metric("shipper_read_lines_total"), Some(6.0));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn deleted_files_are_closed_and_new_files_are_picked_up() {
    let env = Env::new();
    let shipper = env.start();
    env.append("a.log", b"a1\na2\n");
    env.append("sub/dir/b.log", b"b1\n");
    env.append("c.txt", b"not matched\n");
    wait_until(LIMIT, "3 lines", || env.delivered().len() >= 3);
    wait_until(LIMIT, "2 files active", || {
        shipper.metric("shipper_files_active") == Some(2.0)
    });
    std::fs::remove_file(env.logs().join("a.log")).unwrap();
    wait_until(LIMIT, "the deleted file closed", || {
        shipper.metric("shipper_files_active") == Some(1.0)
    });
    let lines: Vec<String> = env.delivered().into_iter().map(|e| e.line).collect();
    assert!(!lines.contains(&"not matched".to_string()));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn an_unreadable_file_is_reported_once_and_retried_until_it_works() {
    let env = Env::new();
    // A link to nothing matches the glob but cannot be opened.
    let target = env.path("elsewhere/real.txt");
    std::os::unix::fs::symlink(&target, env.logs().join("broken.log")).unwrap();
    env.append("ok.log", b"fine\n");
    let shipper = env.start();
    wait_until(LIMIT, "the readable file", || env.delivered().len() == 1);
    // Several discovery rounds (poll_interval 200ms) later, still one report.
    wait_until(LIMIT, "the error counted", || {
        shipper.metric("shipper_read_errors_total") == Some(1.0)
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        shipper.metric("shipper_read_errors_total"),
        Some(1.0),
        "logged and counted once"
    );
    assert_eq!(shipper.stderr().matches("cannot read file").count(), 1);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"now readable\n").unwrap();
    wait_until(LIMIT, "the repaired file", || env.delivered().len() == 2);
    assert_eq!(env.delivered()[1].line, "now readable");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
