//! The board: what dd_web shows, built from dd_speedo's `stats` answers (pure; time is
//! passed in). Each name keeps a short history of its rate for the sparkline; the rate is the
//! good files per minute between two answers, so that a dial moves from the first seconds
//! (dd_speedo's own `files_per_min` needs a whole minute and is shown beside it).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::rpc::Reply;
use crate::speedo::reply::NameStats;
use crate::speedo::{Health, Kind, StatsReply};

/// One client or source as the page and `/metrics` see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Name {
    /// `client` or `source`.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Threshold state (`ok`, `late`, `failing`, `slow`, `abnormal`).
    pub state: Health,
    /// Why, in words (dd_speedo's reason), when not ok.
    pub reason: Option<String>,
    /// Good files per minute between the last two answers.
    pub rate: Option<f64>,
    /// dd_speedo's files per minute over the last whole minute.
    pub files_per_min: Option<f64>,
    /// dd_speedo's bytes per second over the last whole minute.
    pub bytes_per_sec: Option<f64>,
    /// Errors / attempts over the last whole minute.
    pub error_ratio: Option<f64>,
    /// Mean and largest lag (seconds from the record's time to its arrival).
    pub lag_mean: Option<f64>,
    /// Largest lag.
    pub lag_max: Option<f64>,
    /// The learned expectation (files per minute), when there is one.
    pub expected: Option<f64>,
    /// Seconds since the last good delivery.
    pub seconds_since_good: Option<f64>,
    /// A client's broker queues: messages waiting (ready and unacknowledged), when watched.
    pub backlog: Option<u64>,
    /// Their consumers.
    pub consumers: Option<u64>,
    /// Cumulative counts since dd_speedo started.
    pub good: u64,
    /// Cumulative error count.
    pub errors: u64,
    /// Cumulative good bytes.
    pub good_bytes: u64,
    /// Cumulative bytes of errors.
    pub bad_bytes: u64,
    /// The last rates, oldest first (the sparkline).
    pub history: VecDeque<f64>,
    /// Shown as a card (one of the worst); else only in /metrics (`--metrics-names`).
    #[serde(skip)]
    pub card: bool,
    #[serde(skip)]
    last_good: Option<(u64, DateTime<Utc>)>,
}

/// Everything dd_web knows, updated by each `stats` answer.
#[derive(Debug, Clone)]
pub struct Board {
    history: usize,
    names: BTreeMap<(Kind, String), Name>,
    /// The dd_speedo instance that answered last.
    pub instance: Option<String>,
    /// Its interval (seconds).
    pub interval: Option<u64>,
    /// When the last answer came.
    pub updated: Option<DateTime<Utc>>,
    /// Requests sent / answered / not answered in time.
    pub polls: [u64; 3],
    /// The last `health` answers of every daemon.
    pub daemons: Vec<Reply<crate::daemon::Health>>,
    /// Names dd_speedo knows, by kind, and by kind and state (the whole pump's, exact).
    pub in_scope: BTreeMap<String, u64>,
    /// See [`Board::in_scope`].
    pub by_state: BTreeMap<String, BTreeMap<String, u64>>,
    /// The totals `client.all` and `sources.all`.
    pub totals: crate::speedo::reply::Totals,
}

impl Board {
    /// An empty board keeping `history` points per name.
    pub fn new(history: usize) -> Board {
        Board {
            history: history.max(2),
            names: BTreeMap::new(),
            instance: None,
            interval: None,
            updated: None,
            polls: [0; 3],
            daemons: Vec::new(),
            in_scope: BTreeMap::new(),
            by_state: BTreeMap::new(),
            totals: Default::default(),
        }
    }

    /// Take a `stats` result of dd_speedo `instance`, received at `now`: its names are the
    /// cards (the worst ones, as asked).
    pub fn update(&mut self, stats: &StatsReply, instance: &str, now: DateTime<Utc>) {
        self.update_with(stats, None, instance, now);
    }

    /// Take the cards' answer and, for /metrics, the `--metrics-names` answer: the board holds
    /// these names and no others (a name no longer asked for is dropped, with its history),
    /// so its size is the cards' and the allow-list's, never the pump's.
    pub fn update_with(
        &mut self,
        cards: &StatsReply,
        extra: Option<&StatsReply>,
        instance: &str,
        now: DateTime<Utc>,
    ) {
        self.instance = Some(instance.to_string());
        self.interval = Some(u64::from(cards.interval));
        self.updated = Some(now);
        self.in_scope = cards.in_scope.clone();
        self.by_state = cards.by_state.clone();
        self.totals = cards.totals.clone();
        let mut keep = std::collections::BTreeSet::new();
        for (answer, card) in [(Some(cards), true), (extra, false)] {
            let Some(a) = answer else { continue };
            for (kind, list) in [(Kind::Client, &a.clients), (Kind::Source, &a.sources)] {
                for v in list {
                    if keep.insert((kind, v.name.clone())) {
                        self.take(kind, v, now).card = card;
                    }
                }
            }
        }
        self.names.retain(|k, _| keep.contains(k));
    }

