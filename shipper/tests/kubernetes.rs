//! End to end: a `kubernetes` source over a tree laid out like kubelet's `/var/log/pods`: CRI
//! records, `P`/`F` partials merged, labels from the path and the record, CRI timestamps, and
//! kubelet's rotation (rename, new `0.log`, the old one compressed and deleted) under load.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Env, wait_until};

const LIMIT: Duration = Duration::from_secs(90);

fn pod_dir(root: &Path, ns: &str, pod: &str, container: &str) -> PathBuf {
    let d = root
        .join(format!(
            "{ns}_{pod}_0b6c3f5e-8d2a-4c1b-9e7f-{:012x}",
            pod.len()
        ))
        .join(container);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A CRI time for second `s` and nanosecond `ns` of 2024-05-01T12:00, and its Unix ns.
fn cri_time(s: u64, ns: u64) -> (String, String) {
    (
        format!("2024-05-01T12:{:02}:{:02}.{ns:09}Z", s / 60, s % 60),
        (1_714_564_800_000_000_000u64 + s * 1_000_000_000 + ns).to_string(),
    )
}

fn kubernetes_env(extra: &str) -> (Env, PathBuf) {
    let mut env = Env::new();
    let pods = env.path("pods");
    std::fs::create_dir_all(&pods).unwrap();
    env.tables = format!(
        "[[sources]]\ntype = \"kubernetes\"\npath = \"{}\"\nlabels = {{ cluster = \"test\" }}\npoll_interval = \"200ms\"\n{extra}\n",
        pods.display()
    );
    (env, pods)
}

#[test]
fn pod_logs_arrive_labelled_timestamped_and_with_partials_merged() {
    let (env, pods) = kubernetes_env("");
    let web = pod_dir(&pods, "shop", "web-7d9f8-x2k4q", "nginx").join("0.log");
    let job = pod_dir(&pods, "batch", "report-28391", "worker").join("1.log");
    let (t1, n1) = cri_time(1, 1);
    let (t2, _) = cri_time(2, 500_000_000);
    let (t3, _) = cri_time(3, 0);
    let (t4, n4) = cri_time(4, 123_456_789);
    append(
        &web,
        &format!(
            "{t1} stdout F GET / 200\n{t2} stderr P first half, \n{t3} stdout F GET /cart 200\n{t4} stderr F second half\n"
        ),
    );
    append(
        &job,
        &format!("{t1} stdout F done in 3s\nnot a cri record\n"),
    );
    // kubelet's rotated and compressed names are never followed as new files.
    let rotated = web.with_file_name("0.log.20240501-120000");
    append(&rotated, &format!("{t1} stdout F rotated long ago\n"));
    append(
        &web.with_file_name("0.log.20240501-110000.gz"),
        "\x1f\u{8b}junk\n",
    );
    // Nor is any other name: only `<restart count>.log`.
    append(
        &web.with_file_name("stray.log"),
        &format!("{t1} stdout F not a container log\n"),
    );
    let shipper = env.start();
    wait_until(LIMIT, "5 entries", || env.delivered().len() >= 5);
    // Every file was found by the first discovery, before anything was read: two are followed.
    assert_eq!(shipper.metric("shipper_files_active"), Some(2.0));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    assert_eq!(d.len(), 5, "{d:?}");
    let by_line: HashMap<&str, &support::Delivered> =
        d.iter().map(|e| (e.line.as_str(), e)).collect();
    let get = |line: &str| {
        *by_line
            .get(line)
            .unwrap_or_else(|| panic!("{line} missing: {d:?}"))
    };
    let merged = get("first half, second half");
    assert_eq!(merged.labels["namespace"], "shop");
    assert_eq!(merged.labels["pod"], "web-7d9f8-x2k4q");
    assert_eq!(merged.labels["container"], "nginx");
    assert_eq!(merged.labels["stream"], "stderr");
    assert_eq!(merged.labels["cluster"], "test");
    assert_eq!(merged.ts, n4, "a merged line has its full record's time");
    assert_eq!(merged.labels.len(), 5, "{:?}", merged.labels);
    let ok = get("GET / 200");
    assert_eq!(
        (ok.labels["stream"].as_str(), ok.ts.as_str()),
        ("stdout", n1.as_str())
    );
    let done = get("done in 3s");
    assert_eq!(
        (
            done.labels["namespace"].as_str(),
            done.labels["pod"].as_str(),
            done.labels["container"].as_str()
        ),
        ("batch", "report-28391", "worker")
    );
    // A line that is not CRI is shipped raw on stdout, not lost.
    assert_eq!(get("not a cri record").labels["stream"], "stdout");
    assert!(by_line.contains_key("GET /cart 200"));
}

/// One CRI line of the load: every 5th line split into two `P` records and an `F`.
fn load_record(i: usize) -> String {
    let (t, _) = cri_time((i / 1000) as u64, (i % 1000) as u64 * 1000);
    let stream = if i.is_multiple_of(3) {
        "stderr"
    } else {
        "stdout"
    };
    if i.is_multiple_of(5) {
        format!(
            "{t} {stream} P line {i:06} part one\n{t} {stream} P part two \n{t} {stream} F end\n"
        )
    } else {
        format!("{t} {stream} F line {i:06} {}\n", "x".repeat(60))
    }
}

fn load_line(i: usize) -> String {
    if i.is_multiple_of(5) {
        format!("line {i:06} part onepart two end")
    } else {
        format!("line {i:06} {}", "x".repeat(60))
    }
}

#[test]
fn kubelet_rotation_and_deletion_under_load_lose_nothing() {
    let (env, pods) = kubernetes_env("");
    let dir = pod_dir(&pods, "prod", "api-5f7c9-abcde", "app");
    let live = dir.join("0.log");
    let shipper = env.start();
    let total = 30_000usize;
    let segment = 3_000usize;
    let started = Instant::now();
    let writer = {
        let (dir, live) = (dir.clone(), live.clone());
        std::thread::spawn(move || {
            let mut rotated: Vec<PathBuf> = Vec::new();
            let mut f = std::io::BufWriter::new(std::fs::File::create(&live).unwrap());
            for i in 0..total {
                f.write_all(load_record(i).as_bytes()).unwrap();
                // Paced through a segment's first half, then its second half in one burst right
                // before the rename: the shipper is still behind when the file moves away.
                if i % 500 == 499 && i % segment < segment / 2 {
                    f.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(60));
                }
                if i % segment == segment - 1 && i + 1 < total {
                    f.flush().unwrap();
                    // kubelet: rename the live file, the runtime reopens a new 0.log...
                    let name = dir.join(format!("0.log.20240501-12{:04}", i / segment));
                    std::fs::rename(&live, &name).unwrap();
                    f = std::io::BufWriter::new(std::fs::File::create(&live).unwrap());
                    rotated.push(name);
                    // ...and later compresses the previous rotated file and deletes it.
                    if rotated.len() >= 2 {
                        let old = rotated.remove(0);
                        let bytes = std::fs::read(&old).unwrap();
                        let gz = std::fs::File::create(format!("{}.gz", old.display())).unwrap();
                        let mut enc =
                            flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
                        enc.write_all(&bytes).unwrap();
                        enc.finish().unwrap();
                        std::fs::remove_file(&old).unwrap();
                    }
                }
            }
            f.flush().unwrap();
        })
    };
    writer.join().unwrap();
    let wrote = started.elapsed();
    wait_until(LIMIT, "every line", || env.delivered().len() >= total);
    std::thread::sleep(Duration::from_millis(500));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in &d {
        assert_eq!(e.labels["pod"], "api-5f7c9-abcde");
        assert_eq!(e.labels["namespace"], "prod");
        assert_eq!(e.labels["container"], "app");
        *seen.entry(e.line.as_str()).or_default() += 1;
    }
    let lost: Vec<usize> = (0..total)
        .filter(|i| !seen.contains_key(load_line(*i).as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "no restart, so no duplicate");
    assert_eq!(d.len(), total);
    // Each entry is on its stream with its own record's time.
    let e = d.iter().find(|e| e.line == load_line(15)).unwrap();
    assert_eq!(e.labels["stream"], "stderr");
    assert_eq!(e.ts, cri_time(0, 15_000).1);
    eprintln!(
        "{total} lines in {} files written in {wrote:?}",
        total / segment
    );
}

#[test]
fn a_go_panic_on_stderr_is_one_entry_while_stdout_goes_on() {
    let (env, pods) = kubernetes_env(
        "multiline = { start = '^(\\d{4}-\\d{2}-\\d{2}T|panic: )', max_wait = \"300ms\" }",
    );
    let log = pod_dir(&pods, "shop", "api-1", "api").join("0.log");
    let mut panic = vec![
        "panic: assignment to entry in nil map".to_string(),
        String::new(),
        "goroutine 42 [running]:".to_string(),
    ];
    for f in 0..37 {
        panic.push(format!("main.step{f}(...)\t/app/main.go:{}", 10 + f));
    }
    let mut text = String::new();
    for (i, line) in panic.iter().enumerate() {
        let (t, _) = cri_time(10, i as u64);
        if i == 5 {
            // The runtime split this one: `P` then `F`.
            let (a, b) = line.split_at(6);
            text += &format!("{t} stderr P {a}\n{t} stderr F {b}\n");
        } else {
            text += &format!("{t} stderr F {line}\n");
        }
        if i % 10 == 0 {
            text += &format!("{t} stdout F 2024-05-01T12:00:10Z GET /{i} 200\n");
        }
    }
    append(&log, &text);
    let shipper = env.start();
    wait_until(LIMIT, "the panic and 4 requests", || {
        env.delivered().len() >= 5
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    assert_eq!(d.len(), 5, "{d:?}");
    let errs: Vec<_> = d
        .iter()
        .filter(|e| e.labels["stream"] == "stderr")
        .collect();
    assert_eq!(errs.len(), 1, "{d:?}");
    assert_eq!(errs[0].line, panic.join("\n"));
    assert_eq!(errs[0].line.lines().count(), 40);
    assert_eq!(
        errs[0].ts,
        cri_time(10, 0).1,
        "the entry has its first line's time"
    );
}
