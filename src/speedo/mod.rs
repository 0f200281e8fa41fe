//! `dd_speedo`: every interval, speedo records per client and per source (SPEC §3); threshold
//! states with alerts; learned expectations; the top subjects; full stats on request.
//!
//! The counting is a pure state machine ([`Speedo`]); this module is its edge: the daemon
//! (consume `log`, publish speedos to `log` and each source's to `log_<source>`, keep the
//! state file) and `--replay` (a capture file in, speedo lines out).

pub mod journal;
mod meter;
pub mod replay;
pub mod reply;
pub mod state;
mod thresholds;
pub mod topn;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::broker::{Delivery, Outgoing, Subscription};
use crate::cli::CommonOpts;
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts, Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};

pub use meter::{
    Alert, Counts, Entry, Figures, MAX_CATCH_UP, Output, Scope, Settings, Speedo, SpeedoRecord,
    TOP_N, Watch, subject_of,
};
pub use reply::{StatsReply, TopBy, TopSubject, TopSubjects};
pub use thresholds::{
    Ewma, HOURS_OF_WEEK, Health, Kind, Learned, Limits, Override, Thresholds, ThresholdsConfig,
};

/// Output format of `--replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `<topic> <body>`, as dd_log prints a speedo.
    #[default]
    Line,
    /// `{"topic": ..., "body": ...}`, as `dd_log --format json` prints it.
    Json,
}

