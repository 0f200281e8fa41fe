//! The v02 encodings: the native log line (`v02.log.*`, `v02.report.*`, also Sarracenia 2
//! reports) and sr3's v02-mode notice with a nested `report` header table.

use super::{
    Encoding, HeaderValue, Headers, LogRecord, Malformed, bytes_from_parts, excerpt, format_stamp,
    parse_stamp, parse_status,
};

/// The native line: `<datestamp> <srcpath> <relpath> <status> <node> <client> <duration>`.
const LOG_FIELDS: usize = 7;
/// An sr3 v02 notice: `<pubTime> <baseUrl> <relPath>`.
const NOTICE_FIELDS: usize = 3;

/// Split the first line of a body into its space-separated fields, checking the count.
fn fields(text: &str, expected: usize) -> Result<Vec<&str>, Malformed> {
    let line = text.lines().next().unwrap_or("");
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.len() != expected {
        return Err(Malformed::FieldCount {
            expected,
            found: f.len(),
        });
    }
    Ok(f)
}

fn header_str(headers: &Headers, name: &'static str) -> Result<Option<String>, Malformed> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or(Malformed::BadHeader {
                name,
                why: "not a string".to_string(),
            }),
    }
}

/// The headers every v02 form carries the same way.
struct CommonHeaders {
    source: Option<String>,
    from_cluster: Option<String>,
    to_clusters: Option<String>,
    flow: Option<String>,
    message: Option<String>,
    sum: Option<String>,
    bytes: Option<u64>,
}

fn common_headers(headers: &Headers) -> Result<CommonHeaders, Malformed> {
    // a record without `source` is still a record (dd_log prints it, dd_speedo counts its
    // client); dd_log2source, which needs it to route, sends it to the unknown exchange
    let source = header_str(headers, "source")?;
    let bytes = match header_str(headers, "parts")? {
        Some(p) => Some(bytes_from_parts(&p)?),
        None => None,
    };
    Ok(CommonHeaders {
        source,
        from_cluster: header_str(headers, "from_cluster")?,
        to_clusters: header_str(headers, "to_clusters")?,
        flow: header_str(headers, "flow")?,
        message: header_str(headers, "message")?,
        sum: header_str(headers, "sum")?,
        bytes,
    })
}

/// Parse the native v02 log line.
pub(super) fn parse_log(headers: &Headers, text: &str) -> Result<LogRecord, Malformed> {
    let f = fields(text, LOG_FIELDS)?;
    let time = parse_stamp("datestamp", f[0], false)?;
    let status = parse_status(f[3])?;
    let duration = f[6]
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .ok_or_else(|| Malformed::BadDuration(excerpt(f[6])))?;
    let h = common_headers(headers)?;
    Ok(LogRecord {
        encoding: Encoding::V02,
        time,
        srcpath: f[1].to_string(),
        relpath: f[2].to_string(),
        status,
        node: f[4].to_string(),
        client: f[5].to_string(),
        duration: Some(duration),
        source: h.source,
        from_cluster: h.from_cluster,
        to_clusters: h.to_clusters,
        flow: h.flow,
        message: h.message,
        sum: h.sum,
        bytes: h.bytes,
    })
}

/// Parse sr3's v02-mode report: a plain notice whose `report` header is a table
/// `{code, timeCompleted, message[, host, user]}`.
pub(super) fn parse_notice_report(
    headers: &Headers,
    report: &HeaderValue,
    text: &str,
) -> Result<LogRecord, Malformed> {
    let HeaderValue::Table(report) = report else {
        return Err(Malformed::BadHeader {
            name: "report",
            why: "not a table".to_string(),
        });
    };
    let f = fields(text, NOTICE_FIELDS)?;
    // The notice's own pubTime must be well formed even though the record's time is the
    // completion time: a broken notice is a broken message.
    parse_stamp("pubTime", f[0], false)?;
    let status = match report.get("code") {
        Some(HeaderValue::Int(code)) => parse_status(&code.to_string())?,
        Some(HeaderValue::Str(code)) => parse_status(code)?,
        _ => return Err(Malformed::MissingField("report.code")),
    };
    let completed = match report.get("timeCompleted").and_then(HeaderValue::as_str) {
        Some(t) => parse_stamp("report.timeCompleted", t, true)?,
        None => return Err(Malformed::MissingField("report.timeCompleted")),
    };
    let text_of = |k: &str| {
        report
            .get(k)
            .and_then(HeaderValue::as_str)
            .map(str::to_string)
    };
    let h = common_headers(headers)?;
    Ok(LogRecord {
        encoding: Encoding::V02Report,
        time: completed,
        srcpath: f[1].to_string(),
        relpath: f[2].to_string(),
        status,
        node: text_of("host").unwrap_or_else(|| "unknown".to_string()),
        client: text_of("user").unwrap_or_else(|| "unknown".to_string()),
        duration: None,
        source: h.source,
        from_cluster: h.from_cluster,
        to_clusters: h.to_clusters,
        flow: h.flow,
        message: text_of("message").or(h.message),
        sum: h.sum,
        bytes: h.bytes,
    })
}

/// Encode a record as the native v02 log message: `(routing key, headers, body)`.
///
/// The routing key is `v02.log.` followed by the relpath's words, as the pump does. Used by
/// the demo, the tests and the benchmarks; `parse` of the result gives the record back.
pub fn encode_v02(r: &LogRecord) -> (String, Headers, String) {
    // The pump's own keys: the path's words as they are (`a/b/c.gif` gives `v02.log.a.b.c.gif`).
    let path_words = r.relpath.trim_matches('/').replace('/', ".");
    let key = crate::topic::cut(&format!("v02.log.{path_words}")).to_string();
    let body = format!(
        "{} {} {} {:03} {} {} {}",
        format_stamp(&r.time, false),
        r.srcpath,
        r.relpath,
        r.status,
        r.node,
        r.client,
        r.duration.unwrap_or(0.0)
    );
    let mut h = Headers::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            h.insert(k.to_string(), HeaderValue::Str(v.clone()));
        }
    };
    put("source", &r.source);
    put("from_cluster", &r.from_cluster);
    put("to_clusters", &r.to_clusters);
    put("flow", &r.flow);
    put("message", &r.message);
    put("sum", &r.sum);
    if let Some(b) = r.bytes {
        h.insert(
            "parts".to_string(),
            HeaderValue::Str(format!("1,{b},1,0,0")),
        );
    }
    (key, h, body)
}
