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
    fn value(self, entry: &Value) -> Option<f64> {
        match self {
            Metric::FilesPerMin | Metric::BytesPerSec => entry[self.key()].as_f64(),
            Metric::ErrorRatio => {
                if entry["files_per_min"].is_null() {
                    None
                } else {
                    Some(entry[self.key()].as_f64().unwrap_or(0.0))
                }
            }
            Metric::Lag => Some(entry[self.key()].as_f64().unwrap_or(0.0)),
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
pub struct Args {
    /// Broker URL [default: amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long, env = "DD_BROKER", hide_env_values = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Broker host (replaces the host of --broker).
    #[arg(short = 'H', long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// PEM file of the CA that signs the broker's certificate (amqps://).
    #[arg(long, env = "DD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// File whose first line is the broker password (Nagios shows command lines: keep the
    /// password out of them). Beats DD_PASSWORD, which beats the URL's.
    #[arg(long, env = "DD_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// TOML file: `exchange`, `instance` and a `[broker]` section (flags beat environment
    /// beat file beat defaults; the ranges and names stay on the command line).
    #[arg(long, env = "DD_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective configuration (password masked) and exit 0.
    #[arg(long)]
    pub print_config: bool,
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
    /// More detail on stderr.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less on stderr (the status line on stdout is always there).
    #[arg(short = 'q', long, action = clap::ArgAction::Count)]
    pub quiet: u8,
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
            crate::config::load_file(args.config.as_deref()).map_err(|e| e.to_string())?;
        crate::config::overlay(&mut cfg.exchange, args.exchange.clone());
        if args.instance.is_some() {
            cfg.instance = args.instance.clone();
        }
        // the same broker layering as every command (URL, CA, password file or DD_PASSWORD)
        let broker = &mut cfg.broker;
        args.common()
            .apply_broker(broker)
            .map_err(|e| e.to_string())?;
        if let Some(host) = &args.hostname {
            broker.url = replace_host(&broker.url, host);
        }
        broker.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

impl Args {
    /// The flags every command has, as the shared edge takes them.
    fn common(&self) -> crate::cli::CommonOpts {
        crate::cli::CommonOpts {
            broker: self.broker.clone(),
            config: self.config.clone(),
            tls_ca: self.tls_ca.clone(),
            password_file: self.password_file.clone(),
            verbose: self.verbose,
            quiet: self.quiet,
            print_config: self.print_config,
        }
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
    pub warning_states: Vec<String>,
    /// States giving CRITICAL.
    pub critical_states: Vec<String>,
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
pub fn evaluate(stats: &Value, check: &Check, now: DateTime<Utc>) -> Outcome {
    let interval = stats["interval"].as_f64().unwrap_or(60.0);
    let stale = check.stale.unwrap_or(2.0 * interval + 30.0);
    let data_time = stats["data_time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let Some(data_time) = data_time else {
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
    // What to check.
    let named = !check.clients.is_empty() || !check.sources.is_empty() || check.regex.is_some();
    let mut missing = Vec::new();
    let mut picked: Vec<(&'static str, &Value)> = Vec::new();
    for (kind, key, wanted) in [
        ("client", "clients", &check.clients),
        ("source", "sources", &check.sources),
    ] {
        let entries: Vec<&Value> = stats[key]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for w in wanted {
            match entries
                .iter()
                .find(|e| e["name"].as_str() == Some(w.as_str()))
            {
                Some(e) => picked.push((kind, e)),
                None => missing.push(format!("{kind} {w}")),
            }
        }
        let kind_ok = match check.kind {
            KindFilter::All => true,
            KindFilter::Client => kind == "client",
            KindFilter::Source => kind == "source",
        };
        if kind_ok && (check.regex.is_some() || !named) {
            for e in &entries {
                let name = e["name"].as_str().unwrap_or("");
                let hit = check.regex.as_ref().is_none_or(|r| r.is_match(name));
                if hit && !wanted.iter().any(|w| w == name) {
                    picked.push((kind, e));
                }
            }
        }
    }
    if !missing.is_empty() {
        return Outcome::only(
            Status::Unknown,
            &format!("dd_speedo has not seen {}", missing.join(", ")),
        );
    }
    // Judge each.
    let m = check.metric;
    let mut worst = Status::Ok;
    let (mut clients, mut sources, mut clients_out, mut sources_out) = (0, 0, 0, 0);
    let mut offenders = Vec::new();
    let mut perfdata = Vec::new();
    for (kind, e) in &picked {
        let name = e["name"].as_str().unwrap_or("");
        let state = e["state"].as_str().unwrap_or("ok");
        let value = m.value(e);
        let mut status = Status::Ok;
        let mut why = Vec::new();
        if check.critical_states.iter().any(|s| s == state) {
            status = Status::Critical;
            why.push(format!("{state}: {}", e["reason"].as_str().unwrap_or("")));
        } else if check.warning_states.iter().any(|s| s == state) {
            status = Status::Warning;
            why.push(format!("{state}: {}", e["reason"].as_str().unwrap_or("")));
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
        let out = status != Status::Ok;
        match *kind {
            "client" => {
                clients += 1;
                clients_out += usize::from(out);
            }
            _ => {
                sources += 1;
                sources_out += usize::from(out);
            }
        }
        worst = worst.max(status);
        if out {
            let fig = |k: &str| match e[k].as_f64() {
                Some(v) => perf_number(v),
                None => "-".into(),
            };
            offenders.push(format!(
                "{kind} {name} {}: {}; files_per_min={} bytes_per_sec={} error_ratio={} lag_max={} last_good={}",
                status.as_str(),
                why.join("; "),
                fig("files_per_min"),
                fig("bytes_per_sec"),
                fig("error_ratio"),
                fig("lag_max"),
                e["last_good"].as_str().unwrap_or("never"),
            ));
        }
        let (w, c) = (
            check
                .warning
                .as_ref()
                .map(Range::to_string)
                .unwrap_or_default(),
            check
                .critical
                .as_ref()
                .map(Range::to_string)
                .unwrap_or_default(),
        );
        let max = if m == Metric::ErrorRatio { "1" } else { "" };
        perfdata.push((
            out,
            perf(&format!("{kind}.{name}"), value, m.uom(), &w, &c, "0", max),
        ));
    }
    // many names: only the offenders' figures (the counts are in the totals)
    let many = perfdata.len() > check.max_perfdata;
    let mut perfdata: Vec<String> = perfdata
        .into_iter()
        .filter(|(out, _)| !many || *out)
        .take(check.max_perfdata)
        .map(|(_, p)| p)
        .collect();
    if picked.is_empty() {
        return Outcome::only(
            Status::Unknown,
            "dd_speedo has seen no client or source to check",
        );
    }
    // Worst: CRITICAL over WARNING; a name is never UNKNOWN on its own.
    let status = worst;
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
    totals.append(&mut perfdata);
    let mut text = format!(
        "DD_SPEEDO {} - {clients_out} of {clients} clients and {sources_out} of {sources} sources out of bounds | {}",
        status.as_str(),
        totals.join(" ")
    );
    // Offenders, most serious first, then by name.
    offenders.sort_by_key(|l| (!l.contains(" CRITICAL: "), l.clone()));
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
    let key = match &cfg.instance {
        Some(i) => format!("v01.rpc.dd_speedo.{}.stats", crate::topic::escape_word(i)),
        None => "v01.rpc.dd_speedo.all.stats".to_string(),
    };
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
        let conn = crate::broker::connect(broker, "check_dd_speedo").await?;
        stage.set(Stage::Asking);
        // leave a moment for the "no answer" verdict before the overall bound
        let left = bound
            .saturating_sub(started.elapsed())
            .saturating_sub(Duration::from_millis(100));
        let replies =
            crate::broker::request(&conn, &cfg.exchange, &key, b"{}", left, Some(1)).await;
        let _ =
            tokio::time::timeout(Duration::from_millis(200), conn.close(200, "OK".into())).await;
        replies
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
        Ok(Err(crate::broker::BrokerError::Refused(m))) if m.contains("no exchange") => {
            Outcome::only(
                Status::Unknown,
                &format!(
                    "no dd_speedo answers on exchange {:?}: it does not exist on this broker",
                    cfg.exchange
                ),
            )
        }
        Ok(Err(crate::broker::BrokerError::Refused(m))) => {
            Outcome::only(Status::Unknown, &format!("the broker refused: {m}"))
        }
        Ok(Err(e)) => Outcome::only(Status::Unknown, &format!("cannot reach the broker: {e}")),
        Ok(Ok(replies)) => match replies.first() {
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
            Some(r) => match serde_json::from_slice::<Value>(&r.body) {
                Ok(v) if v["ok"] == true => evaluate(&v["result"], &check, Utc::now()),
                Ok(v) => Outcome::only(
                    Status::Unknown,
                    &format!("dd_speedo refused the request: {}", v["error"]),
                ),
                Err(e) => Outcome::only(Status::Unknown, &format!("unreadable answer: {e}")),
            },
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
    let states = ["ok", "late", "failing", "slow", "abnormal"];
    // `--warning-states ""` means none
    let clean =
        |v: &[String]| -> Vec<String> { v.iter().filter(|s| !s.is_empty()).cloned().collect() };
    let (warning_states, critical_states) = if args.no_states {
        (Vec::new(), Vec::new())
    } else {
        (clean(&args.warning_states), clean(&args.critical_states))
    };
    for s in warning_states.iter().chain(&critical_states) {
        if !states.contains(&s.as_str()) {
            return Err(format!(
                "unknown dd_speedo state {s:?} (one of {})",
                states.join(", ")
            ));
        }
    }
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
    crate::cli::init_tracing(&args.common(), 1);
    if args.print_config {
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
