use super::*;

#[test]
fn paths_shorten_to_crate_version() {
    assert_eq!(
        short_path(
            "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hyper-1.7.0/src/client/conn.rs"
        ),
        "hyper-1.7.0/src/client/conn.rs"
    );
    assert_eq!(
        short_path("/rustc/17067e9ac6d7e98f18d4a4f7d2a8d5e3c1d8b6a4/library/std/src/thread/mod.rs"),
        "std/src/thread/mod.rs"
    );
    assert_eq!(
        short_path("/home/u/.cargo/git/checkouts/tokio-8a3e6a9f/1a2b3c4/tokio/src/task/spawn.rs"),
        "tokio/src/task/spawn.rs"
    );
    assert_eq!(
        short_path("shipper/src/leaklab.rs"),
        "shipper/src/leaklab.rs"
    );
    assert_eq!(short_path("/opt/app/src/main.rs"), "/opt/app/src/main.rs");
}

#[test]
fn two_location_statics_of_one_place_are_one_site() {
    // One place can have several `Location` statics (generic instantiations, codegen units);
    // which ones the compiler merges is not ours to choose, so two addresses stand for them.
    let place = Location::caller();
    let registry = TaskRegistry::new();
    let first = registry.inner.intern(0x1000, place);
    let second = registry.inner.intern(0x2000, place);
    assert!(
        std::ptr::eq(first, second),
        "one record for one site string"
    );
    first.add_spawned();
    second.add_spawned();
    let sites = registry.sites();
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].site, format_site(place));
    assert_eq!(sites[0].live(), 2);
    assert_eq!(registry.totals().spawned, 2);
}

#[test]
fn site_ages_give_oldest_and_median_per_site_from_the_shards() {
    let registry = TaskRegistry::new();
    let (here, there) = (Location::caller(), Location::caller());
    let now = coarse_now_ns();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let handles: Vec<_> = rt.block_on(async { (0..5).map(|_| tokio::spawn(async {})).collect() });
    // Four tasks at `here`, born 1..=4 s ago, one named; one at `there`, born 10 s ago.
    for (index, handle) in handles.iter().enumerate() {
        let (location, age_s) = if index < 4 {
            (here, index as u64 + 1)
        } else {
            (there, 10)
        };
        let site = registry.inner.site(location);
        let entry = Entry {
            site,
            born_ns: now - age_s * 1_000_000_000,
            name: (index == 0).then_some(Cow::Borrowed("first")),
        };
        lock(registry.inner.shard(handle.id())).insert(handle.id(), entry);
    }
    let mut ages = registry.site_ages();
    ages.sort_by_key(|a| std::cmp::Reverse(a.live));
    assert_eq!(ages.len(), 2, "{ages:?}");
    assert_eq!(ages[0].site, format_site(here));
    assert_eq!(ages[0].live, 4);
    assert!((ages[0].oldest_s - 4.0).abs() < 0.5, "{ages:?}");
    assert!((ages[0].median_s - 2.5).abs() < 0.5, "{ages:?}");
    assert_eq!(ages[0].live_names, vec!["first".to_owned()]);
    assert!((ages[1].oldest_s - 10.0).abs() < 0.5, "{ages:?}");
    assert!((ages[1].median_s - 10.0).abs() < 0.5, "{ages:?}");
}

#[test]
fn shards_spread_sequential_ids() {
    let registry = TaskRegistry::new();
    let mut used = std::collections::HashSet::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for _ in 0..256 {
            let handle = tokio::spawn(async {});
            used.insert(registry.inner.shard(handle.id()) as *const _ as usize);
            handle.await.expect("join");
        }
    });
    assert!(used.len() > SHARDS / 2, "only {} shards used", used.len());
}

#[test]
fn raw_ids_are_the_ids_tokio_prints() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for _ in 0..100 {
            let id = tokio::spawn(async {}).id();
            assert_eq!(raw_id(id).to_string(), id.to_string());
            assert_eq!(id_from_raw(raw_id(id)), id);
        }
    });
}

/// Real task ids (tokio's counter is process-wide, so they are spread like a service's).
fn ids(count: usize) -> Vec<Id> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async { (0..count).map(|_| tokio::spawn(async {}).id()).collect() })
}

#[test]
fn set_name_moves_a_slot_task_to_the_overflow_map_and_its_terminate_still_counts() {
    let registry = TaskRegistry::new();
    let place = Location::caller();
    let tasks = ids(3);
    for id in &tasks {
        registry.record_spawn(*id, place);
    }
    assert_eq!(
        registry.inner.overflowed.load(Ordering::SeqCst),
        0,
        "all in slots"
    );
    registry.set_name(tasks[1], "moved");
    assert_eq!(registry.inner.overflowed.load(Ordering::SeqCst), 1);
    let live = registry.live_tasks();
    assert_eq!(live.len(), 3, "{live:?}");
    let named = live.iter().find(|t| t.id == tasks[1]).expect("named task");
    assert_eq!(named.name.as_deref(), Some("moved"));
    assert!(named.age_s < 5.0, "{named:?}");
    assert_eq!(registry.site_ages()[0].live_names, vec!["moved".to_owned()]);
    for id in &tasks {
        registry.record_terminate(*id);
    }
    let totals = registry.totals();
    assert_eq!((totals.spawned, totals.terminated, totals.live), (3, 3, 0));
    assert!(registry.live_tasks().is_empty());
    assert_eq!(registry.inner.overflowed.load(Ordering::SeqCst), 0);
    // A name for a task that ended changes nothing.
    registry.set_name(tasks[0], "late");
    assert!(registry.live_tasks().is_empty());
    assert_eq!(registry.inner.overflowed.load(Ordering::SeqCst), 0);
}

#[test]
fn tasks_past_a_full_bucket_overflow_and_are_still_listed_and_counted() {
    let registry = TaskRegistry::new();
    let place = Location::caller();
    // More live tasks than the table has slots: the rest must go to the overflow map.
    let tasks = ids(slots::WAYS * slots::BUCKETS + 500);
    for id in &tasks {
        registry.record_spawn(*id, place);
    }
    assert!(registry.inner.overflowed.load(Ordering::SeqCst) >= 500);
    assert_eq!(registry.live_tasks().len(), tasks.len());
    assert_eq!(registry.site_ages()[0].live, tasks.len() as u64);
    for id in &tasks {
        registry.record_terminate(*id);
    }
    assert_eq!(registry.totals().live, 0);
    assert_eq!(registry.totals().terminated, tasks.len() as u64);
    assert!(registry.live_tasks().is_empty());
    assert_eq!(registry.inner.overflowed.load(Ordering::SeqCst), 0);
}
