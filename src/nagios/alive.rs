//! `check_dd_alive`: the Nagios / Monitoring Plugins check of ddmon's own daemons (SPEC §6).
//!
//! It reads the roster (the roster stream's history, a broadcast `health`, the declared
//! daemons) and judges: CRITICAL when a daemon is `dead` or `missing`, WARNING when one is
//! `silent` or `degraded`, OK otherwise; UNKNOWN when it cannot tell (no broker, no history,
//! nothing known, `-t` ran out). First line `DD_ALIVE <STATE> - <text> | <perfdata>` with a
//! count per state, then one line per offender with its evidence. The verdict is pure
//! ([`judge`]).

use std::time::{Duration, Instant};

use chrono::Utc;

use super::config::Timeout;
use super::verdict::perf_label;
use super::{Outcome, Status};
use crate::daemon::{RosterOpts, RosterStream};
use crate::roster::follow::{Ask, Source, ask_while_reading, load};
use crate::roster::{Declared, Roster, RosterState, Row};

/// check_dd_alive's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "check_dd_alive",
    version,
    about = "Nagios plugin: are ddmon's own daemons alive? (the roster: history, answers, declared)",
    after_help = "CRITICAL: a daemon is dead (silent for 5x its alive interval and no answer when\n\
                  asked, or it exited on an error) or missing (declared, and never seen or stopped\n\
                  for --missing-after). WARNING: one is silent (no alive for 2x its interval) or\n\
                  degraded. UNKNOWN: the roster cannot be read, or no daemon is known.\n\n\
                  Examples:\n  \
                  check_dd_alive -t 10\n  \
                  check_dd_alive --declared /etc/ddmon/declared.toml\n  \
                  check_dd_alive --filter '^dd_speedo/'    # one tool's instances\n\n\
                  Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
)]
pub struct AliveArgs {
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: crate::cli::CommonOpts,
    /// Exchange the daemons publish alive messages on and take requests on.
    #[arg(long, env = "DD_EXCHANGE", default_value = "log", value_name = "NAME")]
    pub exchange: String,
    /// TOML file of the daemons that should run (`[[daemon]]` tool, instance, host).
    #[arg(long, env = "DD_DECLARED", value_name = "FILE")]
    pub declared: Option<std::path::PathBuf>,
    /// A declared daemon stopped and not seen for this long is `missing`.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub missing_after: f64,
    /// Judge only the daemons whose `<tool>/<instance>` matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
    /// Seconds a silent daemon has to answer when asked directly (within -t; no wait when
    /// none is silent).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub wait: f64,
    /// Ask the roster of a monitor that follows it (dd_web: its `roster` command; INSTANCE, or
    /// the first dd_web to answer) instead of reading the streams: one small answer, whatever
    /// the number of daemons. The declared daemons are then the monitor's (dd_web --declared).
    #[arg(long, value_name = "INSTANCE", num_args = 0..=1, default_missing_value = "all")]
    pub from_monitor: Option<String>,
    /// Offenders listed at most (the counts stay exact).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_offenders: usize,
    /// The roster stream's flags.
    #[command(flatten)]
    pub roster: RosterOpts,
    /// Bound on the whole run, connect included; the state given when it runs out.
    #[arg(
        short = 't',
        long,
        default_value = "10",
        value_name = "SECONDS[:STATE]"
    )]
    pub timeout: Timeout,
}

/// The perfdata of a run that could not judge.
pub const NO_ALIVE_PERFDATA: &str = "running=U;;;0 degraded=U;;;0 stopping=U;;;0 stopped=U;;;0 silent=U;;;0 dead=U;;;0 missing=U;;;0";

/// A one-line outcome, the counts undetermined.
pub fn only(status: Status, message: &str) -> Outcome {
    Outcome::undetermined("DD_ALIVE", NO_ALIVE_PERFDATA, status, message)
}

/// The plugin state a roster state gives.
pub fn status_of(s: RosterState) -> Status {
    match s {
        RosterState::Dead | RosterState::Missing => Status::Critical,
        RosterState::Silent | RosterState::Degraded => Status::Warning,
        _ => Status::Ok,
    }
}

fn name(r: &Row) -> String {
    if r.host.is_empty() {
        format!("{}/{}", r.tool, r.instance)
    } else {
        format!("{}/{} on {}", r.tool, r.instance, r.host)
    }
}

