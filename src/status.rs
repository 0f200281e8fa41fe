//! `dd_status`: the roster of ddmon's daemons (SPEC §6): every daemon the broker's history
//! knows (the roster stream, read from its first message), every daemon that answers a
//! broadcast `health` now, and the operator's declared ones, each with its state.
//!
//! This is the "services monitor" of seed 002: no registry service, the daemons' own messages
//! are the registry. Exit 0 when every daemon known is running or stopped (and one at least
//! answered), 1 when any is degraded, silent, dead or missing, or none answered (said on
//! stderr, with the exchange and broker asked), 2 on a usage or configuration mistake.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::cli::CommonOpts;
use crate::config::BrokerConfig;
use crate::daemon::{Health, RosterOpts, RosterStream};
use crate::roster::follow::{Ask, Source, ask_while_reading, load};
use crate::roster::{Declared, Roster, RosterState};

/// dd_status's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dd_status",
    version,
    about = "The roster of ddmon's daemons: tool, instance, host, state, uptime, last alive, counters",
    after_help = "The roster: every daemon seen in the roster stream (the broker's history of alive,\n\
                  status and registry messages, a day by default), every daemon that answers now\n\
                  (dd_log only with --service), and the declared ones (--declared FILE).\n\
                  STATE: running, degraded, stopping, stopped, silent (no alive for 2x its\n\
                  interval), dead (silent for 5x and no answer when asked, or it exited on an\n\
                  error), missing (declared, never seen, or stopped for --missing-after).\n\
                  UPTIME and LAST ALIVE are the daemon's own, at its answer.\n\n\
                  Examples:\n  \
                  dd_status                      # the table, answers collected for 2 s\n  \
                  dd_status --json | jq '.[] | select(.state != \"running\")'\n  \
                  dd_status --declared /etc/ddmon/declared.toml\n  \
                  dd_status --watch              # refreshed every 2 s until Ctrl-C\n\n\
                  Exit codes: 0 all running or stopped, 1 a daemon is degraded, silent, dead or\n\
                  missing, or none answered, 2 usage or config error."
)]
pub struct Args {
    /// Seconds to collect answers.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub wait: f64,
    /// Print the roster as one JSON array (a `state` per row, `result`: the daemon's answer).
    #[arg(long)]
    pub json: bool,
    /// Exchange the daemons take requests on.
    #[arg(long, env = "DD_EXCHANGE", default_value = "log")]
    pub exchange: String,
    /// TOML file of the daemons that should run (`[[daemon]]` tool, instance, host).
    #[arg(long, env = "DD_DECLARED", value_name = "FILE")]
    pub declared: Option<std::path::PathBuf>,
    /// A declared daemon stopped and not seen for this long is `missing`.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub missing_after: f64,
    /// Show the roster again every SECONDS (default 2) until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
    /// Say that TOOL/INSTANCE died (its host's last word: for systemd's `ExecStopPost`,
    /// with --because), then exit; the roster shows it `dead` until it starts again.
    #[arg(long, value_name = "TOOL/INSTANCE", conflicts_with = "forget")]
    pub died: Option<String>,
    /// With --died: how it died (e.g. "systemd: killed (9)").
    #[arg(long, value_name = "TEXT", requires = "died")]
    pub because: Option<String>,
    /// Forget TOOL/INSTANCE (a daemon taken out of service: no longer dead or stopped on the
    /// roster; a declared one is missing again), then exit.
    #[arg(long, value_name = "TOOL/INSTANCE")]
    pub forget: Option<String>,
    /// The roster stream's flags.
    #[command(flatten)]
    pub roster: RosterOpts,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// One daemon of the roster, as the table and `--json` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The roster's row.
    #[serde(flatten)]
    pub roster: crate::roster::Row,
    /// Its answer to `health` now, when it answered.
    pub result: Option<Health>,
}

impl Row {
    fn uptime(&self, now: DateTime<Utc>) -> Option<f64> {
        if let Some(h) = &self.result {
            return Some(h.uptime_s);
        }
        let started = self.roster.started?;
        let until = match self.roster.state {
            RosterState::Running | RosterState::Degraded | RosterState::Stopping => now,
            _ => self.roster.last_heard?,
        };
        Some((until - started).num_milliseconds() as f64 / 1000.0)
    }