/// dd_speedo's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_speedo",
    version,
    about = "Speedometers per client and per source: rates, thresholds, alerts, top subjects",
    after_help = "Body of a speedo record: <datetime> <goodcount> <errorcount> <goodbytecount> <badbytecount> <bytes/interval> <files/interval> <interval>\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("queue", |a| a.help("The durable input queue is q_<user>.dd_speedo.<NAME> [default: the input exchange's name]. One queue per speedo: two speedos sharing a queue would each count half")),
    mut_arg("topics", |a| a.help("Topic bindings on the input exchange (repeatable) [default: v02.# v03.#]. A binding that would bring in speedo records is refused")),
)]
pub struct Args {
    /// Where it reads.
    #[command(flatten)]
    pub input: InputOpts,
    /// Exchange to publish speedos and alerts to [default: log].
    #[arg(long, value_name = "NAME")]
    pub output_exchange: Option<String>,
    /// Each source's exchange, where its speedo is published too; `{source}` is replaced
    /// [default: log_{source}].
    #[arg(long, value_name = "TEMPLATE")]
    pub source_exchange_template: Option<String>,
    /// Do not publish the source speedos to the source exchanges.
    #[arg(long)]
    pub no_source_copies: bool,
    /// Seconds per speedo record; intervals end on multiples of it (60: on the minute)
    /// [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<u32>,
    /// Keep counters, last good deliveries, states and learning in this file (written
    /// atomically every --state-interval and on stop; read at start).
    #[arg(long, env = "DD_SPEEDO_STATE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Seconds between writes of the state file [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub state_interval: Option<f64>,
    /// Counters of the top-subjects structure (memory bound; error bound = files in the
    /// minute / this) [default: 1000].
    #[arg(long, value_name = "N")]
    pub top_capacity: Option<usize>,
    /// Replay capture files (dd_log --output or --format json; `-` for stdin) and print the
    /// speedo records, in the records' own time; no broker.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub replay: Vec<PathBuf>,
    /// Output format of --replay.
    #[arg(long, value_enum, default_value = "line")]
    pub format: Format,
    /// Daemon flags.
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// dd_speedo's effective configuration (the `--config` file has the same keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedoConfig {
    /// Where it reads: `exchange`, `queue`, `quorum`, `dead_letter_exchange`, `topics`.
    #[serde(flatten)]
    pub input: InputConfig,
    /// Exchange for speedos and alerts.
    pub output_exchange: String,
    /// Each source's exchange; `{source}` is replaced.
    pub source_exchange_template: String,
    /// Publish each source's speedos and alerts to its exchange too.
    pub source_copies: bool,
    /// Seconds per speedo record.
    pub interval: u32,
    /// The state file (none: nothing survives a restart).
    pub state_file: Option<PathBuf>,
    /// Seconds between state file writes.
    pub state_interval: f64,
    /// Counters of the top-subjects structure.
    pub top_capacity: usize,
    /// Thresholds: `[thresholds.defaults]` and `[[thresholds.override]]`.
    pub thresholds: ThresholdsConfig,
    /// Alive interval, instance name, exchange for alive/status/requests.
    pub daemon: DaemonConfig,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

impl Default for SpeedoConfig {
    fn default() -> Self {
        SpeedoConfig {
            input: InputConfig::reading(&["v02.#", "v03.#"]),
            output_exchange: "log".to_string(),
            source_exchange_template: "log_{source}".to_string(),
            source_copies: true,
            interval: 60,
            state_file: None,
            state_interval: 60.0,
            top_capacity: 1000,
            thresholds: ThresholdsConfig::default(),
            daemon: DaemonConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

fn invalid(field: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { field, message }
}

impl SpeedoConfig {
    /// Merge the layers: defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<SpeedoConfig, ConfigError> {
        let mut cfg: SpeedoConfig = load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut cfg.broker)?;
        args.daemon.apply(&mut cfg.daemon);
        args.input.apply(&mut cfg.input);
        overlay(&mut cfg.output_exchange, args.output_exchange.clone());
        overlay(
            &mut cfg.source_exchange_template,
            args.source_exchange_template.clone(),
        );
        cfg.source_copies &= !args.no_source_copies;
        overlay(&mut cfg.interval, args.interval);
        if args.state_file.is_some() {
            cfg.state_file = args.state_file.clone();
        }
        overlay(&mut cfg.state_interval, args.state_interval);
        overlay(&mut cfg.top_capacity, args.top_capacity);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate()?;
        self.daemon.validate()?;
        if self.interval == 0 {
            return Err(invalid("interval", "must be at least 1 second".into()));
        }
        if !(self.state_interval.is_finite() && self.state_interval > 0.0) {
            return Err(invalid("state_interval", "must be > 0 seconds".into()));
        }
        if !self.source_exchange_template.contains("{source}") {
            return Err(invalid(
                "source_exchange_template",
                "must contain {source}".into(),
            ));
        }
        self.input.validate()?;
        // No feedback loop: a speedo never reads speedo records (SPEC §3).
        for t in &self.input.topics {
            let own = ["v01.speedo.client.x", "v01.speedo.alert.source.x"];
            if own.iter().any(|k| crate::topic::matches(t, k)) {
                return Err(invalid(
                    "topics",
                    format!("binding {t:?} would feed dd_speedo its own speedo records"),
                ));
            }
        }
        Thresholds::new(&self.thresholds)?;
        Ok(())
    }

    /// A source's exchange.
    pub fn source_exchange(&self, source: &str) -> String {
        crate::topic::cut(&self.source_exchange_template.replace("{source}", source)).to_string()
    }

    /// The speedo these settings make.
    pub fn speedo(&self, now: DateTime<Utc>) -> Result<Speedo, ConfigError> {
        Ok(Speedo::new(
            Settings {
                interval: self.interval,
                top_capacity: self.top_capacity,
                thresholds: Thresholds::new(&self.thresholds)?,
            },
            now,
        ))
    }

    fn subscription(&self) -> Subscription {
        self.input.durable(&self.broker.user(), "dd_speedo")
    }

    /// The messages that publish `outputs`: each to the output exchange, and a source's also
    /// to its own exchange.
    pub fn outgoing(&self, outputs: &[Output]) -> Vec<Outgoing> {
        let mut msgs = Vec::with_capacity(outputs.len() + outputs.len() / 4);
        for o in outputs {
            let (topic, body, headers, content_type, source) = match o {
                Output::Speedo(r) => (
                    r.topic(),
                    r.body(),
                    r.headers(),
                    "text/plain",
                    (r.scope == Scope::Source).then_some(r.name.as_str()),
                ),
                Output::Alert(a) => (
                    a.topic(),
                    a.body(),
                    Default::default(),
                    "application/json",
                    (a.kind == Kind::Source).then_some(a.name.as_str()),
                ),
            };
            let m = Outgoing {
                exchange: self.output_exchange.clone(),
                routing_key: topic,
                headers,
                body: body.into_bytes(),
                content_type: Some(content_type.to_string()),
                ..Outgoing::default()
            };
            if let Some(source) = source.filter(|_| self.source_copies) {
                let exchange = self.source_exchange(source);
                if exchange != self.output_exchange {
                    msgs.push(Outgoing {
                        exchange,
                        ..m.clone()
                    });
                }
            }
            msgs.push(m);
        }
        msgs
    }
}

/// The state file's bookkeeping, and the count journal that covers what the last state file
/// does not yet hold.
#[derive(Default)]
struct Keeper {
    path: Option<PathBuf>,
    journal: Option<journal::CountJournal>,
    last: Option<DateTime<Utc>>,
    writes: u64,
    bytes: u64,
    error: Option<String>,
}

impl Keeper {
    fn failed(&mut self, msg: String) {
        if self.error.as_deref() != Some(msg.as_str()) {
            tracing::error!("{msg}");
        }
        self.error = Some(msg);
    }

