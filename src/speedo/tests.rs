//! The speedo in virtual time: exact arithmetic, alignment, totals, escaping, every state
//! transition, the state file, the top subjects, capture lines.

use super::*;
use crate::record::{Encoding, LogRecord, render_json, render_line};
use chrono::{DateTime, Utc};
use chrono::{Duration, TimeZone};
use proptest::prelude::*;

fn t0() -> DateTime<Utc> {
    // a Sunday, 10:00:17 UTC
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 17).unwrap()
}

fn secs(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0) as i64)
}

fn rec(
    time: DateTime<Utc>,
    client: &str,
    source: Option<&str>,
    status: u16,
    bytes: u64,
) -> LogRecord {
    LogRecord {
        encoding: Encoding::V02,
        time,
        srcpath: "http://pump/".into(),
        relpath: "/radar/ppi/file.gif".into(),
        status,
        node: "node01".into(),
        client: client.into(),
        duration: Some(0.1),
        source: source.map(Into::into),
        from_cluster: None,
        to_clusters: None,
        flow: None,
        message: None,
        sum: None,
        bytes: Some(bytes),
    }
}

fn speedo_with(interval: u32, thresholds: &str, start: DateTime<Utc>) -> Speedo {
    let cfg: ThresholdsConfig = toml::from_str(thresholds).unwrap();
    Speedo::new(
        Settings {
            interval,
            top_capacity: 100,
            thresholds: Thresholds::new(&cfg).unwrap(),
        },
        start,
    )
}

fn speedos(out: &[Output]) -> Vec<&SpeedoRecord> {
    out.iter()
        .filter_map(|o| match o {
            Output::Speedo(r) => Some(r),
            Output::Alert(_) => None,
        })
        .collect()
}

fn alerts(out: &[Output]) -> Vec<&Alert> {
    out.iter()
        .filter_map(|o| match o {
            Output::Alert(a) => Some(a),
            Output::Speedo(_) => None,
        })
        .collect()
}

fn lines(out: &[Output]) -> Vec<String> {
    speedos(out)
        .iter()
        .map(|r| format!("{} {}", r.topic(), r.body()))
        .collect()
}

/// Feed a record arriving at `at`, returning what the time step emitted.
fn feed(s: &mut Speedo, at: DateTime<Utc>, r: &LogRecord) -> Vec<Output> {
    let out = s.advance(at);
    s.observe(r, at);
    out
}

#[test]
fn exact_records_at_aligned_interval_ends() {
    let start = t0();
    let mut s = speedo_with(60, "", start);
    assert!(s.advance(start).is_empty());
    let stamp = start - secs(2.0);
    let mut out = Vec::new();
    out.extend(feed(
        &mut s,
        start + secs(1.0),
        &rec(stamp, "alice", Some("ec"), 201, 1000),
    ));
    out.extend(feed(
        &mut s,
        start + secs(2.0),
        &rec(stamp, "alice", Some("ec"), 200, 500),
    ));
    out.extend(feed(
        &mut s,
        start + secs(3.0),
        &rec(stamp, "bob", Some("ec"), 404, 70),
    ));
    out.extend(feed(
        &mut s,
        start + secs(4.0),
        &rec(stamp, "bob", Some("nws"), 102, 9),
    ));
    out.extend(feed(
        &mut s,
        start + secs(5.0),
        &rec(stamp, "bob", Some("nws"), 304, 9),
    ));
    out.extend(feed(
        &mut s,
        start + secs(6.0),
        &rec(stamp, "carol", None, 226, 10),
    ));
    assert!(out.is_empty(), "nothing before the interval ends: {out:?}");
    // 10:00:59.999 is still the first interval
    assert!(speedos(&s.advance(Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 59).unwrap())).is_empty());
    let out = s.advance(Utc.with_ymd_and_hms(2026, 11, 22, 10, 1, 0).unwrap());
    assert_eq!(
        lines(&out),
        vec![
            "v01.speedo.client.alice 20261122100100 2 0 1500 0 1500 2 60",
            "v01.speedo.client.bob 20261122100100 0 1 0 70 0 0 60",
            "v01.speedo.client.carol 20261122100100 1 0 10 0 10 1 60",
            "v01.speedo.client.all 20261122100100 3 1 1510 70 1510 3 60",
            "v01.speedo.source.ec 20261122100100 2 1 1500 70 1500 2 60",
            // seen only in a 102 and a 304: its record, all zeros
            "v01.speedo.source.nws 20261122100100 0 0 0 0 0 0 60",
            "v01.speedo.sources.all 20261122100100 2 1 1500 70 1500 2 60",
        ]
    );
    assert_eq!(s.neutral, 2, "102 and 304 are in neither count");
    // lag: arrival - datestamp
    let alice = speedos(&out)[0];
    assert_eq!(alice.lag_mean, Some(3.5));
    assert_eq!(alice.lag_max, Some(4.0));
    let h = alice.headers();
    assert_eq!(h["goodcount"], crate::record::HeaderValue::Int(2));
    assert_eq!(
        h["error_files_interval"],
        crate::record::HeaderValue::Int(0)
    );
    assert_eq!(h["lag_max"], crate::record::HeaderValue::Float(4.0));
    assert_eq!(
        h["datetime"],
        crate::record::HeaderValue::Int(20261122100100)
    );
    // silence stays visible: zero rates, cumulative counts kept
    let out = s.advance(Utc.with_ymd_and_hms(2026, 11, 22, 10, 2, 0).unwrap());
    assert_eq!(
        lines(&out)[0],
        "v01.speedo.client.alice 20261122100200 2 0 1500 0 0 0 60"
    );
    assert_eq!(speedos(&out)[0].lag_mean, None);
    // a source seen only in neutral codes ("nws": a 102 and a 304) was seen: zeros, every
    // interval
    assert!(
        lines(&out).contains(&"v01.speedo.source.nws 20261122100200 0 0 0 0 0 0 60".to_string())
    );
}

