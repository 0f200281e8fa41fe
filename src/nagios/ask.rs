//! What check_dd_speedo asks dd_speedo (SPEC §8): the questions for what it judges, never the
//! whole world.
//!
//! - Names given with `--client`/`--source`: the lines of those names (one query per kind),
//!   judged here.
//! - Otherwise (every name, or a regex): first the offenders, worst first, at most
//!   `--max-offenders` lines, with the scope's exact counts. A small scope (at most
//!   `--max-perfdata` names, so that each has its perfdata) is then asked for whole and judged
//!   here as before; a big one is judged from the exact counts and the lines listed, and
//!   the critical offenders are asked for first so that the status and the first lines are
//!   right however many there are.
//!
//! Every answer is bounded by its limit: the check's memory and time do not grow with the
//! pump.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::broker::{BrokerError, Link};
use crate::rpc::{Answers, Bounds, Outside, Query, Question, Sort};
use crate::speedo::StatsReply;

use super::{Check, CheckConfig, Exact, KindFilter, Range};

fn bounds(r: &Range) -> Bounds {
    Bounds {
        start: r.start,
        end: r.end,
        inside: r.inside,
    }
}

/// The selection of offenders: these states, or the metric outside these ranges.
fn offenders(check: &Check, critical_only: bool) -> Option<(Vec<String>, Option<Outside>)> {
    let mut states: Vec<String> = check
        .critical_states
        .iter()
        .map(|h| h.as_str().to_string())
        .collect();
    let mut ranges: Vec<&Range> = check.critical.iter().collect();
    if !critical_only {
        states.extend(check.warning_states.iter().map(|h| h.as_str().to_string()));
        ranges.extend(check.warning.iter());
    }
    let outside = (!ranges.is_empty()).then(|| Outside {
        metric: check.metric.query_name().to_string(),
        bounds: ranges.into_iter().map(bounds).collect(),
    });
    (!states.is_empty() || outside.is_some()).then_some((states, outside))
}

/// Every line of the scope, by name, up to `--max-perfdata` (a small scope, judged here).
fn whole(check: &Check) -> Query {
    Query {
        sort: Some(Sort::Name),
        limit: Some(check.max_perfdata),
        ..scope(check)
    }
}

/// The offenders `offenders` selects, worst first, up to `--max-offenders`.
fn worst(check: &Check, (states, outside): (Vec<String>, Option<Outside>)) -> Query {
    Query {
        states,
        outside,
        sort: Some(Sort::Worst),
        limit: Some(check.max_offenders),
        ..scope(check)
    }
}

/// The scope of a check with no names: its kind and regex.
fn scope(check: &Check) -> Query {
    Query {
        kind: match check.kind {
            KindFilter::All => None,
            KindFilter::Client => Some("client".into()),
            KindFilter::Source => Some("source".into()),
        },
        regex: check.regex.as_ref().map(|r| r.as_str().to_string()),
        ..Query::default()
    }
}

/// One question, its first answer.
async fn one(
    link: &Link,
    cfg: &CheckConfig,
    key: &str,
    q: &Query,
    wait: Duration,
) -> Result<Answers<StatsReply>, BrokerError> {
    let question = Question::new(&cfg.exchange, key.to_string(), wait)
        .with_body(q)
        .at_most(1);
    crate::rpc::ask::<StatsReply>(link, &question).await
}

/// The answer's result (`None`: a refusal or no answer, to be said as it is).
fn result(a: &Answers<StatsReply>) -> Option<&StatsReply> {
    a.first_ok().map(|(_, r)| r)
}

/// Lay the lines of `more` into `into`, each name once.
fn merge(into: &mut StatsReply, more: &StatsReply) {
    let have: BTreeSet<(bool, String)> = into
        .clients
        .iter()
        .map(|e| (false, e.name.clone()))
        .chain(into.sources.iter().map(|e| (true, e.name.clone())))
        .collect();
    for e in &more.clients {
        if !have.contains(&(false, e.name.clone())) {
            into.clients.push(e.clone());
        }
    }
    for e in &more.sources {
        if !have.contains(&(true, e.name.clone())) {
            into.sources.push(e.clone());
        }
    }
}

