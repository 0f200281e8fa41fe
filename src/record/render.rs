//! Rendering records for people and programs: the fixed `line` format (grep, awk and cut work
//! on it) and the `json` format (one object per line).
//!
//! The line format, fields separated by one space, always in this order:
//!
//! ```text
//! <topic> <time> <status> <source> <client> <node> <flow> <url> <bytes> <duration> <message>
//! ```
//!
//! `time` is ISO 8601 UTC with milliseconds; a missing value is `-`; whitespace and control
//! characters inside fields 1 to 10 are percent-escaped (`%20`) so that field numbers never
//! shift; the message is last and runs to the end of the line (its control characters become
//! spaces). ddmon's own messages (speedos, alive, status...) print as `<topic> <body>`.

use std::fmt::Write as _;

use serde::Serialize;

use super::{LogRecord, Parsed};

/// Write one field, percent-escaping what would split it; `-` when absent or empty.
fn push_field(out: &mut String, value: Option<&str>) {
    match value {
        None | Some("") => out.push('-'),
        Some(v) => {
            for c in v.chars() {
                if c.is_whitespace() || c.is_control() {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "%{b:02X}");
                    }
                } else {
                    out.push(c);
                }
            }
        }
    }
    out.push(' ');
}

/// Append `text` with every control character (newlines included) turned into a space.
fn push_flat(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
}

/// Render a message in the line format (no trailing newline). `None` for a
/// [`Parsed::NotReport`], which is not shown.
pub fn render_line(topic: &str, parsed: &Parsed) -> Option<String> {
    match parsed {
        Parsed::NotReport => None,
        Parsed::Event(body) => {
            let mut out = String::with_capacity(topic.len() + body.len() + 1);
            push_field(&mut out, Some(topic));
            push_flat(&mut out, body);
            Some(out)
        }
        Parsed::Log(r) => Some(line_of_record(topic, r)),
    }
}

fn line_of_record(topic: &str, r: &LogRecord) -> String {
    let mut out = String::with_capacity(256);
    push_field(&mut out, Some(topic));
    let _ = write!(out, "{} ", r.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    let _ = write!(out, "{} ", r.status);
    push_field(&mut out, r.source.as_deref());
    push_field(&mut out, Some(&r.client));
    push_field(&mut out, Some(&r.node));
    push_field(&mut out, r.flow.as_deref());
    push_field(&mut out, Some(&r.url()));
    match r.bytes {
        Some(b) => {
            let _ = write!(out, "{b} ");
        }
        None => out.push_str("- "),
    }
    match r.duration {
        Some(d) => {
            let _ = write!(out, "{d} ");
        }
        None => out.push_str("- "),
    }
    match r.message.as_deref() {
        None | Some("") => out.push('-'),
        Some(m) => push_flat(&mut out, m),
    }
    out
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    url: String,
    class: crate::topic::StatusClass,
    #[serde(flatten)]
    record: &'a LogRecord,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    topic: &'a str,
    body: serde_json::Value,
}

/// Render a message as one JSON object (no trailing newline). `None` for a
/// [`Parsed::NotReport`]. An event whose body is JSON is embedded as JSON, else as a string.
pub fn render_json(topic: &str, parsed: &Parsed) -> Option<String> {
    let out = match parsed {
        Parsed::NotReport => return None,
        Parsed::Event(body) => serde_json::to_string(&JsonEvent {
            topic,
            body: serde_json::from_str(body)
                .unwrap_or_else(|_| serde_json::Value::String(body.clone())),
        }),
        Parsed::Log(r) => serde_json::to_string(&JsonRecord {
            topic,
            url: r.url(),
            class: r.class(),
            record: r,
        }),
    };
    // Serialising these plain structs cannot fail (string keys, finite or null numbers).
    out.ok()
}
