//! Parser tests: the contract's example, every real Sarracenia sample, each kind of bad input,
//! and property round trips (encode a record, parse it back, get the same record).

use super::*;
use proptest::prelude::*;

fn s(v: &str) -> HeaderValue {
    HeaderValue::Str(v.to_string())
}

fn spec_headers() -> Headers {
    [
        ("source", "ec_cmc"),
        ("from_cluster", "ddsr.cmc"),
        ("flow", "exp13"),
        ("parts", "1,457,1,0,0"),
        ("message", "Downloaded"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), s(v)))
    .collect()
}

const SPEC_KEY: &str = "v02.log.NRDPS.GIF.NRDPS_HiRes_000.gif";
const SPEC_BODY: &str = "20150601135800.345 sftp://afsiext@cmcdataserver/data/NRPDS/outputs/ NRDPS/GIF/NRDPS_HiRes_000.gif 201 ddsr1.cmc.ec.gc.ca ssc_ddsr 0.1";

#[test]
fn parses_the_spec_example() {
    let Parsed::Log(r) = parse(SPEC_KEY, &spec_headers(), SPEC_BODY.as_bytes()).unwrap() else {
        panic!("not a log record");
    };
    assert_eq!(r.encoding, Encoding::V02);
    assert_eq!(r.time.to_rfc3339(), "2015-06-01T13:58:00.345+00:00");
    assert_eq!(
        r.url(),
        "sftp://afsiext@cmcdataserver/data/NRPDS/outputs/NRDPS/GIF/NRDPS_HiRes_000.gif"
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.node, "ddsr1.cmc.ec.gc.ca");
    assert_eq!(r.client, "ssc_ddsr");
    assert_eq!(r.duration, Some(0.1));
    assert_eq!(r.source.as_deref(), Some("ec_cmc"));
    assert_eq!(r.flow.as_deref(), Some("exp13"));
    assert_eq!(r.bytes, Some(457));
    assert_eq!(r.class(), crate::topic::StatusClass::Good);
    assert_eq!(
        render_line(SPEC_KEY, &Parsed::Log(r)).unwrap(),
        "v02.log.NRDPS.GIF.NRDPS_HiRes_000.gif 2015-06-01T13:58:00.345Z 201 ec_cmc ssc_ddsr \
         ddsr1.cmc.ec.gc.ca exp13 \
         sftp://afsiext@cmcdataserver/data/NRPDS/outputs/NRDPS/GIF/NRDPS_HiRes_000.gif 457 0.1 \
         Downloaded"
    );
}

#[test]
fn datestamps_accept_any_fraction() {
    let t = |v| parse_stamp("d", v, false).map(|t| t.timestamp_nanos_opt());
    assert_eq!(t("20150601135800"), Ok(Some(1_433_167_080_000_000_000)));
    assert_eq!(t("20150601135800.5"), Ok(Some(1_433_167_080_500_000_000)));
    assert_eq!(
        t("20150601135800.1234567891234"),
        Ok(Some(1_433_167_080_123_456_789))
    );
    assert!(t("2015060113580").is_err());
    assert!(t("20151301135800").is_err());
    assert!(t("20150601135800.").is_err());
    assert!(t("2015060113580x").is_err());
    assert!(parse_stamp("d", "20261122T051341.762833118", true).is_ok());
    // fuzz regression: 14 bytes, not 14 characters
    assert!(parse_stamp("d", "200R\u{11}\u{0}\u{0}\u{b73}R0da", false).is_err());
    assert!(parse_stamp("d", "2026112\u{b73}051341.1", true).is_err());
    assert!(parse_stamp("d", "20261122051341.762833118", true).is_err());
}

#[test]
fn parts_give_the_byte_count() {
    assert_eq!(bytes_from_parts("1,457,1,0,0"), Ok(457));
    assert_eq!(bytes_from_parts("i,1024,3,100,0"), Ok(1024));
    assert_eq!(bytes_from_parts("i,1024,3,100,2"), Ok(100));
    assert!(bytes_from_parts("1,x,1,0,0").is_err());
    assert!(bytes_from_parts("1,2").is_err());
}

