//! `LogRecord`: the one normalised form of a log message, and the parser that makes it.
//!
//! Three encodings arrive on the wire (SPEC §2): the pump's native v02 log line, the
//! Sarracenia 3 v03 JSON report, and a v02 notice carrying a nested `report` header (sr3 in
//! v02 mode). [`parse`] turns any message into a [`Parsed`] value or a typed [`Malformed`]
//! error that says what was wrong. Nothing here does I/O: the broker module hands in the
//! routing key, the headers (already converted to [`Headers`]) and the body.

mod render;
mod v02;
mod v03;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::topic::StatusClass;

pub use render::{render_json, render_line};
pub use v02::encode_v02;
pub use v03::encode_v03;

/// Largest body accepted as a log message. Real log lines are a few hundred bytes; anything
/// this large is a mistake or an attack, and is rejected before it is looked at.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub use crate::headers::{HeaderValue, Headers};

/// Which of the three accepted encodings a record came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The native v02 log line (also Sarracenia 2 reports).
    V02,
    /// A v02 notice with a nested `report` header (sr3 in v02 mode).
    V02Report,
    /// A Sarracenia 3 JSON report.
    V03,
}

/// One log message, normalised: who processed which product, where, when, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// The encoding it arrived in.
    pub encoding: Encoding,
    /// When the processing completed (UTC): the v02 datestamp or the v03 `timeCompleted`.
    pub time: DateTime<Utc>,
    /// Base URL of the product.
    pub srcpath: String,
    /// The variable part of the product's URL.
    pub relpath: String,
    /// HTTP-style status code, 100..=599.
    pub status: u16,
    /// The host that processed the product.
    pub node: String,
    /// The account on whose behalf it was processed.
    pub client: String,
    /// Seconds the processing took, when the encoding carries it.
    pub duration: Option<f64>,
    /// The source that owns the product.
    pub source: Option<String>,
    /// The cluster the product came from.
    pub from_cluster: Option<String>,
    /// The clusters the product is destined to.
    pub to_clusters: Option<String>,
    /// The flow (configuration) that processed it.
    pub flow: Option<String>,
    /// Text of the status.
    pub message: Option<String>,
    /// Checksum of the product.
    pub sum: Option<String>,
    /// Byte count of the product (or of this part of it).
    pub bytes: Option<u64>,
}

impl LogRecord {
    /// The product's full URL: srcpath joined to relpath with exactly one `/` between them
    /// when either side has one (`http://h/` + `/a` and `file:/d` + `a` both give one slash).
    pub fn url(&self) -> String {
        let base = self.srcpath.as_str();
        let rel = self.relpath.as_str();
        match (base.ends_with('/'), rel.starts_with('/')) {
            (true, true) => format!("{}{}", base, &rel[1..]),
            (false, false) if !base.is_empty() && !rel.is_empty() => format!("{base}/{rel}"),
            _ => format!("{base}{rel}"),
        }
    }

    /// The class of the record's status code.
    pub fn class(&self) -> StatusClass {
        // `status` is validated to 100..=599 by every parser.
        StatusClass::of(self.status).unwrap_or(StatusClass::Error)
    }
}

/// What a message turned out to be.
// Not boxed: a `Parsed` lives for one message on the hot path, and the other variants are rare.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A log record.
    Log(LogRecord),
    /// An ordinary post (a v03 or v02 notice without a `report`): not a log message; skipped
    /// and counted.
    NotReport,
    /// One of ddmon's own messages (`v01.speedo...`, `v01.alive...`): text to show as is.
    Event(String),
}

