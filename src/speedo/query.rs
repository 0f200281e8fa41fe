//! dd_speedo's answer to a query (SPEC §8): the names of the scope counted by state, those
//! selected paged in the order asked, and only the page built as reply lines. However many
//! names there are, an answer holds at most the limit's lines; the counts stay exact.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::reply::{METRICS, StatsReply, figure};
use super::{Entry, Health, Kind, Speedo};
use crate::rpc::query::{Scope, StateFilter};
use crate::rpc::{Key, Outside, Pager, Query, QueryError, Sort};

/// The kinds, in the order of a reply (their rank in a cursor).
const KINDS: [Kind; 2] = [Kind::Client, Kind::Source];

/// The severity of a state, for worst first (higher is worse).
fn severity(h: Health) -> i64 {
    match h {
        Health::Stopped => 6,
        Health::Stalled => 5,
        Health::Failing => 4,
        Health::Late => 3,
        Health::Abnormal => 2,
        Health::Slow => 1,
        Health::Ok => 0,
    }
}

/// A query read and checked against what dd_speedo knows.
struct Asked<'q> {
    scope: Scope,
    states: StateFilter,
    outside: Option<&'q Outside>,
    sort: Sort,
}

impl<'q> Asked<'q> {
    fn new(q: &'q Query) -> Result<Asked<'q>, QueryError> {
        let states: Vec<&str> = Health::ALL.iter().map(|h| h.as_str()).collect();
        if let Some(o) = &q.outside {
            if !METRICS.contains(&o.metric.as_str()) {
                return Err(QueryError(format!(
                    "metric {:?} is not one of {}",
                    o.metric,
                    METRICS.join(", ")
                )));
            }
        }
        Ok(Asked {
            scope: q.scope(&["client", "source"])?,
            states: q.state_filter(&states)?,
            outside: q.outside.as_ref(),
            sort: q.sort.unwrap_or_default(),
        })
    }

    /// The figure of `outside` for this entry (`None`: not yet).
    fn figure(&self, e: &Entry) -> Option<f64> {
        let f = &e.figures;
        self.outside.and_then(|o| {
            figure(
                &o.metric,
                f.files_per_min,
                f.bytes_per_sec,
                f.error_ratio,
                f.lag_max,
            )
            .flatten()
        })
    }

    /// Is an entry of the scope selected? With neither states nor bounds: all are; with
    /// both: either.
    fn selects(&self, e: &Entry) -> bool {
        let by_state = !self.states.is_empty() && self.states.selects(e.watch.state.as_str());
        let by_figure = self.outside.is_some_and(|o| {
            self.figure(e)
                .is_some_and(|v| o.bounds.iter().any(|b| b.alerts(v)))
        });
        (self.states.is_empty() && self.outside.is_none()) || by_state || by_figure
    }

    /// The sort's figure of an entry (its [`Key`]'s first part).
    fn sort_figure(&self, e: &Entry) -> i64 {
        match self.sort {
            Sort::Name => 0,
            Sort::Worst => -severity(e.watch.state),
            Sort::Rate => Key::rate_figure(e.figures.files_per_min),
        }
    }
}

/// What one pass over the names counted.
#[derive(Default)]
struct Tally {
    in_scope: BTreeMap<String, u64>,
    by_state: BTreeMap<String, BTreeMap<String, u64>>,
    matched: BTreeMap<String, u64>,
    with_figure: BTreeMap<String, u64>,
}

impl Speedo {
    /// Answer a query: the counts of the scope, and a page of what it selects. The service
    /// adds its counters.
    pub fn answer(&self, q: &Query, now: DateTime<Utc>) -> Result<StatsReply, QueryError> {
        if q.is_everything() {
            return Ok(self.everything(now));
        }
        let asked = Asked::new(q)?;
        let now_ms = now.timestamp_millis();
        let mut pager: Pager<(Kind, &str)> = Pager::new(q.limit(), q.cursor_key()?);
        let mut tally = Tally::default();
        for (rank, kind) in KINDS.into_iter().enumerate() {
            let k = kind.as_str().to_string();
            if !asked.scope.has_kind(&k) {
                continue;
            }
            // counted by state's place in `Health::ALL`: nothing allocated per name
            let mut states = [0u64; Health::ALL.len()];
            let (mut scope, mut matched, mut with_figure) = (0, 0, 0);
            for (name, e) in self.entries(kind) {
                if !asked.scope.has(name) {
                    continue;
                }
                scope += 1;
                if let Some(i) = Health::ALL.iter().position(|h| *h == e.watch.state) {
                    states[i] += 1;
                }
                if asked.outside.is_some() && asked.figure(e).is_some() {
                    with_figure += 1;
                }
                if asked.selects(e) {
                    matched += 1;
                    if !q.summary {
                        let figure = asked.sort_figure(e);
                        pager.offer_parts(figure, rank as u8, name, || (kind, name));
                    }
                }
            }
            let by_state = Health::ALL
                .iter()
                .zip(states)
                .map(|(h, n)| (h.as_str().to_string(), n));
            tally.by_state.insert(k.clone(), by_state.collect());
            tally.in_scope.insert(k.clone(), scope);
            tally.matched.insert(k.clone(), matched);
            if asked.outside.is_some() {
                tally.with_figure.insert(k, with_figure);
            }
        }
        let (items, mut page) = pager.finish();
        page.matched = tally.matched.values().sum();
        let mut reply = self.frame(now);
        for (kind, name) in items {
            let Some(e) = self.entry(kind, name) else {
                continue;
            };
            let line = self.name_stats(name, e, now_ms);
            match kind {
                Kind::Client => reply.clients.push(line),
                Kind::Source => reply.sources.push(line),
            }
        }
        reply.not_seen = self.not_seen(&asked.scope);
        reply.page = Some(page);
        reply.in_scope = tally.in_scope;
        reply.by_state = tally.by_state;
        reply.matched = tally.matched;
        reply.with_figure = tally.with_figure;
        Ok(reply)
    }

    /// Today's answer to an empty body: every client and every source by name, each list
    /// within the default cap (its page says when it cut).
    fn everything(&self, now: DateTime<Utc>) -> StatsReply {
        let mut reply = self.frame(now);
        let mut pages = Vec::new();
        for kind in KINDS {
            let q = Query {
                kind: Some(kind.as_str().to_string()),
                ..Query::default()
            };
            // a query on one kind, by name, cannot be refused
            if let Ok(r) = self.answer(&q, now) {
                reply.clients.extend(r.clients);
                reply.sources.extend(r.sources);
                pages.extend(r.page);
                reply.in_scope.extend(r.in_scope);
                reply.by_state.extend(r.by_state);
                reply.matched.extend(r.matched);
            }
        }
        reply.page = Some(crate::rpc::Page {
            limit: crate::rpc::query::DEFAULT_LIMIT,
            matched: pages.iter().map(|p| p.matched).sum(),
            returned: pages.iter().map(|p| p.returned).sum(),
            cut: pages.iter().any(|p| p.cut),
            next_cursor: None,
        });
        reply
    }

    /// The names asked for by name that were never seen (in any kind of the scope).
    fn not_seen(&self, scope: &Scope) -> Vec<String> {
        let kinds: Vec<Kind> = KINDS
            .into_iter()
            .filter(|k| scope.has_kind(k.as_str()))
            .collect();
        let said = match kinds.as_slice() {
            [one] => one.as_str(),
            _ => "client or source",
        };
        scope
            .named()
            .iter()
            .filter(|name| kinds.iter().all(|k| self.entry(*k, name).is_none()))
            .map(|name| format!("{said} {name}"))
            .collect()
    }
}
