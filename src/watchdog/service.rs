//! dd_watchdog as a daemon: its service on the serve loop (the table, its journal written before each acknowledgement, the requests), `--query`, and the entry points (`main`, `run`).

use crate::broker::Delivery;
use crate::clock::{Clock, SystemClock};
use crate::daemon::{Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

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

    fn request(
        &mut self,
        command: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Option<Result<Value, String>> {
        // an unreadable body asks for everything, as `{}` does
        let filter = InflightFilter::from_body(body);
        let query = crate::rpc::Query::from_body(body);
        if command != "inflight" && command != "stats" {
            return None;
        }
        let table = match self.table.answer(&query, &filter, now) {
            Ok(t) => t,
            Err(e) => return Some(Err(e.to_string())),
        };
        let reply = match command {
            "inflight" => serde_json::to_value(table),
            // the counters and the in-flight table (transfers listed up to `limit`, 1000)
            _ => serde_json::to_value(StatsReply::new(self.typed_counters(), table)),
        };
        Some(Ok(reply.unwrap_or_default()))
    }

    fn degraded(&self) -> bool {
        self.journal_error.is_some()
    }

    /// A group's snapshot: the counters on a first line, then the table as journal lines.
    fn snapshot(&mut self, _now: DateTime<Utc>) -> Option<Vec<u8>> {
        let head = GroupHead {
            counts: self.table.counts.clone(),
            heartbeats: self.heartbeats,
            reports: self.reports,
            skipped: self.skipped,
        };
        let table = &self.table;
        Some(crate::daemon::replica::snapshot_with_head(&head, |out| {
            table.snapshot(out)
        }))
    }

    fn took_over(&mut self, at: DateTime<Utc>) {
        self.table.resume(at);
    }

    fn restore(&mut self, snapshot: &[u8], at: DateTime<Utc>) -> anyhow::Result<()> {
        let (head, body): (GroupHead, _) = crate::daemon::replica::split_snapshot(snapshot)?;
        let mut table = Table::new(self.cfg.limits(), at, self.table.journaling());
        let loaded = journal::apply_lines(&mut table, body);
        if loaded.bad > 0 {
            anyhow::bail!("{} lines of the snapshot unreadable", loaded.bad);
        }
        table.counts = head.counts;
        self.table = table;
        self.heartbeats = head.heartbeats;
        self.reports = head.reports;
        self.skipped = head.skipped;
        // the local journal says the restored table from here
        if let Some(j) = self.journal.as_mut() {
            let _ = self.table.take_journal();
            j.compact(&self.table)
                .context("cannot write the journal after a restore")?;
        }
        Ok(())
    }
}

/// The counters a group's snapshot carries beside the table.
#[derive(serde::Serialize, serde::Deserialize)]
struct GroupHead {
    counts: table::Counts,
    heartbeats: u64,
    reports: u64,
    skipped: u64,
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
    // the old filter's keys and the query's side by side: a daemon of before reads the first
    let mut body = serde_json::to_value(&filter)?;
    let q = crate::rpc::Query {
        limit: args.limit,
        cursor: args.cursor.clone(),
        summary: args.summary,
        ..crate::rpc::Query::default()
    };
    if let (Some(b), Value::Object(m)) = (body.as_object_mut(), serde_json::to_value(&q)?) {
        b.extend(m);
    }
    let question =
        crate::rpc::Question::new(&cfg.daemon.exchange, key, std::time::Duration::from_secs(5))
            .with_body(&body)
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
        print_table(&mut out, r, args.summary)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--query`'s two tables: the nodes, then the transfers (not with `--summary`).
fn print_table(
    out: &mut impl std::io::Write,
    r: &InflightReply,
    summary: bool,
) -> std::io::Result<()> {
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
    if summary {
        return writeln!(out, "{} in flight in all", r.total);
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
        let next = r.page.as_ref().and_then(|p| p.next_cursor.as_deref());
        match next {
            Some(c) => writeln!(
                out,
                "... {} in flight in all; the next page: --cursor '{c}' (or narrow with --node/--client/--source)",
                r.total
            )?,
            None => writeln!(
                out,
                "... {} in flight in all (use --json, or narrow with --node/--client/--source)",
                r.total
            )?,
        }
    }
    Ok(())
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
        input: Some(cfg.subscription()),
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
