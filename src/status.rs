//! `dd_status`: find every running ddmon daemon with no prior knowledge (a broadcast `health`
//! request, answers collected for `--wait` seconds) and show them as a table or JSON.
//!
//! This is the "services monitor" of seed 002: no registry, the daemons answer for
//! themselves. Exit 0 when every daemon that answered is healthy, 1 when any is degraded or
//! none answered (said on stderr, with the exchange and broker asked), 2 on a usage or
//! configuration mistake.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::cli::CommonOpts;
use crate::config::BrokerConfig;
use crate::daemon::{Health, State};
use crate::rpc::Reply;

/// dd_status's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dd_status",
    version,
    about = "List every running ddmon daemon: tool, instance, host, state, uptime, last alive, counters",
    after_help = "Every ddmon daemon answers (dd_log only with --service), dd_web too.\n\
                  UPTIME and LAST ALIVE are the daemon's own, at its answer.\n\n\
                  Examples:\n  \
                  dd_status                      # the table, answers collected for 2 s\n  \
                  dd_status --json | jq '.[].result.state'\n  \
                  dd_status --exchange log --wait 5\n\n\
                  Exit codes: 0 all healthy, 1 a daemon is degraded or none answered, 2 usage or config error."
)]
pub struct Args {
    /// Seconds to collect answers.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub wait: f64,
    /// Print the answers as one JSON array.
    #[arg(long)]
    pub json: bool,
    /// Exchange the daemons take requests on.
    #[arg(long, env = "DD_EXCHANGE", default_value = "log")]
    pub exchange: String,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// One daemon, from its `health` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Tool name.
    pub tool: String,
    /// Instance name.
    pub instance: String,
    /// Host.
    pub host: String,
    /// State (`running`, `degraded`...).
    pub state: State,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// When it last sent an alive message.
    pub last_alive: Option<DateTime<Utc>>,
    /// When it answered, by its own clock (`None`: the answer does not say).
    pub answered: Option<DateTime<Utc>>,
    /// Its counters.
    pub counters: Value,
}

impl Row {
    /// Read a `health` reply; `None` if it is not one.
    pub fn from_reply(v: &Value) -> Option<Row> {
        let reply: Reply<Health> = serde_json::from_value(v.clone()).ok()?;
        let h = reply.result?;
        let known = |s: String| if s.is_empty() { "?".to_string() } else { s };
        Some(Row {
            tool: known(h.tool),
            instance: known(h.instance),
            host: known(h.host),
            state: h.state,
            uptime_s: h.uptime_s,
            last_alive: h.last_alive,
            answered: Some(h.time).filter(|t| t.timestamp() != 0),
            counters: h.counters,
        })
    }
}