#[test]
fn intervals_of_one_second_and_gaps() {
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + secs(0.5);
    let mut s = speedo_with(1, "", start);
    s.advance(start);
    feed(&mut s, start, &rec(start, "a", Some("x"), 200, 1));
    // three seconds later: three intervals, the later two with zero rates
    let out = s.advance(start + secs(3.0));
    let ends: Vec<String> = speedos(&out)
        .iter()
        .filter(|r| r.scope == Scope::Client)
        .map(|r| format!("{} {}", r.end.format("%H%M%S"), r.files))
        .collect();
    assert_eq!(ends, vec!["100001 1", "100002 0", "100003 0"]);
}

#[test]
fn odd_names_are_escaped_and_cut() {
    let r = |scope, name: &str| SpeedoRecord {
        scope,
        name: name.into(),
        end: t0(),
        interval: 60,
        counts: Counts::default(),
        files: 0,
        bytes: 0,
        errors: 0,
        lag_mean: None,
        lag_max: None,
        queue: None,
    };
    assert_eq!(r(Scope::Client, "all").topic(), "v01.speedo.client.%all");
    assert_eq!(
        r(Scope::Source, "a.b#c*").topic(),
        "v01.speedo.source.a%2Eb%23c%2A"
    );
    assert_eq!(r(Scope::ClientAll, "all").topic(), "v01.speedo.client.all");
    let long = "é".repeat(150);
    let topic = r(Scope::Client, &long).topic();
    assert!(topic.len() <= 255 && topic.len() >= 254, "{}", topic.len());
    assert_eq!(
        r(Scope::Client, &long).headers()["client"],
        crate::record::HeaderValue::Str(long.clone()),
        "the header keeps the whole name"
    );
    let a = Alert {
        kind: Kind::Source,
        name: "all".into(),
        old: Health::Ok,
        new: Health::Late,
        reason: String::new(),
        time: t0(),
        last_good: None,
        figures: Figures::default(),
    };
    assert_eq!(a.topic(), "v01.speedo.alert.source.%all");
}

