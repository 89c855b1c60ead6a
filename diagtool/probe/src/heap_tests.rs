use super::*;

fn sample() -> HeapProfile {
    HeapProfile {
        stacks: vec![
            HeapStack {
                frames: vec![
                    Frame::at("app::main", "app/src/main.rs", 3),
                    Frame::at("app::cache::fill", "app/src/cache.rs", 42),
                    Frame::at("alloc::raw_vec::finish_grow", "alloc/src/raw_vec.rs", 500),
                ],
                objects: 8,
                bytes: 3 << 20,
            },
            HeapStack {
                frames: vec![
                    Frame::at("app::main", "app/src/main.rs", 3),
                    Frame::at("app::small", "app/src/main.rs", 9),
                ],
                objects: 100,
                bytes: 6400,
            },
        ],
        sample_bytes: DEFAULT_SAMPLE_BYTES,
        time_ns: 5,
        truncated: 0,
    }
}

#[test]
fn pprof_has_the_interface_sample_types_period_and_default() {
    let profile = crate::pprof::decode(&sample().to_pprof()).expect("decodes");
    let name = |i: i64| profile.string_table[usize::try_from(i).expect("index")].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.r#type), name(t.unit)))
        .collect();
    assert_eq!(
        types,
        vec![("inuse_objects", "count"), ("inuse_space", "bytes")]
    );
    let period = profile.period_type.as_ref().expect("period type");
    assert_eq!((name(period.r#type), name(period.unit)), ("space", "bytes"));
    assert_eq!(profile.period, 524_288);
    assert_eq!(name(profile.default_sample_type), "inuse_space");
    let sites = crate::model::heap::sites(&profile).expect("a heap profile");
    assert_eq!(sites[0].site, "app/src/cache.rs:42");
    assert_eq!(sites[0].inuse_bytes, 3 << 20);
}

#[test]
fn text_lists_sites_largest_first_with_stacks() {
    let text = sample().to_text();
    assert!(
        text.starts_with("heap profile: 3.0 MiB in use, 108 objects"),
        "{text}"
    );
    let big = text.find("app/src/cache.rs:42").expect("big site");
    let small = text.find("app/src/main.rs:9").expect("small site");
    assert!(big < small, "{text}");
    assert!(
        text.contains("    app::main at app/src/main.rs:3"),
        "{text}"
    );
}

#[test]
fn flamegraph_draws_bytes_and_an_empty_profile() {
    let svg = String::from_utf8(sample().to_flamegraph("heap").expect("svg")).expect("utf8");
    assert!(
        svg.contains("<svg") && svg.contains("app::cache::fill"),
        "svg"
    );
    let empty = HeapProfile::default().to_flamegraph("heap").expect("svg");
    assert!(
        String::from_utf8(empty)
            .expect("utf8")
            .contains("no sampled memory")
    );
}

#[test]
fn sample_intervals_must_be_powers_of_two_in_range() {
    assert_eq!(check_sample_bytes(524_288).expect("valid"), 19);
    for bad in [0, 1000, 512, 1 << 31, 3 << 10] {
        let err = check_sample_bytes(bad).expect_err("invalid").to_string();
        assert!(
            err.contains(&bad.to_string()) && err.contains("power of two"),
            "{err}"
        );
    }
}

#[test]
fn human_bytes_reads_well() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 << 20), "3.0 MiB");
}

/// The probe's own tests run without the feature: the 501 path.
#[cfg(not(feature = "heap-profiling"))]
#[tokio::test]
async fn without_the_feature_every_call_says_how_to_build_it_in() {
    assert!(!is_built_in());
    let err = profile().await.expect_err("not built in");
    assert!(matches!(err, HeapError::NotBuilt));
    let text = err.to_string();
    assert!(
        text.starts_with("heap profiling is not built in:") && text.contains("heap-profiling"),
        "{text}"
    );
    assert!(matches!(sample_bytes(), Err(HeapError::NotBuilt)));
}

/// With the feature (`cargo test -p diagtool-probe --features heap-profiling`): a real profile
/// finds memory this test holds, at this file's line.
#[cfg(feature = "heap-profiling")]
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_real_profile_finds_memory_held_here() {
    #[inline(never)]
    fn hold() -> Vec<Vec<u8>> {
        (0..64).map(|_| vec![7u8; 256 << 10]).collect()
    }
    assert_eq!(sample_bytes().expect("active"), DEFAULT_SAMPLE_BYTES);
    let held = hold();
    let profile = profile().await.expect("profile");
    let sites = profile.sites();
    let ours = sites
        .iter()
        .find(|s| s.site.starts_with("diagtool/probe/src/heap_tests.rs:"))
        .unwrap_or_else(|| panic!("no site in heap_tests.rs: {sites:#?}"));
    // 16 MiB held; the estimate from ~32 samples is within a factor of two.
    assert!(
        (8 << 20..=32 << 20).contains(&ours.inuse_bytes),
        "{} bytes: {ours:?}",
        ours.inuse_bytes
    );
    drop(held);
}

#[test]
fn the_env_sets_the_sample_interval_and_bad_values_name_the_variable() {
    let env = |value: &'static str| {
        move |var: &str| (var == ENV_HEAP_SAMPLE_BYTES).then(|| value.to_owned())
    };
    let builder = crate::ProbeBuilder::new("s")
        .heap_sample_bytes_from(&env("1048576"))
        .expect("valid");
    assert_eq!(builder.heap_sample_bytes, Some(1 << 20));
    let err = crate::ProbeBuilder::new("s")
        .heap_sample_bytes_from(&env("1000"))
        .expect_err("not a power of two")
        .to_string();
    assert!(
        err.contains(ENV_HEAP_SAMPLE_BYTES) && err.contains("\"1000\""),
        "{err}"
    );
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    let err = crate::Probe::builder("s")
        .heap_sample_bytes(3000)
        .install(&mut runtime)
        .expect_err("a bad interval is refused at install");
    assert!(err.to_string().contains("3000"), "{err}");
}
