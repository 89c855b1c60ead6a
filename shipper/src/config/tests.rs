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
fn server_global_dump_is_off_unless_set() {
    assert!(!Config::parse(MIN, "t").unwrap().server.global_dump);
    let on = format!("[server]\nglobal_dump = true\n{MIN}");
    assert!(Config::parse(&on, "t").unwrap().server.global_dump);
    assert!(err(&format!("[server]\nglobal_dump = \"yes\"\n{MIN}")).contains("global_dump"));
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

fn src(body: &str) -> String {
    format!("[[sources]]\n{body}\n[sink]\ntype = \"stdout\"\n")
}

#[test]
fn kubernetes_source_defaults_to_var_log_pods_and_reserves_its_labels() {
    let c = Config::parse(&src("type = \"kubernetes\""), "t").unwrap();
    assert_eq!(c.sources[0].kind, SourceKind::Kubernetes);
    assert_eq!(c.sources[0].include, vec!["/var/log/pods/*_*_*/*/*.log"]);
    let c = Config::parse(&src("type = \"kubernetes\"\npath = \"/k/pods\""), "t").unwrap();
    assert_eq!(c.sources[0].include, vec!["/k/pods/*_*_*/*/*.log"]);
    for name in KUBERNETES_LABELS {
        let e = err(&src(&format!(
            "type = \"kubernetes\"\nlabels = {{ {name} = \"x\" }}"
        )));
        assert!(e.contains(&format!("sources[0].labels.{name}")), "{e}");
    }
    let k = SourceKind::Kubernetes;
    for ok in ["/p/ns_pod_uid/c/0.log", "/p/ns_pod_uid/c/12.log"] {
        assert!(k.follows(std::path::Path::new(ok)), "{ok}");
    }
    for rotated in [
        "/p/ns_pod_uid/c/0.log.20240501-120000",
        "/p/ns_pod_uid/c/0.log.20240501-120000.gz",
        "/p/ns_pod_uid/c/x.log",
        "/p/ns_pod_uid/c/.log",
    ] {
        assert!(!k.follows(std::path::Path::new(rotated)), "{rotated}");
    }
}

#[test]
fn multiline_on_any_source_with_defaults_and_errors_naming_the_key() {
    for kind in [
        "type = \"file\"\ninclude = [\"/l/*.log\"]",
        "type = \"docker\"\npath = \"/d\"",
        "type = \"kubernetes\"",
    ] {
        let c = Config::parse(
            &src(&format!("{kind}\nmultiline = {{ start = '^\\d{{4}}-' }}")),
            "t",
        )
        .unwrap();
        let m = c.sources[0].multiline.as_ref().unwrap();
        assert!(m.start.is_match(b"2024-05-01 x") && !m.start.is_match(b"\tat x"));
        assert_eq!(m.max_lines, DEFAULT_MULTILINE_MAX_LINES);
        assert_eq!(m.max_wait, DEFAULT_MULTILINE_MAX_WAIT);
    }
    let c = Config::parse(
        &src("type = \"file\"\ninclude = [\"/l/*.log\"]\nmultiline = { start = '^\\S', max_lines = 40, max_wait = \"500ms\" }"),
        "t",
    )
    .unwrap();
    let m = c.sources[0].multiline.as_ref().unwrap();
    assert_eq!((m.max_lines, m.max_wait), (40, Duration::from_millis(500)));
    assert!(
        Config::parse(MIN, "t").unwrap().sources[0]
            .multiline
            .is_none()
    );
    let f = "type = \"file\"\ninclude = [\"/l/*.log\"]\n";
    let e = err(&src(&format!("{f}multiline = {{ start = '^(unclosed' }}")));
    assert!(
        e.contains("sources[0].multiline.start") && e.contains("invalid regex"),
        "{e}"
    );
    let e = err(&src(&format!("{f}multiline = {{ start = '' }}")));
    assert!(e.contains("sources[0].multiline.start"), "{e}");
    let e = err(&src(&format!(
        "{f}multiline = {{ start = 'x', max_lines = 0 }}"
    )));
    assert!(e.contains("sources[0].multiline.max_lines"), "{e}");
    let e = err(&src(&format!(
        "{f}multiline = {{ start = 'x', max_wait = \"0s\" }}"
    )));
    assert!(e.contains("sources[0].multiline.max_wait"), "{e}");
    let e = err(&src(&format!("{f}multiline = {{ begin = 'x' }}")));
    assert!(e.contains("begin"), "{e}");
}

#[test]
fn labels_follow_lokis_rules_and_limits_naming_the_key() {
    let f = "type = \"file\"\ninclude = [\"/l/*.log\"]\n";
    for (labels, key) in [
        ("{ \"9lives\" = \"x\" }", "sources[0].labels.9lives"),
        ("{ __name__ = \"x\" }", "sources[0].labels.__name__"),
        ("{ \"app-name\" = \"x\" }", "sources[0].labels.app-name"),
        ("{ job = \"\" }", "sources[0].labels.job"),
    ] {
        let e = err(&src(&format!("{f}labels = {labels}")));
        assert!(e.contains(key), "{labels}: {e}");
    }
    let long = "v".repeat(2049);
    let e = err(&src(&format!("{f}labels = {{ job = \"{long}\" }}")));
    assert!(
        e.contains("sources[0].labels.job") && e.contains("2048"),
        "{e}"
    );
    // 14 static labels and `filename` make Loki's 15; one more is refused.
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("l{i} = \"v\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert!(Config::parse(&src(&format!("{f}labels = {{ {} }}", many(14))), "t").is_ok());
    let e = err(&src(&format!("{f}labels = {{ {} }}", many(15))));
    assert!(e.contains("sources[0].labels") && e.contains("15"), "{e}");
    let e = err(&src(&format!(
        "type = \"kubernetes\"\nlabels = {{ {} }}",
        many(12)
    )));
    assert!(e.contains("sources[0].labels"), "{e}");
}
