//! `dd_speedo --replay`: the speedo of a capture written by `dd_log --output` (line format)
//! or `dd_log --format json`, in the records' own time.
//!
//! Each record's datestamp is its arrival (so the lag is 0) and moves the clock; a record
//! older than the current interval counts in the current one. At the end of the input the
//! current interval is closed. What comes out is what the daemon would publish, printed like
//! `dd_log` prints speedos: `<topic> <body>` (or `{"topic":..., "body":...}`).
//!
//! From the line format the relpath is not known apart from the URL: the subjects of the top
//! list are then the directories of the URL's path (after the host).

use std::io::{BufRead, Write};

use chrono::NaiveDateTime;

use super::meter::{Output, Speedo};
use crate::record::{Encoding, LogRecord, Parsed, render_json, render_line};

/// Why a capture line was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadLine(pub String);

/// Read one capture line: `Ok(None)` for a line that is not a log record (ddmon's own
/// messages, blank lines).
pub fn parse_capture_line(line: &str) -> Result<Option<LogRecord>, BadLine> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        return parse_json(line);
    }
    let f: Vec<&str> = line.splitn(11, ' ').collect();
    if f[0].starts_with("v01.") {
        return Ok(None);
    }
    if f.len() < 11 {
        return Err(BadLine(format!(
            "{} fields, the line format has 11",
            f.len()
        )));
    }
    let time = NaiveDateTime::parse_from_str(f[1], "%Y-%m-%dT%H:%M:%S%.fZ")
        .map_err(|_| BadLine(format!("bad time {:?}", excerpt(f[1]))))?
        .and_utc();
    let status: u16 = f[2]
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| BadLine(format!("bad status {:?}", excerpt(f[2]))))?;
    let opt = |s: &str| (s != "-").then(|| unescape(s));
    let url = unescape(f[7]);
    Ok(Some(LogRecord {
        encoding: Encoding::V02,
        time,
        relpath: url_path(&url).to_string(),
        srcpath: String::new(),
        status,
        node: unescape(f[5]),
        client: unescape(f[4]),
        duration: f[9].parse().ok(),
        source: opt(f[3]),
        from_cluster: None,
        to_clusters: None,
        flow: opt(f[6]),
        message: opt(f[10]),
        sum: None,
        bytes: f[8].parse().ok(),
    }))
}

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_json(line: &str) -> Result<Option<LogRecord>, BadLine> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| BadLine(format!("bad JSON: {e}")))?;
    if v.get("body").is_some() {
        return Ok(None); // an event (speedo, alive...)
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| BadLine(format!("not a dd_log JSON record: {e}")))
}

/// Undo dd_log's escaping of whitespace and control characters (`%20`, `%0A`...). Other `%`
/// sequences are left alone: they were in the data (URLs).
fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = (h * 16 + l) as u8;
                if v.is_ascii_whitespace() || v.is_ascii_control() {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The path of a URL (after `scheme://host`), or the whole text when it is not one.
fn url_path(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => url,
    }
}

/// What a replay read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayTotals {
    /// Lines read.
    pub lines: u64,
    /// Log records counted.
    pub records: u64,
    /// Lines that were not log records (speedos, alive...), skipped.
    pub skipped: u64,
    /// Lines that could not be read.
    pub bad: u64,
    /// Lines printed.
    pub printed: u64,
}

/// Print one output of the speedo as dd_log prints it.
pub fn render(o: &Output, json: bool) -> String {
    let (topic, body) = match o {
        Output::Speedo(r) => (r.topic(), r.body()),
        Output::Alert(a) => (a.topic(), a.body()),
    };
    let parsed = Parsed::Event(body);
    let text = if json {
        render_json(&topic, &parsed)
    } else {
        render_line(&topic, &parsed)
    };
    text.unwrap_or_default()
}

/// Replay `input` through `speedo`, printing to `out`. A bad line is counted and warned
/// about (the first few), never fatal.
pub fn replay(
    speedo: &mut Speedo,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    json: bool,
    totals: &mut ReplayTotals,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        totals.lines += 1;
        match parse_capture_line(&line) {
            Ok(Some(r)) => {
                if totals.records == 0 {
                    speedo.set_start(r.time);
                }
                emit(speedo.advance(r.time), out, json, totals)?;
                speedo.observe(&r, r.time);
                totals.records += 1;
            }
            Ok(None) => totals.skipped += 1,
            Err(e) => {
                totals.bad += 1;
                if totals.bad <= 10 {
                    tracing::warn!(line = totals.lines, "unreadable capture line: {e}");
                }
            }
        }
    }
}

/// Close the last interval and print it.
pub fn finish(
    speedo: &mut Speedo,
    out: &mut dyn Write,
    json: bool,
    totals: &mut ReplayTotals,
) -> std::io::Result<()> {
    emit(speedo.finish(), out, json, totals)
}

fn emit(
    outputs: Vec<Output>,
    out: &mut dyn Write,
    json: bool,
    totals: &mut ReplayTotals,
) -> std::io::Result<()> {
    for o in &outputs {
        writeln!(out, "{}", render(o, json))?;
        totals.printed += 1;
    }
    Ok(())
}
