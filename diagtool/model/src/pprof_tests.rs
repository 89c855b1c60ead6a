use super::*;

fn cpu_profile() -> Profile {
    let mut builder = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")])
        .period("cpu", "nanoseconds", 10_101_010)
        .timing(1_764_270_000_000_000_000, 30_000_000_000);
    let main = Frame::at("app::main", "src/main.rs", 10);
    let work = Frame::at("app::work", "src/work.rs", 20);
    let hash = Frame::named("core::hash::sip::Hasher::write");
    builder.add(&[main.clone(), work.clone(), hash.clone()], &[3, 30]);
    builder.add(&[main.clone(), work.clone()], &[1, 10]);
    builder.add(&[main.clone(), work, hash], &[2, 20]);
    builder.add(&[main], &[0, 0]);
    builder.build()
}

#[test]
fn gzip_round_trip_keeps_every_field() {
    let profile = cpu_profile();
    let gz = encode_gzip(&profile);
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    assert_eq!(decode(&gz).expect("decodes"), profile);
    // Raw protobuf is accepted too.
    assert_eq!(decode(&profile.encode_to_vec()).expect("decodes"), profile);
}

#[test]
fn identical_stacks_merge_and_frames_are_interned() {
    let profile = cpu_profile();
    assert_eq!(profile.string_table[0], "");
    assert_eq!(profile.sample.len(), 3, "the repeated stack merged");
    assert_eq!(profile.sample[0].value, vec![5, 50]);
    assert_eq!(profile.location.len(), 3);
    assert_eq!(profile.function.len(), 3);
    // Leaf first on the wire.
    let leaf = profile.sample[0].location_id[0];
    let leaf_fn = profile.location[(leaf - 1) as usize].line[0].function_id;
    let name = profile.function[(leaf_fn - 1) as usize].name;
    assert_eq!(
        profile.string_table[name as usize],
        "core::hash::sip::Hasher::write"
    );
    assert_eq!(
        sample_type_name(&profile, 1).as_deref(),
        Some("cpu/nanoseconds")
    );
}

#[test]
fn folded_is_root_first_sorted_and_weighted() {
    let profile = cpu_profile();
    assert_eq!(
        to_folded(&profile),
        "app::main;app::work 1\napp::main;app::work;core::hash::sip::Hasher::write 5\n"
    );
    assert_eq!(
        to_folded_with(&profile, 1),
        "app::main;app::work 10\napp::main;app::work;core::hash::sip::Hasher::write 50\n"
    );
}

#[test]
fn separators_inside_names_are_neutralised() {
    let mut builder = ProfileBuilder::new(&[("tasks", "count")]);
    builder.add(&[Frame::named("f<[u8; 4]>"), Frame::named("a\nb")], &[2]);
    assert_eq!(to_folded(&builder.build()), "f<[u8, 4]>;a b 2\n");
}

#[test]
fn garbage_is_a_clear_error() {
    let err = decode(&[0x1f, 0x8b, 1, 2, 3]).expect_err("broken gzip");
    assert!(matches!(err, PprofError::Gzip(_)), "{err}");
    let err = decode(b"\xff\xff\xff\xff").expect_err("not protobuf");
    assert!(matches!(err, PprofError::Protobuf(_)), "{err}");
    assert!(err.to_string().contains("pprof"));
}

#[test]
fn dangling_ids_show_as_unknown_frames() {
    let mut profile = cpu_profile();
    profile.sample[0].location_id.push(999);
    let (frames, _) = &stacks(&profile)[0];
    assert_eq!(frames[0], "??");
}