/// Ask what the check judges: the answers (a reply whose lists hold the names to judge, as
/// the first), and the exact counts when the lists hold the offenders only.
pub(crate) async fn ask(
    link: &Link,
    cfg: &CheckConfig,
    check: &Check,
    wait: Duration,
) -> Result<(Answers<StatsReply>, Option<Exact>), BrokerError> {
    let key = crate::rpc::request_key("dd_speedo", cfg.instance.as_deref(), "stats");
    let started = std::time::Instant::now();
    let left = || wait.saturating_sub(started.elapsed());
    if !check.clients.is_empty() || !check.sources.is_empty() {
        return named(link, cfg, check, &key, left).await;
    }
    let Some(selection) = offenders(check, false) else {
        // nothing to judge on: the counts and, for the perfdata, a small scope's lines
        return Ok((one(link, cfg, &key, &whole(check), left()).await?, None));
    };
    let first = one(link, cfg, &key, &worst(check, selection), left()).await?;
    let Some(found) = result(&first) else {
        return Ok((first, None));
    };
    let in_scope: u64 = found.in_scope.values().sum();
    if in_scope as usize <= check.max_perfdata {
        // small: every line, judged here as before
        return Ok((one(link, cfg, &key, &whole(check), left()).await?, None));
    }
    let count =
        |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let mut exact = Exact {
        clients: count(&found.in_scope, "client"),
        sources: count(&found.in_scope, "source"),
        clients_out: count(&found.matched, "client"),
        sources_out: count(&found.matched, "source"),
        critical: 0,
        with_figure: (!found.with_figure.is_empty()).then(|| found.with_figure.values().sum()),
    };
    let mut answers = first.clone();
    if let (Some(selection), true) = (offenders(check, true), exact.out() > 0) {
        // the critical ones first: the status and the first lines whatever the cut
        let critical = one(link, cfg, &key, &worst(check, selection), left()).await?;
        if let (Some(c), Some(r)) = (
            result(&critical).cloned(),
            answers.replies.first_mut().and_then(|r| r.result.as_mut()),
        ) {
            exact.critical = c.matched.values().sum();
            let mut lines = c;
            merge(&mut lines, r);
            r.clients = lines.clients;
            r.sources = lines.sources;
        }
    }
    Ok((answers, Some(exact)))
}

/// The names given, one query per kind, merged into one answer judged here.
async fn named(
    link: &Link,
    cfg: &CheckConfig,
    check: &Check,
    key: &str,
    left: impl Fn() -> Duration,
) -> Result<(Answers<StatsReply>, Option<Exact>), BrokerError> {
    let mut merged: Option<Answers<StatsReply>> = None;
    let mut asked = Vec::new();
    for (kind, names) in [("client", &check.clients), ("source", &check.sources)] {
        if !names.is_empty() {
            asked.push(Query {
                kind: Some(kind.to_string()),
                names: names.clone(),
                limit: Some(names.len()),
                ..Query::default()
            });
        }
    }
    if check.regex.is_some() {
        // names and a regex: those too (a small scope, as a Nagios service's)
        asked.push(whole(check));
    }
    for q in asked {
        let a = one(link, cfg, key, &q, left()).await?;
        match (&mut merged, result(&a)) {
            (None, _) => merged = Some(a),
            (Some(m), Some(r)) => {
                if let Some(into) = m.replies.first_mut().and_then(|x| x.result.as_mut()) {
                    merge(into, r);
                    into.not_seen.extend(r.not_seen.iter().cloned());
                }
            }
            // a refusal of the second: said as it is
            (Some(_), None) => return Ok((a, None)),
        }
    }
    Ok((merged.unwrap_or_default(), None))
}
