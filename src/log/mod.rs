//! `dd_log`: tail and grep the log stream, or capture it to files with nothing lost.
//!
//! Each delivery is parsed, rendered (line or JSON), filtered, written, and only then
//! acknowledged. Ordinary posts (no report) are acknowledged and skipped; malformed messages
//! are counted, warned about at most once a second per kind, and rejected (dead-lettered when
//! the queue has a dead-letter exchange). With `--queue` the queue is durable, so whatever is
//! published while dd_log is down is printed when it comes back, once.

mod output;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::broker::{QueueSpec, Subscription};
use crate::cli::CommonOpts;
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts, Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed, render_json, render_line};

pub use output::{DailyFiles, Filter, Sink};

/// How each message is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One line: topic, then the traceability fields in a fixed order (see README).
    #[default]
    Line,
    /// One JSON object per line.
    Json,
}

/// dd_log's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_log",
    version,
    about = "Print the pump's log (and speedo) messages, one line each, topic first",
    after_help = "Line format: <topic> <time> <status> <source> <client> <node> <flow> <url> <bytes> <duration> <message>\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM and a closed stdout), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("queue", |a| a.help("Read from a durable named queue (q_<user>.dd_log.<NAME>): nothing is lost while dd_log is down [default: a private tail queue]")),
    mut_arg("dead_letter_exchange", |a| a.help("Dead-letter exchange for rejected (malformed) messages (of the tail queue too)")),
    mut_arg("topics", |a| a.help("Topic binding on the exchange (repeatable) [default: #]")),
)]
pub struct Args {
    /// Where it reads.
    #[command(flatten)]
    pub input: InputOpts,
    /// Regexes: a line is printed when any of them matches (no pattern: every line).
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Do not print lines matching this regex.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Stop after N printed lines.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Append to daily files DIR/YYYYMMDD.log instead of printing.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Run as a service (a capture daemon): publish alive and status messages and answer
    /// health/stats requests, like every ddmon daemon.
    #[arg(long)]
    pub service: bool,
    /// Daemon flags (with --service).
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// dd_log's effective configuration (the `--config` file has the same keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Where it reads: `exchange`, `topics`, `queue` (the NAME in q_<user>.dd_log.NAME;
    /// none: a private tail queue), `quorum` (needs `queue`), `dead_letter_exchange`.
    #[serde(flatten)]
    pub input: InputConfig,
    /// Regexes; a line is printed when any matches (empty: all).
    pub patterns: Vec<String>,
    /// Lines matching this regex are not printed.
    pub exclude: Option<String>,
    /// Stop after this many printed lines.
    pub count: Option<u64>,
    /// `line` or `json`.
    pub format: Format,
    /// Directory of daily capture files; none: stdout.
    pub output: Option<PathBuf>,
    /// Run as a service: alive/status messages and health/stats requests.
    pub service: bool,
    /// Alive interval, instance name, and the exchange for alive/status/requests.
    pub daemon: DaemonConfig,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            input: InputConfig::reading(&["#"]),
            patterns: Vec::new(),
            exclude: None,
            count: None,
            format: Format::Line,
            output: None,
            service: false,
            daemon: DaemonConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

impl LogConfig {
    /// Merge the layers: defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<LogConfig, ConfigError> {
        let mut cfg: LogConfig = load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut cfg.broker)?;
        args.input.apply(&mut cfg.input);
        if !args.patterns.is_empty() {
            cfg.patterns = args.patterns.clone();
        }
        if args.exclude.is_some() {
            cfg.exclude = args.exclude.clone();
        }
        if args.count.is_some() {
            cfg.count = args.count;
        }
        overlay(&mut cfg.format, args.format);
        if args.output.is_some() {
            cfg.output = args.output.clone();
        }
        cfg.service |= args.service;
        args.daemon.apply(&mut cfg.daemon);
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate()?;
        self.daemon.validate()?;
        Filter::new(&self.patterns, self.exclude.as_deref()).map_err(|e| ConfigError::Invalid {
            field: "pattern",
            message: e.to_string(),
        })?;
        self.input.validate()?;
        if self.input.quorum && self.input.queue_name().is_none() {
            return Err(ConfigError::Invalid {
                field: "quorum",
                message: "a quorum queue needs --queue NAME (a tail queue is exclusive)".into(),
            });
        }
        Ok(())
    }

    /// The subscription this configuration asks for: the durable queue named, or a private
    /// tail queue.
    pub fn subscription(&self) -> Subscription {
        let user = self.broker.user();
        if self.input.queue_name().is_some() {
            return self.input.durable(&user, "dd_log");
        }
        Subscription {
            exchange: self.input.exchange.clone(),
            bindings: self.input.topics.clone(),
            queue: QueueSpec {
                name: QueueSpec::name_for(
                    &user,
                    "dd_log",
                    &format!("tail.{:016x}", crate::broker::random_u64()),
                ),
                durable: false,
                exclusive: true,
                quorum: false,
                // malformed messages go there from a tail queue too
                dead_letter_exchange: self.input.dead_letter_exchange.clone(),
            },
        }
    }
}

