//! End to end: Docker json-file logs, partial records merged, labels and timestamps from records.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Env, wait_until};

#[test]
fn docker_partial_lines_are_merged_and_labelled_per_stream() {
    let mut env = Env::new();
    let docker = env.path("containers");
    let id = "0123456789abcdef";
    std::fs::create_dir_all(docker.join(id)).unwrap();
    env.tables = format!(
        "[[sources]]\ntype = \"docker\"\npath = \"{}\"\n",
        docker.display()
    );
    let shipper = env.start();
    let rec = |log: &str, stream: &str, time: &str| {
        format!(
            "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{time}\"}}\n",
            serde_json::to_string(log).unwrap()
        )
    };
    let mut text = String::new();
    text += &rec("first part, ", "stdout", "2024-05-01T12:00:00.000000001Z");
    text += &rec("an error\n", "stderr", "2024-05-01T12:00:00.5Z");
    text += &rec(
        "second \"part\"\t\\\n",
        "stdout",
        "2024-05-01T12:00:01.000000002Z",
    );
    text += "this is not json\n";
    let file = docker.join(id).join(format!("{id}-json.log"));
    std::fs::write(&file, &text).unwrap();
    wait_until(Duration::from_secs(30), "3 entries", || {
        env.delivered().len() >= 3
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let d = env.delivered();
    assert_eq!(d.len(), 3, "{d:?}");
    let err = d.iter().find(|e| e.labels["stream"] == "stderr").unwrap();
    assert_eq!(err.line, "an error");
    assert_eq!(err.ts, "1714564800500000000");
    assert_eq!(err.labels["container_id"], id);
    let out: Vec<_> = d
        .iter()
        .filter(|e| e.labels["stream"] == "stdout")
        .collect();
    assert_eq!(out[0].line, "first part, second \"part\"\t\\");
    assert_eq!(out[0].ts, "1714564801000000002");
    // A record that is not Docker JSON is shipped raw, not lost.
    assert_eq!(out[1].line, "this is not json");
}