/// Each kind of bad input gives its own typed error (and never a panic).
#[test]
fn bad_inputs_are_typed_errors() {
    let h = spec_headers();
    let kind = |key: &str, h: &Headers, body: &[u8]| parse(key, h, body).unwrap_err().kind();
    assert_eq!(kind(SPEC_KEY, &h, b""), "empty");
    assert_eq!(kind(SPEC_KEY, &h, &[0xff, 0xfe, 0x00, 0x12]), "not_utf8");
    assert_eq!(
        kind(SPEC_KEY, &h, b"20150601135800 a\xc3\x28 b"),
        "not_utf8"
    );
    assert_eq!(kind(SPEC_KEY, &h, &vec![b'a'; 10 << 20]), "too_large");
    // no source: a record all the same (routed to the unknown exchange by dd_log2source)
    let r = parse(SPEC_KEY, &Headers::new(), SPEC_BODY.as_bytes()).unwrap();
    assert!(
        matches!(r, Parsed::Log(ref r) if r.source.is_none() && r.status == 201),
        "{r:?}"
    );
    assert_eq!(
        kind(SPEC_KEY, &h, b"20150601135800.345 a b 201"),
        "field_count"
    );
    let bad_code = SPEC_BODY.replace(" 201 ", " 2x1 ");
    assert_eq!(kind(SPEC_KEY, &h, bad_code.as_bytes()), "bad_status");
    let bad_date = SPEC_BODY.replace("20150601135800.345", "2015-06-01T13:58");
    assert_eq!(kind(SPEC_KEY, &h, bad_date.as_bytes()), "bad_date");
    let bad_duration = SPEC_BODY.replace(" 0.1", " fast");
    assert_eq!(kind(SPEC_KEY, &h, bad_duration.as_bytes()), "bad_duration");
    assert_eq!(kind("v03.post.x", &h, b"{\"report\": {"), "json");
    assert_eq!(
        kind(
            "v03.post.x",
            &h,
            br#"{"baseUrl":"x","relPath":"y","report":{"timeCompleted":"20261122T051341.1"}}"#
        ),
        "missing_field"
    );
    assert_eq!(kind("weather.stuff", &h, b"hello"), "unknown_topic");
    let mut bad_parts = spec_headers();
    bad_parts.insert("parts".into(), s("1,big,1,0,0"));
    assert_eq!(
        kind(SPEC_KEY, &bad_parts, SPEC_BODY.as_bytes()),
        "bad_header"
    );
}

#[test]
fn events_and_plain_posts() {
    let h = Headers::new();
    assert_eq!(
        parse(
            "v01.speedo.client.all",
            &h,
            b"20261122051300 1 2 3 4 5 6 60\n"
        )
        .unwrap(),
        Parsed::Event("20261122051300 1 2 3 4 5 6 60".to_string())
    );
    assert_eq!(
        parse(
            "v02.post.data",
            &h,
            b"20261122051509.7411654 file:/srv/dl g01.txt"
        )
        .unwrap(),
        Parsed::NotReport
    );
    assert_eq!(
        parse(
            "v03.post",
            &h,
            br#"{"pubTime":"20261122T051338.6","baseUrl":"x","relPath":"y"}"#
        )
        .unwrap(),
        Parsed::NotReport
    );
}

/// Turn a captured sample's JSON headers into [`Headers`] the way the broker module would.
fn sample_headers(v: &serde_json::Value) -> Headers {
    fn conv(v: &serde_json::Value) -> HeaderValue {
        match v {
            serde_json::Value::String(s) => HeaderValue::Str(s.clone()),
            serde_json::Value::Bool(b) => HeaderValue::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => HeaderValue::Int(i),
                None => HeaderValue::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::Object(o) => {
                HeaderValue::Table(o.iter().map(|(k, v)| (k.clone(), conv(v))).collect())
            }
            serde_json::Value::Array(a) => HeaderValue::Array(a.iter().map(conv).collect()),
            serde_json::Value::Null => HeaderValue::Bytes(Vec::new()),
        }
    }
    match conv(v) {
        HeaderValue::Table(t) => t,
        _ => Headers::new(),
    }
}

fn load_samples(file: &str) -> Vec<(serde_json::Value, Result<Parsed, Malformed>)> {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let parsed = parse(
                m["routing_key"].as_str().unwrap(),
                &sample_headers(&m["headers"]),
                m["body"].as_str().unwrap().as_bytes(),
            );
            (m.clone(), parsed)
        })
        .collect()
}

