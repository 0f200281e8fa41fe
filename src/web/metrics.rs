//! `/metrics`: OpenMetrics text from the board (speedo counters, rates, states and lag per
//! client and source), the daemons' own counters (their `health` answers) and dd_web's own,
//! encoded by the `prometheus-client` crate on each scrape (a [`Collector`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::board::{Board, Name};
use crate::speedo::Health;

/// dd_web's own counters.
#[derive(Debug, Default)]
pub struct WebCounters {
    /// Tails open now.
    pub tails_open: AtomicU64,
    /// Tails opened since start.
    pub tails_opened: AtomicU64,
    /// Lines sent to browsers.
    pub tail_lines: AtomicU64,
    /// Lines dropped because a browser was too slow.
    pub tail_dropped: AtomicU64,
    /// Tails closed because their browser went away or stopped answering.
    pub tails_expired: AtomicU64,
    /// Sign-ins accepted and refused by the broker.
    pub logins: [AtomicU64; 2],
}

impl WebCounters {
    /// Add one to a counter.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The collector behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    /// The board it reads.
    pub board: Arc<Mutex<Board>>,
    /// dd_web's counters.
    pub web: Arc<WebCounters>,
    /// Seconds between stats requests (for freshness).
    pub poll_s: f64,
    /// The roster of ddmon's daemons.
    pub roster: Option<Arc<Mutex<crate::roster::Roster>>>,
}

type Labels = Vec<(&'static str, String)>;

fn name_labels(n: &Name) -> Labels {
    vec![
        ("kind", n.kind.as_str().to_string()),
        ("name", n.name.clone()),
    ]
}

fn with(mut l: Labels, k: &'static str, v: &str) -> Labels {
    l.push((k, v.to_string()));
    l
}

/// One metric family: a descriptor then each (labels, value).
fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Numeric leaves of a daemon's counters object, flattened (`a.b`).
fn numeric_leaves(prefix: &str, v: &Value, out: &mut Vec<(String, u64)>) {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push((prefix.to_string(), u));
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(&key, v, out);
            }
        }
        _ => {}
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let board = super::lock_board(&self.board).clone();
        self.speedo_families(&mut enc, &board)?;
        daemon_families(&mut enc, &board)?;
        if let Some(r) = &self.roster {
            let rows = r
                .lock()
                .map(|r| r.rows(chrono::Utc::now()))
                .unwrap_or_default();
            roster_families(&mut enc, &rows)?;
        }
        self.web_families(&mut enc, &board)
    }
}