#[test]
fn late_and_back() {
    let start = t0();
    let mut s = speedo_with(60, "[defaults]\ntd = 120\n", start);
    s.advance(start);
    feed(&mut s, start, &rec(start, "alice", Some("ec"), 200, 1));
    // 120 s after the last good delivery: not yet late; after: late
    assert!(alerts(&s.advance(start + secs(120.0))).is_empty());
    let out = s.advance(start + secs(121.0));
    let a = alerts(&out);
    assert_eq!(a.len(), 2, "client and source: {a:?}");
    assert_eq!((a[0].kind, a[0].name.as_str()), (Kind::Client, "alice"));
    assert_eq!((a[0].old, a[0].new), (Health::Ok, Health::Late));
    assert!(
        a[0].reason
            .contains("no good delivery for 121 s (td 120 s)"),
        "{}",
        a[0].reason
    );
    assert_eq!(a[0].topic(), "v01.speedo.alert.client.alice");
    let body: serde_json::Value = serde_json::from_str(&a[0].body()).unwrap();
    assert_eq!(body["old"], "ok");
    assert_eq!(body["new"], "late");
    // no repeated alert while it stays late
    assert!(alerts(&s.advance(start + secs(200.0))).is_empty());
    // an error is not a good delivery
    let out = feed(
        &mut s,
        start + secs(201.0),
        &rec(start, "alice", Some("ec"), 500, 1),
    );
    assert!(alerts(&out).is_empty());
    assert!(alerts(&s.advance(start + secs(202.0))).is_empty());
    // a good one ends it
    feed(
        &mut s,
        start + secs(203.0),
        &rec(start, "alice", Some("ec"), 200, 1),
    );
    let out = s.advance(start + secs(204.0));
    let a = alerts(&out);
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].old, a[0].new), (Health::Late, Health::Ok));
    assert_eq!(a[0].reason, "within thresholds");
}

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + Duration::minutes(n)
}

/// Feed `files` good and `errors` bad records for `client` spread over minute `m`.
fn minute_of(s: &mut Speedo, m: i64, client: &str, files: u32, errors: u32) -> Vec<Output> {
    let mut out = s.advance(minute(m));
    let n = files + errors;
    for i in 0..n {
        let at = minute(m) + Duration::milliseconds(i64::from(i) * 59_000 / i64::from(n.max(1)));
        let code = if i < files { 200 } else { 503 };
        out.extend(feed(s, at, &rec(at, client, None, code, 100)));
    }
    out
}

#[test]
fn slow_and_failing_by_the_minute() {
    let start = minute(0) - secs(10.0);
    let mut s = speedo_with(
        60,
        "[defaults]\ntd = 0\nk = 0\n[[override]]\nname = \"alice\"\ntminr = 10\nmax_error_ratio = 0.2\nmin_attempts = 5\n",
        start,
    );
    s.advance(start);
    let mut all = Vec::new();
    // minute 0 (first whole minute): 12 good: ok
    all.extend(minute_of(&mut s, 0, "alice", 12, 0));
    // minute 1: 5 good: slow (judged when minute 1 closes)
    all.extend(minute_of(&mut s, 1, "alice", 5, 0));
    assert!(alerts(&all).is_empty(), "{:?}", alerts(&all));
    all.extend(minute_of(&mut s, 2, "alice", 12, 4));
    let a = alerts(&all);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].old, a[0].new), (Health::Ok, Health::Slow));
    assert!(
        a[0].reason
            .contains("5 good files in the last minute (tminr 10)"),
        "{}",
        a[0].reason
    );
    // minute 2 had 12 good and 4 errors: 0.25 > 0.2: failing
    let out = minute_of(&mut s, 3, "alice", 12, 1);
    let a = alerts(&out);
    assert_eq!((a[0].old, a[0].new), (Health::Slow, Health::Failing));
    assert!(a[0].reason.contains("error ratio 0.25"), "{}", a[0].reason);
    // minute 3: 12 good 1 error: ok again
    let out = s.advance(minute(4));
    let a = alerts(&out);
    assert_eq!((a[0].old, a[0].new), (Health::Failing, Health::Ok));
    // bob has no override: tminr 0, never slow
    let entry = s.entry(Kind::Client, "alice").unwrap();
    assert_eq!(entry.figures.files_per_min, Some(12.0));
}

#[test]
fn abnormal_after_learning() {
    let start = minute(0) - secs(1.0);
    let mut s = speedo_with(
        60,
        "[defaults]\ntd = 0\nk = 3\nmin_history = 30\nmin_hour_history = 1000\nabnormal_after = 300\nalpha = 0.1\n",
        start,
    );
    s.advance(start);
    // 40 minutes at 20 or 22 files a minute: learned
    for m in 0..40 {
        let out = minute_of(&mut s, m, "alice", 20 + (m % 2) as u32 * 2, 0);
        assert!(alerts(&out).is_empty(), "minute {m}: {:?}", alerts(&out));
    }
    // then 2 a minute: outside from minute 40; abnormal once 5 minutes outside
    let mut when = None;
    for m in 40..50 {
        let out = minute_of(&mut s, m, "alice", 2, 0);
        if let Some(a) = alerts(&out).first() {
            when = Some((m, a.old, a.new, a.reason.clone()));
            break;
        }
    }
    let (m, old, new, reason) =
        when.unwrap_or_else(|| panic!("no abnormal alert: {:?}", s.entry(Kind::Client, "alice")));
    // minutes 40..44 outside, judged at the close of minute 44 (seen when minute 45 starts)
    assert_eq!(m, 45, "{reason}");
    assert_eq!((old, new), (Health::Ok, Health::Abnormal));
    assert!(reason.contains("2 files/min, expected"), "{reason}");
    let e = s.entry(Kind::Client, "alice").unwrap();
    // the minutes outside were not learned from
    assert_eq!(e.learned.as_ref().unwrap().overall.n, 40);
}

