//! Model-based test of the reader: random sequences of appends, rename rotations, copytruncates
//! and delete-recreates run against real files and the real reader task, next to a model of what
//! must arrive. After every step, what arrived must equal the model: every line once, in order per
//! file. Seeds are fixed so a failure replays.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shipper::checkpoint::{self, Ledger};
use shipper::config::{ReadFrom, SourceConfig, SourceKind};
use shipper::event::Chunk;
use shipper::source::{MetricEvents, reader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
enum Action {
    Append(usize),
    Rotate,
    /// Rotation to a name the glob still matches: the file must not be read twice.
    RotateMatching,
    CopyTruncate,
    Recreate,
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = lines.join("\n");
    text.push('\n');
    f.write_all(text.as_bytes()).unwrap();
}

async fn receive_until(
    rx: &mut mpsc::Receiver<Chunk>,
    got: &mut Vec<String>,
    ledger: &checkpoint::SharedLedger,
    want: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(chunk)) = tokio::time::timeout(left, rx.recv()).await else {
            panic!(
                "timed out with {} of {want} lines: last {:?}",
                got.len(),
                got.last()
            );
        };
        let acks: Vec<_> = chunk
            .streams
            .iter()
            .flat_map(|(_, l)| l.iter().map(|_| shipper::event::AckRef { chunk: chunk.id }))
            .collect();
        for (_, lines) in chunk.streams {
            got.extend(lines.into_iter().map(|(_, l)| l.to_owned()));
        }
        checkpoint::with(ledger, |l| l.ack(&acks));
    }
}

async fn run_model(seed: u64, steps: usize, fs_events: bool) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    std::fs::write(&app, b"").unwrap();
    let ledger = Ledger::new(vec![]).shared();
    let (tx, mut rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let parts = reader::ReaderParts {
        sources: vec![SourceConfig {
            kind: SourceKind::File,
            include: vec![format!("{}/*.log", logs.display())],
            exclude: vec![],
            read_from: ReadFrom::Beginning,
            labels: BTreeMap::new(),
            max_line_bytes: 1024,
            poll_interval: Duration::from_millis(20),
            multiline: None,
        }],
        ledger: ledger.clone(),
        tx,
        events: Arc::new(MetricEvents),
        fs_events,
    };
    let task = tokio::spawn(reader::run(parts, stop.clone(), || {}));

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model: Vec<String> = Vec::new();
    let mut got: Vec<String> = Vec::new();
    let mut n = 0usize;
    let mut rotations = 0;
    let mut log = Vec::new();
    for _ in 0..steps {
        let action = match rng.u8(0..11) {
            0..=5 => Action::Append(rng.usize(1..2000)),
            6 | 7 => Action::Rotate,
            10 => Action::RotateMatching,
            8 => Action::CopyTruncate,
            _ => Action::Recreate,
        };
        log.push(action);
        match action {
            Action::Append(k) => {
                let lines: Vec<String> = (n..n + k)
                    .map(|i| format!("seed {seed} line {i}"))
                    .collect();
                n += k;
                append(&app, &lines);
                model.extend(lines);
            }
            Action::Rotate | Action::RotateMatching => {
                // The reader must have found the file (it cannot follow one it never saw), but need
                // not have read it: the tail is read through the open descriptor after the rename.
                let lines: Vec<String> = (n..n + 500)
                    .map(|i| format!("seed {seed} line {i}"))
                    .collect();
                n += 500;
                append(&app, &lines[..1]);
                model.push(lines[0].clone());
                receive_until(&mut rx, &mut got, &ledger, model.len()).await;
                append(&app, &lines[1..]);
                model.extend(lines[1..].iter().cloned());
                rotations += 1;
                let to = match action {
                    Action::RotateMatching => format!("app-{rotations}.log"),
                    _ => format!("app.log.{rotations}"),
                };
                std::fs::rename(&app, logs.join(to)).unwrap();
                std::fs::write(&app, b"").unwrap();
            }
            Action::CopyTruncate => {
                // Lines written between the copy and the truncation are lost by copytruncate
                // itself; the model only requires what was read before.
                receive_until(&mut rx, &mut got, &ledger, model.len()).await;
                std::fs::copy(&app, logs.join("copy.bak")).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&app)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            Action::Recreate => {
                receive_until(&mut rx, &mut got, &ledger, model.len()).await;
                std::fs::remove_file(&app).unwrap();
                std::fs::write(&app, b"").unwrap();
            }
        }
        receive_until(&mut rx, &mut got, &ledger, model.len()).await;
        assert_eq!(got.len(), model.len(), "seed {seed} after {log:?}");
    }
    // Nothing more arrives: a duplicate would show up within a few reader passes (a file renamed
    // to a matching name is picked up again once its old watcher closes, after about a second).
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
        panic!("seed {seed}: unexpected extra chunk {extra:?} after {log:?}");
    }
    // Nothing more than the model, in the same order per file (one writer, so globally here
    // except across a rotation, where the old file's tail and the new file may interleave).
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_model = model.clone();
    sorted_model.sort();
    assert_eq!(sorted_got, sorted_model, "seed {seed}: {log:?}");
    eprintln!(
        "seed {seed}: {} lines, {rotations} rotations, actions {log:?}",
        model.len()
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_matches_the_model_across_rotation_truncation_and_recreation() {
    for seed in [1, 2, 3, 42] {
        run_model(seed, 25, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_matches_the_model_with_polling_only() {
    // No filesystem events: discovery and reads rely on the poll fallback alone.
    run_model(7, 20, false).await;
}
