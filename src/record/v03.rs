//! The v03 encoding: Sarracenia 3 JSON messages. A message is a log record because it has a
//! `report` object, whatever its routing key (sr3 3.3.1 sends reports with the post routing
//! key, interleaved with ordinary posts).

use serde::Deserialize;
use serde_json::Value;

use super::{
    Encoding, LogRecord, Malformed, Parsed, excerpt, format_stamp, parse_stamp, parse_status,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    base_url: Option<String>,
    rel_path: Option<String>,
    report: Option<Report>,
    source: Option<String>,
    #[serde(rename = "from_cluster")]
    from_cluster: Option<String>,
    #[serde(rename = "to_clusters")]
    to_clusters: Option<String>,
    flow: Option<String>,
    size: Option<Value>,
    identity: Option<Identity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    code: Option<Value>,
    time_completed: Option<String>,
    message: Option<String>,
    host: Option<String>,
    user: Option<String>,
    elapsed: Option<f64>,
}

#[derive(Deserialize)]
struct Identity {
    method: Option<String>,
    value: Option<String>,
}

/// Parse a JSON body. Ordinary posts (no `report`) give [`Parsed::NotReport`].
pub(super) fn parse(text: &str) -> Result<Parsed, Malformed> {
    let m: Message = serde_json::from_str(text).map_err(|e| Malformed::Json(e.to_string()))?;
    let Some(report) = m.report else {
        return Ok(Parsed::NotReport);
    };
    let status = match &report.code {
        Some(Value::Number(n)) => parse_status(&n.to_string())?,
        Some(Value::String(s)) => parse_status(s)?,
        _ => return Err(Malformed::MissingField("report.code")),
    };
    let completed = report
        .time_completed
        .as_deref()
        .ok_or(Malformed::MissingField("report.timeCompleted"))?;
    let time = parse_stamp("report.timeCompleted", completed, true)?;
    let bytes = match &m.size {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or(Malformed::MissingField("size"))?),
        Some(Value::String(s)) => Some(s.parse::<u64>().map_err(|_| Malformed::BadHeader {
            name: "size",
            why: format!("not a byte count: {:?}", excerpt(s)),
        })?),
        Some(_) => return Err(Malformed::MissingField("size")),
    };
    let sum = m.identity.and_then(|i| match (i.method, i.value) {
        (Some(method), Some(value)) => Some(format!("{method},{value}")),
        _ => None,
    });
    Ok(Parsed::Log(LogRecord {
        encoding: Encoding::V03,
        time,
        srcpath: m.base_url.ok_or(Malformed::MissingField("baseUrl"))?,
        relpath: m.rel_path.ok_or(Malformed::MissingField("relPath"))?,
        status,
        node: report.host.unwrap_or_else(|| "unknown".to_string()),
        client: report.user.unwrap_or_else(|| "unknown".to_string()),
        duration: report.elapsed,
        source: m.source,
        from_cluster: m.from_cluster,
        to_clusters: m.to_clusters,
        flow: m.flow,
        message: report.message,
        sum,
        bytes,
    }))
}

/// Encode a record as a v03 report: `(routing key, JSON body)`. The node and client go in
/// `report.host`/`report.user`, as ddmon's sr3 plugin adds them.
pub fn encode_v03(r: &LogRecord) -> (String, String) {
    let words: Vec<&str> = r.relpath.split('/').filter(|w| !w.is_empty()).collect();
    let key = crate::topic::build("v03.report", &words);
    let mut report = serde_json::json!({
        "code": r.status,
        "timeCompleted": format_stamp(&r.time, true),
        "host": r.node,
        "user": r.client,
    });
    let mut body = serde_json::json!({
        "pubTime": format_stamp(&r.time, true),
        "baseUrl": r.srcpath,
        "relPath": r.relpath,
    });
    if let (Some(obj), Some(rep)) = (body.as_object_mut(), report.as_object_mut()) {
        if let Some(m) = &r.message {
            rep.insert("message".into(), m.clone().into());
        }
        if let Some(d) = r.duration {
            rep.insert("elapsed".into(), d.into());
        }
        for (k, v) in [
            ("source", &r.source),
            ("from_cluster", &r.from_cluster),
            ("to_clusters", &r.to_clusters),
            ("flow", &r.flow),
        ] {
            if let Some(v) = v {
                obj.insert(k.into(), v.clone().into());
            }
        }
        if let Some(b) = r.bytes {
            obj.insert("size".into(), b.into());
        }
        if let Some((method, value)) = r.sum.as_deref().and_then(|s| s.split_once(',')) {
            obj.insert(
                "identity".into(),
                serde_json::json!({"method": method, "value": value}),
            );
        }
        obj.insert("report".into(), report);
    }
    (key, body.to_string())
}
