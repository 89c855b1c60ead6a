use super::*;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets freshly spawned or woken tasks run on the test's current-thread runtime.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn specs_parse_with_defaults_and_rates() {
    let spec: LeakSpec = "poll-spawn".parse().expect("parses");
    assert_eq!((spec.count, spec.period), (16, Duration::from_secs(30)));
    let spec: LeakSpec = "poll-spawn:4/1s".parse().expect("parses");
    assert_eq!((spec.count, spec.period), (4, Duration::from_secs(1)));
    let spec: LeakSpec = "unjoined-health-check:3/500ms".parse().expect("parses");
    assert_eq!((spec.count, spec.period), (3, Duration::from_millis(500)));
    let spec: LeakSpec = "file-add-spawn:5".parse().expect("parses");
    assert_eq!(spec.count, 5);
    assert_eq!(spec.to_string(), "file-add-spawn:5");
}

#[test]
fn bad_specs_name_the_value_and_the_problem() {
    for (bad, needle) in [
        ("poll-spam", "unknown scenario"),
        ("poll-spawn:x/1s", "COUNT"),
        ("poll-spawn:0/1s", "at least 1"),
        ("poll-spawn:2/1fortnight", "PERIOD"),
        ("poll-spawn:2/30", "PERIOD"),
        ("poll-spawn:2/0s", "longer than zero"),
    ] {
        let err = bad.parse::<LeakSpec>().expect_err(bad).to_string();
        assert!(err.contains(needle) && err.contains(bad), "{bad}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn poll_spawn_leaks_count_every_period_and_its_driver_stops() {
    let lab = LeakLab::new(vec!["poll-spawn:4/1s".parse().expect("parses")]);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(lab.run(stop.clone()));
    settle().await;
    let base = alive();
    for tick in 1..=3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(alive(), base + 4 * tick, "after tick {tick}");
    }
    stop.cancel();
    driver.await.expect("driver joins");
    // The leaked tasks outlive their driver: that is the leak.
    assert_eq!(alive(), base - 1 + 12);
}

#[tokio::test(start_paused = true)]
async fn fixed_poll_spawn_spawns_as_often_but_keeps_at_most_one_tick_alive() {
    let lab = LeakLab::new(vec!["poll-spawn:4/1s".parse().expect("parses")]).fixed(true);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(lab.run(stop.clone()));
    settle().await;
    let base = alive();
    for tick in 1..=5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        // Each tick answers the previous tick's four and spawns four new ones.
        assert_eq!(alive(), base + 4, "after tick {tick}");
    }
    stop.cancel();
    driver.await.expect("driver joins");
    settle().await;
    assert_eq!(
        alive(),
        base - 1,
        "the fix answers every parked task at stop"
    );
}

#[tokio::test(start_paused = true)]
async fn fixed_health_checks_answer_the_previous_ping_and_file_followers_end() {
    let lab = LeakLab::new(vec![
        "unjoined-health-check:2/10s".parse().expect("parses"),
        "file-add-spawn:3".parse().expect("parses"),
    ])
    .fixed(true);
    let base = alive();
    lab.sink_health_checked();
    settle().await;
    assert_eq!(
        alive(),
        base + 2,
        "this check's pings wait for their answer"
    );
    lab.sink_health_checked();
    settle().await;
    assert_eq!(alive(), base + 2, "the previous pings were answered");
    lab.answer_all();
    settle().await;
    assert_eq!(alive(), base);
    lab.file_added();
    settle().await;
    assert_eq!(alive(), base, "a follower whose channel closed ends");
}

#[tokio::test(start_paused = true)]
async fn health_check_leak_keeps_tasks_waiting_on_their_ping() {
    let lab = LeakLab::new(vec!["unjoined-health-check:2/10s".parse().expect("parses")]);
    let base = alive();
    lab.sink_health_checked();
    lab.sink_health_checked();
    settle().await;
    assert_eq!(alive(), base + 4);
    // Still parked much later: the reply senders are kept alive, never answered.
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(alive(), base + 4);
}

#[tokio::test]
async fn file_add_leaks_only_when_enabled() {
    let off = LeakLab::new(vec!["poll-spawn".parse().expect("parses")]);
    let base = alive();
    off.file_added();
    off.sink_health_checked();
    settle().await;
    assert_eq!(alive(), base, "disabled scenarios leak nothing");
    let on = LeakLab::new(vec!["file-add-spawn:3".parse().expect("parses")]);
    on.file_added();
    settle().await;
    assert_eq!(alive(), base + 3);
}

