//! Fuzz the record parser with any routing key kind, headers and body: it must answer (a
//! record, a skip, or a typed error) and never panic; a rendered line is always one line.

#![no_main]

use ddmon::record::{HeaderValue, Headers, parse, render_json, render_line};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 6] = [
    "v02.log.NRDPS.GIF.x.gif",
    "v02.report.data",
    "v02.post.data",
    "v03.post",
    "v01.speedo.client.all",
    "weather.other",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let key = KEYS[usize::from(data[0]) % KEYS.len()];
    let flags = data[1];
    let split = usize::from(data[2]).min(data.len() - 3);
    let (head, body) = data[3..].split_at(split);
    let text = String::from_utf8_lossy(head).into_owned();
    let mut headers = Headers::new();
    if flags & 1 != 0 {
        headers.insert("source".into(), HeaderValue::Str("src".into()));
    }
    if flags & 2 != 0 {
        headers.insert("parts".into(), HeaderValue::Str(text.clone()));
    }
    if flags & 4 != 0 {
        let mut report = Headers::new();
        report.insert("code".into(), HeaderValue::Int(i64::from(data[3 % data.len()]) * 3));
        report.insert("timeCompleted".into(), HeaderValue::Str(text.clone()));
        headers.insert("report".into(), HeaderValue::Table(report));
    }
    if flags & 8 != 0 {
        headers.insert("report".into(), HeaderValue::Str(text));
    }
    if let Ok(parsed) = parse(key, &headers, body) {
        if let Some(line) = render_line(key, &parsed) {
            assert!(!line.contains('\n'));
        }
        let _ = render_json(key, &parsed);
    }
});
