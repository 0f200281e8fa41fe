//! The in-flight table: a pure state machine. A `102` opens a transfer keyed by node, client
//! and URL; the next final code (2xx-5xx) for that key closes it. Nodes are up while they
//! speak; silent for the node timeout they are down, and what was in flight there is
//! reported. A transfer open longer than the stuck limit is reported once. A transfer that
//! never gets its final code is forgotten after the forget limit (counted and logged; counted
//! from its node's down, or from this table's start, if later): the table does not grow with
//! what was lost long ago. Nodes are kept (a few bytes each): one that comes back after any
//! time is reported up.
//!
//! Every change is also appended to a journal buffer (when journaling is on), which the edge
//! writes to its file before acknowledging the input: [`super::journal`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::journal::Line;
use super::reply::{InflightFilter, InflightReply, NodeRow, NodeState, TransferRow};
use crate::clock::at_ms as at;
use crate::record::LogRecord;

const NONE: u32 = u32::MAX;

/// Names seen often (nodes, clients, sources, flows), stored once.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Names {
    /// The id of `name`, added if new.
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// The name of an id (`""` for none).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map(|s| &**s).unwrap_or("")
    }

    fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

/// One transfer in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Node id.
    pub node: u32,
    /// Client id.
    pub client: u32,
    /// Source id (or none).
    pub source: u32,
    /// Flow id (or none).
    pub flow: u32,
    /// The `102`'s datestamp (ms).
    pub started_ms: i64,
    /// When the `102` arrived (ms).
    pub opened_ms: i64,
    /// Bytes, when the record said.
    pub bytes: u64,
    /// Reported as stuck already.
    pub stuck: bool,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Last record or heartbeat (ms).
    pub last_seen_ms: i64,
    /// Down since (ms), if down.
    pub down_since_ms: Option<i64>,
    /// Transfers in flight.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// It has sent `102`s (so an early final may be a reordered one).
    #[serde(skip)]
    pub starts: bool,
}

/// What the table says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node went silent: what was in flight there.
    Down {
        /// The node.
        node: String,
        /// Last heard (ms).
        last_seen_ms: i64,
        /// Declared down (ms).
        at_ms: i64,
        /// The transfers in flight there.
        transfers: Vec<TransferRow>,
    },
    /// A node that was down spoke again.
    Up {
        /// The node.
        node: String,
        /// Down since (ms).
        down_since_ms: i64,
        /// Now (ms).
        at_ms: i64,
        /// Transfers still in flight there.
        in_flight: u64,
    },
    /// A transfer open too long (reported once).
    Stuck {
        /// The node.
        node: String,
        /// The transfer.
        transfer: TransferRow,
    },
    /// Transfers dropped after the forget limit (logged, not published: they were reported
    /// as stuck or down before).
    Forgotten {
        /// How many transfers.
        transfers: u64,
    },
}

/// Counters for stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Transfers opened.
    pub opened: u64,
    /// Closed by their final code.
    pub closed: u64,
    /// A second `102` for an open key (the transfer restarted).
    pub restarted: u64,
    /// Final codes with no open transfer (counted, not an error).
    pub unmatched_finals: u64,
    /// `102`s that came after their final code within the reorder window (not opened).
    pub reordered: u64,
    /// Other 1xx codes, ignored.
    pub informational: u64,
    /// Node-down reports.
    pub downs: u64,
    /// Stuck reports.
    pub stuck: u64,
    /// Transfers dropped after the forget limit without a final code.
    pub forgotten: u64,
}

/// The table's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Silence after which a node is down (ms).
    pub node_timeout_ms: i64,
    /// Age after which a transfer is stuck (ms; 0: never).
    pub stuck_after_ms: i64,
    /// A final code seen before its `102` within this window cancels the `102` (ms).
    pub reorder_window_ms: i64,
    /// An open transfer is forgotten this long after it opened, its node went down, or the
    /// table started or got input again after a silence, whichever is latest (ms; 0: never).
    pub forget_after_ms: i64,
}

