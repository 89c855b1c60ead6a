//! tokio-console, read the way the `tokio-console` CLI reads it: `console-api`'s generated gRPC
//! client against a real shipper started with `--console`. The shipper's supervised components
//! must arrive named, each with the spawn location in `shipper/src/wiring.rs` where it is started, and
//! the leak lab's unnamed tasks with theirs in `shipper/src/leaklab.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use console_api::field::{Name, Value};
use console_api::instrument::InstrumentRequest;
use console_api::instrument::instrument_client::InstrumentClient;
use testkit::shipper::{Env, wait_until};

/// The supervisor's components of a shipper with a file sink, its probe, the console and the leak
/// lab: every one is spawned through the probe, so every one must arrive named.
const COMPONENTS: &[&str] = &[
    "server",
    "debug-server",
    "task-health",
    "console",
    "leak-lab",
    "checkpointer",
    "sink",
    "dispatcher",
    "reader",
];

/// A task as the console sees it: its `task.name` field (if any) and its spawn location.
#[derive(Debug, Clone)]
struct ConsoleTask {
    name: Option<String>,
    file: String,
    line: u32,
}

/// Field names arrive either inline or as an index into the span's metadata `field_names`.
fn field_name(
    field: &console_api::Field,
    metadata: &HashMap<u64, console_api::Metadata>,
) -> Option<String> {
    match field.name.as_ref()? {
        Name::StrName(name) => Some(name.clone()),
        Name::NameIdx(idx) => {
            let meta = metadata.get(&field.metadata_id.as_ref()?.id)?;
            meta.field_names.get(usize::try_from(*idx).ok()?).cloned()
        }
    }
}

fn field_text(value: &Value) -> String {
    match value {
        Value::StrVal(s) | Value::DebugVal(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Streams `WatchUpdates` until every component is seen with a location, or 20 s pass.
async fn read_tasks(addr: String) -> BTreeMap<u64, ConsoleTask> {
    let mut client = InstrumentClient::connect(format!("http://{addr}"))
        .await
        .expect("the console's gRPC port accepts a client");
    let mut stream = client
        .watch_updates(InstrumentRequest {})
        .await
        .expect("WatchUpdates answers")
        .into_inner();
    let mut metadata = HashMap::new();
    let mut tasks = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let named: Vec<&str> = tasks
            .values()
            .filter_map(|t: &ConsoleTask| t.name.as_deref())
            .collect();
        let leaked = tasks
            .values()
            .filter(|t| t.file.ends_with("leaklab.rs"))
            .count();
        if COMPONENTS.iter().all(|c| named.contains(c)) && leaked >= 2 {
            return tasks;
        }
        let update = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("20 s without all components; seen so far: {tasks:#?}"))
            .expect("the stream stays healthy")
            .expect("the stream stays open while the shipper runs");
        for new in update.new_metadata.map(|m| m.metadata).unwrap_or_default() {
            if let (Some(id), Some(meta)) = (new.id, new.metadata) {
                metadata.insert(id.id, meta);
            }
        }
        for task in update.task_update.map(|u| u.new_tasks).unwrap_or_default() {
            let name = task.fields.iter().find_map(|f| {
                (field_name(f, &metadata).as_deref() == Some("task.name"))
                    .then(|| f.value.as_ref().map(field_text))
                    .flatten()
                    // tokio records an unnamed task's `task.name` as empty.
                    .filter(|name| !name.is_empty())
            });
            let location = task.location.unwrap_or_default();
            let id = task.id.map(|i| i.id).unwrap_or_default();
            tasks.insert(
                id,
                ConsoleTask {
                    name,
                    file: location.file.unwrap_or_default(),
                    line: location.line.unwrap_or_default(),
                },
            );
        }
    }
}

#[test]
fn console_clients_see_named_components_and_leaked_tasks_at_their_spawn_sites() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut env = Env::new();
    env.args = vec![
        "--console".into(),
        "--console-addr".into(),
        addr.clone(),
        "--leak-lab".into(),
        "poll-spawn:2/200ms".into(),
    ];
    let shipper = env.start();
    wait_until(Duration::from_secs(10), "the console port", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tasks = runtime.block_on(read_tasks(addr));

    for component in COMPONENTS {
        let task = tasks
            .values()
            .find(|t| t.name.as_deref() == Some(*component))
            .unwrap();
        assert!(
            task.file == "shipper/src/wiring.rs" && task.line > 0,
            "{component} should be spawned from shipper/src/wiring.rs: {task:?}"
        );
    }
    // One spawn line per component, each its own: the location is the caller's, not the probe's.
    let mut lines: Vec<u32> = COMPONENTS
        .iter()
        .filter_map(|c| tasks.values().find(|t| t.name.as_deref() == Some(*c)))
        .map(|t| t.line)
        .collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), COMPONENTS.len(), "{tasks:#?}");
    // The leak lab's bare `tokio::spawn`s: unnamed, all from one line of leaklab.rs.
    let leaked: Vec<&ConsoleTask> = tasks
        .values()
        .filter(|t| t.file == "shipper/src/leaklab.rs")
        .collect();
    assert!(leaked.len() >= 2, "{tasks:#?}");
    assert!(leaked.iter().all(|t| t.name.is_none()), "{leaked:?}");
    assert!(
        leaked.windows(2).all(|w| w[0].line == w[1].line),
        "{leaked:?}"
    );
    // No task claims to be spawned inside the probe's wrappers.
    assert!(
        tasks.values().all(|t| !t.file.contains("probe/spawn.rs")),
        "{tasks:#?}"
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
