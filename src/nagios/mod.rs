//! `check_dd_speedo`: the Nagios / Monitoring Plugins check of dd_speedo.
//!
//! One `stats` request to dd_speedo over the broker (no waiting for an interval), a verdict
//! per client and source from dd_speedo's own states and/or `-w`/`-c` ranges on one metric,
//! and the plugin's output: one line `DD_SPEEDO <STATE> - ... | <perfdata>`, then one line per
//! offender. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. `-t` bounds the whole run.
//!
//! The verdict is pure ([`evaluate`]): the tests give it stats and a time.

pub mod range;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::speedo::reply::NameStats;
use crate::speedo::{Health, Kind, StatsReply};

pub use range::Range;

/// A plugin state, in the Monitoring Plugins order of seriousness for the overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Status {
    /// 0.
    Ok,
    /// 1.
    Warning,
    /// 3 (below CRITICAL when picking the worst name; a run is UNKNOWN only on its own).
    Unknown,
    /// 2.
    Critical,
}

impl Status {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }

    /// `OK`, `WARNING`...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// The metric `-w`/`-c` apply to (and the perfdata show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
#[value(rename_all = "snake_case")]
pub enum Metric {
    /// Good files in the last whole minute.
    #[default]
    #[value(alias = "files-per-min")]
    FilesPerMin,
    /// Good bytes per second over the last whole minute.
    #[value(alias = "bytes-per-sec")]
    BytesPerSec,
    /// errors / attempts in the last whole minute (0 without attempts).
    #[value(alias = "error-ratio")]
    ErrorRatio,
    /// Largest lag (arrival - datestamp, s) in the last interval (0 without records).
    Lag,
}

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::FilesPerMin => "files_per_min",
            Metric::BytesPerSec => "bytes_per_sec",
            Metric::ErrorRatio => "error_ratio",
            Metric::Lag => "lag_max",
        }
    }

    fn uom(self) -> &'static str {
        match self {
            Metric::FilesPerMin | Metric::ErrorRatio => "",
            Metric::BytesPerSec => "B",
            Metric::Lag => "s",
        }
    }

    /// The figure. The per-minute ones are `None` until dd_speedo saw a whole minute of the
    /// name (no range is judged on them then, and their perfdata value is `U`); the lag is 0
    /// when the last interval had no record.
    fn value(self, entry: &NameStats) -> Option<f64> {
        match self {
            Metric::FilesPerMin => entry.files_per_min,
            Metric::BytesPerSec => entry.bytes_per_sec,
            Metric::ErrorRatio => entry
                .files_per_min
                .map(|_| entry.error_ratio.unwrap_or(0.0)),
            Metric::Lag => Some(entry.lag_max.unwrap_or(0.0)),
        }
    }
}

/// check_dd_speedo's command line (the Monitoring Plugins reserved options keep their
/// meaning: -h -V -t -w -c -H -v).
#[derive(Debug, Parser)]
#[command(
    name = "check_dd_speedo",
    version,
    about = "Nagios / Monitoring Plugins check of dd_speedo: clients and sources out of bounds",
    after_help = "Ranges (-w, -c): 10 (alert outside 0..10), 10: (below 10), ~:10 (above 10), 10:20 (outside), @10:20 (inside).\n\
                  Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
)]
#[command(
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
    #[arg(long, value_delimiter = ',', default_value = "late,failing")]
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
}

/// The plugin's verdict and output.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The state (exit code).
    pub status: Status,
    /// The whole output: the first line, then one line per offender.
    pub text: String,
}

impl Outcome {
    /// A one-line outcome with the totals undetermined (`U`), as the plugin guidelines have it
    /// (a `|` in the message would start the perfdata: written `/`).
    pub fn only(status: Status, message: &str) -> Outcome {
        Outcome {
            status,
            text: format!(
                "DD_SPEEDO {} - {} | {NO_PERFDATA}",
                status.as_str(),
                message.replace('|', "/")
            ),
        }
    }
}

/// The perfdata of a run that could not judge: the totals, undetermined.
pub const NO_PERFDATA: &str = "clients_out=U;;;0 sources_out=U;;;0";