    fn last_alive(&self) -> Option<f64> {
        match &self.result {
            Some(h) => h
                .last_alive
                .map(|t| (h.time - t).num_milliseconds() as f64 / 1000.0),
            None => self.roster.alive_age_s,
        }
    }
}

/// The roster's rows with the live answers beside them.
pub fn rows(roster: &Roster, answers: &[Health], now: DateTime<Utc>) -> Vec<Row> {
    // a group's member is on the roster as `<instance>@<member>`
    let mut by: BTreeMap<(String, String), &Health> = BTreeMap::new();
    for h in answers {
        let instance = match &h.member {
            Some(m) => crate::rpc::member_instance(&h.instance, m),
            None => h.instance.clone(),
        };
        by.insert((h.tool.clone(), instance), h);
    }
    roster
        .rows(now)
        .into_iter()
        .map(|r| {
            let result = by
                .get(&(r.tool.clone(), r.instance.clone()))
                .map(|h| (*h).clone());
            Row { roster: r, result }
        })
        .collect()
}

use crate::roster::human;

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

/// The table, sorted by tool then instance, columns aligned. UPTIME and LAST ALIVE of a
/// daemon that answered are measured on its clock (from its alive to its answer); of one that
/// did not, from the history. COUNTERS holds a live answer's counters, else the evidence of
/// its state.
pub fn render_table(rows: &[Row], now: DateTime<Utc>) -> String {
    let mut cells = vec![[
        "TOOL".to_string(),
        "INSTANCE".into(),
        "HOST".into(),
        "STATE".into(),
        "UPTIME".into(),
        "LAST ALIVE".into(),
        "COUNTERS".into(),
    ]];
    for r in rows {
        let dash = || "-".to_string();
        cells.push([
            r.roster.tool.clone(),
            r.roster.instance.clone(),
            if r.roster.host.is_empty() {
                "?".to_string()
            } else {
                r.roster.host.clone()
            },
            match r.roster.role {
                Some(role) => format!("{} ({})", r.roster.state.as_str(), role.as_str()),
                None => r.roster.state.as_str().to_string(),
            },
            r.uptime(now).map_or_else(dash, human),
            r.last_alive()
                .map_or_else(dash, |s| format!("{} ago", human(s))),
            match &r.result {
                Some(h) => counters_text(&h.counters),
                None => r.roster.evidence.clone(),
            },
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

/// Is this roster a healthy one (exit 0)?
fn healthy(rows: &[Row]) -> bool {
    rows.iter().all(|r| {
        matches!(
            r.roster.state,
            RosterState::Running | RosterState::Stopping | RosterState::Stopped
        )
    })
}

/// dd_status's settings: the broker's, the roster stream's.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The broker.
    pub broker: BrokerConfig,
    /// The roster stream.
    pub roster: RosterStream,
}

impl crate::config::Config for StatusConfig {
    fn broker(&self) -> Option<&BrokerConfig> {
        Some(&self.broker)
    }
}

/// Entry point of the `dd_status` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || {
        crate::config::check_name("exchange", &args.exchange)?;
        let only = args.common.broker_config()?;
        let mut cfg = StatusConfig {
            broker: only.broker,
            roster: RosterStream::default(),
        };
        args.roster.apply(&mut cfg.roster);
        cfg.roster.validate()?;
        Ok(cfg)
    };
    crate::cli::main("dd_status", &args.common, 2, config, |cfg: StatusConfig| {
        let declared = match &args.declared {
            Some(p) => Declared::load(p)?,
            None => Declared::default(),
        };
        let src = Source {
            broker: cfg.broker.clone(),
            exchange: args.exchange.clone(),
            stream: cfg.roster.clone(),
        };
        if let Some(every) = args.watch {
            return watch(&src, &declared, args.missing_after, every);
        }
        let word = match (&args.died, &args.forget) {
            (Some(d), _) => Some(("died", d, args.because.clone())),
            (None, Some(f)) => Some(("forget", f, None)),
            (None, None) => None,
        };
        if let Some((event, who, failure)) = word {
            return say_word(&src, event, who, failure);
        }
        let wait = Duration::from_secs_f64(args.wait.max(0.0));
        let (roster, answers) = crate::cli::block_on(async {
            let link = crate::broker::Link::open(&src.broker, "dd_status").await?;
            let mut roster = Roster::new(args.missing_after);
            roster.declare(&declared);
            let (history, mut reader) =
                load(&link, &src, &mut roster, Duration::from_secs(30), true).await;
            if let Some(p) = history
                .problem
                .as_ref()
                .filter(|_| history.stream.is_some())
            {
                tracing::warn!("{p}: the roster is what answers now");
            }
            let answers = ask_while_reading(
                &link,
                &src.exchange,
                &mut roster,
                reader.as_mut(),
                wait,
                Ask::Everyone,
            )
            .await;
            if let Some(r) = reader {
                r.close().await;
            }
            link.close("OK").await;
            anyhow::Ok((roster, answers.context("health request failed")?))
        })?;
        let now = Utc::now();
        let rows = rows(&roster, &answers, now);
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else if !rows.is_empty() {
            print!("{}", render_table(&rows, now));
        }
        if answers.is_empty() {
            eprintln!(
                "dd_status: no ddmon daemon answered within {}s on exchange {:?} at {}{}",
                args.wait,
                args.exchange,
                crate::config::mask_url(&cfg.broker.url),
                match rows.len() {
                    0 => String::new(),
                    n => format!(" (the history knows {n})"),
                }
            );
            return Ok(std::process::ExitCode::FAILURE);
        }
        Ok(if healthy(&rows) {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        })
    })
}

/// `--died` / `--forget`: publish the word (confirmed) on the daemon exchange.
fn say_word(
    src: &Source,
    event: &str,
    who: &str,
    failure: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    let Some((tool, instance)) = who
        .split_once('/')
        .filter(|(t, i)| !t.is_empty() && !i.is_empty())
    else {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            field: "daemon",
            message: format!("{who:?} is not TOOL/INSTANCE"),
        });
    };
    let msg = crate::daemon::registry::word_about(
        &src.exchange,
        tool,
        instance,
        event,
        failure,
        Utc::now(),
    );
    // bounded: a host's last word must not hold its service manager up
    let bound = Duration::from_secs(10);
    crate::cli::block_on(async {
        let shutdown = crate::shutdown::Shutdown::install()?;
        let say = async {
            let mut p =
                crate::broker::Publisher::connect(&src.broker, "dd_status", shutdown).await?;
            p.declare_exchange(&src.exchange).await?;
            p.publish_all(&[msg]).await?;
            p.close().await;
            anyhow::Ok(())
        };
        tokio::time::timeout(bound, say)
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not take the word within {bound:?}"))??;
        tracing::info!(event, tool, instance, "said");
        anyhow::Ok(std::process::ExitCode::SUCCESS)
    })
}