#[test]
fn hour_of_week_expectation_once_it_has_history() {
    let limits = Limits {
        min_history: 10,
        min_hour_history: 5,
        ..Limits::default()
    };
    let mut l = Learned::default();
    for _ in 0..20 {
        l.update(3, 100.0, 0.1);
    }
    for _ in 0..4 {
        l.update(4, 5.0, 0.1);
    }
    assert_eq!(l.expectation(3, &limits).unwrap().1, "hour of week");
    assert_eq!(l.expectation(4, &limits).unwrap().1, "overall");
    l.update(4, 5.0, 0.1);
    let (e, basis) = l.expectation(4, &limits).unwrap();
    assert_eq!((e.mean, basis), (5.0, "hour of week"));
}

#[test]
fn state_file_keeps_counters_times_states_and_learning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speedo.json");
    let start = minute(0) - secs(1.0);
    let th = "[defaults]\ntd = 300\n";
    let mut s = speedo_with(60, th, start);
    s.advance(start);
    for m in 0..3 {
        minute_of(&mut s, m, "alice", 10, 1);
    }
    minute_of(&mut s, 3, "bob", 1, 0);
    // bob goes late
    let late = s.advance(minute(3) + secs(400.0));
    assert!(
        alerts(&late)
            .iter()
            .any(|a| a.name == "bob" && a.new == Health::Late)
    );
    let at = minute(3) + secs(400.0);
    state::save(&path, &s, at, 0).unwrap();
    let saved = match state::load(&path, at).unwrap() {
        state::Loaded::State(s) => s,
        other => panic!("{other:?}"),
    };
    // restarted 10 minutes later: alice's last good is long ago, but she gets td from the
    // start; bob stays late without a second alert
    let restart = at + Duration::minutes(10);
    let mut r = speedo_with(60, th, restart);
    r.restore(*saved);
    let out = r.advance(restart + secs(1.0));
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    let alice = r.entry(Kind::Client, "alice").unwrap();
    let before = s.entry(Kind::Client, "alice").unwrap();
    assert_eq!(alice.counts(), before.counts());
    assert_eq!(alice.last_good_ms, before.last_good_ms);
    assert_eq!(alice.learned, before.learned);
    assert_eq!(
        r.entry(Kind::Client, "bob").unwrap().watch.state,
        Health::Late
    );
    assert_eq!(r.totals(), s.totals());
    // counters go on from where they were
    let out = feed(
        &mut r,
        restart + secs(2.0),
        &rec(restart, "alice", None, 200, 5),
    );
    assert!(out.is_empty());
    let out = r.advance(restart + Duration::minutes(1));
    let line = lines(&out)
        .into_iter()
        .find(|l| l.starts_with("v01.speedo.client.alice"))
        .unwrap();
    assert!(line.contains(" 31 3 3005 300 5 1 60"), "{line}");
    // alice late only td after the restart
    let out = r.advance(restart + secs(299.0));
    assert!(alerts(&out).is_empty());
    let out = r.advance(restart + secs(310.0));
    assert!(
        alerts(&out)
            .iter()
            .any(|a| a.name == "alice" && a.new == Health::Late)
    );
}

#[test]
fn unreadable_state_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speedo.json");
    std::fs::write(&path, "{not json").unwrap();
    match state::load(&path, t0()).unwrap() {
        state::Loaded::Unreadable(_, aside) => {
            assert!(aside.exists());
            assert!(!path.exists());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        state::load(&path, t0()).unwrap(),
        state::Loaded::Missing
    ));
}