/// Why a message is not a log message. Each variant is one "kind" for counting and for
/// rate-limited warnings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Malformed {
    /// The body is empty.
    #[error("empty body")]
    Empty,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {0} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    /// The body is not UTF-8 text.
    #[error("body is not UTF-8 text (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// The routing key is none of the accepted kinds and the body is not a v03 report.
    #[error(
        "routing key {0:?} is not a log topic (v02.log.*, v02.report.*, v02.post.*, v03.*, v01.*)"
    )]
    UnknownTopic(String),
    /// The v02 line has the wrong number of fields.
    #[error("expected {expected} space-separated fields, found {found}")]
    FieldCount {
        /// How many fields this encoding has.
        expected: usize,
        /// How many were there.
        found: usize,
    },
    /// A date is not in the expected form.
    #[error("bad {field} {value:?} (expected {expected})")]
    BadDate {
        /// Which field.
        field: &'static str,
        /// What was there (cut to 40 characters).
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// The status code is not three digits in 100..=599.
    #[error("bad status code {0:?} (expected three digits, 100 to 599)")]
    BadStatus(String),
    /// The duration is not a non-negative decimal number of seconds.
    #[error("bad duration {0:?} (expected decimal seconds)")]
    BadDuration(String),
    /// A header has the wrong type or form.
    #[error("bad header {name:?}: {why}")]
    BadHeader {
        /// Which header.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The JSON body cannot be parsed.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A required JSON field is missing or has the wrong type.
    #[error("missing or invalid field {0:?}")]
    MissingField(&'static str),
}

impl Malformed {
    /// A short stable name for the kind of problem, for counters and rate-limited logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::TooLarge(_) => "too_large",
            Malformed::NotUtf8(_) => "not_utf8",
            Malformed::UnknownTopic(_) => "unknown_topic",
            Malformed::FieldCount { .. } => "field_count",
            Malformed::BadDate { .. } => "bad_date",
            Malformed::BadStatus(_) => "bad_status",
            Malformed::BadDuration(_) => "bad_duration",
            Malformed::BadHeader { .. } => "bad_header",
            Malformed::Json(_) => "json",
            Malformed::MissingField(_) => "missing_field",
        }
    }
}

/// Parse one message: its routing key, headers and body.
///
/// - `v01.*` (ddmon's own speedo, alive, status... messages) gives [`Parsed::Event`];
/// - a JSON body (any other routing key, `v02.*` included) is v03: a report when it has a
///   `report` object, else an ordinary post;
/// - `v02.log.*` / `v02.report.*` is the native v02 line;
/// - `v02.*` with a `report` table header is sr3's v02-mode report; without, an ordinary post.
pub fn parse(routing_key: &str, headers: &Headers, body: &[u8]) -> Result<Parsed, Malformed> {
    if body.is_empty() {
        return Err(Malformed::Empty);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(Malformed::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|e| Malformed::NotUtf8(e.valid_up_to()))?;
    if routing_key.starts_with("v01.") {
        return Ok(Parsed::Event(text.trim_end().to_string()));
    }
    // JSON is v03 whatever the key (a v02 line starts with its datestamp, never a brace)
    if text.trim_start().starts_with('{') {
        return v03::parse(text);
    }
    if routing_key.starts_with("v02.log.")
        || routing_key.starts_with("v02.report.")
        || routing_key == "v02.log"
        || routing_key == "v02.report"
    {
        return v02::parse_log(headers, text).map(Parsed::Log);
    }
    if routing_key.starts_with("v02.") || routing_key == "v02" {
        return match headers.get("report") {
            Some(report) => v02::parse_notice_report(headers, report, text).map(Parsed::Log),
            None => Ok(Parsed::NotReport),
        };
    }
    Err(Malformed::UnknownTopic(
        routing_key.chars().take(80).collect(),
    ))
}

/// Cut a value for an error message so a 10 MiB field does not become a 10 MiB log line.
fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parse `YYYYMMDDHHMMSS[.f*]` (v02 datestamp) or, with `t_separator`, `YYYYMMDDTHHMMSS[.f*]`
/// (v03). Fraction digits beyond nanoseconds are ignored.
fn parse_stamp(
    field: &'static str,
    value: &str,
    t_separator: bool,
) -> Result<DateTime<Utc>, Malformed> {
    let expected = if t_separator {
        "YYYYMMDDTHHMMSS[.fff]"
    } else {
        "YYYYMMDDHHMMSS[.fff]"
    };
    let bad = || Malformed::BadDate {
        field,
        value: excerpt(value),
        expected,
    };
    let (main, frac) = match value.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (value, None),
    };
    // Only ASCII can be sliced by byte offsets below (found by fuzzing: a multi-byte
    // character in a 14-byte stamp).
    if !main.is_ascii() {
        return Err(bad());
    }
    let b = main.as_bytes();
    let (date, time) = if t_separator {
        if b.len() != 15 || b[8] != b'T' {
            return Err(bad());
        }
        (&main[..8], &main[9..])
    } else {
        if b.len() != 14 {
            return Err(bad());
        }
        (&main[..8], &main[8..])
    };
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if !digits(date) || !digits(time) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
    let nanos = match frac {
        None => 0,
        Some(f) if f.is_empty() || !digits(f) => return Err(bad()),
        Some(f) => {
            let mut n: u32 = 0;
            for i in 0..9 {
                n = n * 10 + f.as_bytes().get(i).map_or(0, |c| u32::from(c - b'0'));
            }
            n
        }
    };
    let day = NaiveDate::from_ymd_opt(num(&date[..4])? as i32, num(&date[4..6])?, num(&date[6..])?)
        .ok_or_else(bad)?;
    let at = day
        .and_hms_nano_opt(num(&time[..2])?, num(&time[2..4])?, num(&time[4..])?, nanos)
        .ok_or_else(bad)?;
    Ok(at.and_utc())
}