/// The in-flight table.
pub struct Table {
    limits: Limits,
    names: Names,
    transfers: HashMap<Box<str>, Transfer>,
    nodes: HashMap<u32, Node>,
    /// Finals with no open transfer, by key, with their arrival (ms).
    early: HashMap<Box<str>, i64>,
    started_ms: i64,
    last_scan_ms: i64,
    /// Last delivery of any kind (records, heartbeats, ddmon's own alive messages): while
    /// nothing at all arrives, the broker path is in doubt and no node is declared down.
    last_input_ms: i64,
    /// When input came back after such a silence: every node gets its timeout from there.
    resumed_ms: i64,
    key: String,
    /// Journal lines not written yet (when journaling is on).
    journal: Option<Vec<u8>>,
    /// What happened.
    pub counts: Counts,
}

/// With no delivery at all for this long, the input (not the nodes) is in doubt: no node is
/// declared down until deliveries come back, and then every node gets its timeout afresh.
/// ddmon's daemons publish alive messages every 30 s by default (the watchdog's own too), so a
/// working broker path is never this quiet.
pub const INPUT_SILENCE_MS: i64 = 75_000;

/// An `inflight` answer lists at most this many transfers (the counts are always whole).
pub const MAX_LISTED: usize = 10_000;

/// At most this many early finals are remembered (a component that never sends `102` must
/// not grow the table without bound).
pub const MAX_EARLY: usize = 100_000;

impl Table {
    /// An empty table started at `now`; `journal`: keep a journal buffer.
    pub fn new(limits: Limits, now: DateTime<Utc>, journal: bool) -> Table {
        Table {
            limits,
            names: Names::default(),
            transfers: HashMap::new(),
            nodes: HashMap::new(),
            early: HashMap::new(),
            started_ms: now.timestamp_millis(),
            last_scan_ms: now.timestamp_millis(),
            last_input_ms: now.timestamp_millis(),
            resumed_ms: now.timestamp_millis(),
            key: String::new(),
            journal: journal.then(Vec::new),
            counts: Counts::default(),
        }
    }

    /// Transfers in flight.
    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Is `node` known (from a record)?
    pub fn knows_node(&self, node: &str) -> bool {
        self.names
            .find(node)
            .is_some_and(|id| self.nodes.contains_key(&id))
    }

    /// Nodes known.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Take the journal lines written since the last call.
    pub fn take_journal(&mut self) -> Vec<u8> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn make_key(&mut self, node: &str, client: &str, url: &str) {
        // the separator cannot occur inside a name (a control character in a node or client
        // name is replaced in the key only)
        let clean = |s: &str, out: &mut String| {
            out.extend(
                s.chars()
                    .map(|c| if c == '\u{1f}' { '\u{fffd}' } else { c }),
            )
        };
        self.key.clear();
        clean(node, &mut self.key);
        self.key.push('\u{1f}');
        clean(client, &mut self.key);
        self.key.push('\u{1f}');
        self.key.push_str(url);
    }

    /// A node spoke (a record or a heartbeat) at `now_ms`.
    fn seen(&mut self, node: u32, now_ms: i64, out: &mut Vec<Event>) {
        let n = self.nodes.entry(node).or_insert(Node {
            last_seen_ms: now_ms,
            down_since_ms: None,
            count: 0,
            bytes: 0,
            starts: false,
        });
        n.last_seen_ms = n.last_seen_ms.max(now_ms);
        if let Some(since) = n.down_since_ms.take() {
            let name = self.names.name(node).to_string();
            if let Some(j) = self.journal.as_mut() {
                Line::Up(name.as_str().into(), now_ms).encode(j);
            }
            out.push(Event::Up {
                node: name,
                down_since_ms: since,
                at_ms: now_ms,
                in_flight: n.count,
            });
        }
    }