#[test]
fn every_sarracenia2_sample_parses() {
    let samples = load_samples("sarracenia2-reports.json");
    assert_eq!(samples.len(), 17);
    let mut good = 0;
    let mut failed = 0;
    for (m, parsed) in &samples {
        let Ok(Parsed::Log(r)) = parsed else {
            panic!("{m} gave {parsed:?}");
        };
        assert_eq!(r.encoding, Encoding::V02);
        assert_eq!(r.source.as_deref(), Some("guest"));
        assert_eq!((r.node.as_str(), r.client.as_str()), ("localhost", "guest"));
        assert_eq!(r.bytes, Some(35));
        assert!(
            r.url().starts_with("http://127.0.0.1:18931/data/file"),
            "{}",
            r.url()
        );
        match r.status {
            201 => good += 1,
            499 => failed += 1,
            other => panic!("unexpected code {other}"),
        }
    }
    // 8 downloads succeeded; 2 files failed, 3 attempts each plus 3 retries.
    assert_eq!((good, failed), (8, 9));
    let Ok(Parsed::Log(first)) = &samples[0].1 else {
        unreachable!()
    };
    assert_eq!(first.url(), "http://127.0.0.1:18931/data/file10.txt");
    assert_eq!(first.duration, Some(0.004845));
    assert_eq!(first.message.as_deref(), Some("Downloaded"));
    assert_eq!(
        first.time,
        parse_stamp("t", "20261122051310.66535306", false).unwrap()
    );
}

#[test]
fn every_sarracenia3_sample_parses_or_is_skipped() {
    let samples = load_samples("sarracenia3-reports.json");
    let (mut reports, mut posts) = (0, 0);
    for (m, parsed) in &samples {
        match parsed {
            Ok(Parsed::Log(r)) => {
                reports += 1;
                assert!(m["is_report"].as_bool().unwrap(), "{m}");
                assert_eq!(r.source.as_deref(), Some("guest"));
                assert_eq!((r.node.as_str(), r.client.as_str()), ("unknown", "unknown"));
                let want = if m["routing_key"] == "v03.post" {
                    Encoding::V03
                } else {
                    Encoding::V02Report
                };
                assert_eq!(r.encoding, want);
                assert!(matches!(r.status, 201 | 204 | 404), "{}", r.status);
                assert!(r.bytes.is_some());
            }
            Ok(Parsed::NotReport) => {
                posts += 1;
                assert!(!m["is_report"].as_bool().unwrap(), "{m}");
            }
            other => panic!("{m} gave {other:?}"),
        }
    }
    assert_eq!((reports, posts), (20, 17));
    let Ok(Parsed::Log(first)) = &samples[0].1 else {
        unreachable!()
    };
    assert_eq!(first.status, 404);
    assert_eq!(first.url(), "http://127.0.0.1:38229/f20.txt");
    assert_eq!(first.bytes, Some(36));
    assert_eq!(
        first.time,
        parse_stamp("t", "20261122T051341.762833118", true).unwrap()
    );
    let v02_report = samples
        .iter()
        .find_map(|(_, p)| match p {
            Ok(Parsed::Log(r)) if r.encoding == Encoding::V02Report => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(v02_report.status, 204);
    assert_eq!(v02_report.url(), "http://127.0.0.1:38229/f01.txt");
    assert_eq!(
        v02_report.message.as_deref(),
        Some("not overwriting existing file /srv/dl/f01.txt")
    );
}

#[test]
fn json_rendering_is_one_object() {
    let parsed = parse(SPEC_KEY, &spec_headers(), SPEC_BODY.as_bytes()).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&render_json(SPEC_KEY, &parsed).unwrap()).unwrap();
    assert_eq!(v["topic"], SPEC_KEY);
    assert_eq!(v["status"], 201);
    assert_eq!(v["class"], "good");
    assert_eq!(v["bytes"], 457);
    assert_eq!(v["client"], "ssc_ddsr");
    let ev = render_json("v01.alive.x", &Parsed::Event("{\"a\":1}".into())).unwrap();
    assert_eq!(ev, r#"{"topic":"v01.alive.x","body":{"a":1}}"#);
}

#[test]
fn line_fields_never_shift() {
    let parsed = parse(SPEC_KEY, &spec_headers(), SPEC_BODY.as_bytes()).unwrap();
    let Parsed::Log(mut r) = parsed else {
        unreachable!()
    };
    r.flow = Some("my flow\tx".into());
    r.message = Some("two\nlines".into());
    let line = render_line(SPEC_KEY, &Parsed::Log(r)).unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[6], "my%20flow%09x");
    assert_eq!(&f[10..], ["two", "lines"]);
}

#[test]
fn malformed_warnings_are_rate_limited_per_kind() {
    let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let ms = |n| t0 + chrono::Duration::milliseconds(n);
    let mut tally = MalformedTally::default();
    assert_eq!(tally.count(&Malformed::Empty, ms(0)), Some(0));
    assert_eq!(tally.count(&Malformed::Empty, ms(10)), None);
    assert_eq!(tally.count(&Malformed::Empty, ms(500)), None);
    // another kind has its own budget
    assert_eq!(tally.count(&Malformed::NotUtf8(0), ms(600)), Some(0));
    assert_eq!(tally.count(&Malformed::Empty, ms(1000)), Some(2));
    assert_eq!(tally.total(), 5);
    assert_eq!(tally.by_kind()["empty"], 4);
}

fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@-]{1,20}"
}

