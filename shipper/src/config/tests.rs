use super::*;

fn err(text: &str) -> String {
    Config::parse(text, "test.toml").unwrap_err().to_string()
}

const MIN: &str =
    "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"stdout\"\n";

#[test]
fn builtin_default_parses_and_tails_logs_into_a_file_sink() {
    let c = Config::builtin().unwrap();
    assert_eq!(c.sources.len(), 1);
    assert!(
        c.sources[0].include[0].ends_with("/logs/**/*.log"),
        "{:?}",
        c.sources[0].include
    );
    assert!(matches!(&c.sink.kind, SinkKind::File { path } if path.ends_with("data/out.jsonl")));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(c.sources[0].max_line_bytes, 256 * 1024);
}

#[test]
fn durations_follow_the_one_grammar_and_errors_name_the_key() {
    let c = Config::parse(&format!("shutdown_timeout = \"1.5s\"\n{MIN}"), "t").unwrap();
    assert_eq!(c.shutdown_timeout, Duration::from_millis(1500));
    for bad in ["5", "5x", "soon"] {
        let e = err(&format!("shutdown_timeout = \"{bad}\"\n{MIN}"));
        assert!(
            e.contains("shutdown_timeout") && e.contains(&format!("'{bad}'")),
            "{e}"
        );
    }
}

#[test]
fn errors_name_the_key_and_the_file() {
    let e = err(&format!("{MIN}batch_max_wait = \"soon\"\n"));
    assert!(
        e.contains("test.toml") && e.contains("sink.batch_max_wait") && e.contains("soon"),
        "{e}"
    );
    let e = err(&format!("bogus_key = 1\n{MIN}"));
    assert!(e.contains("test.toml") && e.contains("bogus_key"), "{e}");
    let e =
        err("[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"kafka\"\n");
    assert!(e.contains("sink.type") && e.contains("kafka"), "{e}");
    let e = err(
        "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\nread_from = \"middle\"\n[sink]\ntype = \"stdout\"\n",
    );
    assert!(e.contains("sources[0].read_from"), "{e}");
    let e =
        err("[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\n");
    assert!(e.contains("sink.url"), "{e}");
    let e = err(&format!("{MIN}batch_max_bytes = \"big\"\n"));
    assert!(e.contains("batch_max_bytes"), "{e}");
    let e = err(
        "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\nlables = {}\n[sink]\ntype = \"stdout\"\n",
    );
    assert!(e.contains("lables"), "{e}");
    let e =
        err("[[sources]]\ntype = \"file\"\ninclude = [\"/l/[.log\"]\n[sink]\ntype = \"stdout\"\n");
    assert!(e.contains("sources[0].include"), "{e}");
    let e = err(&format!("[server]\nmain_addr = \"localhost\"\n{MIN}"));
    assert!(e.contains("server.main_addr"), "{e}");
}

#[test]
fn docker_source_globs_container_logs_and_reserves_its_labels() {
    let c = Config::parse(
        "[[sources]]\ntype = \"docker\"\npath = \"/var/lib/docker/containers\"\n[sink]\ntype = \"stdout\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(
        c.sources[0].include,
        vec!["/var/lib/docker/containers/*/*-json.log"]
    );
    let e = err(
        "[[sources]]\ntype = \"docker\"\npath = \"/d\"\nlabels = { stream = \"x\" }\n[sink]\ntype = \"stdout\"\n",
    );
    assert!(e.contains("sources[0].labels.stream"), "{e}");
}

#[test]
fn loki_sink_resolves_with_defaults() {
    let c = Config::parse(
        "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\nurl = \"http://127.0.0.1:3100/\"\ntenant = \"\"\nencoding = \"protobuf\"\n",
        "t",
    )
    .unwrap();
    match c.sink.kind {
        SinkKind::Loki {
            url,
            tenant,
            encoding,
            ..
        } => {
            assert_eq!(url, "http://127.0.0.1:3100");
            assert_eq!(tenant, None);
            assert_eq!(encoding, Encoding::Protobuf);
        }
        other => panic!("{other:?}"),
    }
}
