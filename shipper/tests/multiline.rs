//! End to end: multiline sources deliver Go panics, Java and Python traces as one entry each, and
//! a kill -9 in the middle of a trace neither loses nor splits it after restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Env, counts, wait_until};

const LIMIT: Duration = Duration::from_secs(60);
/// A timestamped log line starts an entry, and so does a Go panic (printed without one).
const START: &str = r"^(\d{4}-\d{2}-\d{2}T|panic: )";

/// A Go panic of exactly 40 lines (blank lines included, as Go prints them).
fn go_panic() -> Vec<String> {
    let mut l = vec![
        "panic: runtime error: index out of range [5] with length 3".to_string(),
        String::new(),
        "goroutine 1 [running]:".to_string(),
    ];
    let mut frame = 0;
    while l.len() < 40 {
        if l.len() == 21 {
            l.push(String::new());
            l.push(format!("goroutine {} [chan receive]:", 7 + frame));
            continue;
        }
        l.push(format!("main.handler{frame}(0xc000012345, 0x{frame:x})"));
        l.push(format!(
            "\t/app/cmd/server/handler.go:{} +0x1d",
            100 + frame
        ));
        frame += 1;
    }
    l.truncate(40);
    l
}

fn java_trace() -> Vec<String> {
    [
        "2024-05-01T12:00:02.000Z ERROR request failed",
        "java.lang.IllegalStateException: connection pool exhausted",
        "\tat com.example.db.Pool.acquire(Pool.java:88)",
        "\tat com.example.api.Handler.serve(Handler.java:42)",
        "Caused by: java.net.SocketTimeoutException: connect timed out",
        "\tat java.base/java.net.Socket.connect(Socket.java:633)",
        "\t... 2 more",
    ]
    .map(String::from)
    .to_vec()
}

fn python_trace() -> Vec<String> {
    [
        "2024-05-01T12:00:03.000Z ERROR job failed",
        "Traceback (most recent call last):",
        "  File \"/app/job.py\", line 12, in <module>",
        "    run()",
        "  File \"/app/job.py\", line 8, in run",
        "    1 / 0",
        "ZeroDivisionError: division by zero",
    ]
    .map(String::from)
    .to_vec()
}

fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn go_java_and_python_traces_each_arrive_as_one_entry() {
    let mut env = Env::new();
    env.source_extra =
        format!("multiline = {{ start = '{START}', max_lines = 500, max_wait = \"500ms\" }}\n");
    let shipper = env.start();
    let before = "2024-05-01T12:00:00.000Z INFO starting".to_string();
    let after = "2024-05-01T12:00:04.000Z INFO still running".to_string();
    let mut all = vec![before.clone()];
    all.extend(go_panic());
    all.extend(java_trace());
    all.extend(python_trace());
    // Written in two parts so a trace straddles two reads.
    let body = text(&all);
    let (a, b) = body.split_at(body.len() / 2);
    env.append("app.log", a.as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    env.append("app.log", b.as_bytes());
    env.append("app.log", text(std::slice::from_ref(&after)).as_bytes());
    // The last entry has no start line after it: max_wait of silence completes it.
    wait_until(LIMIT, "5 entries", || env.delivered().len() >= 5);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let lines: Vec<String> = env.delivered().into_iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        vec![
            before,
            go_panic().join("\n"),
            java_trace().join("\n"),
            python_trace().join("\n"),
            after
        ]
    );
    assert_eq!(lines[1].lines().count(), 40);
}

#[test]
fn a_kill_9_in_the_middle_of_a_trace_neither_loses_nor_splits_it() {
    let mut env = Env::new();
    // No timed flush: only the next start line can complete the trace.
    env.source_extra = format!("multiline = {{ start = '{START}', max_wait = \"1h\" }}\n");
    let head = text(&[
        "2024-05-01T12:00:00.000Z INFO one".to_string(),
        "2024-05-01T12:00:01.000Z INFO two".to_string(),
    ]);
    let panic = go_panic();
    env.append("app.log", head.as_bytes());
    env.append("app.log", text(&panic[..20]).as_bytes());
    let shipper = env.start();
    wait_until(LIMIT, "the lines before the trace", || {
        env.delivered().len() == 2
    });
    // Acknowledged and saved: the position is the trace's first line, not past it.
    let saved = || -> Option<u64> {
        let cp = std::fs::read_to_string(env.path("data/checkpoints.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&cp).ok()?;
        v["checkpoints"][0]["offset"].as_u64()
    };
    wait_until(LIMIT, "the position saved at the trace's start", || {
        saved() == Some(head.len() as u64)
    });
    shipper.kill9();
    env.append("app.log", text(&panic[20..]).as_bytes());
    env.append("app.log", b"2024-05-01T12:00:05.000Z INFO after\n");
    let shipper = env.start();
    wait_until(LIMIT, "the trace", || env.delivered().len() >= 3);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    let c = counts(&d);
    assert_eq!(
        c.get(&panic.join("\n")),
        Some(&1),
        "the whole trace once: {d:?}"
    );
    assert_eq!(
        d.len(),
        3,
        "nothing twice, no piece of the trace alone: {d:?}"
    );
    // The open entry after it was not shipped at shutdown: its position holds it for next time.
    assert_eq!(saved(), Some((head.len() + text(&panic).len()) as u64));
}

#[test]
fn a_bad_start_regex_exits_2_naming_the_key() {
    let mut env = Env::new();
    env.source_extra = "multiline = { start = '^(\\d{4}' }\n".into();
    let config = env.write_config();
    let (code, _, err) =
        support::run_bin(&["--check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sources[0].multiline.start") && err.contains("unclosed group"),
        "{err}"
    );
}