#[test]
fn top_subjects_on_a_skewed_stream_within_the_bound() {
    let start = minute(0) - secs(1.0);
    let mut s = speedo_with(60, "", start);
    s.advance(start);
    let mut exact: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // Zipf-like: subject i gets about 2000/i files; 1,000 distinct subjects for 100 counters
    let mut n = 0u64;
    for i in 1..=1000u64 {
        let count = (2000 / i).max(1);
        for _ in 0..count {
            let mut r = rec(minute(0), "c", None, 200, 0);
            r.relpath = format!("/d{i}/f");
            // big files in a few small directories
            r.bytes = Some(if i % 97 == 0 { 1_000_000 } else { 100 });
            let at = minute(0) + Duration::milliseconds((n % 59_000) as i64);
            feed(&mut s, at, &r);
            let e = exact.entry(format!("d{i}")).or_default();
            e.0 += 1;
            e.1 += r.bytes.unwrap();
            n += 1;
        }
    }
    s.advance(minute(1));
    let top = s.top();
    let total_files: u64 = exact.values().map(|e| e.0).sum();
    let total_bytes: u64 = exact.values().map(|e| e.1).sum();
    assert_eq!(top.total_files, total_files);
    assert_eq!(top.files_error_bound, total_files / 100);
    assert_eq!(top.bytes_error_bound, total_bytes / 100);
    let mut by_files: Vec<_> = exact.iter().collect();
    by_files.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    // every true top-10 subject by files is listed, its figure within the bound
    for (name, (files, _)) in by_files.iter().take(TOP_N) {
        let t = top.subjects.iter().find(|t| &t.subject == *name).unwrap();
        let est = t.files.unwrap();
        assert!(
            est >= *files && est - files <= top.files_error_bound,
            "{name}"
        );
    }
    let mut by_bytes: Vec<_> = exact.iter().collect();
    by_bytes.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
    for (name, (_, bytes)) in by_bytes.iter().take(TOP_N) {
        if *bytes > top.bytes_error_bound {
            let t = top.subjects.iter().find(|t| &t.subject == *name);
            let t = t.unwrap_or_else(|| panic!("{name} missing from {:?}", top.subjects));
            assert!(t.top_by.contains(&TopBy::Bytes));
        }
    }
    assert!(top.subjects.len() <= 2 * TOP_N);
    assert_eq!(top.subjects[0].subject, "d1");
}

#[test]
fn subject_is_the_relpath_directory() {
    assert_eq!(subject_of("/a/b/c.gif"), "a/b");
    assert_eq!(subject_of("a/c.gif"), "a");
    assert_eq!(subject_of("c.gif"), "/");
    assert_eq!(subject_of("/c.gif"), "/");
}

#[test]
fn capture_lines_read_back_what_dd_log_wrote() {
    let mut r = rec(t0() + secs(0.25), "a b", Some("ec"), 201, 457);
    r.flow = Some("exp13".into());
    r.message = Some("Downloaded ok".into());
    let parsed = crate::record::Parsed::Log(r.clone());
    let line = render_line("v02.log.radar", &parsed).unwrap();
    let back = replay::parse_capture_line(&line).unwrap().unwrap();
    assert_eq!(back.time, r.time);
    assert_eq!(back.client, "a b");
    assert_eq!(back.source.as_deref(), Some("ec"));
    assert_eq!(back.status, 201);
    assert_eq!(back.bytes, Some(457));
    assert_eq!(back.relpath, "/radar/ppi/file.gif");
    assert_eq!(subject_of(&back.relpath), "radar/ppi");
    let json = render_json("v02.log.radar", &parsed).unwrap();
    assert_eq!(replay::parse_capture_line(&json).unwrap().unwrap(), r);
    let event = render_line(
        "v01.speedo.client.a",
        &crate::record::Parsed::Event("20261122100100 1 0 1 0 1 1 60".into()),
    )
    .unwrap();
    assert_eq!(replay::parse_capture_line(&event).unwrap(), None);
    assert!(replay::parse_capture_line("v02.log.x 2026 200").is_err());
    assert!(replay::parse_capture_line("{\"x\":1}").is_err());
    assert_eq!(replay::parse_capture_line("\n").unwrap(), None);
}

