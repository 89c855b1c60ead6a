use std::io::Write;

use super::*;

const JSON: Option<&str> = Some("application/json");
const PROTO: Option<&str> = Some("application/x-protobuf");

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn proto_body(streams: Vec<StreamAdapter>) -> Vec<u8> {
    encode_protobuf_snappy(&PushRequest { streams })
}

fn proto_entry(ts_ns: i64, line: &str) -> EntryAdapter {
    EntryAdapter {
        timestamp: Some(Timestamp::from_ns(ts_ns)),
        line: line.to_owned(),
        structured_metadata: vec![],
    }
}

const HOSTILE: &[&str] = &[
    "plain",
    "quote \" and backslash \\ and \\\"",
    "tab\there",
    "new\nline and cr\r",
    "non-ascii: é ü 日本語 🚀",
    "",
    "control \u{1} \u{1b}[31m \u{7f} \u{85}",
    "{braces=\"x\", y}",
];

#[test]
fn label_strings_round_trip_hostile_values() {
    for value in HOSTILE.iter().filter(|v| !v.is_empty()) {
        let text = format_labels([("a", "1"), ("value", *value)]);
        let parsed = parse_labels(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed, labels(&[("a", "1"), ("value", value)]), "{text}");
    }
}

#[test]
fn label_format_matches_loki_syntax() {
    assert_eq!(
        format_labels([("job", "a\"b\\c\nd\te")]),
        r#"{job="a\"b\\c\nd\te"}"#
    );
    assert_eq!(format_labels([("c", "\u{1}")]), r#"{c="\x01"}"#);
}

#[test]
fn label_parser_accepts_loki_variants() {
    let want = labels(&[("a", "b"), ("c", "d")]);
    for text in [
        r#"{a="b",c="d"}"#,
        r#"  { a = "b" , c = "d" , }  "#,
        r#"{c="d", a="b"}"#,
        r#"{a="\x62", c="\u0064"}"#,
        r#"{a="b", c="d", e=""}"#,
    ] {
        assert_eq!(parse_labels(text).unwrap(), want, "{text}");
    }
    assert_eq!(parse_labels(r#"{a="\U0001F680"}"#).unwrap()["a"], "🚀");
}

#[test]
fn label_parser_rejects_bad_label_strings() {
    type Check = fn(&LabelsError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("{}", |e| *e == LabelsError::Empty),
        (r#"{a=""}"#, |e| *e == LabelsError::Empty),
        (
            r#"{1a="b"}"#,
            |e| matches!(e, LabelsError::InvalidName(n) if n == "1a"),
        ),
        (
            r#"{a="b", a="c"}"#,
            |e| matches!(e, LabelsError::Duplicate(n) if n == "a"),
        ),
        (r#"a="b""#, |e| {
            matches!(e, LabelsError::Syntax { at: 0, .. })
        }),
        (r#"{a="b""#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a="b}"#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a=b}"#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a="\q"}"#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a="\x8f"}"#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a="\uD800"}"#, |e| {
            matches!(e, LabelsError::Syntax { .. })
        }),
        (r#"{a="b"} x"#, |e| matches!(e, LabelsError::Syntax { .. })),
        (r#"{a-b="c"}"#, |e| matches!(e, LabelsError::Syntax { .. })),
    ];
    for (text, check) in cases {
        let err = parse_labels(text).expect_err(text);
        assert!(check(&err), "{text}: {err:?}");
    }
}

#[test]
fn label_names_follow_prometheus_rules() {
    for ok in ["a", "_", "job", "A_1", "__name__"] {
        assert!(is_valid_label_name(ok), "{ok}");
    }
    for bad in ["", "1a", "a-b", "a.b", "é", "a b"] {
        assert!(!is_valid_label_name(bad), "{bad}");
    }
}

#[test]
fn timestamps_split_and_join() {
    for ns in [
        0,
        1,
        999_999_999,
        1_700_000_000_123_456_789,
        -1,
        -1_000_000_001,
    ] {
        let ts = Timestamp::from_ns(ns);
        assert!((0..1_000_000_000).contains(&ts.nanos));
        assert_eq!(ts.to_ns(), Some(ns));
    }
    assert_eq!(
        Timestamp {
            seconds: 0,
            nanos: -1
        }
        .to_ns(),
        None
    );
    assert_eq!(
        Timestamp {
            seconds: i64::MAX,
            nanos: 0
        }
        .to_ns(),
        None
    );
}

#[test]
fn json_ref_encoding_round_trips_through_decode() {
    let l1 = labels(&[("job", "app"), ("file", "/var/log/\"x\".log")]);
    let l2 = labels(&[("job", "other")]);
    let e1: Vec<(i64, String)> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, l)| (1_700_000_000_000_000_000 + i as i64, (*l).to_owned()))
        .collect();
    let e2 = vec![(i64::MIN + 1, "old".to_owned()), (-5, "neg".to_owned())];
    let refs = [
        JsonStreamRef {
            labels: &l1,
            entries: &e1,
        },
        JsonStreamRef {
            labels: &l2,
            entries: &e2,
        },
    ];
    let body = serde_json::to_vec(&JsonPushRef { streams: &refs }).unwrap();
    for (encoding, body) in [(None, body.clone()), (Some("gzip"), gzip(&body))] {
        let streams = decode_push(JSON, encoding, &body).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].labels, l1);
        let got: Vec<(i64, String)> = streams[0]
            .entries
            .iter()
            .map(|e| (e.ts_ns, e.line.clone()))
            .collect();
        assert_eq!(got, e1);
        assert_eq!(streams[1].entries[0].ts_ns, i64::MIN + 1);
        assert_eq!(streams[1].entries[1].ts_ns, -5);
    }
}