prop_compose! {
    fn any_record()(
        nanos in 0i64..4_102_444_800_000_000_000,
        host in word(),
        dirs in proptest::collection::vec("[A-Za-z0-9_.-]{1,12}", 1..5),
        status in 100u16..600,
        node in word(), client in word(),
        duration_ms in 0u32..10_000_000,
        source in word(),
        from_cluster in proptest::option::of(word()),
        to_clusters in proptest::option::of(word()),
        flow in proptest::option::of(word()),
        message in proptest::option::of("[ -~]{1,40}"),
        sum in proptest::option::of("[a-z],[A-Za-z0-9+/=]{4,30}"),
        bytes in proptest::option::of(0u64..u64::MAX / 2),
    ) -> LogRecord {
        LogRecord {
            encoding: Encoding::V02,
            time: DateTime::from_timestamp_nanos(nanos),
            srcpath: format!("http://{host}/"),
            relpath: dirs.join("/"),
            status, node, client,
            duration: Some(f64::from(duration_ms) / 1000.0),
            source: Some(source),
            from_cluster, to_clusters, flow, message, sum, bytes,
        }
    }
}

proptest! {
    #[test]
    fn v02_round_trip(r in any_record()) {
        let (key, headers, body) = encode_v02(&r);
        prop_assert!(key.starts_with("v02.log."));
        prop_assert_eq!(parse(&key, &headers, body.as_bytes()), Ok(Parsed::Log(r)));
    }

    #[test]
    fn v03_round_trip(r in any_record()) {
        let r = LogRecord { encoding: Encoding::V03, ..r };
        let (key, body) = encode_v03(&r);
        prop_assert_eq!(parse(&key, &Headers::new(), body.as_bytes()), Ok(Parsed::Log(r)));
    }

    /// Whatever arrives, the parser answers (never panics) and a rendered line is one line.
    #[test]
    fn parser_never_panics(key in "v0[123]\\.[a-z]{1,6}(\\.[a-z]{1,4})?",
                           body in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = parse(&key, &spec_headers(), &body) {
            if let Some(line) = render_line(&key, &p) {
                prop_assert!(!line.contains('\n'));
            }
        }
    }

    #[test]
    fn mutated_spec_lines_never_panic(cut in 0usize..140, junk in "\\PC{0,8}") {
        let mut body = SPEC_BODY.to_string();
        let at = (0..=cut.min(body.len())).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        body.insert_str(at, &junk);
        let _ = parse(SPEC_KEY, &spec_headers(), body.as_bytes());
    }
}

#[test]
fn a_json_report_is_v03_whatever_its_routing_key() {
    let body = br#"{"pubTime": "20261122T100000", "baseUrl": "https://h/", "relPath": "d/f.txt", "source": "s", "report": {"code": 201, "timeCompleted": "20261122T100001.5", "message": "ok", "host": "n1", "user": "c1"}}"#;
    for key in [
        "v03.post.d",
        "v02.log.d",
        "v02.report.d",
        "v02.post.d",
        "xyz",
    ] {
        let Parsed::Log(r) = parse(key, &Headers::new(), body).unwrap() else {
            panic!("{key}: not a record")
        };
        assert_eq!(
            (r.encoding, r.status, r.node.as_str(), r.client.as_str()),
            (Encoding::V03, 201, "n1", "c1"),
            "{key}"
        );
    }
    // a post without `report` is skipped on any key; ddmon's own v01 messages stay events
    let post = br#"{"pubTime": "20261122T100000", "baseUrl": "https://h/", "relPath": "d/f.txt"}"#;
    assert!(matches!(
        parse("v02.post.d", &Headers::new(), post),
        Ok(Parsed::NotReport)
    ));
    assert!(matches!(
        parse("v01.alive.x.y", &Headers::new(), body),
        Ok(Parsed::Event(_))
    ));
}
