//! dd_speedo's flags and its configuration: the command line, the file's keys and their defaults, the layering and what the types cannot check, and the mapping of the speedo's outputs to messages.

use crate::cli::CommonOpts;
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::broker::Subscription;

use super::*;

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
    after_help = "Body of a speedo record: <datetime> <goodcount> <errorcount> <goodbytecount> <badbytecount> <bytes/interval> <files/interval> <interval>\n\n\
                  Examples:\n  \
                  dd_speedo                                   # speedos every 60 s on log, per client and source\n  \
                  dd_speedo --interval 10 --config /etc/ddmon/dd_speedo.toml   # thresholds from the file\n  \
                  dd_log 'speedo'                             # watch the speedo records it publishes\n  \
                  check_dd_speedo -c 1: --client acme         # judge them from Nagios\n\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("exchange", |a| a.help("Exchange to read log records from [default: log]")),
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
    /// The pump broker's management API to read the clients' queues from (repeatable: a
    /// cluster's nodes, the pumps of a site), logged in as the broker URL's user.
    #[arg(long, value_name = "URL")]
    pub management_url: Vec<String>,
    /// A client's queue names; the `client` group (else the first) is the client
    /// [default: ^q_(?P<client>[^.]+)\.].
    #[arg(long, value_name = "REGEX")]
    pub client_queue_pattern: Option<String>,
    /// Seconds over which a client's queues are judged (stopped, stalled, slow)
    /// [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub queue_window: Option<f64>,
    /// Seconds between polls of the management API [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub queue_poll: Option<f64>,
    /// Run as a member of a group (SPEC §7): the processes started with the same --instance
    /// and --queue and --group are one, one active (it consumes, publishes, answers), the
    /// others standby, taking over when it goes. The input queue is declared with RabbitMQ's
    /// single active consumer.
    #[arg(long)]
    pub group: bool,
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
    /// A member of a group (`--group`, SPEC §7).
    pub group: bool,
    /// The clients' broker queues: `[queues]`.
    pub queues: QueuesConfig,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

/// `[queues]`: the broker side of each client (the management API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Management API URLs (empty: the queues are not watched).
    pub management: Vec<String>,
    /// A client's queue names; the `client` group is the client.
    pub pattern: String,
    /// Seconds over which a queue is judged.
    pub window: f64,
    /// Seconds between polls.
    pub poll: f64,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            management: Vec::new(),
            pattern: super::queues::DEFAULT_PATTERN.to_string(),
            window: 120.0,
            poll: 10.0,
        }
    }
}

impl crate::config::Config for SpeedoConfig {
    fn input_block(&mut self) -> Option<&mut crate::config::InputConfig> {
        Some(&mut self.input)
    }

    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
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
            group: false,
            queues: QueuesConfig::default(),
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
        cfg.group |= args.group;
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
        if !args.management_url.is_empty() {
            cfg.queues.management = args.management_url.clone();
        }
        overlay(&mut cfg.queues.pattern, args.client_queue_pattern.clone());
        overlay(&mut cfg.queues.window, args.queue_window);
        overlay(&mut cfg.queues.poll, args.queue_poll);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate()?;
        self.daemon.validate()?;
        crate::daemon::registry::check_group(self.group, &self.daemon)?;
        if self.interval == 0 {
            return Err(invalid("interval", "must be at least 1 second".into()));
        }
        if !(self.state_interval.is_finite() && self.state_interval > 0.0) {
            return Err(invalid("state_interval", "must be > 0 seconds".into()));
        }
        crate::config::check_source_template(&self.source_exchange_template)?;
        self.input.validate()?;
        crate::config::check_name("output_exchange", &self.output_exchange)?;
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
        regex::Regex::new(&self.queues.pattern)
            .map_err(|e| invalid("queues.pattern", format!("not a regex: {e}")))?;
        for (field, v) in [
            ("queues.window", self.queues.window),
            ("queues.poll", self.queues.poll),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(field, "must be > 0 seconds".into()));
            }
        }
        Ok(())
    }

    /// A source's exchange.
    pub fn source_exchange(&self, source: &str) -> String {
        crate::topic::source_exchange(&self.source_exchange_template, source)
    }

    /// The clients' queues to watch, when a management API is named (the pattern was
    /// checked by `validate`).
    pub fn client_queues(&self) -> Option<super::queues::ClientQueues> {
        if self.queues.management.is_empty() {
            return None;
        }
        let pattern = regex::Regex::new(&self.queues.pattern).ok()?;
        Some(super::queues::ClientQueues::new(
            pattern,
            self.queues.window,
        ))
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

    pub(crate) fn subscription(&self) -> Subscription {
        let user = self.broker.user();
        let sub = self.input.durable(&user, "dd_speedo");
        crate::daemon::registry::in_group(sub, self.group, &user, "dd_speedo", &self.daemon)
    }
}
