use super::*;

fn id(ino: u64) -> FileId {
    FileId { dev: 1, ino }
}
fn acks(chunk: u64, n: usize) -> Vec<AckRef> {
    vec![AckRef { chunk }; n]
}

#[test]
fn position_moves_only_over_the_acknowledged_prefix() {
    let mut l = Ledger::new(vec![]);
    let k = l.open(id(1), Fingerprint::default(), "/a", 0);
    let c1 = l.register(k, 100, 3);
    let c2 = l.register(k, 250, 2);
    let c3 = l.register(k, 300, 1);
    l.ack(&acks(c2, 2));
    assert_eq!(
        l.acked(k),
        Some(0),
        "a later chunk done first must not move the position"
    );
    l.ack(&acks(c1, 2));
    assert_eq!(
        l.acked(k),
        Some(0),
        "a partly acknowledged chunk holds the position"
    );
    l.ack(&[AckRef { chunk: c1 }, AckRef { chunk: c3 }]);
    assert_eq!(l.acked(k), Some(300));
    // Acks split across batches and repeated chunks are fine.
    let c4 = l.register(k, 400, 0);
    assert_eq!(
        l.acked(k),
        Some(400),
        "a chunk without lines passes once the prefix is done"
    );
    l.ack(&acks(c4, 1));
    assert_eq!(l.acked(k), Some(400));
}

#[test]
fn truncation_drops_the_old_entry_and_its_late_acks() {
    let mut l = Ledger::new(vec![]);
    let k = l.open(id(1), Fingerprint::default(), "/a", 0);
    let old = l.register(k, 1000, 5);
    let k2 = l.open(id(1), Fingerprint::default(), "/a", 0);
    l.ack(&acks(old, 5));
    assert_eq!(l.acked(k), None);
    assert_eq!(l.acked(k2), Some(0));
}

#[test]
fn closed_files_are_carried_once_done_and_looked_up() {
    let mut l = Ledger::new(vec![]);
    let k = l.open(id(7), Fingerprint { len: 3, hash: 9 }, "/a", 10);
    let c = l.register(k, 20, 1);
    l.close(k);
    assert_eq!(l.lookup(id(7)).map(|c| c.offset), Some(10));
    l.ack(&acks(c, 1));
    let cp = l.lookup(id(7)).unwrap();
    assert_eq!((cp.offset, cp.head.hash), (20, 9));
    let snap = l.take_snapshot().unwrap();
    assert_eq!(snap.len(), 1);
    assert!(l.take_snapshot().is_none(), "nothing changed since");
}

#[test]
fn golden_json_format_is_stable() {
    let file = CheckpointFile::V1 {
        checkpoints: vec![Checkpoint {
            id: FileId {
                dev: 2049,
                ino: 131,
            },
            head: Fingerprint {
                len: 256,
                hash: 12_345_678_901_234_567_890,
            },
            offset: 4096,
            path: "/var/log/app.log".into(),
            updated_ms: 1_764_270_000_000,
        }],
    };
    let golden = r#"{"version":"1","checkpoints":[{"dev":2049,"ino":131,"head":{"len":256,"hash":12345678901234567890},"offset":4096,"path":"/var/log/app.log","updated_ms":1764270000000}]}"#;
    assert_eq!(serde_json::to_string(&file).unwrap(), golden);
    assert_eq!(
        serde_json::from_str::<CheckpointFile>(golden).unwrap(),
        file
    );
    assert!(serde_json::from_str::<CheckpointFile>(&golden.replace("\"1\"", "\"9\"")).is_err());
}

#[test]
fn store_and_load_round_trip_and_recover_from_the_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(dir.path()).unwrap().is_empty());
    let cp = Checkpoint {
        id: id(3),
        head: Fingerprint::default(),
        offset: 42,
        path: "/x".into(),
        updated_ms: 1,
    };
    store(dir.path(), vec![cp.clone()]).unwrap();
    assert_eq!(load(dir.path()).unwrap(), vec![cp.clone()]);
    assert!(!dir.path().join(TMP_NAME).exists());
    // A crash after writing the temp file but before the rename, with a damaged main file.
    std::fs::copy(dir.path().join(FILE_NAME), dir.path().join(TMP_NAME)).unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"{garbage").unwrap();
    assert_eq!(load(dir.path()).unwrap(), vec![cp]);
    // Damaged with nothing to recover from: a clear error naming the file.
    std::fs::remove_file(dir.path().join(TMP_NAME)).unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains(FILE_NAME) && e.contains("corrupt"), "{e}");
}

#[tokio::test]
async fn a_failing_write_is_retried_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The temp file's name is taken by a directory: every write fails.
    std::fs::create_dir(dir.path().join(TMP_NAME)).unwrap();
    let ledger = Ledger::new(vec![]).shared();
    with(&ledger, |l| l.open(id(5), Fingerprint::default(), "/f", 3));
    let (tx, rx) = mpsc::unbounded_channel::<Vec<AckRef>>();
    drop(tx);
    let e = run(
        ledger.clone(),
        rx,
        dir.path().into(),
        Duration::from_secs(60),
        CancellationToken::new(),
        || {},
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("could not save positions"), "{e}");
    assert!(
        with(&ledger, |l| l.dirty),
        "still dirty: the next flush tries again"
    );
    std::fs::remove_dir(dir.path().join(TMP_NAME)).unwrap();
    let mut failing = true;
    flush(&ledger, dir.path(), &mut failing).await;
    assert!(!failing);
    assert_eq!(load(dir.path()).unwrap()[0].offset, 3);
}

#[tokio::test]
async fn checkpointer_writes_acknowledged_positions_on_drain() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(vec![]).shared();
    let (k, c) = with(&ledger, |l| {
        let k = l.open(id(5), Fingerprint::default(), "/f", 0);
        (k, l.register(k, 77, 2))
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(acks(c, 2)).unwrap();
    drop(tx);
    run(
        ledger.clone(),
        rx,
        dir.path().into(),
        Duration::from_secs(60),
        CancellationToken::new(),
        || {},
    )
    .await
    .unwrap();
    assert_eq!(with(&ledger, |l| l.acked(k)), Some(77));
    assert_eq!(load(dir.path()).unwrap()[0].offset, 77);
}