/// Judge the roster's rows (already filtered).
pub fn judge(rows: &[Row], max_offenders: usize) -> Outcome {
    let mut n = [0usize; 7];
    for r in rows {
        n[r.state.index()] += 1;
    }
    let mut offenders: Vec<&Row> = rows
        .iter()
        .filter(|r| status_of(r.state) != Status::Ok)
        .collect();
    offenders.sort_by_key(|r| std::cmp::Reverse(crate::roster::badness(r.state)));
    judge_counts(&n, &offenders, offenders.len(), max_offenders)
}

/// Judge from the counts per state and the offenders (the worst first; `offending` of them in
/// all, maybe more than given).
pub fn judge_counts(
    n: &[usize; 7],
    offenders: &[&Row],
    offending: usize,
    max_offenders: usize,
) -> Outcome {
    let total: usize = n.iter().sum();
    if total == 0 {
        return only(
            Status::Unknown,
            "no ddmon daemon is known (none in the history, none answered, none declared)",
        );
    }
    let status = RosterState::ALL
        .iter()
        .filter(|s| n[s.index()] > 0)
        .map(|s| status_of(*s))
        .max()
        .unwrap_or(Status::Ok);
    let perf: Vec<String> = RosterState::ALL
        .iter()
        .map(|s| format!("{}={};;;0", perf_label(s.as_str()), n[s.index()]))
        .collect();
    // the worst first: dead, missing, silent, degraded
    let order = [
        RosterState::Dead,
        RosterState::Missing,
        RosterState::Silent,
        RosterState::Degraded,
    ];
    let text = if offending == 0 {
        let parts: Vec<String> = RosterState::ALL
            .iter()
            .filter(|s| n[s.index()] > 0)
            .map(|s| format!("{} {}", n[s.index()], s.as_str()))
            .collect();
        format!("{total} daemons: {}", parts.join(", "))
    } else {
        let counts: Vec<String> = order
            .iter()
            .filter(|s| n[s.index()] > 0)
            .map(|s| format!("{} {}", n[s.index()], s.as_str()))
            .collect();
        let first: Vec<String> = offenders.iter().take(3).map(|r| name(r)).collect();
        let more = offending.saturating_sub(first.len());
        format!(
            "{} of {total} daemons: {}{}",
            counts.join(", "),
            first.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    let mut out = format!(
        "DD_ALIVE {} - {} | {}",
        status.as_str(),
        text.replace('|', "/"),
        perf.join(" ")
    );
    for r in offenders.iter().take(max_offenders) {
        out.push_str(&format!(
            "\n{} {}: {}",
            name(r),
            r.state.as_str(),
            r.evidence.replace('|', "/")
        ));
    }
    let listed = offenders.len().min(max_offenders);
    if offending > listed {
        out.push_str(&format!("\n... and {} more", offending - listed));
    }
    Outcome { status, text: out }
}

/// Ask a monitor's roster (`--from-monitor`): the counts and the offenders, in one answer.
fn from_monitor(args: &AliveArgs, instance: &str) -> Outcome {
    let setup = || -> anyhow::Result<crate::config::BrokerConfig> {
        if args.declared.is_some() {
            anyhow::bail!(
                "--declared goes with the monitor when asking it (dd_web --declared), not with --from-monitor"
            );
        }
        if let Some(f) = &args.filter {
            regex::Regex::new(f).map_err(|e| anyhow::anyhow!("bad --filter: {e}"))?;
        }
        Ok(config_of(args)?.broker)
    };
    let broker = match setup() {
        Ok(b) => b,
        Err(e) => return only(Status::Unknown, &format!("{e:#}")),
    };
    let bound = args.timeout.duration;
    let q = crate::roster::RosterQuery {
        states: vec![
            RosterState::Dead,
            RosterState::Missing,
            RosterState::Silent,
            RosterState::Degraded,
        ],
        regex: args.filter.clone(),
        limit: Some(args.max_offenders),
    };
    let key = crate::rpc::request_key(
        "dd_web",
        (instance != crate::rpc::ALL).then_some(instance),
        "roster",
    );
    let wait = bound.saturating_sub(Duration::from_millis(300));
    let question = crate::rpc::Question::new(&args.exchange, key, wait)
        .with_body(&q)
        .at_most(1);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return only(Status::Unknown, &format!("cannot start: {e}")),
    };
    let asked = rt.block_on(async {
        tokio::time::timeout(
            bound,
            crate::rpc::ask_once::<crate::roster::RosterReply>(
                &broker,
                "check_dd_alive",
                &question,
            ),
        )
        .await
    });
    rt.shutdown_background();
    let secs = bound.as_secs_f64();
    let answers = match asked {
        Err(_) => {
            return only(
                args.timeout.state,
                &format!("timed out after {secs} s asking the monitor"),
            );
        }
        Ok(Err(e)) => return only(Status::Unknown, &format!("{e}")),
        Ok(Ok(a)) => a,
    };
    let (reply, r) = match answers.first_ok() {
        Some(x) => x,
        None => {
            let why = answers
                .replies
                .first()
                .and_then(|r| r.error.clone())
                .map_or_else(
                    || {
                        format!(
                            "no dd_web ({instance}) answered within {secs} s on exchange {:?}",
                            args.exchange
                        )
                    },
                    |e| format!("dd_web refused the roster request: {e}"),
                );
            return only(Status::Unknown, &why);
        }
    };
    if !r.live {
        return only(
            Status::Unknown,
            &format!(
                "dd_web {} does not follow the roster streams now",
                reply.instance
            ),
        );
    }
    let mut n = [0usize; 7];
    for (s, c) in &r.counts {
        n[s.index()] = *c;
    }
    let offenders: Vec<&Row> = r.rows.iter().collect();
    judge_counts(&n, &offenders, r.matched, args.max_offenders)
}

/// What check_dd_alive reads (`--print-config`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AliveConfig {
    /// The daemon exchange.
    pub exchange: String,
    /// The roster streams.
    pub roster: RosterStream,
    /// How to reach the broker.
    pub broker: crate::config::BrokerConfig,
}