#[test]
fn replay_prints_what_the_daemon_publishes() {
    let start = t0();
    let mut capture = String::new();
    for i in 0..130 {
        let r = rec(
            start + secs(f64::from(i)),
            "alice",
            Some("ec"),
            if i % 10 == 0 { 404 } else { 200 },
            10,
        );
        capture.push_str(&render_line("v02.log.x", &crate::record::Parsed::Log(r)).unwrap());
        capture.push('\n');
    }
    capture.push_str("garbage\n");
    let mut s = speedo_with(60, "", start);
    let mut out = Vec::new();
    let mut totals = replay::ReplayTotals::default();
    replay::replay(
        &mut s,
        &mut capture.as_bytes(),
        &mut out,
        false,
        &mut totals,
    )
    .unwrap();
    replay::finish(&mut s, &mut out, false, &mut totals).unwrap();
    let text = String::from_utf8(out).unwrap();
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("v01.speedo.client.alice"))
        .collect();
    // 10:00:17..10:00:59 (43 records, 5 errors), 10:01:00..10:01:59 (60, 6), 10:02:00..10:02:26 (27, 2)
    assert_eq!(
        clients,
        vec![
            "v01.speedo.client.alice 20261122100100 38 5 380 50 380 38 60",
            "v01.speedo.client.alice 20261122100200 92 11 920 110 540 54 60",
            "v01.speedo.client.alice 20261122100300 117 13 1170 130 250 25 60",
        ]
    );
    assert_eq!(totals.records, 130);
    assert_eq!(totals.bad, 1);
}

proptest! {
    /// On any stream: the totals equal the sums of the names, the interval figures add up to
    /// the cumulative counts, and counts never go down.
    #[test]
    fn totals_are_the_sums(stream in proptest::collection::vec(
        (0u64..200_000, 0usize..4, proptest::option::of(0usize..3), prop_oneof![Just(200u16), Just(201), Just(404), Just(503), Just(102), Just(304)], 0u64..10_000),
        1..300), interval in 1u32..120) {
        let start = t0();
        let mut s = speedo_with(interval, "", start);
        let mut stream = stream;
        stream.sort_by_key(|x| x.0);
        let mut out = s.advance(start);
        for (offset, c, src, code, bytes) in &stream {
            let at = start + Duration::milliseconds(*offset as i64);
            let r = rec(at, &format!("c{c}"), src.map(|x| format!("s{x}")).as_deref(), *code, *bytes);
            out.extend(feed(&mut s, at, &r));
        }
        out.extend(s.finish());
        let recs = speedos(&out);
        let mut by_end: std::collections::BTreeMap<DateTime<Utc>, Vec<&SpeedoRecord>> = Default::default();
        for r in &recs {
            by_end.entry(r.end).or_default().push(r);
        }
        let mut last: std::collections::BTreeMap<String, Counts> = Default::default();
        let mut files: std::collections::BTreeMap<String, u64> = Default::default();
        for (_, group) in by_end {
            for (scope, all) in [(Scope::Client, Scope::ClientAll), (Scope::Source, Scope::SourcesAll)] {
                let names: Vec<_> = group.iter().filter(|r| r.scope == scope).collect();
                let Some(total) = group.iter().find(|r| r.scope == all) else {
                    prop_assert!(names.is_empty());
                    continue;
                };
                prop_assert_eq!(total.counts.good, names.iter().map(|r| r.counts.good).sum::<u64>());
                prop_assert_eq!(total.counts.errors, names.iter().map(|r| r.counts.errors).sum::<u64>());
                prop_assert_eq!(total.counts.good_bytes, names.iter().map(|r| r.counts.good_bytes).sum::<u64>());
                prop_assert_eq!(total.counts.bad_bytes, names.iter().map(|r| r.counts.bad_bytes).sum::<u64>());
                prop_assert_eq!(total.files, names.iter().map(|r| r.files).sum::<u64>());
                prop_assert_eq!(total.bytes, names.iter().map(|r| r.bytes).sum::<u64>());
            }
            for r in group {
                let key = format!("{:?}{}", r.scope, r.name);
                let prev = last.get(&key).copied().unwrap_or_default();
                prop_assert!(r.counts.good >= prev.good && r.counts.errors >= prev.errors);
                prop_assert_eq!(r.counts.good - prev.good, r.files);
                *files.entry(key.clone()).or_default() += r.files;
                last.insert(key, r.counts);
            }
        }
        let good = stream.iter().filter(|x| (200..300).contains(&x.3)).count() as u64;
        let errors = stream.iter().filter(|x| x.3 >= 400).count() as u64;
        let all = last.get("ClientAllall").copied().unwrap_or_default();
        prop_assert_eq!(all.good, good);
        prop_assert_eq!(all.errors, errors);
    }
}