/// A perfdata label, quoted when it must be (anything but letters, digits and `_./:-`), a
/// single quote doubled, `=` (never allowed) written `%3D`.
pub fn perf_label(label: &str) -> String {
    let plain = label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:-".contains(c));
    let clean = label.replace('=', "%3D");
    if plain && !clean.is_empty() {
        clean
    } else {
        format!("'{}'", clean.replace('\'', "''"))
    }
}

/// A number as perfdata wants it: plain decimal, at most 3 decimals, no exponent.
pub fn perf_number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn perf(
    label: &str,
    value: Option<f64>,
    uom: &str,
    warn: &str,
    crit: &str,
    min: &str,
    max: &str,
) -> String {
    // `U`: dd_speedo has no figure yet
    let value = value.map_or("U".to_string(), |v| format!("{}{uom}", perf_number(v)));
    let mut s = format!("{}={value};{warn};{crit};{min};{max}", perf_label(label));
    while s.ends_with(';') {
        s.pop();
    }
    s
}

/// Judge dd_speedo's `stats` result at `now`.
pub fn evaluate(stats: &StatsReply, check: &Check, now: DateTime<Utc>) -> Outcome {
    let interval = f64::from(stats.interval);
    let stale = check.stale.unwrap_or(2.0 * interval + 30.0);
    let Some(data_time) = stats.data_time else {
        return Outcome::only(
            Status::Unknown,
            &format!("dd_speedo has no speedo data yet (interval {interval} s)"),
        );
    };
    let age = (now - data_time).as_seconds_f64();
    if age > stale {
        return Outcome::only(
            Status::Unknown,
            &format!(
                "dd_speedo's data is stale: last interval ended {age:.0} s ago (limit {stale} s)"
            ),
        );
    }
    let picked = match pick(stats, check) {
        Ok(p) if p.is_empty() => {
            return Outcome::only(
                Status::Unknown,
                "dd_speedo has seen no client or source to check",
            );
        }
        Ok(p) => p,
        Err(missing) => {
            return Outcome::only(
                Status::Unknown,
                &format!("dd_speedo has not seen {}", missing.join(", ")),
            );
        }
    };
    let verdicts: Vec<Verdict> = picked.iter().map(|(k, e)| judge(*k, e, check)).collect();
    summarize(&verdicts, check)
}

