//! End to end: positions survive restarts; SIGTERM flushes; kill -9 loses nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::Duration;

use support::{Env, counts, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn sigterm_flushes_the_pending_batch_saves_positions_and_exits_0() {
    let mut env = Env::new();
    // A batch that would wait an hour: only the shutdown flush can deliver it.
    env.sink_table = Some(format!(
        "[sink]\ntype = \"file\"\npath = \"{}\"\nbatch_max_wait = \"1h\"\n",
        env.out().display()
    ));
    let shipper = env.start();
    let text: String = (0..500).map(|i| format!("pending {i}\n")).collect();
    env.append("app.log", text.as_bytes());
    wait_until(LIMIT, "lines read", || {
        shipper.metric("shipper_read_lines_total") == Some(500.0)
    });
    assert!(
        env.delivered().is_empty(),
        "nothing sent before the batch is due"
    );
    let status = shipper.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert_eq!(env.delivered().len(), 500);
    let cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("data/checkpoints.json")).unwrap())
            .unwrap();
    assert_eq!(cp["version"], "1");
    assert_eq!(cp["checkpoints"][0]["offset"], text.len() as u64);

    // A restart resumes at the saved position: nothing twice, the new lines once.
    env.append("app.log", b"after restart\n");
    env.sink_table = None;
    let shipper = env.start();
    wait_until(LIMIT, "the new line", || env.delivered().len() >= 501);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let c = counts(&env.delivered());
    assert_eq!(c.len(), 501);
    assert!(
        c.values().all(|n| *n == 1),
        "duplicates after a clean restart"
    );
}

#[test]
fn kill_9_and_restart_loses_nothing_and_bounds_duplicates() {
    let env = Env::new();
    let total = 200_000usize;
    let line = |i: usize| format!("{i:08} {}", "k".repeat(100));
    let path = env.logs().join("app.log");
    let shipper = env.start();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            for i in 0..total {
                writeln!(f, "{}", line(i)).unwrap();
                if i % 1000 == 0 {
                    f.flush().unwrap();
                }
            }
            f.flush().unwrap();
        })
    };
    wait_until(LIMIT, "some lines delivered", || {
        env.delivered().len() > 20_000
    });
    shipper.kill9();
    let before = env.delivered().len();
    writer.join().unwrap();
    let shipper = env.start();
    wait_until(LIMIT, "every line", || {
        counts(&env.delivered()).len() >= total
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    let c = counts(&d);
    for i in 0..total {
        assert!(c.contains_key(&line(i)), "line {i} lost");
    }
    let duplicates = d.len() - total;
    // At most what was in flight: queued chunks and batches (a few MiB) plus one checkpoint interval.
    let bound = 12 * 1024 * 1024 / 110;
    eprintln!(
        "delivered before kill: {before}, duplicates after restart: {duplicates} (bound {bound})"
    );
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
}

#[test]
fn read_from_end_skips_old_content_of_files_found_at_startup_only() {
    let mut env = Env::new();
    env.source_extra = "read_from = \"end\"\n".into();
    env.append("old.log", b"old line\n");
    let shipper = env.start();
    wait_until(LIMIT, "the file followed", || {
        shipper.metric("shipper_files_active") == Some(1.0)
    });
    env.append("old.log", b"new line\n");
    env.append("later.log", b"later file line\n");
    wait_until(LIMIT, "2 lines", || env.delivered().len() >= 2);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let mut lines: Vec<String> = env.delivered().into_iter().map(|e| e.line).collect();
    lines.sort();
    assert_eq!(lines, vec!["later file line", "new line"]);
}

#[test]
fn an_unfinished_last_line_is_not_shipped_until_its_newline_even_across_a_restart() {
    let env = Env::new();
    env.append("app.log", b"done\nhalf");
    let shipper = env.start();
    wait_until(LIMIT, "the finished line", || env.delivered().len() == 1);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let cp = std::fs::read_to_string(env.path("data/checkpoints.json")).unwrap();
    assert!(cp.contains("\"offset\": 5"), "{cp}");
    env.append("app.log", b" and half\n");
    let shipper = env.start();
    wait_until(LIMIT, "the completed line", || env.delivered().len() == 2);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let lines: Vec<String> = env.delivered().into_iter().map(|e| e.line).collect();
    assert_eq!(lines, vec!["done", "half and half"]);
}

#[test]
fn sigint_to_the_stdout_sink_flushes_and_exits_0() {
    let mut env = Env::new();
    env.sink_table = Some("[sink]\ntype = \"stdout\"\nbatch_max_wait = \"1h\"\n".into());
    let shipper = env.start();
    env.append("app.log", b"to stdout \"quoted\"\n");
    wait_until(LIMIT, "the line read", || {
        shipper.metric("shipper_read_lines_total") == Some(1.0)
    });
    let out = shipper.stdout.clone();
    assert!(
        shipper
            .signal(libc::SIGINT, Duration::from_secs(15))
            .success()
    );
    let d = support::read_out(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, "to stdout \"quoted\"");
    assert_eq!(d[0].labels["job"], "test");
}