#[test]
fn a_jump_of_the_clock_neither_floods_nor_silences() {
    let start = t0();
    let mut s = speedo_with(1, "", start);
    s.advance(start);
    feed(&mut s, start, &rec(start, "a", None, 200, 1));
    // a month ahead: at most MAX_CATCH_UP empty intervals, then on from now
    let ahead = start + Duration::days(30);
    let out = s.advance(ahead);
    let ends: std::collections::BTreeSet<_> = speedos(&out).iter().map(|r| r.end).collect();
    assert!(ends.len() as i64 <= MAX_CATCH_UP + 1, "{}", ends.len());
    assert!(
        speedos(&s.advance(ahead + secs(1.0)))
            .iter()
            .any(|r| r.end == ahead + secs(1.0) - secs(0.0) || r.end > ahead)
    );
    // an hour back: intervals start again from there, records go on
    let back = ahead - Duration::hours(1);
    s.advance(back);
    let out = s.advance(back + secs(2.0));
    assert!(
        !speedos(&out).is_empty(),
        "not silent after the clock stepped back"
    );
    // a byte count at the edge of u64 saturates instead of wrapping
    let mut huge = rec(back, "a", None, 200, u64::MAX);
    feed(&mut s, back + secs(2.5), &huge);
    huge.bytes = Some(5);
    feed(&mut s, back + secs(2.6), &huge);
    assert_eq!(
        s.entry(Kind::Client, "a").unwrap().counts().good_bytes,
        u64::MAX
    );
}

#[test]
fn figures_wait_for_a_whole_minute() {
    let start = minute(0) + secs(30.0);
    let mut s = speedo_with(60, "", start);
    s.advance(start);
    feed(&mut s, start, &rec(start, "a", None, 200, 1));
    s.advance(minute(1));
    let e = s.entry(Kind::Client, "a").unwrap();
    assert_eq!(
        e.figures.files_per_min, None,
        "a partial minute is not a rate"
    );
    s.advance(minute(2));
    let e = s.entry(Kind::Client, "a").unwrap();
    assert_eq!(e.figures.files_per_min, Some(0.0));
}

/// A speedo with `n` clients (client00000...) of source `ec`; those whose number is a
/// multiple of 3 had their only good delivery at the start (late at +121 s), the others
/// deliver at +120 s; returned at +121 s.
fn speedo_of_clients(n: usize) -> (Speedo, DateTime<Utc>) {
    let start = t0();
    let mut s = speedo_with(60, "[defaults]\ntd = 120\n", start);
    s.advance(start);
    for i in 0..n {
        feed(
            &mut s,
            start,
            &rec(start, &format!("client{i:05}"), Some("ec"), 200, 1),
        );
    }
    let later = start + secs(120.0);
    for i in (0..n).filter(|i| i % 3 != 0) {
        feed(
            &mut s,
            later,
            &rec(later, &format!("client{i:05}"), Some("ec"), 200, 1),
        );
    }
    let now = start + secs(121.0);
    s.advance(now);
    (s, now)
}

fn names(r: &StatsReply) -> Vec<&str> {
    r.clients
        .iter()
        .chain(r.sources.iter())
        .map(|e| e.name.as_str())
        .collect()
}

#[test]
fn an_empty_query_is_todays_answer_within_the_cap() {
    let (s, now) = speedo_of_clients(1500);
    let r = s.answer(&crate::rpc::Query::default(), now).unwrap();
    assert_eq!(r.clients.len(), crate::rpc::query::DEFAULT_LIMIT);
    assert_eq!(r.clients[0].name, "client00000");
    assert_eq!(r.sources.len(), 1, "every kind has its own cap");
    let page = r.page.unwrap();
    assert!(page.cut);
    assert_eq!((page.matched, page.returned), (1501, 1001));
    assert_eq!(r.in_scope["client"], 1500);
    // small: the same as the full statistics
    let (small, now) = speedo_of_clients(7);
    let r = small.answer(&crate::rpc::Query::default(), now).unwrap();
    let full = small.stats(now);
    assert_eq!((&r.clients, &r.sources), (&full.clients, &full.sources));
    assert!(!r.page.unwrap().cut);
}

