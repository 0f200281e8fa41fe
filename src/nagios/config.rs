//! check_dd_speedo's flags (the Monitoring Plugins' reserved options keep their meaning), its
//! config file, and what to check (`Check`) made from them.

use crate::speedo::Health;
use clap::{Parser, ValueEnum};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::*;

/// check_dd_speedo's command line (the Monitoring Plugins reserved options keep their
/// meaning: -h -V -t -w -c -H -v).
#[derive(Debug, Parser)]
#[command(
    name = "check_dd_speedo",
    version,
    about = "Nagios / Monitoring Plugins check of dd_speedo: clients and sources out of bounds",
    after_help = "Ranges (-w, -c): 10 (alert outside 0..10), 10: (below 10), '~:10' (above 10; quote it: the shell expands ~), 10:20 (outside), @10:20 (inside).\n\n\
                  Examples:\n  \
                  check_dd_speedo                                 # dd_speedo's own states: late, slow, down\n  \
                  check_dd_speedo --client acme -w 10: -c 1:      # acme's files per minute\n  \
                  check_dd_speedo --metric lag -w '~:60' -c '~:300'\n  \
                  check_dd_speedo --kind source --regex '^ec' --max-perfdata 20\n\n\
                  UNKNOWN when there is nothing to judge yet (no data, or -w/-c on a figure no name has).\n\
                  Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
)]
#[command(
    mut_arg("print_config", |a| a.help("Print the effective configuration (password masked) and exit 0")),
    mut_arg("password_file", |a| a.help("File whose first line is the broker password (Nagios shows command lines: keep the password out of them). Beats DD_PASSWORD, which beats the URL's")),
    mut_arg("config", |a| a.help("TOML file: `exchange`, `instance` and a `[broker]` section (flags beat environment beat file beat defaults; the ranges and names stay on the command line)")),
    mut_arg("verbose", |a| a.help("More detail on stderr")),
    mut_arg("quiet", |a| a.help("Less on stderr (the status line on stdout is always there)")),
)]
pub struct Args {
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: crate::cli::CommonOpts,
    /// Broker host (replaces the host of --broker).
    #[arg(short = 'H', long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// Exchange dd_speedo takes requests on [default: log].
    #[arg(long, value_name = "NAME")]
    pub exchange: Option<String>,
    /// The dd_speedo instance to ask [default: the first dd_speedo to answer].
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Check this client (repeatable).
    #[arg(long, value_name = "NAME")]
    pub client: Vec<String>,
    /// Check this source (repeatable).
    #[arg(long, value_name = "NAME")]
    pub source: Vec<String>,
    /// Check the names matching this regex (clients and sources; see --kind).
    #[arg(long, value_name = "REGEX")]
    pub regex: Option<String>,
    /// With --regex or nothing selected: which kinds to check.
    #[arg(long, value_enum, default_value = "all")]
    pub kind: KindFilter,
    /// Metric for -w/-c and the perfdata.
    #[arg(long, value_enum, default_value = "files_per_min")]
    pub metric: Metric,
    /// WARNING range on the metric.
    #[arg(short = 'w', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub warning: Option<Range>,
    /// CRITICAL range on the metric.
    #[arg(short = 'c', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub critical: Option<Range>,
    /// dd_speedo states that give WARNING (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "slow,abnormal")]
    pub warning_states: Vec<String>,
    /// dd_speedo states that give CRITICAL (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "late,failing,stalled,stopped"
    )]
    pub critical_states: Vec<String>,
    /// Ignore dd_speedo's states (only -w/-c).
    #[arg(long)]
    pub no_states: bool,
    /// Speedo data older than this is UNKNOWN [default: 2 intervals + 30 s].
    #[arg(long, value_name = "SECONDS")]
    pub stale: Option<f64>,
    /// Per-name perfdata for at most this many names; with more, only the offenders' (plus the
    /// totals), so that the output stays within what Nagios keeps.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub max_perfdata: usize,
    /// Offenders listed at most, worst first (the counts in the first line stay exact; a last
    /// line says how many more there are).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_offenders: usize,
    /// Bound on the whole run, connect included; the state given when it runs out.
    #[arg(
        short = 't',
        long,
        default_value = "10",
        value_name = "SECONDS[:STATE]"
    )]
    pub timeout: Timeout,
}

/// Where check_dd_speedo asks: its `--config` file and `--print-config` (the ranges, names
/// and states are the Nagios command's business, on its command line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// Exchange dd_speedo takes requests on.
    pub exchange: String,
    /// The dd_speedo instance to ask (none: the first to answer).
    pub instance: Option<String>,
    /// How to reach the broker.
    pub broker: crate::config::BrokerConfig,
}

