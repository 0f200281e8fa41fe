//! dd_log's flags and its configuration: the command line, the file's keys and their defaults, the layering, and the subscription they ask for (a durable queue, or a private tail queue).

use crate::broker::{QueueSpec, Subscription};
use crate::cli::CommonOpts;
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::*;

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
    after_help = "Line format: <topic> <time> <status> <source> <client> <node> <flow> <url> <bytes> <duration> <message>\n\n\
                  Examples:\n  \
                  dd_log                                   # tail the log exchange until Ctrl-C\n  \
                  dd_log -n 10 ' 404 '                     # the next 10 lines matching a regex, then exit\n  \
                  dd_log --exclude '\\.tmp$' client_a       # lines of client_a, not temporary files\n  \
                  dd_log --format json | jq .status\n  \
                  dd_log | grep --line-buffered x | head -1  # grep buffers a pipe: say --line-buffered\n  \
                  dd_log --queue cap --output /var/log/ddmon  # capture to daily files, nothing lost while down\n\n\
                  Without -n, dd_log runs until stopped; it keeps retrying an unreachable broker.\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM and a closed stdout), 1 failure (also a stop before the broker was ever reached), 2 usage or config error."
)]
#[command(
    mut_arg("queue", |a| a.help("Read from a durable named queue (q_<user>.dd_log.<NAME>): nothing is lost while dd_log is down [default: a private tail queue]")),
    mut_arg("quorum", |a| a.help("Declare the durable queue as a quorum queue")),
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

impl crate::config::Config for LogConfig {
    fn input_block(&mut self) -> Option<&mut crate::config::InputConfig> {
        Some(&mut self.input)
    }

    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
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
            active_lock: None,
        }
    }
}