#[test]
fn json_owned_form_round_trips_with_metadata() {
    let push = JsonPush {
        streams: vec![JsonStream {
            stream: vec![("job".into(), "app".into())],
            values: vec![
                JsonValue {
                    ts: "5".into(),
                    line: "a".into(),
                    structured_metadata: vec![],
                },
                JsonValue {
                    ts: "6".into(),
                    line: "b".into(),
                    structured_metadata: vec![("trace_id".into(), "t1".into())],
                },
            ],
        }],
    };
    let text = serde_json::to_string(&push).unwrap();
    assert_eq!(
        text,
        r#"{"streams":[{"stream":{"job":"app"},"values":[["5","a"],["6","b",{"trace_id":"t1"}]]}]}"#
    );
    assert_eq!(serde_json::from_str::<JsonPush>(&text).unwrap(), push);
    let streams = decode_push(JSON, None, text.as_bytes()).unwrap();
    assert_eq!(
        streams[0].entries[1].structured_metadata,
        vec![("trace_id".to_owned(), "t1".to_owned())]
    );
}

#[test]
fn protobuf_round_trips_hostile_lines_and_labels() {
    let stream_labels = labels(&[("job", "app"), ("path", "C:\\logs\\\"a\"\n")]);
    let text = format_labels(stream_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut entries: Vec<EntryAdapter> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, l)| proto_entry(i as i64 - 3, l))
        .collect();
    entries[0].structured_metadata = vec![LabelPairAdapter {
        name: "k".into(),
        value: "v".into(),
    }];
    let body = proto_body(vec![StreamAdapter {
        labels: text,
        entries,
        hash: 0,
    }]);
    for ct in [PROTO, None, Some("application/x-protobuf; charset=binary")] {
        for ce in [None, Some("snappy")] {
            let streams = decode_push(ct, ce, &body).unwrap();
            assert_eq!(streams[0].labels, stream_labels);
            let lines: Vec<&str> = streams[0].entries.iter().map(|e| e.line.as_str()).collect();
            assert_eq!(lines, HOSTILE);
            assert_eq!(streams[0].entries[0].ts_ns, -3);
            assert_eq!(
                streams[0].entries[0].structured_metadata,
                vec![("k".to_owned(), "v".to_owned())]
            );
        }
    }
}

fn json_err(body: &str) -> PushError {
    decode_push(JSON, None, body.as_bytes()).expect_err(body)
}

#[test]
fn json_rejections() {
    assert!(matches!(json_err("{"), PushError::Json(_)));
    assert!(matches!(json_err(r#"{"streams":{}}"#), PushError::Json(_)));
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{"job":"a"},"values":[[1700000000,"x"]]}]}"#),
        PushError::Json(_)
    ));
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{"job":"a"},"values":[["1"]]}]}"#),
        PushError::Json(_)
    ));
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{"job":"a"},"values":[["1","x",{},4]]}]}"#),
        PushError::Json(_)
    ));
    assert_eq!(
        json_err(r#"{"streams":[{"stream":{"job":"a"},"values":[["12s","x"]]}]}"#),
        PushError::Timestamp("12s".into())
    );
    assert_eq!(
        json_err(r#"{"streams":[{"stream":{"job":"a"},"values":[["","x"]]}]}"#),
        PushError::Timestamp(String::new())
    );
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{},"values":[]}]}"#),
        PushError::Labels {
            reason: LabelsError::Empty,
            ..
        }
    ));
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{"bad-name":"x"},"values":[]}]}"#),
        PushError::Labels { reason: LabelsError::InvalidName(n), .. } if n == "bad-name"
    ));
    assert!(matches!(
        json_err(r#"{"streams":[{"stream":{"a":"x","a":"y"},"values":[]}]}"#),
        PushError::Labels { reason: LabelsError::Duplicate(n), .. } if n == "a"
    ));
    let mut invalid = br#"{"streams":[{"stream":{"a":"x"},"values":[["1","#.to_vec();
    let bad_at = invalid.len();
    invalid.extend_from_slice(b"\xff\xfe\"]]}]}");
    assert_eq!(
        decode_push(JSON, None, &invalid),
        Err(PushError::InvalidUtf8(bad_at))
    );
}

