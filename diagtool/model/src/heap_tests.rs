use super::*;
use crate::pprof::{Frame, Function, Line, Location, ProfileBuilder, Sample, ValueType};

fn heap_builder() -> ProfileBuilder {
    ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")])
}

fn alloc_frames() -> Vec<Frame> {
    vec![
        Frame::at("alloc::raw_vec::finish_grow", "alloc/src/raw_vec.rs", 480),
        Frame::named("_rjem_malloc"),
    ]
}

fn stack(own: &[Frame]) -> Vec<Frame> {
    let mut frames = vec![Frame::at("std::rt::lang_start", "std/src/rt.rs", 200)];
    frames.extend_from_slice(own);
    frames.extend(alloc_frames());
    frames
}

#[test]
fn stacks_through_one_line_add_up_and_sort_largest_first() {
    let mut builder = heap_builder();
    let main = Frame::at("app::main", "app/src/main.rs", 10);
    let cache = Frame::at("app::cache::fill", "app/src/cache.rs", 42);
    let pool = Frame::at("app::pool::grow", "app/src/pool.rs", 7);
    builder.add(&stack(&[main.clone(), cache.clone()]), &[2, 1000]);
    builder.add(
        &stack(&[
            main.clone(),
            Frame::at("app::other", "app/src/other.rs", 5),
            cache,
        ]),
        &[3, 3000],
    );
    builder.add(&stack(&[main, pool]), &[1, 2500]);
    let sites = sites(&builder.build()).expect("a heap profile");
    let summary: Vec<(&str, i64, i64)> = sites
        .iter()
        .map(|site| (site.site.as_str(), site.inuse_bytes, site.inuse_objects))
        .collect();
    assert_eq!(
        summary,
        [
            ("app/src/cache.rs:42", 4000, 5),
            ("app/src/pool.rs:7", 2500, 1)
        ]
    );
    assert_eq!(sites[0].function, "app::cache::fill");
    // The heaviest stack, outermost first, allocator frames included as detail.
    assert_eq!(
        sites[0].stack[0],
        "std::rt::lang_start at std/src/rt.rs:200"
    );
    assert_eq!(sites[0].stack[2], "app::other at app/src/other.rs:5");
    assert_eq!(
        sites[0].stack.last().map(String::as_str),
        Some("_rjem_malloc")
    );
}

#[test]
fn a_stack_only_in_dependencies_is_named_by_its_innermost_non_allocator_frame() {
    let mut builder = heap_builder();
    builder.add(
        &stack(&[Frame::at(
            "tokio::runtime::task::raw::new",
            "tokio-1.54.1/src/runtime/task/raw.rs",
            160,
        )]),
        &[1, 64],
    );
    builder.add(&[Frame::named("_rjem_malloc")], &[1, 32]);
    let sites = sites(&builder.build()).expect("a heap profile");
    assert_eq!(sites[0].site, "tokio-1.54.1/src/runtime/task/raw.rs:160");
    assert_eq!(sites[1].site, "_rjem_malloc");
}

#[test]
fn inlined_lines_count_innermost_first() {
    // One location holding an inlined own function inside a dependency's: pprof lists the
    // innermost line first; the own frame is the site.
    let strings = [
        "",
        INUSE_OBJECTS,
        "count",
        INUSE_SPACE,
        "bytes",
        "app::leak::hold",
        "app/src/leak.rs",
        "futures::map",
        "futures-util-0.3.31/src/map.rs",
    ];
    let profile = Profile {
        sample_type: vec![
            ValueType { r#type: 1, unit: 2 },
            ValueType { r#type: 3, unit: 4 },
        ],
        sample: vec![Sample {
            location_id: vec![1],
            value: vec![1, 512],
            label: Vec::new(),
        }],
        location: vec![Location {
            id: 1,
            line: vec![
                Line {
                    function_id: 1,
                    line: 77,
                    column: 0,
                },
                Line {
                    function_id: 2,
                    line: 30,
                    column: 0,
                },
            ],
            ..Location::default()
        }],
        function: vec![
            Function {
                id: 1,
                name: 5,
                system_name: 5,
                filename: 6,
                start_line: 0,
            },
            Function {
                id: 2,
                name: 7,
                system_name: 7,
                filename: 8,
                start_line: 0,
            },
        ],
        string_table: strings.iter().map(|s| (*s).to_owned()).collect(),
        ..Profile::default()
    };
    let sites = sites(&profile).expect("a heap profile");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].site, "app/src/leak.rs:77");
    assert_eq!(
        sites[0].stack,
        [
            "futures::map at futures-util-0.3.31/src/map.rs:30",
            "app::leak::hold at app/src/leak.rs:77"
        ]
    );
}

#[test]
fn a_profile_without_inuse_values_is_refused_naming_what_it_has() {
    let mut builder = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    builder.add(&[Frame::named("main")], &[1, 10]);
    let error = sites(&builder.build()).expect_err("a CPU profile");
    let text = error.to_string();
    assert!(text.contains("inuse_space"), "{text}");
    assert!(text.contains("samples, cpu"), "{text}");
}

#[test]
fn empty_samples_are_skipped() {
    let mut builder = heap_builder();
    builder.add(
        &stack(&[Frame::at("app::gone", "app/src/gone.rs", 1)]),
        &[0, 0],
    );
    assert!(sites(&builder.build()).expect("a heap profile").is_empty());
}

#[test]
fn own_frames_exclude_std_dependencies_and_the_allocator() {
    assert!(is_own_frame("app::main", Some("app/src/main.rs")));
    assert!(is_own_frame("app::main", Some("/home/me/app/src/main.rs")));
    assert!(!is_own_frame("std::thread", Some("std/src/thread/mod.rs")));
    assert!(!is_own_frame(
        "x",
        Some("/rustc/abc/library/core/src/ptr.rs")
    ));
    assert!(!is_own_frame(
        "x",
        Some("/root/.cargo/registry/src/idx/serde-1.0.0/src/de.rs")
    ));
    assert!(!is_own_frame(
        "x",
        Some(
            "tikv-jemalloc-sys-0.6.0+5.3.0-1-ge13ca993e8ccb9ba9847cc330696e02839f328f7/src/lib.rs"
        )
    ));
    assert!(!is_own_frame("app::main", None));
    assert!(!is_own_frame(
        "alloc::alloc::alloc",
        Some("app/src/main.rs")
    ));
    // What the global allocator expands to, and glibc's own files, are not the service's code.
    assert!(!is_own_frame(
        "__rustc::__rust_alloc",
        Some("diagtool/probe/src/heap_jemalloc.rs")
    ));
    assert!(!is_own_frame(
        "__libc_start_call_main",
        Some("./csu/../sysdeps/nptl/libc_start_call_main.h")
    ));
    // A workspace crate whose folder has a dash but no version is own code.
    assert!(is_own_frame(
        "leaky_service::main",
        Some("examples/leaky-service/src/main.rs")
    ));
}