/// `--watch`: follow the roster (history, then every new message; the silent ones asked on
/// their own key) and show it every `every` seconds until interrupted (exit 0). On a terminal
/// the screen is cleared before each table; elsewhere tables are separated by a blank line.
fn watch(
    src: &Source,
    declared: &Declared,
    missing_after: f64,
    every: f64,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::{IsTerminal, Write};
    let every = Duration::from_secs_f64(every.max(0.2));
    crate::cli::block_on(async {
        let shutdown = crate::shutdown::Shutdown::install()?;
        let roster = std::sync::Arc::new(std::sync::Mutex::new(Roster::new(missing_after)));
        if let Ok(mut r) = roster.lock() {
            r.declare(declared);
        }
        let followed = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
        let task = tokio::spawn(crate::roster::follow::follow(
            src.clone(),
            roster.clone(),
            followed,
            shutdown.clone(),
        ));
        let tty = std::io::stdout().is_terminal();
        let mut stop = shutdown.clone();
        let mut first = true;
        loop {
            tokio::select! {
                _ = stop.requested() => break,
                _ = tokio::time::sleep(if first { Duration::from_millis(1500) } else { every }) => {}
            }
            first = false;
            let now = Utc::now();
            let rows = match roster.lock() {
                Ok(r) => rows(&r, &[], now),
                Err(_) => break,
            };
            let mut out = std::io::stdout().lock();
            let text = format!(
                "{}{} daemons at {}\n{}",
                if tty { "\x1b[H\x1b[2J" } else { "\n" },
                rows.len(),
                now.format("%H:%M:%SZ"),
                render_table(&rows, now)
            );
            if out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                break; // stdout closed (| head): done
            }
        }
        shutdown.stop();
        let _ = task.await;
        anyhow::Ok(std::process::ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::{Observation, Seen};
    use serde_json::json;

    fn health(tool: &str, inst: &str, state: &str) -> Health {
        serde_json::from_value(json!({
            "tool": tool, "instance": inst, "host": "h1", "state": state, "pid": 4,
            "started": "2025-11-22T04:39:35Z", "time": "2025-11-22T05:41:40Z",
            "uptime_s": 3725.0, "last_alive": "2025-11-22T05:41:30Z", "alive_interval": 30.0,
            "counters": {"printed": 12, "malformed": 0, "by_kind": {}}
        }))
        .unwrap()
    }

    #[test]
    fn table_is_aligned_and_sorted_with_the_roster_beside_the_answers() {
        let now = DateTime::parse_from_rfc3339("2025-11-22T05:41:41Z")
            .unwrap()
            .to_utc();
        let answers = [
            health("dd_speedo", "b", "degraded"),
            health("dd_log", "a", "running"),
        ];
        let mut roster = Roster::new(300.0);
        for h in &answers {
            roster.observe(&Observation::of_health(Seen::Answer, h.clone()).unwrap());
        }
        // one that died: its last alive an hour ago, asked with no answer
        let mut gone = health("dd_log2source", "r1", "running");
        gone.time = now - chrono::Duration::seconds(3600);
        roster.observe(&Observation::of_health(Seen::Alive, gone).unwrap());
        roster.asked("dd_log2source", "r1", now);
        let t = render_table(&rows(&roster, &answers, now), now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].starts_with(
                "TOOL           INSTANCE  HOST  STATE     UPTIME  LAST ALIVE  COUNTERS"
            ),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "dd_log         a         h1    running   1h02m   10s ago     malformed=0 printed=12"
            ),
            "{t}"
        );
        assert!(
            lines[2].starts_with(
                "dd_log2source  r1        h1    dead      2m06s   1h00m ago   no word for 1h00m (120x"
            ),
            "{t}"
        );
        assert!(
            lines[3].starts_with("dd_speedo      b         h1    degraded"),
            "{t}"
        );
        let json = serde_json::to_value(rows(&roster, &answers, now)).unwrap();
        assert_eq!(json[1]["state"], "dead");
        assert_eq!(json[1]["result"], Value::Null);
        assert_eq!(json[0]["result"]["instance"], "a");
        assert_eq!(json[0]["tool"], "dd_log");
        assert!(!healthy(&rows(&roster, &answers, now)));
    }

    #[test]
    fn last_alive_is_measured_on_the_daemons_clock() {
        // the daemon started at :00 and said alive then; it answered at :07.6; our clock
        // is 1 s ahead: the alive is 7s old, as its uptime, not 8s
        let h: Health = serde_json::from_value(json!({
            "tool": "dd_log", "instance": "a", "host": "h", "state": "running",
            "uptime_s": 7.6, "last_alive": "2026-12-02T04:00:00Z", "started": "2026-12-02T04:00:00Z",
            "time": "2026-12-02T04:00:07.600Z", "counters": {}
        }))
        .unwrap();
        let mut roster = Roster::new(300.0);
        roster.observe(&Observation::of_health(Seen::Answer, h.clone()).unwrap());
        let now = DateTime::parse_from_rfc3339("2026-12-02T04:00:08.700Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = render_table(&rows(&roster, &[h], now), now);
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