/// The names to judge: those named (`Err` with the ones dd_speedo has not seen), those the
/// regex matches, or every one of the kind asked for.
fn pick<'a>(
    stats: &'a StatsReply,
    check: &Check,
) -> Result<Vec<(Kind, &'a NameStats)>, Vec<String>> {
    let named = !check.clients.is_empty() || !check.sources.is_empty() || check.regex.is_some();
    let mut missing = Vec::new();
    let mut picked = Vec::new();
    for (kind, entries, wanted) in [
        (Kind::Client, &stats.clients, &check.clients),
        (Kind::Source, &stats.sources, &check.sources),
    ] {
        for w in wanted {
            match entries.iter().find(|e| &e.name == w) {
                Some(e) => picked.push((kind, e)),
                None => missing.push(format!("{} {w}", kind.as_str())),
            }
        }
        let kind_ok = match check.kind {
            KindFilter::All => true,
            KindFilter::Client => kind == Kind::Client,
            KindFilter::Source => kind == Kind::Source,
        };
        if kind_ok && (check.regex.is_some() || !named) {
            for e in entries {
                let hit = check.regex.as_ref().is_none_or(|r| r.is_match(&e.name));
                if hit && !wanted.contains(&e.name) {
                    picked.push((kind, e));
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(picked)
    } else {
        Err(missing)
    }
}

/// One name judged.
struct Verdict {
    kind: Kind,
    status: Status,
    /// The offender's line (`None`: within bounds).
    offender: Option<String>,
    perfdata: String,
}

/// Judge one name: its state against the state lists, its figure against `-w`/`-c`.
fn judge(kind: Kind, e: &NameStats, check: &Check) -> Verdict {
    let m = check.metric;
    let value = m.value(e);
    let mut status = Status::Ok;
    let mut why = Vec::new();
    let state = e.state.as_str();
    if check.critical_states.contains(&e.state) {
        status = Status::Critical;
        why.push(format!("{state}: {}", e.reason));
    } else if check.warning_states.contains(&e.state) {
        status = Status::Warning;
        why.push(format!("{state}: {}", e.reason));
    }
    let range_hit = |r: &Option<Range>| match (r, value) {
        (Some(r), Some(v)) if r.alerts(v) => {
            Some(format!("{}={} outside {r}", m.key(), perf_number(v)))
        }
        _ => None,
    };
    if let Some(w) = range_hit(&check.critical) {
        status = Status::Critical;
        why.push(w.replace(" outside ", " outside -c "));
    } else if let Some(w) = range_hit(&check.warning) {
        status = status.max(Status::Warning);
        why.push(w.replace(" outside ", " outside -w "));
    }
    let offender = (status != Status::Ok).then(|| {
        let fig = |v: Option<f64>| v.map_or_else(|| "-".to_string(), perf_number);
        format!(
            "{} {} {}: {}; files_per_min={} bytes_per_sec={} error_ratio={} lag_max={} last_good={}",
            kind.as_str(),
            e.name,
            status.as_str(),
            why.join("; "),
            fig(e.files_per_min),
            fig(e.bytes_per_sec),
            fig(e.error_ratio),
            fig(e.lag_max),
            e.last_good
                .map_or_else(|| "never".to_string(), |t| crate::rpc::wire_time(&t)),
        )
    });
    let range = |r: &Option<Range>| r.as_ref().map(Range::to_string).unwrap_or_default();
    let max = if m == Metric::ErrorRatio { "1" } else { "" };
    let label = format!("{}.{}", kind.as_str(), e.name);
    Verdict {
        kind,
        status,
        offender,
        perfdata: perf(
            &label,
            value,
            m.uom(),
            &range(&check.warning),
            &range(&check.critical),
            "0",
            max,
        ),
    }
}

/// The first line (worst status, counts out of bounds, perfdata) and the offenders' lines.
fn summarize(verdicts: &[Verdict], check: &Check) -> Outcome {
    // Worst: CRITICAL over WARNING; a name is never UNKNOWN on its own.
    let status = verdicts
        .iter()
        .map(|v| v.status)
        .max()
        .unwrap_or(Status::Ok);
    let count = |kind: Kind, out: bool| {
        verdicts
            .iter()
            .filter(|v| v.kind == kind && (!out || v.status != Status::Ok))
            .count()
    };
    let (clients, sources) = (count(Kind::Client, false), count(Kind::Source, false));
    let (clients_out, sources_out) = (count(Kind::Client, true), count(Kind::Source, true));
    // many names: only the offenders' figures (the counts are in the totals)
    let many = verdicts.len() > check.max_perfdata;
    let mut totals = vec![
        perf(
            "clients_out",
            Some(clients_out as f64),
            "",
            "",
            "",
            "0",
            &clients.to_string(),
        ),
        perf(
            "sources_out",
            Some(sources_out as f64),
            "",
            "",
            "",
            "0",
            &sources.to_string(),
        ),
    ];
    totals.extend(
        verdicts
            .iter()
            .filter(|v| !many || v.offender.is_some())
            .take(check.max_perfdata)
            .map(|v| v.perfdata.clone()),
    );
    let mut text = format!(
        "DD_SPEEDO {} - {clients_out} of {clients} clients and {sources_out} of {sources} sources out of bounds | {}",
        status.as_str(),
        totals.join(" ")
    );
    // Offenders, most serious first, then by name.
    let mut offenders: Vec<&String> = verdicts
        .iter()
        .filter_map(|v| v.offender.as_ref())
        .collect();
    offenders.sort_by_key(|l| (!l.contains(" CRITICAL: "), (*l).clone()));
    for l in offenders {
        let _ = write!(text, "\n{l}");
    }
    Outcome { status, text }
}

/// Where the run was when it failed or ran out of time.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Connecting,
    Asking,
}

/// Run the check: its outcome (never panics, never hangs past `-t`).
pub fn run(args: &Args) -> Outcome {
    let check = match check_of(args) {
        Ok(c) => c,
        Err(e) => return Outcome::only(Status::Unknown, &e),
    };
    let cfg = match CheckConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => return Outcome::only(Status::Unknown, &e),
    };
    let broker = &cfg.broker;
    let key = crate::rpc::request_key("dd_speedo", cfg.instance.as_deref(), "stats");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::only(Status::Unknown, &format!("cannot start: {e}")),
    };
    let started = Instant::now();
    let bound = args.timeout.duration;
    let stage = std::cell::Cell::new(Stage::Connecting);
    let work = async {
        let link = crate::broker::Link::open(broker, "check_dd_speedo").await?;
        stage.set(Stage::Asking);
        // leave a moment for the "no answer" verdict before the overall bound
        let left = bound
            .saturating_sub(started.elapsed())
            .saturating_sub(Duration::from_millis(100));
        let question = crate::rpc::Question::new(&cfg.exchange, key, left).at_most(1);
        let answers = crate::rpc::ask::<StatsReply>(&link, &question).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), link.close("OK")).await;
        answers
    };
    let outcome = rt.block_on(async { tokio::time::timeout(bound, work).await });
    // a name lookup stuck in a blocking thread must not hold the answer back
    rt.shutdown_background();
    let secs = bound.as_secs_f64();
    let where_ = match stage.get() {
        Stage::Connecting => format!("connecting to {}", crate::config::mask_url(&broker.url)),
        Stage::Asking => "waiting for dd_speedo's answer".to_string(),
    };
    match outcome {
        Err(_) => Outcome::only(
            args.timeout.state,
            &format!("timed out after {secs} s {where_}"),
        ),
        Ok(Err(e)) if e.kind() == crate::broker::ErrorKind::NotFound => Outcome::only(
            Status::Unknown,
            &format!(
                "no dd_speedo answers on exchange {:?}: it does not exist on this broker",
                cfg.exchange
            ),
        ),
        Ok(Err(e)) if !e.is_transient() && e.kind() != crate::broker::ErrorKind::Setup => {
            Outcome::only(
                Status::Unknown,
                &format!("the broker refused: {}", e.reason()),
            )
        }
        Ok(Err(e)) => Outcome::only(Status::Unknown, &format!("cannot reach the broker: {e}")),
        Ok(Ok(answers)) => match answers.replies.first() {
            None if !answers.unreadable.is_empty() => Outcome::only(
                Status::Unknown,
                &format!("unreadable answer: {}", answers.unreadable[0]),
            ),
            None => Outcome::only(
                args.timeout.state,
                &format!(
                    "no dd_speedo answered within {secs} s on exchange {:?}{}",
                    cfg.exchange,
                    cfg.instance
                        .as_ref()
                        .map(|i| format!(" (instance {i})"))
                        .unwrap_or_default()
                ),
            ),
            Some(crate::rpc::Reply {
                ok: true,
                result: Some(stats),
                ..
            }) => evaluate(stats, &check, Utc::now()),
            Some(r) => Outcome::only(
                Status::Unknown,
                &format!(
                    "dd_speedo refused the request: {}",
                    Value::from(r.error.clone())
                ),
            ),
        },
    }
}

fn check_of(args: &Args) -> Result<Check, String> {
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
    })
}

/// `amqp://u:p@old:5672/v` with host `new`: `amqp://u:p@new:5672/v`.
fn replace_host(url: &str, host: &str) -> String {
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

/// Entry point of the `check_dd_speedo` binary: print the outcome, exit with its code.
pub fn main(args: Args) -> std::process::ExitCode {
    crate::cli::init_tracing(&args.common, 1);
    if args.common.print_config {
        return match CheckConfig::from_args(&args) {
            Ok(cfg) => {
                print!("{}", crate::config::to_toml(&cfg));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{}", Outcome::only(Status::Unknown, &e).text);
                std::process::ExitCode::from(3)
            }
        };
    }
    let outcome = run(&args);
    println!("{}", outcome.text);
    std::process::ExitCode::from(outcome.status.code())
}

#[cfg(test)]
mod tests;