#[test]
fn worst_first_pages_and_summaries() {
    let (s, now) = speedo_of_clients(30);
    // everything not ok, worst first: the 10 late clients (0, 3, ... 27), by name
    let q = crate::rpc::Query {
        kind: Some("client".into()),
        states: vec!["!ok".into()],
        sort: Some(crate::rpc::Sort::Worst),
        limit: Some(4),
        ..Default::default()
    };
    let r = s.answer(&q, now).unwrap();
    assert_eq!(
        names(&r),
        ["client00000", "client00003", "client00006", "client00009"]
    );
    assert!(r.clients.iter().all(|c| c.state == Health::Late));
    assert_eq!(r.matched["client"], 10);
    assert_eq!(r.by_state["client"]["late"], 10);
    assert_eq!(r.by_state["client"]["ok"], 20);
    assert!(!r.by_state.contains_key("source"));
    // the next pages with the cursor: every late client once
    let mut all: Vec<String> = names(&r).iter().map(|n| n.to_string()).collect();
    let mut cursor = r.page.unwrap().next_cursor;
    while let Some(c) = cursor {
        let r = s
            .answer(
                &crate::rpc::Query {
                    cursor: Some(c),
                    ..q.clone()
                },
                now,
            )
            .unwrap();
        all.extend(names(&r).iter().map(|n| n.to_string()));
        cursor = r.page.unwrap().next_cursor;
    }
    let want: Vec<String> = (0..30)
        .step_by(3)
        .map(|i| format!("client{i:05}"))
        .collect();
    assert_eq!(all, want);
    // the summary: the same counts, no lines
    let r = s
        .answer(
            &crate::rpc::Query {
                summary: true,
                ..q.clone()
            },
            now,
        )
        .unwrap();
    assert!(r.clients.is_empty() && r.sources.is_empty());
    assert_eq!(r.matched["client"], 10);
    assert_eq!(r.page.unwrap().returned, 0);
}

#[test]
fn one_name_a_regex_bounds_and_bad_queries() {
    let (s, now) = speedo_of_clients(30);
    let one = crate::rpc::Query {
        kind: Some("client".into()),
        names: vec!["client00004".into(), "nobody".into()],
        ..Default::default()
    };
    let r = s.answer(&one, now).unwrap();
    assert_eq!(names(&r), ["client00004"]);
    assert_eq!(r.not_seen, ["client nobody"]);
    let re = crate::rpc::Query {
        regex: Some("^(client0002|ec$)".into()),
        ..Default::default()
    };
    let r = s.answer(&re, now).unwrap();
    assert_eq!(r.in_scope["client"] + r.in_scope["source"], 11);
    // the lag is 0 for every name: `lag` above 0 alerts none, `@0:0` (inside) alerts all
    let bounds = |inside: bool| crate::rpc::Query {
        kind: Some("client".into()),
        outside: Some(crate::rpc::Outside {
            metric: "lag".into(),
            bounds: vec![crate::rpc::Bounds {
                start: Some(0.0),
                end: Some(0.0),
                inside,
            }],
        }),
        summary: true,
        ..Default::default()
    };
    assert_eq!(s.answer(&bounds(false), now).unwrap().matched["client"], 0);
    let r = s.answer(&bounds(true), now).unwrap();
    assert_eq!((r.matched["client"], r.with_figure["client"]), (30, 30));
    for bad in [
        r#"{"regex": "("}"#,
        r#"{"kind": "node"}"#,
        r#"{"states": ["sleepy"]}"#,
        r#"{"cursor": "nope"}"#,
        r#"{"outside": {"metric": "speed"}}"#,
    ] {
        let q = crate::rpc::Query::from_body(bad.as_bytes());
        assert!(s.answer(&q, now).is_err(), "{bad}");
    }
}

#[test]
fn by_rate_the_busiest_first_and_those_without_a_rate_last() {
    let start = minute(0);
    let mut s = speedo_with(60, "[defaults]\ntd = 0\n", start);
    s.advance(start);
    // a whole minute: c1 3 files, c2 7, c3 1; c4 appears after it (no figure yet)
    minute_of(&mut s, 0, "c1", 3, 0);
    minute_of(&mut s, 0, "c2", 7, 0);
    minute_of(&mut s, 0, "c3", 1, 0);
    s.advance(minute(1));
    feed(&mut s, minute(1), &rec(minute(1), "c4", Some("ec"), 200, 1));
    let q = crate::rpc::Query {
        kind: Some("client".into()),
        sort: Some(crate::rpc::Sort::Rate),
        limit: Some(3),
        ..Default::default()
    };
    let r = s.answer(&q, minute(1)).unwrap();
    assert_eq!(names(&r), ["c2", "c1", "c3"]);
    let next = crate::rpc::Query {
        cursor: r.page.unwrap().next_cursor,
        ..q
    };
    assert_eq!(names(&s.answer(&next, minute(1)).unwrap()), ["c4"]);
}
