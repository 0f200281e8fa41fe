//! Questions, not dumps (SPEC §8): the query a request body may carry, and the page a bounded
//! reply says it is.
//!
//! A [`Query`] names the names it is about (a kind, exact names, a regex: the *scope*),
//! which of them it wants (states, a figure outside bounds: the *selection*; none given:
//! all of the scope), in which order (worst first, by rate, by name), how many (a limit,
//! capped) and from where (the cursor of the page before); `summary` asks for the counts
//! alone. The answering module (dd_speedo, dd_watchdog) evaluates it on its own state
//! with [`Pager`], which keeps at most `limit` candidates however many names there are,
//! and says in a [`Page`] how many matched and whether it cut.
//!
//! An empty body (`{}`, or one that is not a query) is today's question: everything, by
//! name, within the default cap.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

/// Items a reply lists when the query gives no limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// Items a reply lists at most, whatever the query asks.
pub const MAX_LIMIT: usize = 10_000;

/// The order of a reply's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// By kind, then name (today's order).
    #[default]
    Name,
    /// The most serious state first, then by kind and name.
    Worst,
    /// The highest rate first (a name with no rate yet last), then by kind and name.
    Rate,
}

/// Bounds on a figure: it is *outside* when below `start` or above `end` (either open when
/// `None`), or, with `inside`, when within them. (The Nagios range `10:20` is
/// `{start: 10, end: 20}`, `~:10` is `{end: 10}`, `@10:20` is inside.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bounds {
    /// Lowest value within (none: no lower bound).
    pub start: Option<f64>,
    /// Highest value within (none: no upper bound).
    pub end: Option<f64>,
    /// Alert inside the bounds instead of outside.
    pub inside: bool,
}

impl Bounds {
    /// Does `v` alert?
    pub fn alerts(&self, v: f64) -> bool {
        let within = self.start.is_none_or(|s| v >= s) && self.end.is_none_or(|e| v <= e);
        within == self.inside
    }
}

/// A figure outside any of the bounds (the check's `-w`/`-c`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outside {
    /// The figure (the answering module's name for it, e.g. `files_per_min`).
    pub metric: String,
    /// Selected when any of these alert.
    pub bounds: Vec<Bounds>,
}

/// A question about many names (SPEC §8). Every field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Query {
    /// Only this kind (`client`, `source`, `node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this name (exact; the same as `names: [name]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only these names (exact).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Only the names this regex matches (beside `names`: either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Of the scope, those in one of these states; `!ok` is every state but `ok`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// Of the scope, those whose figure is outside bounds (beside `states`: either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside: Option<Outside>,
    /// The order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<Sort>,
    /// Items at most ([`DEFAULT_LIMIT`] when none, never more than [`MAX_LIMIT`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where the previous page ended (its `next_cursor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The counts alone, no items.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub summary: bool,
}

/// A query that cannot be answered (a bad regex, an unknown kind, state or metric, a
/// cursor that is not one): said in the reply's `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad query: {0}")]
pub struct QueryError(pub String);

impl Query {
    /// A request's body as a query: an empty or unreadable body is today's question
    /// (everything, by name, within the default cap).
    pub fn from_body(body: &[u8]) -> Query {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Is this today's question (nothing asked but everything)?
    pub fn is_everything(&self) -> bool {
        *self == Query::default()
    }

    /// The limit in effect.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
    }

    /// The body to send.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The compiled scope: names, regex, kind (checked against `kinds`).
    pub fn scope(&self, kinds: &[&str]) -> Result<Scope, QueryError> {
        if let Some(k) = &self.kind {
            if !kinds.contains(&k.as_str()) {
                return Err(QueryError(format!(
                    "kind {k:?} is not one of {}",
                    kinds.join(", ")
                )));
            }
        }
        let regex = self
            .regex
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| QueryError(format!("regex: {e}")))?;
        let mut names: Vec<String> = self.names.clone();
        names.extend(self.name.clone());
        names.sort_unstable();
        names.dedup();
        Ok(Scope {
            kind: self.kind.clone(),
            names,
            regex,
        })
    }

    /// The state filter, checked against the states there are.
    pub fn state_filter(&self, states: &[&str]) -> Result<StateFilter, QueryError> {
        let mut f = StateFilter::default();
        for s in &self.states {
            let (neg, name) = match s.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, s.as_str()),
            };
            if !states.contains(&name) {
                return Err(QueryError(format!(
                    "state {name:?} is not one of {}",
                    states.join(", ")
                )));
            }
            if neg {
                f.not.push(name.to_string());
            } else {
                f.any.push(name.to_string());
            }
        }
        Ok(f)
    }

    /// The cursor, read (`None`: from the start).
    pub fn cursor_key(&self) -> Result<Option<Key>, QueryError> {
        self.cursor.as_deref().map(Key::parse).transpose()
    }
}