/// `3d4h`, `2h05m`, `4m10s`, `12s`.
fn human(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn counters_text(c: &Value) -> String {
    match c.as_object() {
        Some(o) => o
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

/// The table, sorted by tool then instance, columns aligned. LAST ALIVE is measured on the
/// daemon's clock (from its alive to its answer), as UPTIME is: two clocks' skew or the
/// answer's way would otherwise show an alive older than the start. `now` stands in for an
/// answer that does not say its time.
pub fn render_table(rows: &[Row], now: DateTime<Utc>) -> String {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (&a.tool, &a.instance).cmp(&(&b.tool, &b.instance)));
    let mut cells = vec![[
        "TOOL".to_string(),
        "INSTANCE".into(),
        "HOST".into(),
        "STATE".into(),
        "UPTIME".into(),
        "LAST ALIVE".into(),
        "COUNTERS".into(),
    ]];
    for r in &rows {
        let alive = r.last_alive.map_or_else(
            || "-".to_string(),
            |t| {
                format!(
                    "{} ago",
                    human((r.answered.unwrap_or(now) - t).num_milliseconds() as f64 / 1000.0)
                )
            },
        );
        cells.push([
            r.tool.clone(),
            r.instance.clone(),
            r.host.clone(),
            r.state.as_str().to_string(),
            human(r.uptime_s),
            alive,
            counters_text(&r.counters),
        ]);
    }
    let mut width = [0usize; 7];
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Entry point of the `dd_status` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || {
        crate::config::check_name("exchange", &args.exchange)?;
        Ok(args.common.broker_config()?)
    };
    crate::cli::main(
        "dd_status",
        &args.common,
        2,
        config,
        |cfg: crate::cli::BrokerOnly| {
            let broker: BrokerConfig = cfg.broker;
            let replies = crate::cli::block_on(async {
                let wait = Duration::from_secs_f64(args.wait.max(0.0));
                let question = crate::rpc::Question::new(
                    &args.exchange,
                    crate::rpc::broadcast_key("health"),
                    wait,
                );
                let link = crate::broker::Link::open(&broker, "dd_status").await?;
                let answers = crate::rpc::ask_raw(&link, &question).await;
                link.close("OK").await;
                answers.context("health request failed")
            })?;
            // `--json` prints the answers as they came; the table reads them as `Health`
            let answers: Vec<Value> = replies;
            let rows: Vec<Row> = answers.iter().filter_map(Row::from_reply).collect();
            let degraded = rows.iter().any(|r| r.state == State::Degraded);
            if args.json {
                println!("{}", Value::Array(answers));
            } else if !rows.is_empty() {
                print!("{}", render_table(&rows, Utc::now()));
            }
            if rows.is_empty() {
                eprintln!(
                    "dd_status: no ddmon daemon answered within {}s on exchange {:?} at {}",
                    args.wait,
                    args.exchange,
                    crate::config::mask_url(&broker.url)
                );
                return Ok(std::process::ExitCode::FAILURE);
            }
            Ok(if degraded {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_is_aligned_and_sorted() {
        let now = DateTime::from_timestamp(1_763_790_100, 0).unwrap();
        let reply = |tool: &str, inst: &str, state: &str| {
            json!({"ok": true, "result": {
                "tool": tool, "instance": inst, "host": "h1", "state": state,
                "uptime_s": 3725.0, "last_alive": "2025-11-22T05:41:30Z",
                "counters": {"printed": 12, "malformed": 0, "by_kind": {}}
            }})
        };
        let rows: Vec<Row> = [
            reply("dd_speedo", "b", "degraded"),
            reply("dd_log", "a", "running"),
        ]
        .iter()
        .filter_map(Row::from_reply)
        .collect();
        let t = render_table(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0]
                .starts_with("TOOL       INSTANCE  HOST  STATE     UPTIME  LAST ALIVE  COUNTERS"),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "dd_log     a         h1    running   1h02m   10s ago     malformed=0 printed=12"
            ),
            "{t}"
        );
        assert!(lines[2].starts_with("dd_speedo  b"), "{t}");
    }

    #[test]
    fn last_alive_is_measured_on_the_daemons_clock() {
        // the daemon started at :00 and said alive then; it answered at :07.6; our clock
        // is 1 s ahead: the alive is 7s old, as its uptime, not 8s
        let reply = json!({"ok": true, "result": {
            "tool": "dd_log", "instance": "a", "host": "h", "state": "running",
            "uptime_s": 7.6, "last_alive": "2026-12-02T04:00:00Z",
            "time": "2026-12-02T04:00:07.600Z", "counters": {}
        }});
        let row = Row::from_reply(&reply).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-02T04:00:08.700Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = render_table(&[row], now);
        let line = t.lines().nth(1).unwrap();
        assert!(line.contains("7s      7s ago"), "{t}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(12.4), "12s");
        assert_eq!(human(250.0), "4m10s");
        assert_eq!(human(7500.0), "2h05m");
        assert_eq!(human(3.0 * 86400.0 + 4.0 * 3600.0), "3d4h");
    }
}