    /// A group's active takes over at `now`: every node gets its timeout afresh from here
    /// (no member saw the nodes in between), as when input comes back after a silence.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        self.resumed_ms = self.resumed_ms.max(now.timestamp_millis());
    }

    /// Any delivery arrived at `now` (records, heartbeats, other messages).
    pub fn input(&mut self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        if now_ms - self.last_input_ms > INPUT_SILENCE_MS {
            self.resumed_ms = now_ms;
        }
        self.last_input_ms = self.last_input_ms.max(now_ms);
    }

    /// A heartbeat (`v01.alive`) from `node`.
    pub fn heartbeat(&mut self, node: &str, now: DateTime<Utc>) -> Vec<Event> {
        self.input(now);
        let mut out = Vec::new();
        let id = self.names.id(node);
        self.seen(id, now.timestamp_millis(), &mut out);
        out
    }

    /// A log record that arrived at `now`.
    pub fn observe(&mut self, r: &LogRecord, now: DateTime<Utc>) -> Vec<Event> {
        self.input(now);
        let now_ms = now.timestamp_millis();
        let mut out = Vec::new();
        let node = self.names.id(&r.node);
        self.seen(node, now_ms, &mut out);
        let url = r.url();
        self.make_key(&r.node, &r.client, &url);
        match r.status {
            102 => {
                if let Some(t) = self.early.remove(self.key.as_str()) {
                    if now_ms - t <= self.limits.reorder_window_ms {
                        self.counts.reordered += 1;
                        return out;
                    }
                }
                let client = self.names.id(&r.client);
                let source = r.source.as_deref().map_or(NONE, |s| self.names.id(s));
                let flow = r.flow.as_deref().map_or(NONE, |s| self.names.id(s));
                let t = Transfer {
                    node,
                    client,
                    source,
                    flow,
                    started_ms: r.time.timestamp_millis(),
                    opened_ms: now_ms,
                    bytes: r.bytes.unwrap_or(0),
                    stuck: false,
                };
                if let Some(j) = self.journal.as_mut() {
                    open_line(&self.key, &t, &self.names).encode(j);
                }
                let n = self.nodes.get_mut(&node).expect("seen above");
                n.starts = true;
                match self.transfers.get_mut(self.key.as_str()) {
                    Some(old) => {
                        self.counts.restarted += 1;
                        n.bytes = n.bytes.saturating_sub(old.bytes).saturating_add(t.bytes);
                        *old = t;
                    }
                    None => {
                        self.counts.opened += 1;
                        n.count += 1;
                        n.bytes = n.bytes.saturating_add(t.bytes);
                        self.transfers.insert(self.key.as_str().into(), t);
                    }
                }
            }
            100..=199 => self.counts.informational += 1,
            _ => match self.transfers.remove(self.key.as_str()) {
                Some(t) => {
                    self.counts.closed += 1;
                    if let Some(n) = self.nodes.get_mut(&t.node) {
                        n.count = n.count.saturating_sub(1);
                        n.bytes = n.bytes.saturating_sub(t.bytes);
                    }
                    if let Some(j) = self.journal.as_mut() {
                        Line::Close(self.key.as_str().into()).encode(j);
                    }
                }
                None => {
                    self.counts.unmatched_finals += 1;
                    // remembered only for nodes that send 102s at all, and boundedly
                    let starts = self.nodes.get(&node).is_some_and(|n| n.starts);
                    if self.limits.reorder_window_ms > 0 && starts && self.early.len() < MAX_EARLY {
                        self.early.insert(self.key.as_str().into(), now_ms);
                    }
                }
            },
        }
        out
    }

    /// The time moved to `now`: nodes silent too long go down, transfers open too long are
    /// stuck (scanned at most once a second), old early finals are forgotten.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Event> {
        let now_ms = now.timestamp_millis();
        let mut out = Vec::new();
        // a node is given the timeout from this start too (nothing heard while we were down)
        let mut down: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.down_since_ms.is_none()
                    && now_ms - self.last_input_ms <= INPUT_SILENCE_MS
                    && now_ms - n.last_seen_ms.max(self.started_ms).max(self.resumed_ms)
                        > self.limits.node_timeout_ms
            })
            .map(|(id, _)| *id)
            .collect();
        down.sort_by(|a, b| self.names.name(*a).cmp(self.names.name(*b)));
        for id in down {
            let transfers = self.transfers_of(|t| t.node == id);
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            n.down_since_ms = Some(now_ms);
            self.counts.downs += 1;
            let name = self.names.name(id).to_string();
            if let Some(j) = self.journal.as_mut() {
                Line::Down(name.as_str().into(), now_ms).encode(j);
            }
            out.push(Event::Down {
                node: name,
                last_seen_ms: n.last_seen_ms,
                at_ms: now_ms,
                transfers,
            });
        }
        if now_ms - self.last_scan_ms >= 1000 {
            self.last_scan_ms = now_ms;
            if self.limits.stuck_after_ms > 0 {
                let limit = self.limits.stuck_after_ms;
                let nodes = &self.nodes;
                // a down node's transfers were reported with it: not stuck one by one
                let mut stuck: Vec<(&Box<str>, &mut Transfer)> = self
                    .transfers
                    .iter_mut()
                    .filter(|(_, t)| {
                        !t.stuck
                            && now_ms - t.opened_ms > limit
                            && nodes.get(&t.node).is_none_or(|n| n.down_since_ms.is_none())
                    })
                    .collect();
                stuck.sort_by(|a, b| a.1.opened_ms.cmp(&b.1.opened_ms).then(a.0.cmp(b.0)));
                for (key, t) in stuck {
                    t.stuck = true;
                    self.counts.stuck += 1;
                    if let Some(j) = self.journal.as_mut() {
                        Line::Stuck(key.as_ref().into()).encode(j);
                    }
                    out.push(Event::Stuck {
                        node: self.names.name(t.node).to_string(),
                        transfer: view(&self.names, key, t, now_ms),
                    });
                }
            }
            let window = self.limits.reorder_window_ms;
            self.early.retain(|_, t| now_ms - *t <= window);
            if self.limits.forget_after_ms > 0 {
                self.forget(now_ms, &mut out);
            }
        }
        out
    }

    /// Drop the transfers older than the forget limit. Counted from this table's start (or
    /// the input's return after a silence) too: after dd_watchdog was away, the finals that
    /// waited in its queue come first.
    fn forget(&mut self, now_ms: i64, out: &mut Vec<Event>) {
        let limit = self.limits.forget_after_ms;
        let floor = self.started_ms.max(self.resumed_ms);
        let nodes = &mut self.nodes;
        let since = |t: &Transfer, nodes: &HashMap<u32, Node>| {
            let down = nodes.get(&t.node).and_then(|n| n.down_since_ms);
            t.opened_ms.max(down.unwrap_or(i64::MIN)).max(floor)
        };
        let mut gone = 0;
        let journal = &mut self.journal;
        self.transfers.retain(|key, t| {
            if now_ms - since(t, nodes) <= limit {
                return true;
            }
            gone += 1;
            if let Some(n) = nodes.get_mut(&t.node) {
                n.count = n.count.saturating_sub(1);
                n.bytes = n.bytes.saturating_sub(t.bytes);
            }
            if let Some(j) = journal.as_mut() {
                Line::Forget(key.as_ref().into()).encode(j);
            }
            false
        });
        if gone > 0 {
            self.counts.forgotten += gone;
            out.push(Event::Forgotten { transfers: gone });
        }
    }

    fn transfers_of(&self, keep: impl Fn(&Transfer) -> bool) -> Vec<TransferRow> {
        let mut v: Vec<(&Box<str>, &Transfer)> =
            self.transfers.iter().filter(|(_, t)| keep(t)).collect();
        v.sort_by(|a, b| a.1.started_ms.cmp(&b.1.started_ms).then(a.0.cmp(b.0)));
        v.into_iter()
            .map(|(k, t)| view(&self.names, k, t, i64::MIN))
            .collect()
    }

    /// The table as the old `inflight` answer: `filter`'s node, client and source, the
    /// oldest transfers first, at most `limit` of them.
    pub fn inflight(
        &self,
        filter: &InflightFilter,
        limit: usize,
        now: DateTime<Utc>,
    ) -> InflightReply {
        let q = crate::rpc::Query {
            limit: Some(limit),
            ..crate::rpc::Query::default()
        };
        // a query with nothing but a limit is always answerable
        self.answer(&q, filter, now).unwrap_or_default()
    }

    /// Answer a query (SPEC §8) and the old filter beside it: the nodes (their summaries),
    /// and the transfers selected, oldest first, paged (at most the limit, capped at
    /// [`MAX_LISTED`]; a cursor for the next page). The scope: `kind` (`node`, `client`,
    /// `source`) with `name`/`names` or `regex` on that field (no kind: any field); `states`
    /// (`up`, `down`) select the transfers of nodes in them; `summary` lists no transfer.
    /// One pass over the transfers, nothing allocated for one not listed.
    pub fn answer(
        &self,
        q: &crate::rpc::Query,
        filter: &InflightFilter,
        now: DateTime<Utc>,
    ) -> Result<InflightReply, crate::rpc::QueryError> {
        if q.sort == Some(crate::rpc::Sort::Rate) {
            return Err(crate::rpc::QueryError(
                "dd_watchdog sorts transfers oldest first (sort name or worst), not by rate".into(),
            ));
        }
        let scope = q.scope(&["node", "client", "source"])?;
        let states = q.state_filter(&["up", "down"])?;
        let now_ms = now.timestamp_millis();
        let want = |name: &Option<String>| {
            name.as_deref()
                .map(|n| self.names.find(n).unwrap_or(NONE - 1))
        };
        let (node, client, source) = (
            want(&filter.node),
            want(&filter.client),
            want(&filter.source),
        );
        let node_state = |id: u32| match self.nodes.get(&id) {
            Some(n) if n.down_since_ms.is_some() => "down",
            _ => "up",
        };
        let scoped = !scope.named().is_empty() || q.regex.is_some();
        // whether a name is in the scope, once per name
        let mut seen: HashMap<u32, bool> = HashMap::new();
        let mut in_scope = |id: u32| {
            id != NONE
                && *seen
                    .entry(id)
                    .or_insert_with(|| scope.has(self.names.name(id)))
        };
        let limit = match q.limit {
            _ if q.summary => 0,
            Some(l) => l.min(MAX_LISTED),
            None => filter.limit().min(MAX_LISTED),
        };
        let mut pager = crate::rpc::Pager::new(limit, q.cursor_key()?);
        let mut oldest: HashMap<u32, i64> = HashMap::new();
        for (k, t) in &self.transfers {
            let old = node.is_none_or(|n| t.node == n)
                && client.is_none_or(|c| t.client == c)
                && source.is_none_or(|s| t.source == s);
            let fields = [("node", t.node), ("client", t.client), ("source", t.source)];
            let hit = !scoped
                || fields
                    .iter()
                    .any(|(kind, id)| scope.has_kind(kind) && in_scope(*id));
            if !(old && hit && states.selects(node_state(t.node))) {
                continue;
            }
            let o = oldest.entry(t.node).or_insert(t.started_ms);
            *o = (*o).min(t.started_ms);
            pager.offer_parts(t.started_ms, 0, k, || (k, t));
        }
        let (listed, page) = pager.finish();
        let nodes_scoped = scope.has_kind("node") && q.kind.is_some() && scoped;
        let mut nodes: Vec<NodeRow> = self
            .nodes
            .iter()
            .filter(|(id, _)| node.is_none_or(|n| **id == n))
            .filter(|(id, _)| !nodes_scoped || in_scope(**id))
            .filter(|(id, _)| states.selects(node_state(**id)))
            .map(|(id, n)| NodeRow {
                bytes: n.bytes,
                down_since: n.down_since_ms.map(at),
                in_flight: n.count,
                last_seen: at(n.last_seen_ms),
                node: self.names.name(*id).to_string(),
                oldest: oldest.get(id).copied().map(at),
                state: if n.down_since_ms.is_some() {
                    NodeState::Down
                } else {
                    NodeState::Up
                },
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(InflightReply {
            counts: self.counts.clone(),
            nodes,
            time: now,
            total: page.matched,
            transfers: listed
                .into_iter()
                .map(|(k, t)| view(&self.names, k, t, now_ms))
                .collect(),
            truncated: page.matched > page.returned,
            page: Some(page),
        })
    }

    /// Put back a transfer from the journal: node, client, url, source and flow (empty:
    /// none), its times and bytes.
    pub fn restore_open(&mut self, f: [&str; 5], started_ms: i64, opened_ms: i64, bytes: u64) {
        let node = self.names.id(f[0]);
        let client = self.names.id(f[1]);
        let opt = |names: &mut Names, s: &str| if s.is_empty() { NONE } else { names.id(s) };
        let source = opt(&mut self.names, f[3]);
        let flow = opt(&mut self.names, f[4]);
        self.make_key(f[0], f[1], f[2]);
        let n = self.nodes.entry(node).or_insert(Node {
            last_seen_ms: opened_ms,
            down_since_ms: None,
            count: 0,
            bytes: 0,
            starts: false,
        });
        n.last_seen_ms = n.last_seen_ms.max(opened_ms);
        let t = Transfer {
            node,
            client,
            source,
            flow,
            started_ms,
            opened_ms,
            bytes,
            stuck: false,
        };
        n.starts = true;
        if let Some(old) = self.transfers.insert(self.key.as_str().into(), t) {
            n.bytes = n.bytes.saturating_sub(old.bytes);
        } else {
            n.count += 1;
        }
        n.bytes = n.bytes.saturating_add(bytes);
    }

    /// Take back a closed transfer from the journal.
    pub fn restore_close(&mut self, key: &str) {
        if let Some(t) = self.transfers.remove(key) {
            if let Some(n) = self.nodes.get_mut(&t.node) {
                n.count = n.count.saturating_sub(1);
                n.bytes = n.bytes.saturating_sub(t.bytes);
            }
        }
    }

    /// Put back a transfer's stuck mark from the journal (not reported again).
    pub fn restore_stuck(&mut self, key: &str) {
        if let Some(t) = self.transfers.get_mut(key) {
            t.stuck = true;
        }
    }

    /// Put back a node's down (`Some`) or up (`None`) state from the journal.
    pub fn restore_node(&mut self, node: &str, down_since_ms: Option<i64>, at_ms: i64) {
        let id = self.names.id(node);
        let n = self.nodes.entry(id).or_insert(Node {
            last_seen_ms: at_ms,
            down_since_ms: None,
            count: 0,
            bytes: 0,
            starts: false,
        });
        n.down_since_ms = down_since_ms;
        n.last_seen_ms = n.last_seen_ms.max(at_ms);
    }

    /// Every open transfer and down node as journal lines (compaction).
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        // every node first (an up node with nothing in flight is still watched after a
        // restart), then the transfers, then their stuck marks
        for (id, n) in &self.nodes {
            let node = self.names.name(*id).into();
            match n.down_since_ms {
                Some(since) => Line::Down(node, since),
                None => Line::Up(node, n.last_seen_ms),
            }
            .encode(out);
        }
        for (k, t) in &self.transfers {
            open_line(k, t, &self.names).encode(out);
        }
        for (k, t) in &self.transfers {
            if t.stuck {
                Line::Stuck(k.as_ref().into()).encode(out);
            }
        }
    }

    /// Is journaling on?
    pub fn journaling(&self) -> bool {
        self.journal.is_some()
    }
}