impl Metrics {
    /// Per client and source: counts, figures, lag, state; and whether dd_speedo answers.
    fn speedo_families(
        &self,
        enc: &mut DescriptorEncoder,
        board: &Board,
    ) -> Result<(), std::fmt::Error> {
        let now = chrono::Utc::now();
        let names: Vec<&Name> = board.names().collect();
        let mut files = Vec::new();
        let mut bytes = Vec::new();
        for n in &names {
            files.push((with(name_labels(n), "result", "good"), n.good));
            files.push((with(name_labels(n), "result", "error"), n.errors));
            bytes.push((with(name_labels(n), "result", "good"), n.good_bytes));
            bytes.push((with(name_labels(n), "result", "error"), n.bad_bytes));
        }
        counters(
            enc,
            "ddmon_speedo_files",
            "Files counted by dd_speedo since it started, good or error",
            files,
        )?;
        counters(
            enc,
            "ddmon_speedo_bytes",
            "Bytes counted by dd_speedo since it started, good or error",
            bytes,
        )?;
        let opt = |get: fn(&Name) -> Option<f64>| -> Vec<(Labels, f64)> {
            names
                .iter()
                .filter_map(|n| get(n).map(|v| (name_labels(n), v)))
                .collect()
        };
        gauges(
            enc,
            "ddmon_speedo_files_per_minute",
            "Good files in the last whole minute",
            opt(|n| n.files_per_min),
        )?;
        gauges(
            enc,
            "ddmon_speedo_rate_files_per_minute",
            "Good files per minute between dd_web's last two readings",
            opt(|n| n.rate),
        )?;
        gauges(
            enc,
            "ddmon_speedo_bytes_per_second",
            "Good bytes per second in the last whole minute",
            opt(|n| n.bytes_per_sec),
        )?;
        gauges(
            enc,
            "ddmon_speedo_error_ratio",
            "Errors / attempts in the last whole minute",
            opt(|n| n.error_ratio),
        )?;
        gauges(
            enc,
            "ddmon_speedo_expected_files_per_minute",
            "The learned expectation of files per minute",
            opt(|n| n.expected),
        )?;
        gauges(
            enc,
            "ddmon_speedo_seconds_since_good",
            "Seconds since the last good delivery",
            opt(|n| n.seconds_since_good),
        )?;
        gauges(
            enc,
            "ddmon_speedo_queue_backlog",
            "A client's broker queues: messages ready and unacknowledged, at the last poll",
            opt(|n| n.backlog.map(|b| b as f64)),
        )?;
        gauges(
            enc,
            "ddmon_speedo_queue_consumers",
            "A client's broker queues: consumers, at the last poll",
            opt(|n| n.consumers.map(|b| b as f64)),
        )?;
        lag_and_states(enc, &names)?;
        gauges(
            enc,
            "ddmon_speedo_up",
            "1 when dd_speedo answered dd_web's last requests in time",
            vec![(
                vec![("instance", board.instance.clone().unwrap_or_default())],
                if board.fresh(now, self.poll_s) {
                    1.0
                } else {
                    0.0
                },
            )],
        )
    }
    /// dd_web's own: tails, lines, sign-ins, polls.
    fn web_families(
        &self,
        enc: &mut DescriptorEncoder,
        board: &Board,
    ) -> Result<(), std::fmt::Error> {
        let w = &self.web;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauges(
            enc,
            "ddmon_web_tails_open",
            "Live tails open now",
            vec![(vec![], get(&w.tails_open) as f64)],
        )?;
        counters(
            enc,
            "ddmon_web_tail_lines",
            "Log lines sent to browsers, and dropped for a browser too slow",
            vec![
                (vec![("result", "sent".to_string())], get(&w.tail_lines)),
                (
                    vec![("result", "dropped".to_string())],
                    get(&w.tail_dropped),
                ),
            ],
        )?;
        counters(
            enc,
            "ddmon_web_tails",
            "Tails opened, and closed because their browser went away",
            vec![
                (vec![("event", "opened".to_string())], get(&w.tails_opened)),
                (
                    vec![("event", "expired".to_string())],
                    get(&w.tails_expired),
                ),
            ],
        )?;
        counters(
            enc,
            "ddmon_web_logins",
            "Sign-ins, as the broker accepted or refused them",
            vec![
                (vec![("result", "accepted".to_string())], get(&w.logins[0])),
                (vec![("result", "refused".to_string())], get(&w.logins[1])),
            ],
        )?;
        counters(
            enc,
            "ddmon_web_polls",
            "dd_speedo stats requests: sent, answered, unanswered",
            vec![
                (vec![("result", "sent".to_string())], board.polls[0]),
                (vec![("result", "answered".to_string())], board.polls[1]),
                (vec![("result", "unanswered".to_string())], board.polls[2]),
            ],
        )?;
        Ok(())
    }
}

/// The lag (mean and largest) and the state of each client and source.
fn lag_and_states(enc: &mut DescriptorEncoder, names: &[&Name]) -> Result<(), std::fmt::Error> {
    let mut lag = Vec::new();
    for n in names {
        if let Some(v) = n.lag_mean {
            lag.push((with(name_labels(n), "stat", "mean"), v));
        }
        if let Some(v) = n.lag_max {
            lag.push((with(name_labels(n), "stat", "max"), v));
        }
    }
    gauges(
        enc,
        "ddmon_speedo_lag_seconds",
        "Lag from a record's time to its arrival, mean and largest, last whole minute",
        lag,
    )?;
    let mut states = Vec::new();
    for n in names {
        for s in Health::ALL {
            let on = if n.state == s { 1.0 } else { 0.0 };
            states.push((with(name_labels(n), "state", s.as_str()), on));
        }
    }
    gauges(
        enc,
        "ddmon_speedo_state",
        "Threshold state of each client and source (1 for the current state)",
        states,
    )?;
    Ok(())
}

