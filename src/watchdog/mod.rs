//! `dd_watchdog`: which transfers are in flight on which node, and what was lost when a node
//! died.
//!
//! The table is a pure state machine ([`table::Table`]); this module is its edge: consume the
//! log records (and `v01.alive` heartbeats), keep the journal ([`journal::Journal`]) written
//! before acknowledging, publish `v01.watchdog.down|up|stuck.<node>`, answer `inflight`.

pub mod journal;
pub mod reply;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::broker::{Delivery, Outgoing, Subscription};
use crate::cli::CommonOpts;
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts, Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};

pub use reply::{InflightFilter, InflightReply, NodeState, StatsReply, TransferRow};
pub use table::{Event, INPUT_SILENCE_MS, Limits, Table};

/// dd_watchdog's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_watchdog",
    version,
    about = "Transfers in flight on every node, and what was lost when a node died",
    after_help = "Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("exchange", |a| a.help("Exchange to read log records and heartbeats from [default: log]")),
    mut_arg("queue", |a| a.help("The durable input queue is q_<user>.dd_watchdog.<NAME> [default: the input exchange's name]")),
    mut_arg("topics", |a| a.help("Topic bindings on the input exchange (repeatable): records and heartbeats [default: v02.# v03.# v01.alive.#]")),
)]
pub struct Args {
    /// Where it reads.
    #[command(flatten)]
    pub input: InputOpts,
    /// Exchange for the down/up/stuck reports [default: log].
    #[arg(long, value_name = "NAME")]
    pub output_exchange: Option<String>,
    /// Seconds of silence after which a node is down [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub node_timeout: Option<f64>,
    /// Seconds after which an open transfer is stuck (0: never) [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub stuck_after: Option<f64>,
    /// Seconds after which a transfer that never got its final code is dropped from the table
    /// (counted and logged), from its node's down or dd_watchdog's start if later (0: never)
    /// [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    pub forget_after: Option<f64>,
    /// A final code that arrives before its 102 within this many seconds cancels the 102
    /// [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub reorder_window: Option<f64>,
    /// The journal that keeps the table across restarts [default:
    /// $STATE_DIRECTORY, else $XDG_STATE_HOME/ddmon, else ~/.local/state/ddmon, then
    /// dd_watchdog.<broker host_port>.<vhost>.<queue>.journal].
    #[arg(long, env = "DD_WATCHDOG_JOURNAL", value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// No journal: the in-flight table starts empty at every start (beats --journal).
    #[arg(long)]
    pub no_journal: bool,
    /// Sync the journal to disk before every acknowledgement (survives a machine crash, not
    /// only a process kill; slower).
    #[arg(long)]
    pub fsync: bool,
    /// Largest body of one down report; more transfers go in further parts [default: 1000000].
    #[arg(long, value_name = "BYTES")]
    pub max_report_bytes: Option<usize>,
    /// Ask the running dd_watchdog for its in-flight table and print it, then exit.
    #[arg(long)]
    pub query: bool,
    /// With --query: only this node.
    #[arg(long, value_name = "NAME", requires = "query")]
    pub node: Option<String>,
    /// With --query: only this client.
    #[arg(long, value_name = "NAME", requires = "query")]
    pub client: Option<String>,
    /// With --query: only this source.
    #[arg(long, value_name = "NAME", requires = "query")]
    pub source: Option<String>,
    /// With --query: print the JSON answer.
    #[arg(long, requires = "query")]
    pub json: bool,
    /// Daemon flags.
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// dd_watchdog's effective configuration (the `--config` file has the same keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// Where it reads: `exchange`, `queue`, `quorum`, `dead_letter_exchange`, `topics`
    /// (records and heartbeats).
    #[serde(flatten)]
    pub input: InputConfig,
    /// Exchange for reports.
    pub output_exchange: String,
    /// Seconds of silence before a node is down.
    pub node_timeout: f64,
    /// Seconds before an open transfer is stuck (0: never).
    pub stuck_after: f64,
    /// Seconds within which a final code before its 102 cancels it.
    pub reorder_window: f64,
    /// Seconds after which a transfer without its final code is dropped (0: never).
    pub forget_after: f64,
    /// The journal file (left out: the default place; `""`: none, also how `--print-config`
    /// shows it off).
    #[serde(serialize_with = "journal_or_empty")]
    pub journal: Option<PathBuf>,
    /// Sync the journal before every acknowledgement.
    pub fsync: bool,
    /// Largest body of one down report.
    pub max_report_bytes: usize,
    /// Alive interval, instance name, exchange for alive/status/requests.
    pub daemon: DaemonConfig,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            input: InputConfig::reading(&["v02.#", "v03.#", "v01.alive.#"]),
            output_exchange: "log".into(),
            node_timeout: 120.0,
            stuck_after: 3600.0,
            reorder_window: 10.0,
            forget_after: 86_400.0,
            journal: None,
            fsync: false,
            max_report_bytes: 1_000_000,
            daemon: DaemonConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

impl WatchdogConfig {
    /// Merge the layers: defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<WatchdogConfig, ConfigError> {
        let mut cfg: WatchdogConfig = load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut cfg.broker)?;
        args.daemon.apply(&mut cfg.daemon);
        args.input.apply(&mut cfg.input);
        overlay(&mut cfg.output_exchange, args.output_exchange.clone());
        overlay(&mut cfg.node_timeout, args.node_timeout);
        overlay(&mut cfg.stuck_after, args.stuck_after);
        overlay(&mut cfg.reorder_window, args.reorder_window);
        overlay(&mut cfg.forget_after, args.forget_after);
        if args.journal.is_some() {
            cfg.journal = args.journal.clone();
        }
        if args.no_journal
            || cfg
                .journal
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
        {
            cfg.journal = None;
        } else if cfg.journal.is_none() {
            cfg.broker.validate()?;
            cfg.journal = Some(cfg.default_journal()?);
        }
        cfg.fsync |= args.fsync;
        overlay(&mut cfg.max_report_bytes, args.max_report_bytes);
        cfg.broker.validate()?;
        cfg.daemon.validate()?;
        for (field, v) in [
            ("node_timeout", cfg.node_timeout),
            ("stuck_after", cfg.stuck_after),
            ("reorder_window", cfg.reorder_window),
            ("forget_after", cfg.forget_after),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("must be a number of seconds >= 0, not {v}"),
                });
            }
        }
        if cfg.max_report_bytes < 1000 {
            return Err(ConfigError::Invalid {
                field: "max_report_bytes",
                message: "must be at least 1000".into(),
            });
        }
        Ok(cfg)
    }

    /// The table's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            node_timeout_ms: (self.node_timeout * 1000.0) as i64,
            stuck_after_ms: (self.stuck_after * 1000.0) as i64,
            reorder_window_ms: (self.reorder_window * 1000.0) as i64,
            forget_after_ms: (self.forget_after * 1000.0) as i64,
        }
    }

    /// Where the journal goes when none is named: one file per broker, vhost and input queue
    /// (the table belongs to the queue that feeds it) in the state directory: systemd's
    /// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/ddmon`, else `~/.local/state/ddmon`. The
    /// name is made of the parsed URLs (every node's host and port, sorted, so the order of a
    /// cluster's list does not matter; the decoded vhost), percent-encoded, so two brokers,
    /// vhosts or queues never share a file.
    fn default_journal(&self) -> Result<PathBuf, ConfigError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let dir = if let Some(d) = var("STATE_DIRECTORY") {
            // systemd gives several, colon-separated, when the unit names several
            let d = d.to_string_lossy().into_owned();
            PathBuf::from(d.split(':').next().unwrap_or_default())
        } else if let Some(d) = var("XDG_STATE_HOME") {
            PathBuf::from(d).join("ddmon")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/state/ddmon")
        } else {
            return Err(ConfigError::Invalid {
                field: "journal",
                message: "no place for the default journal (none of STATE_DIRECTORY, \
                          XDG_STATE_HOME, HOME is set): give --journal FILE or --no-journal"
                    .into(),
            });
        };
        let enc = |s: &str| -> String {
            let mut out = String::new();
            for b in s.bytes() {
                match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                        out.push(b as char)
                    }
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
            out
        };
        let uris: Vec<crate::broker::BrokerUrl> = self
            .broker
            .urls()
            .iter()
            .filter_map(|u| crate::broker::BrokerUrl::parse(u).ok())
            .collect();
        let mut hosts: Vec<String> = uris
            .iter()
            .map(|u| format!("{}_{}", enc(&u.host.to_lowercase()), u.port))
            .collect();
        hosts.sort();
        hosts.dedup();
        let vhost = uris.first().map_or("/", |u| u.vhost.as_str());
        let queue = self.subscription().queue.name;
        Ok(dir.join(format!(
            "dd_watchdog.{}.{}.{}.journal",
            hosts.join("+"),
            enc(vhost),
            enc(&queue)
        )))
    }

    fn subscription(&self) -> Subscription {
        self.input.durable(&self.broker.user(), "dd_watchdog")
    }

    /// The messages for the table's events: a down report split in parts under the size
    /// limit.
    pub fn outgoing(&self, events: &[Event]) -> Vec<Outgoing> {
        let msg = |kind: &str, node: &str, body: String| Outgoing {
            exchange: self.output_exchange.clone(),
            routing_key: crate::topic::cut(&format!(
                "v01.watchdog.{kind}.{}",
                crate::topic::escape_word(node)
            ))
            .to_string(),
            body: body.into_bytes(),
            content_type: Some("application/json".into()),
            ..Outgoing::default()
        };
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let mut out = Vec::new();
        for e in events {
            match e {
                Event::Down {
                    node,
                    last_seen_ms,
                    at_ms,
                    transfers,
                } => {
                    let items: Vec<String> = transfers
                        .iter()
                        .map(|t| serde_json::to_string(t).unwrap_or_default())
                        .collect();
                    let head_room = 400 + node.len() * 2;
                    let budget = self.max_report_bytes.saturating_sub(head_room).max(1);
                    let mut parts: Vec<Vec<&str>> = vec![Vec::new()];
                    let mut size = 0;
                    for it in &items {
                        let last = parts.last_mut().expect("one part at least");
                        if !last.is_empty() && size + it.len() + 1 > budget {
                            parts.push(Vec::new());
                            size = 0;
                        }
                        parts.last_mut().expect("pushed").push(it);
                        size += it.len() + 1;
                    }
                    let n = parts.len();
                    for (i, p) in parts.iter().enumerate() {
                        let body = format!(
                            "{{\"node\":{},\"last_seen\":{},\"down_at\":{},\"in_flight\":{},\"part\":{},\"parts\":{n},\"transfers\":[{}]}}",
                            json!(node),
                            json!(at(*last_seen_ms)),
                            json!(at(*at_ms)),
                            transfers.len(),
                            i + 1,
                            p.join(",")
                        );
                        out.push(msg("down", node, body));
                    }
                }
                Event::Up {
                    node,
                    down_since_ms,
                    at_ms,
                    in_flight,
                } => out.push(msg(
                    "up",
                    node,
                    json!({"node": node, "down_since": at(*down_since_ms), "up_at": at(*at_ms), "in_flight": in_flight}).to_string(),
                )),
                Event::Stuck { node, transfer } => {
                    out.push(msg("stuck", node, serde_json::to_string(transfer).unwrap_or_default()))
                }
                Event::Forgotten { .. } => {}
            }
        }
        out
    }
}