impl crate::config::Config for AliveConfig {
    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
}

/// The effective configuration: defaults < file (`[broker]`) < environment < flags.
pub fn config_of(args: &AliveArgs) -> anyhow::Result<AliveConfig> {
    let broker = args.common.broker_config()?.broker;
    let mut roster = RosterStream::default();
    args.roster.apply(&mut roster);
    roster.validate()?;
    crate::config::check_name("exchange", &args.exchange)?;
    Ok(AliveConfig {
        exchange: args.exchange.clone(),
        roster,
        broker,
    })
}

/// Run the check (never panics, never hangs past `-t`).
pub fn run(args: &AliveArgs) -> Outcome {
    if let Some(instance) = &args.from_monitor {
        return from_monitor(args, instance);
    }
    let setup = || -> anyhow::Result<(Source, Declared, Option<regex::Regex>)> {
        let AliveConfig {
            broker,
            roster: stream,
            ..
        } = config_of(args)?;
        let declared = match &args.declared {
            Some(p) => Declared::load(p)?,
            None => Declared::default(),
        };
        let filter = args
            .filter
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("bad --filter: {e}"))?;
        Ok((
            Source {
                broker,
                exchange: args.exchange.clone(),
                stream,
            },
            declared,
            filter,
        ))
    };
    let (src, declared, filter) = match setup() {
        Ok(x) => x,
        Err(e) => return only(Status::Unknown, &format!("{e:#}")),
    };
    let bound = args.timeout.duration;
    let started = Instant::now();
    let left = move || bound.saturating_sub(started.elapsed());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return only(Status::Unknown, &format!("cannot start: {e}")),
    };
    let missing_after = args.missing_after;
    let wait = Duration::from_secs_f64(args.wait.max(0.0));
    let work = async {
        let link = crate::broker::Link::open(&src.broker, "check_dd_alive").await?;
        let mut roster = Roster::new(missing_after);
        roster.declare(&declared);
        let budget = left().saturating_sub(wait + Duration::from_millis(400));
        let (history, reader) = load(&link, &src, &mut roster, budget, false).await;
        let mut reader = reader;
        let wait = wait.min(left().saturating_sub(Duration::from_millis(300)));
        let answers = ask_while_reading(
            &link,
            &src.exchange,
            &mut roster,
            reader.as_mut(),
            wait,
            Ask::Silent,
        )
        .await;
        if let Some(r) = reader {
            r.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), link.close("OK")).await;
        answers?;
        anyhow::Ok((roster, history))
    };
    let outcome = rt.block_on(async { tokio::time::timeout(bound, work).await });
    rt.shutdown_background();
    let secs = bound.as_secs_f64();
    match outcome {
        Err(_) => only(
            args.timeout.state,
            &format!("timed out after {secs} s reading the roster"),
        ),
        Ok(Err(e)) => {
            let why = match e.downcast_ref::<crate::broker::BrokerError>() {
                Some(b) if b.kind() == crate::broker::ErrorKind::NotFound => format!(
                    "no ddmon daemon uses exchange {:?}: it does not exist on this broker",
                    src.exchange
                ),
                Some(b) if !b.is_transient() && b.kind() != crate::broker::ErrorKind::Setup => {
                    format!("the broker refused: {}", b.reason())
                }
                _ => format!("cannot reach the broker: {e:#}"),
            };
            only(Status::Unknown, &why)
        }
        Ok(Ok((roster, history))) => {
            if let Some(p) = history.problem.filter(|_| history.stream.is_some()) {
                return only(Status::Unknown, &p);
            }
            let rows: Vec<Row> = roster
                .rows(Utc::now())
                .into_iter()
                .filter(|r| {
                    filter
                        .as_ref()
                        .is_none_or(|f| f.is_match(&format!("{}/{}", r.tool, r.instance)))
                })
                .collect();
            judge(&rows, args.max_offenders)
        }
    }
}