/// A transfer's `o` line (the key's three parts, then source, flow, times and bytes).
fn open_line<'a>(key: &'a str, t: &Transfer, names: &'a Names) -> Line<'a> {
    let mut parts = key.splitn(3, '\u{1f}');
    let mut part = || parts.next().unwrap_or("").into();
    let opt = |id: u32| if id == NONE { "" } else { names.name(id) }.into();
    Line::Open {
        node: part(),
        client: part(),
        url: part(),
        source: opt(t.source),
        flow: opt(t.flow),
        started_ms: t.started_ms,
        opened_ms: t.opened_ms,
        bytes: t.bytes,
    }
}

fn view(names: &Names, key: &str, t: &Transfer, now_ms: i64) -> TransferRow {
    let url = key.splitn(3, '\u{1f}').nth(2).unwrap_or("");
    let opt = |id: u32| (id != NONE).then(|| names.name(id).to_string());
    TransferRow {
        age_s: (now_ms != i64::MIN).then(|| (now_ms - t.opened_ms) as f64 / 1000.0),
        bytes: t.bytes,
        client: names.name(t.client).to_string(),
        flow: opt(t.flow),
        node: names.name(t.node).to_string(),
        source: opt(t.source),
        started: at(t.started_ms),
        url: url.to_string(),
    }
}
