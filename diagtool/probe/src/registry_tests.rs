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
    // One live task recorded through each record.
    let now = registry.inner.clock.now();
    for (id, site) in ids(2).into_iter().zip([first, second]) {
        registry.inner.overflow(
            id,
            Entry {
                site,
                born: now,
                name: None,
                in_slot: false,
            },
        );
    }
    let sites = registry.sites();
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].site, format_site(place));
    assert_eq!(sites[0].live(), 2);
    assert_eq!(registry.totals().spawned, 2);
}

#[test]
fn spawned_counts_are_derived_from_the_ends_and_the_scan_and_never_go_back() {
    let (registry, place, tasks) = recorded(4);
    registry.set_name(tasks[3], "named");
    let site = || registry.sites().pop().expect("one site");
    assert_eq!(
        (site().spawned, site().terminated, site().live()),
        (4, 0, 4)
    );
    registry.record_terminate(tasks[0]);
    registry.record_terminate(tasks[3]);
    assert_eq!(
        (site().spawned, site().terminated, site().live()),
        (4, 2, 2)
    );
    // A task freed before its end is counted (as a reader can find one between the two stores
    // of its terminate) makes the derived count fall short; the count reported before stands.
    let record = registry.inner.site(place);
    free_slot(&registry, tasks[1]);
    assert_eq!((site().spawned, site().terminated), (4, 2), "not 2 + 1 = 3");
    assert!(lanes::count_ended(
        registry.inner.key,
        &registry.inner.lanes,
        record.index
    ));
    assert_eq!(
        (site().spawned, site().terminated, site().live()),
        (4, 3, 1)
    );
    registry.record_terminate(tasks[2]);
    assert_eq!(
        (site().spawned, site().terminated, site().live()),
        (4, 4, 0)
    );
}

#[test]
fn site_ages_give_oldest_and_median_per_site_from_the_shards() {
    // The coarse clock counts from boot: spawn times can be set in the past.
    let registry = TaskRegistry::with_clock(SpawnClock::coarse());
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
            born: now - age_s * 1_000_000_000,
            name: (index == 0).then_some(Cow::Borrowed("first")),
            in_slot: false,
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

/// A registry with `count` real task ids recorded as spawned at one place.
fn recorded(count: usize) -> (TaskRegistry, &'static Location<'static>, Vec<Id>) {
    let registry = TaskRegistry::new();
    let place = Location::caller();
    let tasks = ids(count);
    for id in &tasks {
        registry.record_spawn(*id, place);
    }
    (registry, place, tasks)
}

/// Frees a task's slot as its terminate does first, without counting its end.
fn free_slot(registry: &TaskRegistry, task: Id) {
    let raw = raw_id(task);
    assert!(
        registry
            .inner
            .lanes
            .remove(registry.inner.key, raw)
            .is_some(),
        "{task} was in a slot"
    );
}

/// Entries in the overflow map: tasks there and names kept for slot tasks.
fn kept_names(registry: &TaskRegistry) -> usize {
    registry.inner.shards.iter().map(|s| lock(s).len()).sum()
}

#[test]
fn set_name_names_a_slot_task_in_place_and_its_terminate_drops_the_name() {
    let (registry, _, tasks) = recorded(3);
    registry.set_name(tasks[1], "named");
    assert_eq!(
        registry.inner.overflowed.load(Ordering::SeqCst),
        0,
        "the task stays in its slot"
    );
    let raw = raw_id(tasks[1]);
    assert!(registry.inner.lanes.contains(registry.inner.key, raw));
    let live = registry.live_tasks();
    assert_eq!(live.len(), 3, "listed once: {live:?}");
    let named = live.iter().find(|t| t.id == tasks[1]).expect("named task");
    assert_eq!(named.name.as_deref(), Some("named"));
    assert!(named.age_s < 5.0, "{named:?}");
    let ages = registry.site_ages();
    assert_eq!(
        (ages[0].live, ages[0].live_names.clone()),
        (3, vec!["named".to_owned()])
    );
    assert_eq!(registry.totals().live, 3);
    for id in &tasks {
        registry.record_terminate(*id);
    }
    let totals = registry.totals();
    assert_eq!((totals.spawned, totals.terminated, totals.live), (3, 3, 0));
    assert!(registry.live_tasks().is_empty());
    assert_eq!(kept_names(&registry), 0, "the terminate dropped the name");
    // A name for a task that ended changes nothing.
    registry.set_name(tasks[0], "late");
    assert!(registry.live_tasks().is_empty());
    assert_eq!(kept_names(&registry), 0);
}

#[test]
fn a_name_whose_mark_the_terminate_missed_is_swept_by_the_next_read() {
    let registry = TaskRegistry::new();
    let place = Location::caller();
    let task = ids(1)[0];
    registry.record_spawn(task, place);
    // As if `set_name` marked the slot right after the terminate read its meta: the slot is
    // freed, the name stays behind.
    registry.set_name(task, "orphan");
    free_slot(&registry, task);
    assert_eq!(kept_names(&registry), 1);
    assert!(registry.live_tasks().is_empty(), "never listed as a task");
    assert_eq!(kept_names(&registry), 0, "swept");
    assert_eq!(registry.totals().live, 0);
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

#[test]
fn the_hooks_keep_their_registry_on_a_cache_line_of_its_own() {
    // tokio moves each hook into an `Arc` and clones the terminate hook's into every task: its
    // reference counts change at every spawn and every end, on every worker. With the hook
    // aligned to a line, the counts' line holds nothing else (measured: a 32-byte hook shared its
    // line with whatever malloc put beside it, and the registry's cost moved by 7% of a 2-worker
    // spawn+join with the length of the program's name).
    let registry = TaskRegistry::new();
    assert!(std::mem::align_of_val(&registry.spawn_hook()) >= 64);
    assert!(std::mem::align_of_val(&registry.terminate_hook()) >= 64);
}