struct WatchdogService {
    cfg: WatchdogConfig,
    table: Table,
    journal: Option<journal::Journal>,
    tally: MalformedTally,
    skipped: u64,
    heartbeats: u64,
    reports: u64,
    journal_error: Option<String>,
}

impl WatchdogService {
    /// The counters of health, alive, status and `stats`.
    fn typed_counters(&self) -> reply::Counters {
        reply::Counters {
            counts: self.table.counts.clone(),
            heartbeats: self.heartbeats,
            in_flight: self.table.len() as u64,
            journal: self.journal.as_ref().map(|j| reply::JournalCounters {
                compactions: j.compactions,
                written: j.written,
            }),
            malformed: self.tally.total(),
            nodes: self.table.node_count() as u64,
            reports: self.reports,
            skipped: self.skipped,
        }
    }

    /// Write the journal lines made so far (before any acknowledgement they cover).
    fn write_journal(&mut self) -> anyhow::Result<()> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        let buf = self.table.take_journal();
        // on failure the lines are not lost: the next write starts with a full snapshot
        let outcome = j
            .write(&buf, &self.table)
            .context("cannot write the journal")
            .and_then(|()| {
                j.maybe_compact(&self.table)
                    .context("cannot compact the journal")
            });
        match outcome {
            Ok(compacted) => {
                if compacted {
                    tracing::info!(open = self.table.len(), "journal compacted");
                }
                if self.journal_error.take().is_some() {
                    tracing::info!("journal written again");
                }
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.journal_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!("{msg}");
                }
                self.journal_error = Some(msg);
                Err(e)
            }
        }
    }

    /// The reports of `events`, and whether the journal lines that led to them were written
    /// (first: a report is published, and its delivery acknowledged, before the next flush).
    fn publish(&mut self, events: Vec<Event>) -> (Handled, anyhow::Result<()>) {
        if events.is_empty() {
            return (Handled::ack(), Ok(()));
        }
        let journaled = self.write_journal();
        for e in &events {
            match e {
                Event::Down {
                    node, transfers, ..
                } => {
                    tracing::warn!(node = %node, in_flight = transfers.len(), "node down")
                }
                Event::Up { node, .. } => tracing::info!(node = %node, "node up again"),
                Event::Stuck { node, transfer } => {
                    tracing::info!(node = %node, url = %transfer.url, "transfer stuck")
                }
                Event::Forgotten { transfers } => tracing::info!(
                    transfers,
                    after_seconds = self.cfg.forget_after,
                    "forgotten: no final code for longer than --forget-after"
                ),
            }
        }
        let publish = self.cfg.outgoing(&events);
        self.reports += publish.len() as u64;
        let handled = Handled {
            publish,
            declare: vec![self.cfg.output_exchange.clone()],
            ..Handled::default()
        };
        (handled, journaled)
    }
}