    /// Take one name's line of a `stats` result.
    fn take(&mut self, kind: Kind, v: &NameStats, now: DateTime<Utc>) -> &mut Name {
        let history = self.history;
        let entry = self
            .names
            .entry((kind, v.name.clone()))
            .or_insert_with(|| Name {
                kind,
                name: v.name.clone(),
                state: Health::Ok,
                reason: None,
                rate: None,
                files_per_min: None,
                bytes_per_sec: None,
                error_ratio: None,
                lag_mean: None,
                lag_max: None,
                expected: None,
                seconds_since_good: None,
                backlog: None,
                consumers: None,
                good: 0,
                errors: 0,
                good_bytes: 0,
                bad_bytes: 0,
                history: VecDeque::with_capacity(history),
                card: false,
                last_good: None,
            });
        let good = v.good;
        let rate = match entry.last_good {
            // a restarted dd_speedo counts from its state file, or from 0: no rate
            Some((before, at)) if good >= before && now > at => {
                let secs = (now - at).num_milliseconds() as f64 / 1000.0;
                Some((good - before) as f64 * 60.0 / secs)
            }
            _ => None,
        };
        entry.last_good = Some((good, now));
        entry.rate = rate;
        if let Some(r) = rate {
            if entry.history.len() == history {
                entry.history.pop_front();
            }
            entry.history.push_back((r * 100.0).round() / 100.0);
        }
        entry.state = v.state;
        entry.reason = Some(v.reason.clone());
        entry.files_per_min = v.files_per_min;
        entry.bytes_per_sec = v.bytes_per_sec;
        entry.error_ratio = v.error_ratio;
        entry.lag_mean = v.lag_mean;
        entry.lag_max = v.lag_max;
        entry.expected = v.expected_files_per_min;
        entry.seconds_since_good = v.seconds_since_good;
        entry.backlog = v.queue.as_ref().map(|q| q.backlog);
        entry.consumers = v.queue.as_ref().map(|q| q.consumers);
        entry.good = good;
        entry.errors = v.errors;
        entry.good_bytes = v.good_bytes;
        entry.bad_bytes = v.bad_bytes;
        entry
    }

    /// Every name, clients first, each kind by name.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.names.values()
    }

    /// Whether the last answer is recent (within three poll periods of `poll_s`).
    pub fn fresh(&self, now: DateTime<Utc>, poll_s: f64) -> bool {
        self.updated
            .is_some_and(|u| (now - u).num_milliseconds() as f64 <= 3000.0 * poll_s.max(1.0))
    }

    /// The JSON of `/api/speedos` and of each `speedos` event.
    pub fn snapshot(&self, now: DateTime<Utc>, poll_s: f64) -> Value {
        let list = |kind: Kind| -> Vec<&Name> {
            self.names
                .values()
                .filter(|n| n.kind == kind && n.card)
                .collect::<Vec<_>>()
        };
        json!({
            "time": now,
            "updated": self.updated,
            "fresh": self.fresh(now, poll_s),
            "instance": self.instance,
            "interval": self.interval,
            "clients": list(Kind::Client),
            "sources": list(Kind::Source),
            "in_scope": self.in_scope,
            "by_state": self.by_state,
            "totals": self.totals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(good: u64, state: &str) -> StatsReply {
        serde_json::from_value(json!({
            "interval": 1,
            "clients": [{"name": "c1", "state": state, "good": good,
                         "errors": 1, "good_bytes": good * 10, "bad_bytes": 5,
                         "files_per_min": null, "lag_mean": 0.5, "lag_max": 2.0}],
            "sources": [{"name": "s1", "state": "ok", "good": good * 2, "errors": 0,
                         "good_bytes": 0, "bad_bytes": 0, "files_per_min": 12.0}],
        }))
        .unwrap()
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_rate_is_good_files_per_minute_between_answers() {
        let mut b = Board::new(3);
        b.update(&stats(10, "ok"), "i", at(0));
        let c1 = b.names().next().unwrap();
        assert_eq!((c1.rate, c1.history.len()), (None, 0));
        b.update(&stats(13, "ok"), "i", at(2));
        let c1 = b.names().next().unwrap();
        assert_eq!(c1.rate, Some(90.0));
        for (i, good) in [20u64, 20, 26].iter().enumerate() {
            b.update(&stats(*good, "late"), "i", at(3 + i as i64));
        }
        let c1 = b.names().next().unwrap();
        assert_eq!(c1.history, VecDeque::from(vec![420.0, 0.0, 360.0]));
        assert_eq!(c1.state.as_str(), "late");
        assert_eq!((c1.good, c1.errors, c1.good_bytes), (26, 1, 260));
        // a restarted dd_speedo (counts went down) gives no rate, not a negative one
        b.update(&stats(3, "ok"), "i", at(10));
        assert_eq!(b.names().next().unwrap().rate, None);
    }

    #[test]
    fn snapshot_lists_clients_and_sources() {
        let mut b = Board::new(60);
        b.update(&stats(1, "ok"), "speedo-1", at(0));
        let s = b.snapshot(at(1), 1.0);
        assert_eq!(s["instance"], "speedo-1");
        assert_eq!(s["fresh"], true);
        assert_eq!(s["clients"][0]["name"], "c1");
        assert_eq!(s["sources"][0]["files_per_min"], 12.0);
        assert_eq!(b.snapshot(at(10), 1.0)["fresh"], false);
    }
}