/// What a run did, for the closing log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Lines printed (or written to files).
    pub printed: u64,
    /// Messages that did not pass the filter.
    pub filtered: u64,
    /// Ordinary posts (no report), skipped.
    pub not_reports: u64,
    /// Malformed messages, rejected.
    pub malformed: u64,
}

/// Entry point of the `dd_log` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(LogConfig::from_args(&args)?);
    crate::cli::main("dd_log", &args.common, 2, config, |cfg| {
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// dd_log as a [`Service`]: parse, filter, write, then acknowledge.
struct LogService {
    format: Format,
    count: Option<u64>,
    filter: Filter,
    sink: Sink,
    totals: Totals,
    tally: MalformedTally,
}

impl Service for LogService {
    fn tool(&self) -> &'static str {
        "dd_log"
    }

    fn handle(
        &mut self,
        delivery: &crate::broker::Delivery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Handled> {
        let parsed = match self.tally.parse(
            &delivery.routing_key,
            &delivery.headers,
            &delivery.body,
            now,
        ) {
            Ok(p) => p,
            Err(_) => {
                self.totals.malformed += 1;
                return Ok(Handled::reject());
            }
        };
        if parsed == Parsed::NotReport {
            self.totals.not_reports += 1;
            return Ok(Handled::ack());
        }
        let line = render_line(&delivery.routing_key, &parsed).unwrap_or_default();
        if !self.filter.accepts(&line) {
            self.totals.filtered += 1;
            return Ok(Handled::ack());
        }
        let out = match self.format {
            Format::Line => line,
            Format::Json => render_json(&delivery.routing_key, &parsed).unwrap_or_default(),
        };
        // Written by `flush`, before the delivery is acknowledged; on failure it is not
        // acknowledged, and a durable queue keeps it.
        self.sink
            .push_line(&out, now)
            .context("cannot write output")?;
        self.totals.printed += 1;
        Ok(Handled::ack())
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!({
            "printed": self.totals.printed,
            "filtered": self.totals.filtered,
            "not_reports": self.totals.not_reports,
            "malformed": self.totals.malformed,
            "malformed_by_kind": self.tally.by_kind(),
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.sink.flush().context("cannot write output")
    }

    fn finished(&self) -> bool {
        self.count.is_some_and(|n| self.totals.printed >= n)
    }
}

/// Consume, filter and print until `--count` lines were printed, a stop is asked for, or
/// stdout is closed (an `Err` whose cause is a broken pipe: the caller exits 0 quietly).
pub async fn run(cfg: &LogConfig, shutdown: Shutdown, clock: &dyn Clock) -> anyhow::Result<Totals> {
    let sink = match &cfg.output {
        Some(dir) => Sink::daily(
            DailyFiles::new(dir.clone())
                .with_context(|| format!("cannot create output directory {}", dir.display()))?,
        ),
        None => Sink::stdout(),
    };
    let mut service = LogService {
        format: cfg.format,
        count: cfg.count,
        filter: Filter::new(&cfg.patterns, cfg.exclude.as_deref())?,
        sink,
        totals: Totals::default(),
        tally: MalformedTally::default(),
    };
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: cfg.subscription(),
        daemon: cfg.service.then_some(&cfg.daemon),
        publishes: false,
        remotes: Default::default(),
    };
    let outcome = serve(&mut service, serve_cfg, shutdown, clock).await;
    let t = &service.totals;
    tracing::info!(
        printed = t.printed,
        filtered = t.filtered,
        not_reports = t.not_reports,
        malformed = t.malformed,
        by_kind = ?service.tally.by_kind(),
        "dd_log done"
    );
    outcome.map(|()| service.totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dd_log.toml");
        std::fs::write(
            &file,
            "exchange = \"xreport\"\nformat = \"json\"\ntopics = [\"v02.#\"]\n[broker]\nprefetch = 7\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "dd_log",
            "--config",
            file.to_str().unwrap(),
            "--format",
            "line",
            "--broker",
            "amqp://bob:pw@h/%2f",
            "ec_cmc",
        ])
        .unwrap();
        let cfg = LogConfig::from_args(&args).unwrap();
        assert_eq!(cfg.input.exchange, "xreport");
        assert_eq!(cfg.format, Format::Line);
        assert_eq!(cfg.input.topics, vec!["v02.#"]);
        assert_eq!(cfg.broker.prefetch, 7);
        assert_eq!(cfg.broker.url, "amqp://bob:pw@h/%2f");
        assert_eq!(cfg.patterns, vec!["ec_cmc"]);
        assert_eq!(
            cfg.subscription().queue.name.split('.').next(),
            Some("q_bob")
        );
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let args = Args::try_parse_from(["dd_log", "--broker", "amqp://h/%2f", "("]).unwrap();
        assert!(LogConfig::from_args(&args).is_err());
    }

    #[test]
    fn durable_queue_is_named_by_convention() {
        let cfg = LogConfig {
            input: InputConfig::reading(&["#"]).with_queue("capture"),
            ..LogConfig::default()
        };
        let sub = cfg.subscription();
        assert_eq!(sub.queue.name, "q_guest.dd_log.capture");
        assert!(sub.queue.durable && !sub.queue.exclusive);
        let tail = LogConfig::default().subscription();
        assert!(tail.queue.exclusive && tail.queue.name.starts_with("q_guest.dd_log.tail."));
    }
}
