//! The broker side of a client (the client-health issue): its queues on the pump's broker,
//! sampled from the management API every poll, judged over a sliding window. A pure state
//! machine, like the speedo: samples go in with their time, views come out; the daemon polls.
//!
//! A queue belongs to the client its name says (SPEC §1: `q_<user>.<tool>.<name>`, the
//! pattern configurable, its `client` group the client). Over the window `W`:
//! - **stopped**: no consumer at any sample of the window, messages waiting at the last;
//! - **stalled**: a consumer at every sample, messages unacknowledged at every sample, and
//!   neither the unacknowledged nor the ready count ever went down (nothing acknowledged),
//!   while the client's own reports say no good delivery in the window either (the report
//!   side tells a consumer at work from one that holds its prefetch and does nothing);
//! - **slow**: a consumer, and the ready backlog grew across the window without ever going
//!   down (acknowledgements below the inflow).
//!
//! A queue with nothing waiting and no consumer is no alarm. A judgement needs samples that
//! span the window (a queue seen for less is not judged yet).

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::thresholds::Health;

/// The default pattern of a client's queue names: `q_<client>.`...
pub const DEFAULT_PATTERN: &str = r"^q_(?P<client>[^.]+)\.";

/// One queue as the management API showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSample {
    /// The management API it came from (several brokers can be named).
    pub broker: String,
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Messages ready.
    pub ready: u64,
    /// Messages delivered and not acknowledged.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u64,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    at_ms: i64,
    ready: u64,
    unacked: u64,
    consumers: u64,
}

#[derive(Debug, Default)]
struct History {
    points: VecDeque<Point>,
    /// Since when it has had no consumer (ms).
    no_consumer_since: Option<i64>,
}

/// A client's queues, judged: in `stats` (`queue`), in the speedo headers and the check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueView {
    /// `stopped`, `stalled` or `slow` (`null`: none of them).
    pub state: Option<Health>,
    /// Why, in words (`null` when no state).
    pub evidence: Option<String>,
    /// Messages waiting: ready and unacknowledged, over the client's queues.
    pub backlog: u64,
    /// Messages ready.
    pub ready: u64,
    /// Messages unacknowledged.
    pub unacked: u64,
    /// Consumers over its queues.
    pub consumers: u64,
    /// Its queues.
    pub queues: u64,
    /// Seconds the backlog takes to drain at the client's good deliveries per second in the
    /// window (`null`: no delivery in the window, or nothing waiting).
    pub drain_seconds: Option<f64>,
}

/// Every client's queues.
pub struct ClientQueues {
    pattern: Regex,
    window_ms: i64,
    /// By client, then by (broker, vhost, queue).
    queues: HashMap<String, HashMap<(String, String, String), History>>,
    /// The last poll's outcome per broker: `None` answered, `Some(why)` did not.
    pub unseen: BTreeMap<String, String>,
    /// Polls applied.
    pub polls: u64,
}

fn hhmmss(ms: i64) -> String {
    crate::clock::at_ms(ms).format("%H:%MZ").to_string()
}

impl ClientQueues {
    /// Queues named by `pattern` (its `client` group, or its first), judged over `window_s`.
    pub fn new(pattern: Regex, window_s: f64) -> ClientQueues {
        ClientQueues {
            pattern,
            window_ms: (window_s * 1000.0) as i64,
            queues: HashMap::new(),
            unseen: BTreeMap::new(),
            polls: 0,
        }
    }

    /// The client a queue belongs to, if its name says one.
    pub fn client_of(&self, queue: &str) -> Option<String> {
        let c = self.pattern.captures(queue)?;
        c.name("client")
            .or_else(|| c.get(1))
            .map(|m| m.as_str().to_string())
            .filter(|s| !s.is_empty())
    }