    fn save(&mut self, speedo: &Speedo, now: DateTime<Utc>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.last = Some(now);
        let seq = self.journal.as_ref().map_or(0, journal::CountJournal::seq);
        match state::save(&path, speedo, now, seq) {
            Ok(n) => {
                if self.error.take().is_some() {
                    tracing::info!(file = %path.display(), "state file written again");
                }
                self.writes += 1;
                self.bytes = n;
                // the state file holds every count the journal held
                if let Some(j) = self.journal.as_mut() {
                    if let Err(e) = j.truncate() {
                        let msg = format!("cannot empty {}: {e}", j.path().display());
                        self.failed(msg);
                    }
                }
            }
            Err(e) => self.failed(format!("cannot write state file {}: {e}", path.display())),
        }
    }

    /// Note a counted record in the journal.
    fn note(&mut self, r: &crate::record::LogRecord, at: DateTime<Utc>) {
        if let Some(j) = self.journal.as_mut() {
            j.record(r, at);
        }
    }

    /// Write the journal before the records are acknowledged.
    fn flush(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.flush() {
                let msg = format!("cannot write {}: {e}", j.path().display());
                self.failed(msg);
            }
        }
    }
}

/// dd_speedo as a [`Service`].
struct SpeedoService {
    cfg: SpeedoConfig,
    speedo: Speedo,
    tally: MalformedTally,
    skipped: u64,
    speedos: u64,
    alerts: u64,
    keeper: Keeper,
}

impl SpeedoService {
    /// The counters of health, alive, status and `stats`.
    fn typed_counters(&self) -> reply::Counters {
        let (clients, sources) = self.speedo.names();
        reply::Counters {
            alerts: self.alerts,
            clients: clients as u64,
            counted: self.speedo.counted,
            malformed: self.tally.total(),
            neutral: self.speedo.neutral,
            skipped: self.skipped,
            sources: sources as u64,
            speedos: self.speedos,
            state_file: reply::StateFile {
                bytes: self.keeper.bytes,
                error: self.keeper.error.clone(),
                path: self.keeper.path.clone(),
                saved_at: self.keeper.last,
                writes: self.keeper.writes,
            },
            states: self
                .speedo
                .states()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n as u64))
                .collect(),
        }
    }

    fn publish(&mut self, outputs: Vec<Output>) -> Handled {
        if outputs.is_empty() {
            return Handled::ack();
        }
        for o in &outputs {
            match o {
                Output::Speedo(_) => self.speedos += 1,
                Output::Alert(a) => {
                    self.alerts += 1;
                    tracing::info!(kind = a.kind.as_str(), name = %a.name, old = a.old.as_str(), new = a.new.as_str(), reason = %a.reason, "state change");
                }
            }
        }
        let publish = self.cfg.outgoing(&outputs);
        let declare: BTreeSet<String> = publish.iter().map(|m| m.exchange.clone()).collect();
        Handled {
            publish,
            declare: declare.into_iter().collect(),
            ..Handled::default()
        }
    }
}

impl Service for SpeedoService {
    fn tool(&self) -> &'static str {
        "dd_speedo"
    }

    fn handle(&mut self, d: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled> {
        let record = match self.tally.parse(&d.routing_key, &d.headers, &d.body, now) {
            Ok(Parsed::Log(r)) => r,
            Ok(Parsed::NotReport | Parsed::Event(_)) => {
                self.skipped += 1;
                return Ok(Handled::ack());
            }
            // counted and warned about by the tally; rejected (dead-lettered where configured)
            Err(_) => return Ok(Handled::reject()),
        };
        // Close what ended before this record arrived, then count it.
        let outputs = self.speedo.advance(now);
        self.speedo.observe(&record, now);
        self.keeper.note(&record, now);
        Ok(self.publish(outputs))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.keeper.flush();
        Ok(())
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Handled {
        let outputs = self.speedo.advance(now);
        let due = match self.keeper.last {
            None => true,
            Some(t) => (now - t).as_seconds_f64() >= self.cfg.state_interval,
        };
        if due {
            self.keeper.save(&self.speedo, now);
        }
        self.publish(outputs)
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.typed_counters()).unwrap_or_default()
    }

    fn request(
        &mut self,
        command: &str,
        _body: &[u8],
        now: DateTime<Utc>,
    ) -> Option<serde_json::Value> {
        (command == "stats").then(|| {
            let reply = StatsReply {
                counters: self.typed_counters(),
                malformed_by_kind: self
                    .tally
                    .by_kind()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
                ..self.speedo.stats(now)
            };
            serde_json::to_value(reply).unwrap_or_default()
        })
    }

    fn degraded(&self) -> bool {
        self.keeper.error.is_some()
    }
}

