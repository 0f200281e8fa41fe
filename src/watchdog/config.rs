//! dd_watchdog's flags and its configuration: the command line, the file's keys and their defaults, the default journal's place, and the mapping of the table's events to report messages.

use crate::cli::CommonOpts;
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::broker::Subscription;

use super::*;

/// dd_watchdog's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_watchdog",
    version,
    about = "Transfers in flight on every node, and what was lost when a node died",
    after_help = "Examples:\n  \
                  dd_watchdog --journal /var/lib/ddmon/wd.journal   # the daemon: in flight per node, down reports\n  \
                  dd_watchdog --query --node node01                 # ask the running daemon: node01's table now\n  \
                  dd_log 'watchdog.down'                            # what a dead node left in flight\n\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("exchange", |a| a.help("Exchange to read log records and heartbeats from [default: log]")),
    mut_arg("dead_letter_exchange", |a| a.help("Reject malformed records to this dead-letter exchange")),
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
    /// With --query: the nodes' summaries alone (in flight, bytes, oldest), no transfer.
    #[arg(long, requires = "query")]
    pub summary: bool,
    /// With --query: transfers listed at most, oldest first [default: 1000; at most 10000].
    #[arg(long, value_name = "N", requires = "query")]
    pub limit: Option<usize>,
    /// With --query: the page after this cursor (printed at the end of a cut list).
    #[arg(long, value_name = "CURSOR", requires = "query")]
    pub cursor: Option<String>,
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
    /// A member of a group (`--group`, SPEC §7).
    pub group: bool,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

impl crate::config::Config for WatchdogConfig {
    fn input_block(&mut self) -> Option<&mut crate::config::InputConfig> {
        Some(&mut self.input)
    }

    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
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
            group: false,
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
        cfg.group |= args.group;
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
        crate::daemon::registry::check_group(cfg.group, &cfg.daemon)?;
        cfg.input.validate()?;
        crate::config::check_name("output_exchange", &cfg.output_exchange)?;
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

    pub(crate) fn subscription(&self) -> Subscription {
        let user = self.broker.user();
        let sub = self.input.durable(&user, "dd_watchdog");
        crate::daemon::registry::in_group(sub, self.group, &user, "dd_watchdog", &self.daemon)
    }
}

/// `--print-config` and the file layer: no journal is `""` (left out would mean the default).
fn journal_or_empty<S: serde::Serializer>(j: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match j {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
    }
}