/// Entry point of the `check_dd_alive` binary.
pub fn main(args: AliveArgs) -> std::process::ExitCode {
    crate::cli::init_tracing(&args.common, 1);
    if args.common.print_config {
        return match config_of(&args) {
            Ok(cfg) => {
                print!("{}", crate::cli::print_config(&cfg));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{}", only(Status::Unknown, &format!("{e:#}")).text);
                std::process::ExitCode::from(3)
            }
        };
    }
    let outcome = run(&args);
    println!("{}", outcome.text);
    std::process::ExitCode::from(outcome.status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, inst: &str, state: RosterState, evidence: &str) -> Row {
        Row {
            tool: tool.into(),
            instance: inst.into(),
            host: "h1".into(),
            state,
            evidence: evidence.into(),
            pid: 1,
            started: None,
            last_heard: None,
            alive_age_s: None,
            alive_interval: 30.0,
            restarts: 0,
            declared: false,
            version: String::new(),
            role: None,
        }
    }

    #[test]
    fn states_map_to_plugin_states_with_exact_lines() {
        let ok = judge(
            &[
                row("dd_log", "a", RosterState::Running, ""),
                row(
                    "dd_speedo",
                    "b",
                    RosterState::Stopped,
                    "stopped at 03:00:00Z",
                ),
            ],
            100,
        );
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(
            ok.text,
            "DD_ALIVE OK - 2 daemons: 1 running, 1 stopped | running=1;;;0 degraded=0;;;0 stopping=0;;;0 stopped=1;;;0 silent=0;;;0 dead=0;;;0 missing=0;;;0"
        );
        let bad = judge(
            &[
                row("dd_log", "a", RosterState::Silent, "no word for 65s"),
                row("dd_log2source", "r1", RosterState::Dead, "no word for 3m"),
                row(
                    "dd_speedo",
                    "main",
                    RosterState::Missing,
                    "declared, never seen",
                ),
            ],
            1,
        );
        assert_eq!(bad.status, Status::Critical);
        let lines: Vec<&str> = bad.text.lines().collect();
        assert_eq!(
            lines[0],
            "DD_ALIVE CRITICAL - 1 dead, 1 missing, 1 silent of 3 daemons: dd_log2source/r1 on h1, dd_speedo/main on h1, dd_log/a on h1 | running=0;;;0 degraded=0;;;0 stopping=0;;;0 stopped=0;;;0 silent=1;;;0 dead=1;;;0 missing=1;;;0"
        );
        assert_eq!(lines[1], "dd_log2source/r1 on h1 dead: no word for 3m");
        assert_eq!(lines[2], "... and 2 more");
        let warn = judge(&[row("dd_log", "a", RosterState::Degraded, "it says")], 10);
        assert_eq!((warn.status, warn.status.code()), (Status::Warning, 1));
        assert_eq!(judge(&[], 10).status, Status::Unknown);
    }
}