/// The names a query is about.
#[derive(Debug, Clone)]
pub struct Scope {
    kind: Option<String>,
    names: Vec<String>,
    regex: Option<regex::Regex>,
}

impl Scope {
    /// Is this kind in the scope at all?
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
    }

    /// Is this name (of a kind in the scope) in it?
    pub fn has(&self, name: &str) -> bool {
        match (&self.regex, self.names.is_empty()) {
            (None, true) => true,
            (None, false) => self
                .names
                .binary_search_by(|n| n.as_str().cmp(name))
                .is_ok(),
            (Some(r), true) => r.is_match(name),
            (Some(r), false) => {
                self.names
                    .binary_search_by(|n| n.as_str().cmp(name))
                    .is_ok()
                    || r.is_match(name)
            }
        }
    }

    /// The exact names asked for (to say which were not seen).
    pub fn named(&self) -> &[String] {
        &self.names
    }
}

/// Which states a query selects.
#[derive(Debug, Clone, Default)]
pub struct StateFilter {
    any: Vec<String>,
    not: Vec<String>,
}

impl StateFilter {
    /// Was any state asked about?
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.not.is_empty()
    }

    /// Is this state selected?
    pub fn selects(&self, state: &str) -> bool {
        (self.any.is_empty() || self.any.iter().any(|s| s == state))
            && !self.not.iter().any(|s| s == state)
    }
}

/// Where an item stands in a reply's order: the sort's figure (lower first), its kind's
/// rank, its name. A cursor is the key of the last item of a page, written
/// `<figure>:<kind>:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The sort's figure (0 by name; minus the severity worst first; minus the rate in
    /// thousandths by rate).
    pub figure: i64,
    /// The kind's rank in the module's order.
    pub kind: u8,
    /// The name.
    pub name: String,
}

impl Key {
    /// Read a cursor.
    pub fn parse(cursor: &str) -> Result<Key, QueryError> {
        let bad = || QueryError(format!("cursor {cursor:?} is not one a reply gave"));
        let mut parts = cursor.splitn(3, ':');
        let figure = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let kind = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let name = parts.next().ok_or_else(bad)?.to_string();
        Ok(Key { figure, kind, name })
    }

    /// As a cursor.
    pub fn cursor(&self) -> String {
        format!("{}:{}:{}", self.figure, self.kind, self.name)
    }

    /// The figure of a rate (files a minute): higher first, none last.
    pub fn rate_figure(rate: Option<f64>) -> i64 {
        match rate {
            Some(r) if r.is_finite() => -((r * 1000.0).round() as i64),
            _ => i64::MAX,
        }
    }
}

/// What a reply says of its page: how many matched (exactly), how many it lists, whether it
/// cut, and the cursor of the next page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Page {
    /// The limit applied.
    pub limit: usize,
    /// Items matched by the query (after the cursor too: every page says the same).
    pub matched: u64,
    /// Items in this reply.
    pub returned: u64,
    /// Some matched items are not in this reply (the next page has them, or the limit cut).
    pub cut: bool,
    /// The cursor that asks for the next page (`null`: this is the last).
    pub next_cursor: Option<String>,
}

/// Keeps the first `limit` items after a cursor, in key order, of however many are offered:
/// memory for `limit` items, `log(limit)` per item.
pub struct Pager<T> {
    limit: usize,
    after: Option<Key>,
    heap: BinaryHeap<Held<T>>,
    matched: u64,
    beyond: u64,
}