#[test]
fn protobuf_rejections() {
    let good_entry = || proto_entry(1, "x");
    // Not snappy at all.
    assert!(matches!(
        decode_push(PROTO, None, b"\xff\xff\xff\xff\xff\xff"),
        Err(PushError::Snappy(_))
    ));
    // Valid snappy around garbage protobuf.
    let garbage = snap::raw::Encoder::new()
        .compress_vec(b"\x0a\xff\xff\xff")
        .unwrap();
    assert!(matches!(
        decode_push(PROTO, None, &garbage),
        Err(PushError::Protobuf(_))
    ));
    // Unsnappied protobuf is refused too (Loki always expects snappy).
    let raw = prost::Message::encode_to_vec(&PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{a="b"}"#.into(),
            entries: vec![good_entry()],
            hash: 0,
        }],
    });
    assert!(decode_push(PROTO, None, &raw).is_err());
    // Invalid UTF-8 in a line: hand-built, since prost only encodes valid strings.
    let mut line_field = vec![0x12, 2, 0xff, 0xfe];
    let mut entry = vec![0x0a, 2, 0x08, 1];
    entry.append(&mut line_field);
    let mut stream = vec![0x0a, 7];
    stream.extend_from_slice(br#"{a="b"}"#);
    stream.push(0x12);
    stream.push(entry.len() as u8);
    stream.extend_from_slice(&entry);
    let mut req = vec![0x0a, stream.len() as u8];
    req.extend_from_slice(&stream);
    let body = snap::raw::Encoder::new().compress_vec(&req).unwrap();
    assert!(matches!(
        decode_push(PROTO, None, &body),
        Err(PushError::Protobuf(_))
    ));
    // The same bytes with a valid line decode: the hand-built layout is right.
    let fixed: Vec<u8> = req
        .iter()
        .map(|b| if *b == 0xff || *b == 0xfe { b'x' } else { *b })
        .collect();
    let body = snap::raw::Encoder::new().compress_vec(&fixed).unwrap();
    assert_eq!(
        decode_push(PROTO, None, &body).unwrap()[0].entries[0].line,
        "xx"
    );

    let with = |labels: &str, entries| {
        decode_push(
            PROTO,
            None,
            &proto_body(vec![StreamAdapter {
                labels: labels.into(),
                entries,
                hash: 0,
            }]),
        )
    };
    assert!(matches!(
        with("{}", vec![good_entry()]),
        Err(PushError::Labels {
            reason: LabelsError::Empty,
            ..
        })
    ));
    assert!(matches!(
        with(r#"{a="b""#, vec![good_entry()]),
        Err(PushError::Labels {
            reason: LabelsError::Syntax { .. },
            ..
        })
    ));
    assert!(matches!(
        with(
            r#"{a="b"}"#,
            vec![EntryAdapter {
                timestamp: None,
                line: "x".into(),
                structured_metadata: vec![]
            }]
        ),
        Err(PushError::MissingTimestamp(_))
    ));
    assert!(matches!(
        with(
            r#"{a="b"}"#,
            vec![EntryAdapter {
                timestamp: Some(Timestamp {
                    seconds: 1,
                    nanos: 2_000_000_000
                }),
                line: "x".into(),
                structured_metadata: vec![]
            }]
        ),
        Err(PushError::Timestamp(_))
    ));
}

#[test]
fn header_rejections() {
    let body = br#"{"streams":[]}"#;
    assert_eq!(decode_push(JSON, None, body), Ok(vec![]));
    assert_eq!(
        decode_push(Some("application/json; charset=utf-8"), None, body),
        Ok(vec![])
    );
    assert_eq!(
        decode_push(Some("text/plain"), None, body),
        Err(PushError::UnsupportedContentType("text/plain".into()))
    );
    assert_eq!(
        decode_push(JSON, Some("br"), body),
        Err(PushError::UnsupportedContentEncoding("br".into()))
    );
    assert!(matches!(
        decode_push(JSON, Some("gzip"), body),
        Err(PushError::Compression {
            encoding: "gzip",
            ..
        })
    ));
    let mut corrupt = gzip(br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x"]]}]}"#);
    let n = corrupt.len();
    corrupt[n - 12] ^= 0xff;
    assert!(matches!(
        decode_push(JSON, Some("gzip"), &corrupt),
        Err(PushError::Compression { .. })
    ));
    // Deflate is accepted like Loki does.
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body).unwrap();
    assert_eq!(
        decode_push(JSON, Some("deflate"), &enc.finish().unwrap()),
        Ok(vec![])
    );
}

#[test]
fn error_messages_quote_the_input() {
    let msg = PushError::UnsupportedContentType("text/plain".into()).to_string();
    assert!(
        msg.contains("\"text/plain\"") && msg.contains("application/json"),
        "{msg}"
    );
    let msg = PushError::Timestamp("12s".into()).to_string();
    assert!(msg.contains("\"12s\""), "{msg}");
}
