//! `check_dd_speedo`: the Nagios / Monitoring Plugins check of dd_speedo.
//!
//! One `stats` request to dd_speedo over the broker (no waiting for an interval), a verdict
//! per client and source from dd_speedo's own states and/or `-w`/`-c` ranges on one metric,
//! and the plugin's output: one line `DD_SPEEDO <STATE> - ... | <perfdata>`, then one line per
//! offender. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. `-t` bounds the whole run.
//!
//! The verdict is pure ([`evaluate`]): the tests give it stats and a time.

pub mod alive;
pub mod range;

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::ValueEnum;
use serde_json::Value;

use crate::speedo::StatsReply;
use crate::speedo::reply::NameStats;

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
            // a rate has no unit of the perfdata syntax's (`B` is bytes, not bytes a second)
            Metric::FilesPerMin | Metric::ErrorRatio | Metric::BytesPerSec => "",
            Metric::Lag => "s",
        }
    }

    /// The figure. The per-minute ones are `None` until dd_speedo saw a whole minute of the
    /// name (no range is judged on them then, and their perfdata value is `U`); the lag is 0
    /// when the last interval had no record.
    fn value(self, entry: &NameStats) -> Option<f64> {
        crate::speedo::reply::figure(
            self.query_name(),
            entry.files_per_min,
            entry.bytes_per_sec,
            entry.error_ratio,
            entry.lag_max,
        )
        .flatten()
    }

    /// The metric's name in a query's `outside` (dd_speedo's name for the figure).
    fn query_name(self) -> &'static str {
        match self {
            Metric::FilesPerMin => "files_per_min",
            Metric::BytesPerSec => "bytes_per_sec",
            Metric::ErrorRatio => "error_ratio",
            Metric::Lag => "lag",
        }
    }
}

mod ask;
mod config;
mod verdict;

pub use config::*;
pub use verdict::*;

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
    let bound = args.timeout.duration;
    let (answered, stage) = match ask_speedo(&cfg, &check, bound) {
        Ok(a) => a,
        Err(e) => return Outcome::only(Status::Unknown, &format!("cannot start: {e}")),
    };
    let secs = bound.as_secs_f64();
    let broker_err = |e: crate::broker::BrokerError| match e.kind() {
        crate::broker::ErrorKind::NotFound => format!(
            "no dd_speedo answers on exchange {:?}: it does not exist on this broker",
            cfg.exchange
        ),
        crate::broker::ErrorKind::Setup => format!("cannot reach the broker: {e}"),
        _ if e.is_transient() => format!("cannot reach the broker: {e}"),
        _ => format!("the broker refused: {}", e.reason()),
    };
    match answered {
        None => {
            let where_ = match stage {
                Stage::Connecting => {
                    format!("connecting to {}", crate::config::mask_url(&cfg.broker.url))
                }
                Stage::Asking => "waiting for dd_speedo's answer".to_string(),
            };
            Outcome::only(
                args.timeout.state,
                &format!("timed out after {secs} s {where_}"),
            )
        }
        Some(Err(e)) => Outcome::only(Status::Unknown, &broker_err(e)),
        Some(Ok((answers, exact))) => match answers.replies.first() {
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
            }) => evaluate_exact(stats, &check, Utc::now(), exact.as_ref()),
            // answered with nothing: nothing to judge yet
            Some(r) if r.ok => evaluate(&StatsReply::default(), &check, Utc::now()),
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

/// What dd_speedo answered (`None`: the run ran out of `bound`), and where the run was.
type Asked = (
    Option<Result<(crate::rpc::Answers<StatsReply>, Option<Exact>), crate::broker::BrokerError>>,
    Stage,
);

/// Connect and ask dd_speedo what the check judges (`ask`), the whole within `bound`: the
/// answers are awaited until just before the bound and the connection closed in what is left.
fn ask_speedo(cfg: &CheckConfig, check: &Check, bound: Duration) -> std::io::Result<Asked> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let left = move || bound.saturating_sub(started.elapsed());
    let stage = std::cell::Cell::new(Stage::Connecting);
    let work = async {
        let link = crate::broker::Link::open(&cfg.broker, "check_dd_speedo").await?;
        stage.set(Stage::Asking);
        // leave a moment for the "no answer" verdict and the close before the bound
        let wait = left().saturating_sub(Duration::from_millis(150));
        let answers = ask::ask(&link, cfg, check, wait).await;
        let close = left()
            .saturating_sub(Duration::from_millis(20))
            .min(Duration::from_millis(200));
        let _ = tokio::time::timeout(close, link.close("OK")).await;
        answers
    };
    let outcome = rt.block_on(async { tokio::time::timeout(bound, work).await });
    // a name lookup stuck in a blocking thread must not hold the answer back
    rt.shutdown_background();
    Ok((outcome.ok(), stage.get()))
}

/// The entry of a plugin binary: its flags parsed (`--help` and `--version` printed; a usage
/// error is `usage`'s UNKNOWN on stdout, exit 3, as the plugin guidelines want), then `main`.
pub fn plugin_main<A: clap::Parser>(
    main: fn(A) -> std::process::ExitCode,
    usage: fn(Status, &str) -> Outcome,
) -> std::process::ExitCode {
    match A::try_parse() {
        Ok(args) => main(args),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            println!(
                "{}",
                usage(Status::Unknown, &format!("usage: {first}")).text
            );
            std::process::ExitCode::from(3)
        }
    }
}

/// Entry point of the `check_dd_speedo` binary: print the outcome, exit with its code.
pub fn main(args: Args) -> std::process::ExitCode {
    crate::cli::init_tracing(&args.common, 1);
    if args.common.print_config {
        return match CheckConfig::from_args(&args) {
            Ok(cfg) => {
                print!("{}", crate::cli::print_config(&cfg));
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