impl Service for WatchdogService {
    fn tool(&self) -> &'static str {
        "dd_watchdog"
    }

    fn handle(&mut self, d: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled> {
        self.table.input(now);
        let events = match self.tally.parse(&d.routing_key, &d.headers, &d.body, now) {
            Ok(Parsed::Log(r)) => self.table.observe(&r, now),
            Ok(Parsed::Event(body)) if d.routing_key.starts_with("v01.alive.") => {
                // a heartbeat keeps a known node up (it does not make a node of every host)
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                let node = v["node"].as_str().or(v["host"].as_str()).unwrap_or("");
                self.heartbeats += 1;
                if node.is_empty() || !self.table.knows_node(node) {
                    return Ok(Handled::ack());
                }
                self.table.heartbeat(node, now)
            }
            Ok(_) => {
                self.skipped += 1;
                return Ok(Handled::ack());
            }
            Err(_) => return Ok(Handled::reject()),
        };
        let (handled, journaled) = self.publish(events);
        journaled?;
        Ok(handled)
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Handled {
        let events = self.table.tick(now);
        // A journal that failed is logged and makes the daemon degraded; the reports still go
        // out, and deliveries are not acknowledged until a journal write succeeds (flush fails
        // until then).
        self.publish(events).0
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.write_journal()
    }

    fn counters(&self) -> Value {
        serde_json::to_value(self.typed_counters()).unwrap_or_default()
    }

    fn request(&mut self, command: &str, body: &[u8], now: DateTime<Utc>) -> Option<Value> {
        // an unreadable body asks for everything, as `{}` does
        let filter: InflightFilter = serde_json::from_slice(body).unwrap_or_default();
        let table = || self.table.inflight(&filter, filter.limit(), now);
        let reply = match command {
            "inflight" => serde_json::to_value(table()),
            // the counters and the in-flight table (transfers listed up to `limit`, 1000)
            "stats" => serde_json::to_value(StatsReply::new(self.typed_counters(), table())),
            _ => return None,
        };
        Some(reply.unwrap_or_default())
    }

    fn degraded(&self) -> bool {
        self.journal_error.is_some()
    }
}

/// Entry point of the `dd_watchdog` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(WatchdogConfig::from_args(&args)?);
    let level = if args.query { 2 } else { 3 };
    crate::cli::main("dd_watchdog", &args.common, level, config, |cfg| {
        if args.query {
            return crate::cli::block_on(query(&cfg, &args));
        }
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// `--query`: the `inflight` request, printed.
async fn query(cfg: &WatchdogConfig, args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let key = crate::rpc::request_key("dd_watchdog", cfg.daemon.instance.as_deref(), "inflight");
    let filter = InflightFilter {
        client: args.client.clone(),
        limit: None,
        node: args.node.clone(),
        source: args.source.clone(),
    };
    let question =
        crate::rpc::Question::new(&cfg.daemon.exchange, key, std::time::Duration::from_secs(5))
            .with_body(&filter)
            .at_most(1);
    let answers =
        crate::rpc::ask_once::<InflightReply>(&cfg.broker, "dd_watchdog query", &question).await?;
    let Some(reply) = answers.replies.first() else {
        match answers.unreadable.first() {
            Some(e) => anyhow::bail!("unreadable answer: {e}"),
            None => anyhow::bail!("no dd_watchdog answered within 5 s"),
        }
    };
    let Some(r) = reply.result.as_ref() else {
        anyhow::bail!(
            "dd_watchdog {} refused the request: {}",
            reply.instance,
            reply.error.as_deref().unwrap_or("no reason given")
        );
    };
    // written with `?`: a closed pipe (`| head`) ends the command quietly
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_value(r)?)?;
    } else {
        print_table(&mut out, r)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--query`'s two tables: the nodes, then the transfers.
fn print_table(out: &mut impl std::io::Write, r: &InflightReply) -> std::io::Result<()> {
    let time = |t: &DateTime<Utc>| crate::rpc::wire_time(t);
    writeln!(
        out,
        "{:<24} {:<5} {:>9} {:>14} {:<24} LAST SEEN",
        "NODE", "STATE", "IN FLIGHT", "BYTES", "OLDEST"
    )?;
    for n in &r.nodes {
        writeln!(
            out,
            "{:<24} {:<5} {:>9} {:>14} {:<24} {}",
            n.node,
            n.state.as_str(),
            n.in_flight.to_string(),
            n.bytes.to_string(),
            n.oldest.as_ref().map_or_else(|| "-".to_string(), time),
            time(&n.last_seen),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:<16} {:<16} {:>10} {:>8} URL",
        "STARTED", "NODE", "CLIENT", "BYTES", "AGE S"
    )?;
    for t in &r.transfers {
        writeln!(
            out,
            "{:<24} {:<16} {:<16} {:>10} {:>8.1} {}",
            time(&t.started),
            t.node,
            t.client,
            t.bytes.to_string(),
            t.age_s.unwrap_or(0.0),
            t.url,
        )?;
    }
    if r.truncated {
        writeln!(
            out,
            "... {} in flight in all (use --json, or narrow with --node/--client/--source)",
            r.total
        )?;
    }
    Ok(())
}

/// `--print-config` and the file layer: no journal is `""` (left out would mean the default).
fn journal_or_empty<S: serde::Serializer>(j: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match j {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
    }
}

/// A journal belongs to its input queue: when that queue does not exist (deleted, or a broker
/// that lost its definitions), what the journal holds is another queue's history, and what
/// happened since is unknown. It is moved aside (`<journal>.<time>.old`) and the table starts
/// empty. When the broker cannot be asked (down), the journal is kept.
async fn set_aside_if_the_queue_is_new(cfg: &WatchdogConfig, path: &Path) -> anyhow::Result<()> {
    if !path.metadata().is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let queue = cfg.subscription().queue.name;
    let asked = async {
        let link = crate::broker::Link::open(&cfg.broker, "dd_watchdog start").await?;
        let found = link.queue_exists(&queue).await;
        link.close("OK").await;
        found
    };
    match tokio::time::timeout(Duration::from_secs(15), asked).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            let mut old = path.as_os_str().to_owned();
            old.push(format!(
                ".{}.old",
                chrono::Utc::now().format("%Y%m%dT%H%M%S")
            ));
            std::fs::rename(path, &old)
                .with_context(|| format!("cannot move the journal {} aside", path.display()))?;
            tracing::warn!(
                journal = %path.display(),
                moved_to = %PathBuf::from(&old).display(),
                queue = %queue,
                "the input queue does not exist: the journal was another queue's; starting empty"
            );
        }
        // a refused login or permission: no retry mends it (anything else: ask no further)
        Ok(Err(e)) if e.denies_access() => {
            return Err(e.into());
        }
        _ => {
            tracing::info!(queue = %queue, "cannot ask whether the input queue exists: journal kept")
        }
    }
    Ok(())
}

/// Run the daemon until a stop is asked for.
pub async fn run(
    cfg: &WatchdogConfig,
    shutdown: Shutdown,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    if let Some(path) = &cfg.journal {
        set_aside_if_the_queue_is_new(cfg, path).await?;
    }
    let mut table = Table::new(cfg.limits(), clock.now(), cfg.journal.is_some());
    let journal = match &cfg.journal {
        None => {
            tracing::warn!("no journal: the in-flight table starts empty at every start");
            None
        }
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot make the journal's directory {}", dir.display())
                })?;
            }
            let (j, loaded) = journal::Journal::open(path, &mut table, cfg.fsync)
                .with_context(|| format!("cannot open journal {}", path.display()))?;
            tracing::info!(file = %path.display(), lines = loaded.lines, bad = loaded.bad, in_flight = table.len(), nodes = table.node_count(), "journal replayed");
            Some(j)
        }
    };
    let mut service = WatchdogService {
        cfg: cfg.clone(),
        table,
        journal,
        tally: MalformedTally::default(),
        skipped: 0,
        heartbeats: 0,
        reports: 0,
        journal_error: None,
    };
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: cfg.subscription(),
        daemon: Some(&cfg.daemon),
        publishes: true,
        remotes: Default::default(),
    };
    let outcome = serve(&mut service, serve_cfg, shutdown, clock).await;
    if let Err(e) = service.write_journal() {
        tracing::error!("{e:#}");
    }
    outcome
}

#[cfg(test)]
mod tests;
