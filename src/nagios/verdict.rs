//! The verdict, pure: dd_speedo's `stats` reply judged against a `Check` at a time, and the
//! plugin's output (status line, perfdata, offenders).

use crate::speedo::reply::NameStats;
use crate::speedo::{Kind, StatsReply};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

use super::*;

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
        Outcome::undetermined("DD_SPEEDO", NO_PERFDATA, status, message)
    }

    /// The same for plugin `name` (`DD_SPEEDO`, `DD_ALIVE`), whose undetermined perfdata is
    /// `perfdata`.
    pub fn undetermined(name: &str, perfdata: &str, status: Status, message: &str) -> Outcome {
        Outcome {
            status,
            text: format!(
                "{name} {} - {} | {perfdata}",
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

/// The exact counts of a big scope, whose reply lists the offenders only (see `ask`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exact {
    /// Clients in the scope.
    pub clients: u64,
    /// Sources in the scope.
    pub sources: u64,
    /// Clients out of bounds.
    pub clients_out: u64,
    /// Sources out of bounds.
    pub sources_out: u64,
    /// Names out of the critical bounds (states or range).
    pub critical: u64,
    /// With a range: the names that have the figure.
    pub with_figure: Option<u64>,
}

impl Exact {
    /// Names out of bounds.
    pub fn out(&self) -> u64 {
        self.clients_out + self.sources_out
    }
}

/// Judge dd_speedo's `stats` result at `now` (every name of the scope in its lists).
pub fn evaluate(stats: &StatsReply, check: &Check, now: DateTime<Utc>) -> Outcome {
    evaluate_exact(stats, check, now, None)
}

/// Judge at `now`; with `exact`, the lists hold the offenders only and the counts are those.
pub fn evaluate_exact(
    stats: &StatsReply,
    check: &Check,
    now: DateTime<Utc>,
    exact: Option<&Exact>,
) -> Outcome {
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
    if let Some(x) = exact {
        return judge_exact(stats, check, x);
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
    // -w/-c on a figure none of the names has yet (dd_speedo just started): an OK would say
    // they are within bounds, which nobody knows yet
    let ranged = check.warning.is_some() || check.critical.is_some();
    let judged = picked.iter().any(|(_, e)| check.metric.value(e).is_some());
    if ranged && !judged && verdicts.iter().all(|v| v.status == Status::Ok) {
        return no_figure(check, picked.len() as u64);
    }
    summarize(&verdicts, check, None)
}

/// `-w`/`-c` on a figure none of the `names` checked has yet.
fn no_figure(check: &Check, names: u64) -> Outcome {
    Outcome::only(
        Status::Unknown,
        &format!(
            "no {} yet for any of the {names} names checked (dd_speedo gives it after a whole \
             minute of a name): nothing to judge -w/-c on",
            check.metric.key()
        ),
    )
}

/// A big scope: the offenders listed judged here, the counts and status from `x`.
fn judge_exact(stats: &StatsReply, check: &Check, x: &Exact) -> Outcome {
    if x.clients + x.sources == 0 {
        return Outcome::only(
            Status::Unknown,
            "dd_speedo has seen no client or source to check",
        );
    }
    let ranged = check.warning.is_some() || check.critical.is_some();
    if ranged && x.with_figure == Some(0) && x.out() == 0 {
        return no_figure(check, x.clients + x.sources);
    }
    let listed = stats
        .clients
        .iter()
        .map(|e| (Kind::Client, e))
        .chain(stats.sources.iter().map(|e| (Kind::Source, e)));
    let verdicts: Vec<Verdict> = listed.map(|(k, e)| judge(k, e, check)).collect();
    summarize(&verdicts, check, Some(x))
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
    let mut perfdata = perf(
        &label,
        value,
        m.uom(),
        &range(&check.warning),
        &range(&check.critical),
        "0",
        max,
    );
    // a client whose broker queues are watched: its backlog beside the metric
    if let Some(q) = &e.queue {
        perfdata.push(' ');
        perfdata.push_str(&perf(
            &format!("{label}.backlog"),
            Some(q.backlog as f64),
            "",
            "",
            "",
            "0",
            "",
        ));
    }
    let offender = offender.map(|o| match &e.queue {
        Some(q) => format!("{o} backlog={} consumers={}", q.backlog, q.consumers),
        None => o,
    });
    Verdict {
        kind,
        status,
        offender,
        perfdata,
    }
}

/// The first line (worst status, counts out of bounds, perfdata) and the offenders' lines.
fn summarize(verdicts: &[Verdict], check: &Check, exact: Option<&Exact>) -> Outcome {
    // Worst: CRITICAL over WARNING; a name is never UNKNOWN on its own.
    let mut status = verdicts
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
    let (mut clients, mut sources) = (count(Kind::Client, false), count(Kind::Source, false));
    let (mut clients_out, mut sources_out) = (count(Kind::Client, true), count(Kind::Source, true));
    let listed_out = clients_out + sources_out;
    if let Some(x) = exact {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        (clients, sources) = (n(x.clients), n(x.sources));
        (clients_out, sources_out) = (n(x.clients_out), n(x.sources_out));
        if x.critical > 0 {
            status = Status::Critical;
        } else if x.out() > 0 {
            status = status.max(Status::Warning);
        }
    }
    // many names: only the offenders' figures (the counts are in the totals)
    let many = exact.is_some() || verdicts.len() > check.max_perfdata;
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
    for l in offenders.iter().take(check.max_offenders) {
        let _ = write!(text, "\n{l}");
    }
    let more = (clients_out + sources_out).saturating_sub(listed_out.min(check.max_offenders));
    if more > 0 {
        let _ = write!(
            text,
            "\n... and {more} more out of bounds (--max-offenders {})",
            check.max_offenders
        );
    }
    Outcome { status, text }
}
