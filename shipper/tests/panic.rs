//! A component that panics stops the real shipper in order: the log names the component and the
//! panic, the positions acknowledged before it are saved (by the checkpointer's final save), the
//! exit code is 101, and a restart resumes from those positions with no line lost or repeated.
//!
//! The panic is injected with `SHIPPER_TEST_PANIC=COMPONENT:FILE`, which only debug builds read
//! (`shipper/src/supervisor.rs`, `test_panic`): the component panics inside its own task once the
//! file exists, so the test chooses the moment.

mod support;

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// The saved offset of the only file, if positions are on disk.
fn saved_offset(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["checkpoints"][0]["offset"].as_u64()
}

fn exit_within(s: &mut Shipper, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            start.elapsed() < limit,
            "still running {limit:?} after the panic:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn panics_and_saves_positions(component: &str) {
    let mut env = Env::new();
    let trigger = env.path("panic-now");
    env.env.push((
        "SHIPPER_TEST_PANIC".into(),
        format!("{component}:{}", trigger.display()),
    ));
    let text: String = (0..300).map(|i| format!("before {i}\n")).collect();
    env.append("app.log", text.as_bytes());
    let mut s = env.start();
    wait_until(LIMIT, "300 lines delivered", || {
        env.delivered().len() >= 300
    });
    let positions = env.path("data/checkpoints.json");
    wait_until(LIMIT, "the position of the last line saved", || {
        saved_offset(&positions) == Some(text.len() as u64)
    });
    // Every line is acknowledged and saved, and nothing new is read, so the periodic save has
    // nothing to write (it writes only after a change): from here only the final save that
    // shutdown runs can put the positions back.
    std::fs::remove_file(&positions).expect("remove the positions");
    std::fs::write(&trigger, b"").expect("arm the panic");

    let status = exit_within(&mut s, LIMIT);
    let log = s.stderr();
    assert_eq!(status.code(), Some(101), "exit code of a panic:\n{log}");
    let panicked = log
        .lines()
        .find(|l| l.contains("component panicked"))
        .unwrap_or_else(|| panic!("no 'component panicked' line:\n{log}"));
    assert!(
        panicked.contains(&format!("component=\"{component}\""))
            && panicked.contains(&format!("{component} panics on purpose")),
        "the line names the component and the panic's message: {panicked}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("shipper: component '{component}' panicked: ")),
        "the last line says what ended the process: {last}"
    );
    assert_eq!(
        saved_offset(&positions),
        Some(text.len() as u64),
        "the final save ran after the panic:\n{log}"
    );

    // A restart resumes from the saved position: the old lines once, the new one once.
    env.env.clear();
    env.append("app.log", b"after the panic\n");
    let again = env.start();
    wait_until(LIMIT, "the new line delivered", || {
        env.delivered().iter().any(|d| d.line == "after the panic")
    });
    let counts = counts(&env.delivered());
    assert_eq!(counts.len(), 301, "every line delivered");
    assert!(
        counts.values().all(|&n| n == 1),
        "no line twice: {:?}",
        counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(again.terminate(LIMIT).code(), Some(0));
}

#[test]
fn a_panicking_reader_is_named_positions_are_saved_and_the_exit_is_101() {
    panics_and_saves_positions("reader");
}

#[test]
fn a_panicking_sink_is_named_positions_are_saved_and_the_exit_is_101() {
    panics_and_saves_positions("sink");
}