impl crate::config::Config for CheckConfig {
    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            exchange: "log".into(),
            instance: None,
            broker: crate::config::BrokerConfig::default(),
        }
    }
}

impl CheckConfig {
    /// Defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<CheckConfig, String> {
        let mut cfg: CheckConfig =
            crate::config::load_file(args.common.config.as_deref()).map_err(|e| e.to_string())?;
        crate::config::overlay(&mut cfg.exchange, args.exchange.clone());
        if args.instance.is_some() {
            cfg.instance = args.instance.clone();
        }
        // the same broker layering as every command (URL, CA, password file or DD_PASSWORD)
        let broker = &mut cfg.broker;
        args.common
            .apply_broker(broker)
            .map_err(|e| e.to_string())?;
        if let Some(host) = &args.hostname {
            broker.url = replace_host(&broker.url, host);
        }
        broker.validate().map_err(|e| e.to_string())?;
        crate::config::check_name("exchange", &cfg.exchange).map_err(|e| e.to_string())?;
        if let Some(i) = &cfg.instance {
            crate::config::check_name("instance", i).map_err(|e| e.to_string())?;
        }
        Ok(cfg)
    }
}

/// Which kinds to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindFilter {
    /// Clients and sources.
    All,
    /// Clients only.
    Client,
    /// Sources only.
    Source,
}

/// `-t SECONDS[:STATE]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout {
    /// The bound.
    pub duration: Duration,
    /// The state when it runs out.
    pub state: Status,
}

impl std::str::FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Timeout, String> {
        let (secs, state) = match s.split_once(':') {
            Some((a, b)) => (
                a,
                Status::from_str(b, true).map_err(|_| format!("unknown state {b:?}"))?,
            ),
            None => (s, Status::Unknown),
        };
        let secs: f64 = secs
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("bad timeout {secs:?}"))?;
        let duration =
            Duration::try_from_secs_f64(secs).map_err(|e| format!("bad timeout: {e}"))?;
        Ok(Timeout { duration, state })
    }
}

/// What to check and how (everything but the broker).
pub struct Check {
    /// Named clients.
    pub clients: Vec<String>,
    /// Named sources.
    pub sources: Vec<String>,
    /// Names matching.
    pub regex: Option<Regex>,
    /// Kinds for the regex or the default "everything".
    pub kind: KindFilter,
    /// The metric.
    pub metric: Metric,
    /// `-w`.
    pub warning: Option<Range>,
    /// `-c`.
    pub critical: Option<Range>,
    /// States giving WARNING (empty with --no-states).
    pub warning_states: Vec<Health>,
    /// States giving CRITICAL.
    pub critical_states: Vec<Health>,
    /// Staleness bound, seconds (`None`: 2 intervals + 30 s).
    pub stale: Option<f64>,
    /// Per-name perfdata for at most this many names (else the offenders only).
    pub max_perfdata: usize,
    /// Offenders listed at most.
    pub max_offenders: usize,
}

pub(crate) fn check_of(args: &Args) -> Result<Check, String> {
    let regex = args
        .regex
        .as_deref()
        .map(Regex::new)
        .transpose()
        .map_err(|e| format!("bad --regex: {e}"))?;
    // `--warning-states ""` means none
    let parse = |v: &[String]| -> Result<Vec<Health>, String> {
        v.iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                Health::parse(s).ok_or_else(|| {
                    let names: Vec<&str> = Health::ALL.iter().map(|h| h.as_str()).collect();
                    format!(
                        "unknown dd_speedo state {s:?} (one of {})",
                        names.join(", ")
                    )
                })
            })
            .collect()
    };
    let (warning_states, critical_states) = if args.no_states {
        (Vec::new(), Vec::new())
    } else {
        (parse(&args.warning_states)?, parse(&args.critical_states)?)
    };
    Ok(Check {
        clients: args.client.clone(),
        sources: args.source.clone(),
        regex,
        kind: args.kind,
        metric: args.metric,
        warning: args.warning.clone(),
        critical: args.critical.clone(),
        warning_states,
        critical_states,
        stale: args.stale,
        max_perfdata: args.max_perfdata,
        max_offenders: args.max_offenders.max(1),
    })
}

/// `amqp://u:p@old:5672/v` with host `new`: `amqp://u:p@new:5672/v`.
pub(crate) fn replace_host(url: &str, host: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (hostport, path) = match hostpart.find('/') {
        Some(i) => (&hostpart[..i], &hostpart[i..]),
        None => (hostpart, ""),
    };
    let port = hostport
        .rsplit_once(':')
        .map(|(_, p)| format!(":{p}"))
        .unwrap_or_default();
    let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
    format!("{scheme}://{auth}{host}{port}{path}")
}