struct Held<T>(Key, T);

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl<T> Pager<T> {
    /// Keep `limit` items after `after`.
    pub fn new(limit: usize, after: Option<Key>) -> Pager<T> {
        Pager {
            limit,
            after,
            heap: BinaryHeap::with_capacity(limit.min(4096) + 1),
            matched: 0,
            beyond: 0,
        }
    }

    /// An item that matched; `key` is called only when it may be kept.
    pub fn offer(&mut self, key: impl FnOnce() -> Key, item: impl FnOnce() -> T) {
        let key = key();
        self.offer_parts(key.figure, key.kind, &key.name, item);
    }

    /// An item that matched, its key in parts: nothing is allocated for an item that is not
    /// kept (a million transfers pass through here per question).
    pub fn offer_parts(&mut self, figure: i64, kind: u8, name: &str, item: impl FnOnce() -> T) {
        self.matched += 1;
        fn parts(k: &Key) -> (i64, u8, &str) {
            (k.figure, k.kind, k.name.as_str())
        }
        let here = (figure, kind, name);
        if self.after.as_ref().is_some_and(|a| here <= parts(a)) {
            return;
        }
        if self.limit == 0 {
            self.beyond += 1;
            return;
        }
        if self.heap.len() == self.limit {
            // full: keep it only if it comes before the last one kept
            match self.heap.peek() {
                Some(top) if here < parts(&top.0) => {
                    self.heap.pop();
                    self.beyond += 1;
                }
                _ => {
                    self.beyond += 1;
                    return;
                }
            }
        }
        let key = Key {
            figure,
            kind,
            name: name.to_string(),
        };
        self.heap.push(Held(key, item()));
    }

    /// The items kept, in order, and the page.
    pub fn finish(self) -> (Vec<T>, Page) {
        let held = self.heap.into_sorted_vec();
        let next_cursor = (self.beyond > 0)
            .then(|| held.last().map(|h| h.0.cursor()))
            .flatten();
        let page = Page {
            limit: self.limit,
            matched: self.matched,
            returned: held.len() as u64,
            cut: self.beyond > 0 || self.after.is_some(),
            next_cursor,
        };
        (held.into_iter().map(|h| h.1).collect(), page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(figure: i64, name: &str) -> Key {
        Key {
            figure,
            kind: 0,
            name: name.to_string(),
        }
    }

    #[test]
    fn an_empty_body_is_everything_by_name() {
        for body in [&b"{}"[..], b"", b"not json", b"[1]"] {
            let q = Query::from_body(body);
            assert!(q.is_everything());
            assert_eq!(q.limit(), DEFAULT_LIMIT);
        }
        let q = Query::from_body(br#"{"limit": 1000000, "sort": "worst"}"#);
        assert_eq!(q.limit(), MAX_LIMIT);
        assert_eq!(q.sort, Some(Sort::Worst));
    }

    #[test]
    fn bounds_alert_as_nagios_ranges_do() {
        let below = Bounds {
            start: Some(10.0),
            ..Bounds::default()
        };
        assert!(below.alerts(9.9) && !below.alerts(10.0) && !below.alerts(1e9));
        let inside = Bounds {
            start: Some(10.0),
            end: Some(20.0),
            inside: true,
        };
        assert!(inside.alerts(15.0) && !inside.alerts(21.0));
    }

    #[test]
    fn cursors_read_back() {
        let k = Key {
            figure: -3,
            kind: 1,
            name: "a:b c".into(),
        };
        assert_eq!(Key::parse(&k.cursor()).unwrap(), k);
        assert!(Key::parse("x").is_err());
    }

    #[test]
    fn states_and_scope() {
        let q = Query {
            states: vec!["!ok".into()],
            ..Query::default()
        };
        let f = q.state_filter(&["ok", "late"]).unwrap();
        assert!(f.selects("late") && !f.selects("ok"));
        let q = Query {
            states: vec!["sleepy".into()],
            ..Query::default()
        };
        assert!(q.state_filter(&["ok"]).is_err());
        let q = Query {
            kind: Some("client".into()),
            name: Some("b".into()),
            regex: Some("^x".into()),
            ..Query::default()
        };
        let s = q.scope(&["client", "source"]).unwrap();
        assert!(s.has_kind("client") && !s.has_kind("source"));
        assert!(s.has("b") && s.has("xy") && !s.has("a"));
        let bad = Query {
            regex: Some("(".into()),
            ..Query::default()
        };
        assert!(bad.scope(&["client"]).is_err());
    }

    proptest! {
        /// Paging through every item, page by page with the cursors, gives each item once, in
        /// order, and every page says the same exact count.
        #[test]
        fn pages_cover_everything_once_in_order(
            items in proptest::collection::btree_set((-5i64..5, "[a-e]{1,3}"), 0..60),
            limit in 1usize..8,
        ) {
            let all: Vec<Key> = items.iter().map(|(f, n)| key(*f, n)).collect();
            let mut seen = Vec::new();
            let mut cursor: Option<Key> = None;
            for _ in 0..100 {
                let mut p = Pager::new(limit, cursor.clone());
                // offered in a scrambled order
                for k in all.iter().rev() {
                    p.offer(|| k.clone(), || k.clone());
                }
                let (got, page) = p.finish();
                prop_assert_eq!(page.matched, all.len() as u64);
                prop_assert!(got.len() <= limit);
                seen.extend(got.iter().cloned());
                match page.next_cursor {
                    Some(c) => cursor = Some(Key::parse(&c).unwrap()),
                    None => break,
                }
            }
            let mut want = all.clone();
            want.sort();
            prop_assert_eq!(seen, want);
        }
    }
}