/// Entry point of the `dd_speedo` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(SpeedoConfig::from_args(&args)?);
    let format = args.format;
    let files = args.replay.clone();
    // a replay is a command at a terminal (warnings only); the daemon logs at info
    let level = if files.is_empty() { 3 } else { 2 };
    crate::cli::main("dd_speedo", &args.common, level, config, move |cfg| {
        if !files.is_empty() {
            return run_replay(&cfg, &files, format).map(|_| std::process::ExitCode::SUCCESS);
        }
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// `--replay`: every file in order through one speedo, the speedos on stdout.
pub fn run_replay(
    cfg: &SpeedoConfig,
    files: &[PathBuf],
    format: Format,
) -> anyhow::Result<replay::ReplayTotals> {
    use std::io::Write as _;
    // The start is set by the first record: the capture's own time.
    let mut speedo = cfg.speedo(Utc::now())?;
    let mut totals = replay::ReplayTotals::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let json = format == Format::Json;
    for path in files {
        let mut input: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, f))
        };
        replay::replay(&mut speedo, &mut input, &mut out, json, &mut totals)
            .with_context(|| format!("cannot replay {}", path.display()))?;
    }
    replay::finish(&mut speedo, &mut out, json, &mut totals)?;
    out.flush()?;
    tracing::info!(
        lines = totals.lines,
        records = totals.records,
        skipped = totals.skipped,
        bad = totals.bad,
        printed = totals.printed,
        "replay done"
    );
    Ok(totals)
}

/// Run the daemon until a stop is asked for.
pub async fn run(cfg: &SpeedoConfig, shutdown: Shutdown, clock: &dyn Clock) -> anyhow::Result<()> {
    let mut speedo = cfg.speedo(clock.now())?;
    let mut covered = 0;
    match &cfg.state_file {
        None => {
            tracing::warn!("no --state-file: counters and learning start from zero at every start")
        }
        Some(path) => match state::load(path, clock.now())
            .with_context(|| format!("cannot read state file {}", path.display()))?
        {
            state::Loaded::Missing => {
                tracing::info!(file = %path.display(), "no state file yet: starting from zero")
            }
            state::Loaded::State(saved) => {
                tracing::info!(file = %path.display(), saved_at = %saved.saved_at, clients = saved.clients.len(), sources = saved.sources.len(), "state restored");
                covered = saved.journal_seq;
                speedo.restore(*saved);
            }
            state::Loaded::Unreadable(why, aside) => tracing::error!(
                file = %path.display(), moved_to = %aside.display(),
                "state file unreadable ({why}): moved aside, starting from zero"
            ),
        },
    }
    // the records counted after the last state file, from the count journal
    let mut journal = None;
    if let Some(path) = &cfg.state_file {
        let jpath = journal::CountJournal::path_for(path);
        let lines = journal::CountJournal::replay(&jpath, covered)
            .with_context(|| format!("cannot read count journal {}", jpath.display()))?;
        let last = lines.last().map_or(covered, |l| l.0);
        if !lines.is_empty() {
            tracing::info!(file = %jpath.display(), records = lines.len(), "counting again what the state file did not hold yet");
        }
        for (_, at, r) in &lines {
            speedo.observe(r, *at);
        }
        journal = Some(
            journal::CountJournal::open(&jpath, last)
                .with_context(|| format!("cannot open count journal {}", jpath.display()))?,
        );
    }
    let mut service = SpeedoService {
        cfg: cfg.clone(),
        speedo,
        tally: MalformedTally::default(),
        skipped: 0,
        speedos: 0,
        alerts: 0,
        keeper: Keeper {
            path: cfg.state_file.clone(),
            journal,
            ..Keeper::default()
        },
    };
    // the replayed counts go into a state file at once, and the journal starts afresh
    service.keeper.save(&service.speedo, clock.now());
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: cfg.subscription(),
        daemon: Some(&cfg.daemon),
        publishes: true,
        remotes: Default::default(),
    };
    let outcome = serve(&mut service, serve_cfg, shutdown, clock).await;
    // Whatever happened, keep what was counted.
    service.keeper.save(&service.speedo, clock.now());
    outcome
}

#[cfg(test)]
mod tests;