/// Every daemon that answered the last health request: healthy or not, and its counters.
fn daemon_families(enc: &mut DescriptorEncoder, board: &Board) -> Result<(), std::fmt::Error> {
    let mut up = Vec::new();
    let mut daemon_counts = Vec::new();
    for d in &board.daemons {
        let id: Labels = vec![("tool", d.tool.clone()), ("instance", d.instance.clone())];
        let result = d.result.as_ref();
        let healthy = result.is_none_or(|h| h.state != crate::daemon::State::Degraded);
        up.push((id.clone(), if healthy { 1.0 } else { 0.0 }));
        let mut leaves = Vec::new();
        let none = Value::Null;
        numeric_leaves("", result.map_or(&none, |h| &h.counters), &mut leaves);
        for (k, v) in leaves {
            daemon_counts.push((with(id.clone(), "counter", &k), v));
        }
    }
    gauges(
        enc,
        "ddmon_daemon_healthy",
        "Each ddmon daemon that answered the last health request: 1 healthy, 0 degraded",
        up,
    )?;
    counters(
        enc,
        "ddmon_daemon_events",
        "Each ddmon daemon's own counters, as it reported them",
        daemon_counts,
    )?;
    Ok(())
}

/// The roster: each daemon's state (1 for its state, 0 for the others) and the seconds since
/// its last alive message.
fn roster_families(
    enc: &mut DescriptorEncoder,
    rows: &[crate::roster::Row],
) -> Result<(), std::fmt::Error> {
    let mut states = Vec::new();
    let mut ages = Vec::new();
    for r in rows {
        let id: Labels = vec![
            ("tool", r.tool.clone()),
            ("instance", r.instance.clone()),
            ("host", r.host.clone()),
        ];
        for s in crate::roster::RosterState::ALL {
            let on = if s == r.state { 1.0 } else { 0.0 };
            states.push((with(id.clone(), "state", s.as_str()), on));
        }
        if let Some(a) = r.alive_age_s {
            ages.push((id, a));
        }
    }
    gauges(
        enc,
        "ddmon_daemon_state",
        "Each ddmon daemon on the roster: 1 for its state (running, degraded, stopping, stopped, silent, dead, missing)",
        states,
    )?;
    gauges(
        enc,
        "ddmon_daemon_alive_age_seconds",
        "Seconds since each ddmon daemon's last alive message",
        ages,
    )
}

/// The whole `/metrics` text (OpenMetrics, `# EOF` last).
pub fn render(metrics: Metrics) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out = "# EOF\n".to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_has_every_family_and_ends_with_eof() {
        let mut b = Board::new(10);
        let stats = json!({"interval": 1, "clients": [
            {"name": "a \"quoted\" name", "state": "late", "good": 5, "errors": 2,
             "good_bytes": 50, "bad_bytes": 20, "lag_mean": 1.5, "lag_max": 3.0}],
            "sources": []});
        b.update(
            &serde_json::from_value(stats).unwrap(),
            "sp",
            chrono::Utc::now(),
        );
        b.daemons = vec![
            serde_json::from_value(json!({"tool": "dd_speedo", "instance": "sp",
            "command": "health", "host": "h", "ok": true,
            "result": {"state": "running", "counters": {"received": 7, "by": {"x": 1}}}}))
            .unwrap(),
        ];
        let mut roster = crate::roster::Roster::new(300.0);
        let alive: crate::daemon::Health = serde_json::from_value(json!({
            "tool": "dd_log2source", "instance": "r1", "host": "h1", "pid": 3,
            "started": "2026-12-02T07:00:00Z", "time": "2026-12-02T07:00:00Z",
            "alive_interval": 1.0, "state": "running"}))
        .unwrap();
        roster.observe(
            &crate::roster::Observation::of_health(crate::roster::Seen::Alive, alive).unwrap(),
        );
        let text = render(Metrics {
            board: Arc::new(Mutex::new(b)),
            web: Arc::default(),
            poll_s: 1.0,
            roster: Some(Arc::new(Mutex::new(roster))),
        });
        // heard long ago and never asked: silent (dead once asked with no answer)
        assert!(
            text.contains(
                "ddmon_daemon_state{tool=\"dd_log2source\",instance=\"r1\",host=\"h1\",state=\"silent\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ddmon_daemon_state{tool=\"dd_log2source\",instance=\"r1\",host=\"h1\",state=\"running\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("ddmon_daemon_alive_age_seconds{tool=\"dd_log2source\",instance=\"r1\",host=\"h1\"} "),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains(
            "ddmon_speedo_files_total{kind=\"client\",name=\"a \\\"quoted\\\" name\",result=\"good\"} 5"
        ), "{text}");
        assert!(text.contains("state=\"late\"} 1"), "{text}");
        assert!(text.contains("state=\"ok\"} 0"), "{text}");
        assert!(text.contains("stat=\"max\"} 3.0"), "{text}");
        assert!(text.contains("counter=\"by.x\"} 1"), "{text}");
        assert!(
            text.contains("ddmon_speedo_up{instance=\"sp\"} 1"),
            "{text}"
        );
    }
}