#[derive(Debug, Default)]
struct Added(std::sync::atomic::AtomicUsize);
impl SourceEvents for Added {
    fn file_added(&self, _: &str, _: u64) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn file_removed(&self, _: &str) {}
    fn files_active(&self, _: usize) {}
    fn lines_read(&self, _: u64, _: u64) {}
    fn lines_truncated(&self, _: &str, _: u64) {}
    fn file_truncated(&self, _: &str) {}
    fn read_error(&self, _: &str, _: &std::io::Error) {}
    fn docker_invalid(&self, _: &str, _: &str) {}
    fn cri_invalid(&self, _: &str, _: &str) {}
}

#[tokio::test]
async fn lab_events_pass_file_added_on_and_leak_per_file() {
    let lab = LeakLab::new(vec!["file-add-spawn:2".parse().expect("parses")]);
    assert!(!lab.has_timed());
    let events = LabEvents::new(lab, Added::default());
    let base = alive();
    events.file_added("/l/a.log", 0);
    events.file_added("/l/b.log", 0);
    settle().await;
    assert_eq!(alive(), base + 4);
    assert_eq!(events.inner.0.load(std::sync::atomic::Ordering::Relaxed), 2);
    let timed = LeakLab::new(vec!["unjoined-health-check".parse().expect("parses")]);
    assert!(timed.has_timed());
}

#[tokio::test]
async fn a_lab_with_nothing_timed_returns_at_once() {
    let lab = LeakLab::new(vec!["file-add-spawn".parse().expect("parses")]);
    tokio::time::timeout(Duration::from_secs(5), lab.run(CancellationToken::new()))
        .await
        .expect("run returns at once when no timed scenario is on");
}

#[test]
fn memory_cache_spec_is_kib_per_period() {
    let spec: LeakSpec = "memory-cache".parse().expect("parses");
    assert_eq!(spec.scenario, Scenario::MemoryCache);
    assert_eq!((spec.count, spec.period), (256, Duration::from_secs(1)));
    let spec: LeakSpec = "memory-cache:64/100ms".parse().expect("parses");
    assert_eq!((spec.count, spec.period), (64, Duration::from_millis(100)));
    assert_eq!(spec.to_string(), "memory-cache:64/100ms");
    let err = "memory-cache:0/1s".parse::<LeakSpec>().expect_err("zero");
    assert!(err.to_string().contains("memory-cache"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn memory_cache_grows_every_period_and_keeps_it_after_stop() {
    let lab = LeakLab::new(vec!["memory-cache:16/1s".parse().expect("parses")]);
    assert!(lab.has_timed());
    let stop = CancellationToken::new();
    let driver = tokio::spawn(lab.clone().run(stop.clone()));
    settle().await;
    assert_eq!(
        lab.memory_cache_bytes(),
        0,
        "nothing before the first period"
    );
    for tick in 1..=12 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(
            lab.memory_cache_bytes(),
            tick * 16 * 1024,
            "after tick {tick}"
        );
    }
    stop.cancel();
    driver.await.expect("driver joins");
    // Never evicted: the memory outlives the driver, as a leak does.
    assert_eq!(lab.memory_cache_bytes(), 12 * 16 * 1024);
}

#[tokio::test(start_paused = true)]
async fn fixed_memory_cache_inserts_as_often_but_stays_bounded() {
    let lab = LeakLab::new(vec!["memory-cache:16/1s".parse().expect("parses")]).fixed(true);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(lab.clone().run(stop.clone()));
    settle().await;
    for tick in 1..=20usize {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        let expected = tick.min(FIXED_CACHE_ENTRIES) * 16 * 1024;
        assert_eq!(lab.memory_cache_bytes(), expected, "after tick {tick}");
    }
    stop.cancel();
    driver.await.expect("driver joins");
}

#[test]
fn cache_entries_are_resident_non_zero_bytes() {
    let mut cache = BTreeMap::new();
    cache_insert(&mut cache, 4, None);
    cache_insert(&mut cache, 4, Some(1));
    assert_eq!(cache.len(), 1, "the bound evicts the oldest");
    let (key, entry) = cache.first_key_value().expect("an entry");
    assert_eq!(*key, 1, "the newest is kept");
    assert_eq!(entry.len(), 4096);
    assert!(entry.iter().all(|&b| b != 0));
}
