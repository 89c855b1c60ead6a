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

#[test]
fn a_restart_in_the_middle_of_a_split_line_resends_it_whole() {
    let mut env = Env::new();
    let docker = env.path("containers");
    let id = "feedfacecafe";
    std::fs::create_dir_all(docker.join(id)).unwrap();
    env.tables = format!(
        "[[sources]]\ntype = \"docker\"\npath = \"{}\"\n",
        docker.display()
    );
    let rec = |log: &str| {
        format!("{{\"log\":\"{log}\",\"stream\":\"stdout\",\"time\":\"2024-05-01T12:00:00Z\"}}\n")
    };
    let file = docker.join(id).join(format!("{id}-json.log"));
    let complete = rec("whole\\n");
    std::fs::write(&file, format!("{complete}{}", rec("split ")).as_bytes()).unwrap();
    let shipper = env.start();
    wait_until(Duration::from_secs(30), "the whole line", || {
        env.delivered().len() == 1
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    // The position stops before the first record of the unfinished line.
    let cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("data/checkpoints.json")).unwrap())
            .unwrap();
    let offsets: Vec<u64> = cp["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![complete.len() as u64]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, rec("line\\n").as_bytes()).unwrap();
    let shipper = env.start();
    wait_until(Duration::from_secs(30), "the merged line", || {
        env.delivered().len() == 2
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    let lines: Vec<String> = env.delivered().into_iter().map(|e| e.line).collect();
    assert_eq!(lines, vec!["whole", "split line"]);
}