    /// A poll of `broker` at `now`: its queues (a queue no longer listed is gone).
    pub fn update(&mut self, broker: &str, samples: Vec<QueueSample>, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        self.polls += 1;
        self.unseen.remove(broker);
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let Some(client) = self.client_of(&s.name) else {
                continue;
            };
            let key = (s.broker.clone(), s.vhost.clone(), s.name.clone());
            seen.insert(key.clone());
            let h = self
                .queues
                .entry(client)
                .or_default()
                .entry(key)
                .or_default();
            if s.consumers == 0 {
                h.no_consumer_since.get_or_insert(now_ms);
            } else {
                h.no_consumer_since = None;
            }
            h.points.push_back(Point {
                at_ms: now_ms,
                ready: s.ready,
                unacked: s.unacked,
                consumers: s.consumers,
            });
            // keep the window, and the one point before it (the window's start)
            while h.points.len() > 2 && h.points[1].at_ms <= now_ms - self.window_ms {
                h.points.pop_front();
            }
        }
        for qs in self.queues.values_mut() {
            qs.retain(|k, _| k.0 != broker || seen.contains(k));
        }
        self.queues.retain(|_, qs| !qs.is_empty());
    }

    /// A poll of `broker` failed: its queues keep their last view, and the operator is told
    /// what could not be seen.
    pub fn unseen(&mut self, broker: &str, why: String) {
        self.unseen.insert(broker.to_string(), why);
    }

    /// Every client with a queue.
    pub fn clients(&self) -> Vec<String> {
        let mut v: Vec<String> = self.queues.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// `client`'s queues judged at `now`; `good_in_window`: the client's reports say good
    /// deliveries in the window, and how many.
    pub fn view(&self, client: &str, good_in_window: u64, now: DateTime<Utc>) -> Option<QueueView> {
        let now_ms = now.timestamp_millis();
        let mut v = QueueView::default();
        let mut worst: Option<(u8, String, Health)> = None;
        let qs = self.queues.get(client)?;
        for ((_, _, name), h) in qs {
            let Some(last) = h.points.back() else {
                continue;
            };
            v.queues += 1;
            v.ready += last.ready;
            v.unacked += last.unacked;
            v.consumers += last.consumers;
            let Some(first) = h.points.front() else {
                continue;
            };
            // judged only over a whole window
            if first.at_ms > now_ms - self.window_ms {
                continue;
            }
            let window_s = self.window_ms / 1000;
            let pts: Vec<&Point> = h.points.iter().collect();
            let steps = || pts.windows(2).map(|w| (w[0], w[1]));
            let verdict = if pts.iter().all(|p| p.consumers == 0) {
                (last.ready > 0).then(|| {
                    let since = h.no_consumer_since.unwrap_or(first.at_ms);
                    (
                        3,
                        format!(
                            "{name} has {} ready, 0 consumers since {}",
                            last.ready,
                            hhmmss(since)
                        ),
                        Health::Stopped,
                    )
                })
            } else if pts.iter().all(|p| p.consumers > 0 && p.unacked > 0)
                && steps().all(|(a, b)| b.unacked >= a.unacked && b.ready >= a.ready)
                && good_in_window == 0
            {
                Some((
                    2,
                    format!(
                        "{name} has {} unacknowledged and {} ready, {} consumer(s), nothing acknowledged for {window_s} s",
                        last.unacked, last.ready, last.consumers
                    ),
                    Health::Stalled,
                ))
            } else if last.consumers > 0
                && last.ready > first.ready
                && steps().all(|(a, b)| b.ready >= a.ready)
            {
                Some((
                    1,
                    format!(
                        "{name}: backlog grew from {} to {} ready in {window_s} s, {} consumer(s)",
                        first.ready, last.ready, last.consumers
                    ),
                    Health::Slow,
                ))
            } else {
                None
            };
            if let Some(x) = verdict {
                if worst.as_ref().is_none_or(|w| x.0 > w.0) {
                    worst = Some(x);
                }
            }
        }
        if v.queues == 0 {
            return None;
        }
        v.backlog = v.ready + v.unacked;
        if good_in_window > 0 && v.backlog > 0 {
            let per_s = good_in_window as f64 / (self.window_ms as f64 / 1000.0);
            v.drain_seconds = Some(v.backlog as f64 / per_s);
        }
        if let Some((_, why, state)) = worst {
            v.state = Some(state);
            v.evidence = Some(why);
        }
        Some(v)
    }

    /// The window, ms.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000 + s, 0).unwrap_or_default()
    }

    fn q(name: &str, ready: u64, unacked: u64, consumers: u64) -> QueueSample {
        QueueSample {
            broker: "b".into(),
            vhost: "/".into(),
            name: name.into(),
            ready,
            unacked,
            consumers,
        }
    }

    fn cq() -> ClientQueues {
        ClientQueues::new(
            Regex::new(DEFAULT_PATTERN).unwrap_or_else(|e| panic!("{e}")),
            10.0,
        )
    }

    #[test]
    fn the_client_is_the_queue_names_user() {
        let c = cq();
        assert_eq!(
            c.client_of("q_client03.sr_subscribe.x").as_deref(),
            Some("client03")
        );
        assert_eq!(c.client_of("amq.gen-1"), None);
    }

    #[test]
    fn stopped_stalled_slow_and_quiet() {
        let mut c = cq();
        for (i, s) in (0..=12).step_by(2).enumerate() {
            let i = i as u64;
            c.update(
                "b",
                vec![
                    q("q_stop.sub.x", 100 + i, 0, 0),
                    q("q_stall.sub.x", 50, 100, 1),
                    q("q_slow.sub.x", 10 * i, 100, 1),
                    q("q_quiet.sub.x", 0, 0, 0),
                    q("q_fine.sub.x", 5, 20 + (i % 2) * 10, 1),
                ],
                t(s),
            );
        }
        let now = t(12);
        let v = c.view("stop", 0, now).unwrap_or_default();
        assert_eq!(v.state, Some(Health::Stopped));
        assert!(
            v.evidence
                .as_deref()
                .unwrap_or("")
                .starts_with("q_stop.sub.x has 106 ready, 0 consumers since "),
            "{v:?}"
        );
        assert_eq!(
            c.view("stall", 0, now).unwrap_or_default().state,
            Some(Health::Stalled)
        );
        // its reports say it delivers: at work, not stalled
        assert_eq!(c.view("stall", 40, now).unwrap_or_default().state, None);
        assert_eq!(
            c.view("slow", 3, now).unwrap_or_default().state,
            Some(Health::Slow)
        );
        assert_eq!(c.view("quiet", 0, now).unwrap_or_default().state, None);
        assert_eq!(c.view("fine", 100, now).unwrap_or_default().state, None);
        let fine = c.view("fine", 100, now).unwrap_or_default();
        assert_eq!(fine.backlog, 25);
        assert_eq!(fine.drain_seconds, Some(2.5));
        assert!(c.view("nobody", 0, now).is_none());
    }

    #[test]
    fn not_judged_before_a_whole_window_and_a_gone_queue_is_forgotten() {
        let mut c = cq();
        c.update("b", vec![q("q_a.sub.x", 5, 0, 0)], t(0));
        c.update("b", vec![q("q_a.sub.x", 5, 0, 0)], t(5));
        assert_eq!(c.view("a", 0, t(5)).unwrap_or_default().state, None);
        c.update("b", vec![q("q_a.sub.x", 5, 0, 0)], t(10));
        assert_eq!(
            c.view("a", 0, t(10)).unwrap_or_default().state,
            Some(Health::Stopped)
        );
        c.update("b", vec![], t(12));
        assert!(c.view("a", 0, t(12)).is_none());
    }
}