/// Parse a status code: exactly three ASCII digits in 100..=599.
fn parse_status(value: &str) -> Result<u16, Malformed> {
    if value.len() == 3 && value.bytes().all(|c| c.is_ascii_digit()) {
        if let Ok(code) = value.parse::<u16>() {
            if StatusClass::of(code).is_some() {
                return Ok(code);
            }
        }
    }
    Err(Malformed::BadStatus(excerpt(value)))
}

/// The byte count of a product from a v02 `parts` header:
/// `<method>,<blocksize>,<blockcount>,<remainder>,<blocknumber>`. The size is the blocksize
/// when blockcount is 1, else the size of this block (the remainder for the last block).
fn bytes_from_parts(parts: &str) -> Result<u64, Malformed> {
    let bad = |why: &str| Malformed::BadHeader {
        name: "parts",
        why: format!("{why} in {:?}", excerpt(parts)),
    };
    let f: Vec<&str> = parts.split(',').collect();
    if f.len() != 5 {
        return Err(bad("expected 5 comma-separated fields"));
    }
    let n = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| bad("non-numeric field"))
    };
    let (blocksize, blockcount, remainder, blocknumber) = (n(f[1])?, n(f[2])?, n(f[3])?, n(f[4])?);
    if blockcount <= 1 {
        return Ok(blocksize);
    }
    if remainder > 0 && blocknumber + 1 == blockcount {
        Ok(remainder)
    } else {
        Ok(blocksize)
    }
}

/// Render a timestamp the way the wire does (v02 datestamp, `YYYYMMDDHHMMSS.fff...`), with
/// nanosecond precision so that parse(encode(t)) == t.
fn format_stamp(t: &DateTime<Utc>, t_separator: bool) -> String {
    if t_separator {
        t.format("%Y%m%dT%H%M%S%.9f").to_string()
    } else {
        t.format("%Y%m%d%H%M%S%.9f").to_string()
    }
}

/// Counts malformed messages by kind and decides when to warn: at most once a second per
/// kind, saying how many of that kind were not logged since. Time comes from the caller's
/// clock, so tests run it in virtual time.
#[derive(Debug, Default)]
pub struct MalformedTally {
    kinds: BTreeMap<&'static str, KindTally>,
}

#[derive(Debug, Default)]
struct KindTally {
    total: u64,
    unlogged: u64,
    last_logged: Option<DateTime<Utc>>,
}

impl MalformedTally {
    /// Count one; `Some(n)` when it should be logged now, `n` being how many of this kind went
    /// unlogged before it.
    pub fn count(&mut self, m: &Malformed, now: DateTime<Utc>) -> Option<u64> {
        let k = self.kinds.entry(m.kind()).or_default();
        k.total += 1;
        let due = k
            .last_logged
            .is_none_or(|t| now - t >= chrono::Duration::seconds(1));
        if due {
            k.last_logged = Some(now);
            Some(std::mem::take(&mut k.unlogged))
        } else {
            k.unlogged += 1;
            None
        }
    }

    /// [`parse`] a message; a malformed one is counted here and warned about (at most once a
    /// second per kind, with the topic and what was wrong).
    pub fn parse(
        &mut self,
        routing_key: &str,
        headers: &Headers,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, Malformed> {
        let parsed = parse(routing_key, headers, body);
        if let Err(m) = &parsed {
            if let Some(unlogged) = self.count(m, now) {
                tracing::warn!(topic = %routing_key, kind = m.kind(), unlogged, "malformed message: {m}");
            }
        }
        parsed
    }

    /// Total counted, all kinds.
    pub fn total(&self) -> u64 {
        self.kinds.values().map(|k| k.total).sum()
    }

    /// Counts per kind.
    pub fn by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.kinds.iter().map(|(k, v)| (*k, v.total)).collect()
    }
}

#[cfg(test)]
mod tests;
