//! The roster of ddmon's daemons (SPEC §6, the "Watch the watchers" issue): every daemon
//! known from the broker's history (alive, status and registry messages, kept in the roster
//! stream) and from live answers, and the operator's declared ones, each in one state.
//!
//! A pure state machine: [`Roster::observe`] takes what was read, [`Roster::rows`] says each
//! entry's state at a given time, with its evidence in words. Times are the messages' own
//! (the daemon's clock); the time asked about is the monitor's.
//!
//! | state | when |
//! | --- | --- |
//! | `running` | it said `starting` or `running` and was heard within 2x its alive interval |
//! | `degraded` | it said `degraded`, and was heard within 2x |
//! | `stopping` | it said `stopping`, and was heard within 2x |
//! | `stopped` | its registry `stop` came, with no failure: it was asked to stop |
//! | `silent` | nothing for 2x its alive interval (quarantine), or 5x but not yet asked |
//! | `dead` | silent for 5x and asked directly once with no answer, or its last word was a failure |
//! | `missing` | declared, never seen; or declared, stopped and not seen for [`Roster::missing_after`] |
//!
//! A new pid or start time for the same tool and instance is a restart: the entry continues
//! (its `restarts` counts them), in the new process's state.

pub mod declared;
pub mod follow;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::daemon::registry::{REGISTRY, Registration};
use crate::daemon::{Health, State};

pub use declared::{Declared, DeclaredDaemon};

/// Silent after this many alive intervals with no word.
pub const SILENT_AFTER: f64 = 2.0;
/// Dead after this many (once asked with no answer).
pub const DEAD_AFTER: f64 = 5.0;
/// The alive interval of a daemon whose messages do not say it (SPEC §5's default).
pub const DEFAULT_ALIVE_S: f64 = 30.0;

/// A roster entry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RosterState {
    /// Working.
    Running,
    /// Working, something wrong.
    Degraded,
    /// Draining on its way out.
    Stopping,
    /// Stopped, as it said on its way out.
    Stopped,
    /// Not heard for 2x its alive interval.
    Silent,
    /// Silent for 5x (and asked), or its last word was a failure.
    Dead,
    /// Declared, and not there.
    Missing,
}

impl RosterState {
    /// Every state, in the order of [`RosterState::index`].
    pub const ALL: [RosterState; 7] = [
        RosterState::Running,
        RosterState::Degraded,
        RosterState::Stopping,
        RosterState::Stopped,
        RosterState::Silent,
        RosterState::Dead,
        RosterState::Missing,
    ];

    /// The lowercase name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RosterState::Running => "running",
            RosterState::Degraded => "degraded",
            RosterState::Stopping => "stopping",
            RosterState::Stopped => "stopped",
            RosterState::Silent => "silent",
            RosterState::Dead => "dead",
            RosterState::Missing => "missing",
        }
    }

    /// Its place in [`RosterState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Read a name.
    pub fn parse(s: &str) -> Option<RosterState> {
        RosterState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What one message (or answer) says about a daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// What it is.
    pub kind: Seen,
    /// The tool.
    pub tool: String,
    /// The instance.
    pub instance: String,
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: u32,
    /// When the process started.
    pub started: DateTime<Utc>,
    /// Its alive interval, seconds (0: not said).
    pub alive_interval: f64,
    /// The state it said (alive, status, answer).
    pub state: State,
    /// When it said it (its clock).
    pub time: DateTime<Utc>,
    /// ddmon's version.
    pub version: String,
    /// A stop's failure.
    pub failure: Option<String>,
    /// A group member's role (its entry is `<instance>@<member>`).
    pub role: Option<crate::daemon::Role>,
}

/// The roster's name of a daemon: its instance, or `<instance>@<member>` for a group's
/// member (each member is an entry of its own, with its role).
fn entry_instance(instance: String, member: Option<String>) -> String {
    match member {
        Some(m) => crate::rpc::member_instance(&instance, &m),
        None => instance,
    }
}

/// The kinds of observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `v01.alive.*`.
    Alive,
    /// `v01.status.*`.
    Status,
    /// `v01.registry.*.start`.
    Start,
    /// `v01.registry.*.stop`.
    Stop,
    /// A live answer to `health`.
    Answer,
    /// `v01.registry.*.died`: someone else's word that it died (its host's: systemd's
    /// `ExecStopPost` through `dd_status --died`).
    Died,
    /// `v01.registry.*.forget`: an operator's word to forget it (`dd_status --forget`).
    Forget,
}

impl Observation {
    /// Read a message of the roster's three families; `None` for anything else.
    pub fn from_message(routing_key: &str, body: &[u8]) -> Option<Observation> {
        let kind = if routing_key.starts_with("v01.alive.") {
            Seen::Alive
        } else if routing_key.starts_with("v01.status.") {
            Seen::Status
        } else if routing_key.starts_with(REGISTRY) {
            match routing_key.rsplit('.').next() {
                Some("start") => Seen::Start,
                Some("stop") => Seen::Stop,
                Some("died") => Seen::Died,
                Some("forget") => Seen::Forget,
                _ => return None,
            }
        } else {
            return None;
        };
        match kind {
            Seen::Start | Seen::Stop | Seen::Died | Seen::Forget => {
                let r: Registration = serde_json::from_slice(body).ok()?;
                Observation::of_registration(kind, r)
            }
            _ => Observation::of_health(kind, serde_json::from_slice(body).ok()?),
        }
    }

    fn of_registration(kind: Seen, r: Registration) -> Option<Observation> {
        if r.tool.is_empty() || r.instance.is_empty() {
            return None;
        }
        Some(Observation {
            kind,
            tool: r.tool,
            instance: entry_instance(r.instance, r.member),
            host: r.host,
            pid: r.pid,
            started: r.started,
            alive_interval: r.alive_interval,
            state: if kind == Seen::Stop {
                State::Stopping
            } else {
                State::Starting
            },
            time: r.time,
            version: r.version,
            failure: r.failure,
            role: None,
        })
    }

    /// What a `health` body says (an alive, a status, or a live answer's `result`).
    pub fn of_health(kind: Seen, h: Health) -> Option<Observation> {
        if h.tool.is_empty() || h.instance.is_empty() {
            return None;
        }
        Some(Observation {
            kind,
            tool: h.tool,
            instance: entry_instance(h.instance, h.member),
            host: h.host,
            pid: h.pid,
            started: h.started,
            alive_interval: h.alive_interval,
            state: h.state,
            time: h.time,
            version: h.version,
            failure: None,
            role: h.role,
        })
    }
}

/// One daemon on the roster.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its host (the declared one until it is seen).
    pub host: String,
    /// The current process's pid (0: never seen).
    pub pid: u32,
    /// When the current process started.
    pub started: Option<DateTime<Utc>>,
    /// ddmon's version.
    pub version: String,
    /// Its alive interval, seconds.
    pub alive_interval: f64,
    /// The state it last said.
    pub said: State,
    /// Its registry stop (time, failure), when the current process said it.
    pub stop: Option<(DateTime<Utc>, Option<String>)>,
    /// When it was last heard (its clock).
    pub last_heard: Option<DateTime<Utc>>,
    /// When its last alive message was made.
    pub last_alive: Option<DateTime<Utc>>,
    /// Restarts seen.
    pub restarts: u32,
    /// Is it on the operator's declared list?
    pub declared: bool,
    /// When it was asked directly since it was last heard (no answer yet).
    pub asked: Option<DateTime<Utc>>,
    /// A group member's role, as it last said.
    pub role: Option<crate::daemon::Role>,
}

impl Entry {
    fn new(host: String) -> Entry {
        Entry {
            host,
            pid: 0,
            started: None,
            version: String::new(),
            alive_interval: DEFAULT_ALIVE_S,
            said: State::Starting,
            stop: None,
            last_heard: None,
            last_alive: None,
            restarts: 0,
            declared: false,
            asked: None,
            role: None,
        }
    }

    fn secs(d: Duration) -> f64 {
        d.num_milliseconds().max(0) as f64 / 1000.0
    }

    /// Its state at `now`, and the evidence in words.
    pub fn judge(
        &self,
        now: DateTime<Utc>,
        missing_after: f64,
        alive_since: Option<DateTime<Utc>>,
    ) -> (RosterState, String) {
        let Some(heard) = self.last_heard else {
            return (
                RosterState::Missing,
                "declared, never seen within the history".to_string(),
            );
        };
        let quiet = Entry::secs(now - heard);
        if let Some((at, failure)) = &self.stop {
            return match failure {
                Some(why) => (
                    RosterState::Dead,
                    format!("its last word at {}: {why}", hhmm(*at)),
                ),
                None if self.declared && quiet > missing_after => (
                    RosterState::Missing,
                    format!("declared, stopped at {} and not seen since", hhmm(*at)),
                ),
                None => (RosterState::Stopped, format!("stopped at {}", hhmm(*at))),
            };
        }
        let every = self.alive_interval;
        if quiet > SILENT_AFTER * every {
            let since = match alive_since {
                Some(w) if heard < w => format!(
                    "no alive in the last {} of them (its last word at {}; alive every {})",
                    human(Entry::secs(now - w)),
                    hhmm(heard),
                    human(every)
                ),
                _ => format!(
                    "no word for {} ({}x its alive interval of {})",
                    human(quiet),
                    (quiet / every).floor(),
                    human(every)
                ),
            };
            return match self.asked {
                Some(at) if quiet > DEAD_AFTER * every => (
                    RosterState::Dead,
                    format!("{since}; asked at {}, no answer", hhmm(at)),
                ),
                Some(at) => (
                    RosterState::Silent,
                    format!("{since}; asked at {}, no answer", hhmm(at)),
                ),
                None => (RosterState::Silent, since),
            };
        }
        match self.said {
            State::Starting | State::Running => (RosterState::Running, String::new()),
            State::Degraded => (RosterState::Degraded, "it says it is degraded".to_string()),
            State::Stopping => (RosterState::Stopping, "it says it is stopping".to_string()),
        }
    }
}

/// `HH:MM:SSZ` of a time.
fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%SZ").to_string()
}

/// `3d4h`, `2h05m`, `4m10s`, `12s`, `0.5s`.
pub fn human(secs: f64) -> String {
    if secs > 0.0 && secs < 1.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// One row of the roster, as `dd_status --json`, dd_web and the check show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The tool.
    pub tool: String,
    /// The instance.
    pub instance: String,
    /// Its host.
    pub host: String,
    /// Its state.
    pub state: RosterState,
    /// Why, in words (empty when running).
    pub evidence: String,
    /// The current process's pid (0: never seen).
    pub pid: u32,
    /// When the current process started.
    pub started: Option<DateTime<Utc>>,
    /// When it was last heard, by its clock.
    pub last_heard: Option<DateTime<Utc>>,
    /// Seconds since its last alive message (`None`: none seen).
    pub alive_age_s: Option<f64>,
    /// Its alive interval, seconds.
    pub alive_interval: f64,
    /// Restarts seen.
    pub restarts: u32,
    /// Declared by the operator?
    pub declared: bool,
    /// ddmon's version.
    pub version: String,
    /// A group member's role (`active`, `standby`); absent outside a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::daemon::Role>,
}

/// What [`Roster::observe`] made of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A daemon first seen.
    New,
    /// A new process for a known one.
    Restarted,
    /// News of the current process.
    Heard,
    /// Older than what is known (a previous process's): ignored.
    Stale,
    /// Forgotten (a declared one is back to never seen).
    Forgotten,
}

/// Every daemon known, by tool and instance.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    entries: BTreeMap<(String, String), Entry>,
    /// A declared daemon stopped and not seen for this many seconds is `missing`.
    pub missing_after: f64,
    /// The alive messages were read from this time on (older ones were not: a daemon last
    /// heard before it is said so).
    pub alive_since: Option<DateTime<Utc>>,
    /// Daemons forgotten, and when: what they said before is not taken again (the alive
    /// stream is read after the registry's).
    forgotten: BTreeMap<(String, String), DateTime<Utc>>,
}

impl Roster {
    /// An empty roster; declared daemons stopped for `missing_after` seconds are `missing`.
    pub fn new(missing_after: f64) -> Roster {
        Roster {
            entries: BTreeMap::new(),
            missing_after,
            alive_since: None,
            forgotten: BTreeMap::new(),
        }
    }

    /// Put the operator's declared daemons on the roster.
    pub fn declare(&mut self, declared: &Declared) {
        for d in &declared.daemon {
            let e = self
                .entries
                .entry((d.tool.clone(), d.instance.clone()))
                .or_insert_with(|| Entry::new(d.host.clone().unwrap_or_default()));
            e.declared = true;
        }
    }

    /// Take the entries of `fresh` (a history read again) in place of this one's, keeping
    /// which are declared.
    pub fn absorb(&mut self, fresh: Roster) {
        // forgotten in the fresh history and not seen since: gone here too (a declared one
        // back to never seen)
        for (k, at) in &fresh.forgotten {
            if !fresh.entries.contains_key(k) {
                match self.entries.get(k) {
                    Some(e) if e.declared => {
                        let mut blank = Entry::new(String::new());
                        blank.declared = true;
                        self.entries.insert(k.clone(), blank);
                    }
                    _ => {
                        self.entries.remove(k);
                    }
                }
            }
            self.forgotten.insert(k.clone(), *at);
        }
        for (k, mut e) in fresh.entries {
            if let Some(old) = self.entries.get(&k) {
                e.declared |= old.declared;
            }
            self.entries.insert(k, e);
        }
        self.alive_since = fresh.alive_since;
    }

    /// The longest alive interval of the daemons known (0 when none).
    pub fn max_alive_interval(&self) -> f64 {
        self.entries
            .values()
            .map(|e| e.alive_interval)
            .fold(0.0, f64::max)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a daemon.
    pub fn get(&self, tool: &str, instance: &str) -> Option<&Entry> {
        self.entries.get(&(tool.to_string(), instance.to_string()))
    }

    /// Take what a message or an answer says.
    pub fn observe(&mut self, o: &Observation) -> Change {
        let key = (o.tool.clone(), o.instance.clone());
        if let Some(at) = self.forgotten.get(&key) {
            if o.time <= *at {
                return Change::Stale;
            }
            self.forgotten.remove(&key);
        }
        match o.kind {
            Seen::Forget => {
                self.forgotten.insert(key.clone(), o.time);
                let declared = self.entries.get(&key).is_some_and(|e| e.declared);
                if declared {
                    let mut fresh = Entry::new(String::new());
                    fresh.declared = true;
                    self.entries.insert(key, fresh);
                } else {
                    self.entries.remove(&key);
                }
                return Change::Forgotten;
            }
            Seen::Died => {
                // the current process, unless it spoke after the word
                return match self.entries.get_mut(&key) {
                    Some(e) if e.started.is_some() && e.last_heard.is_none_or(|t| t <= o.time) => {
                        e.stop = Some((o.time, o.failure.clone().or(Some("died".into()))));
                        Change::Heard
                    }
                    _ => Change::Stale,
                };
            }
            _ => {}
        }
        let e = self
            .entries
            .entry(key)
            .or_insert_with(|| Entry::new(o.host.clone()));
        let change = match e.started {
            None => Change::New,
            Some(s) if o.started > s || (o.started == s && o.pid != e.pid && o.pid != 0) => {
                e.restarts += 1;
                Change::Restarted
            }
            Some(s) if o.started < s => return Change::Stale,
            Some(_) => Change::Heard,
        };
        if change != Change::Heard {
            e.started = Some(o.started);
            e.pid = o.pid;
            e.stop = None;
            e.last_heard = None;
            e.last_alive = None;
            e.said = State::Starting;
        }
        if !o.host.is_empty() {
            e.host.clone_from(&o.host);
        }
        if !o.version.is_empty() {
            e.version.clone_from(&o.version);
        }
        if o.alive_interval > 0.0 {
            e.alive_interval = o.alive_interval;
        }
        // a message older than the last heard (history read after a live answer) adds
        // nothing to the time, but a stop still counts
        if e.last_heard.is_none_or(|t| o.time >= t) {
            e.last_heard = Some(o.time);
            e.asked = None;
            if o.kind != Seen::Stop {
                e.said = o.state;
            }
            if o.role.is_some() {
                e.role = o.role;
            }
        }
        match o.kind {
            Seen::Alive => {
                e.last_alive = Some(e.last_alive.map_or(o.time, |t| t.max(o.time)));
            }
            Seen::Stop => e.stop = Some((o.time, o.failure.clone())),
            _ => {}
        }
        change
    }

    /// The daemons that are silent and not yet asked directly: the caller asks each one
    /// (`health` on its own key) and says so with [`Roster::asked`].
    pub fn to_ask(&self, now: DateTime<Utc>) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                e.asked.is_none()
                    && e.judge(now, self.missing_after, self.alive_since).0 == RosterState::Silent
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `tool`/`instance` was asked at `now` (an answer, if one comes, is observed).
    pub fn asked(&mut self, tool: &str, instance: &str, now: DateTime<Utc>) {
        if let Some(e) = self
            .entries
            .get_mut(&(tool.to_string(), instance.to_string()))
        {
            e.asked = Some(now);
        }
    }

    /// Every entry's row at `now`, by tool then instance.
    pub fn rows(&self, now: DateTime<Utc>) -> Vec<Row> {
        self.entries
            .iter()
            .map(|((tool, instance), e)| {
                let (state, evidence) = e.judge(now, self.missing_after, self.alive_since);
                Row {
                    tool: tool.clone(),
                    instance: instance.clone(),
                    host: e.host.clone(),
                    state,
                    evidence,
                    pid: e.pid,
                    started: e.started,
                    last_heard: e.last_heard,
                    alive_age_s: e.last_alive.map(|t| Entry::secs(now - t)),
                    alive_interval: e.alive_interval,
                    restarts: e.restarts,
                    declared: e.declared,
                    version: e.version.clone(),
                    role: e.role,
                }
            })
            .collect()
    }

    /// How many entries are in each state at `now` (indexed by [`RosterState::index`]).
    pub fn counts(&self, now: DateTime<Utc>) -> [usize; 7] {
        let mut n = [0; 7];
        for e in self.entries.values() {
            n[e.judge(now, self.missing_after, self.alive_since).0.index()] += 1;
        }
        n
    }
}

/// A question to a monitor that holds the roster (dd_web's `roster` command): every key
/// optional; `{}` is every daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RosterQuery {
    /// Only these states (empty: all).
    pub states: Vec<RosterState>,
    /// Only the daemons whose `<tool>/<instance>` matches.
    pub regex: Option<String>,
    /// At most this many rows, the worst first (default 1,000, at most 10,000).
    pub limit: Option<usize>,
}

/// The answer: the counts per state of the daemons in scope (the regex's), and the rows
/// selected, the worst first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RosterReply {
    /// When it was judged (the monitor's clock).
    pub time: Option<DateTime<Utc>>,
    /// Daemons in scope, per state (every state named).
    pub counts: BTreeMap<RosterState, usize>,
    /// Daemons in scope.
    pub total: usize,
    /// Of them, the selected.
    pub matched: usize,
    /// The selected rows, the worst first, within the limit.
    pub rows: Vec<Row>,
    /// More matched than the limit let through.
    pub cut: bool,
    /// Does the monitor follow the roster streams now (false: what it holds may be old)?
    pub live: bool,
}

/// How bad a state is, for "the worst first": dead, missing, silent, degraded, then the rest.
pub fn badness(s: RosterState) -> u8 {
    match s {
        RosterState::Dead => 6,
        RosterState::Missing => 5,
        RosterState::Silent => 4,
        RosterState::Degraded => 3,
        RosterState::Stopping => 2,
        RosterState::Stopped => 1,
        RosterState::Running => 0,
    }
}

impl Roster {
    /// Answer a [`RosterQuery`] at `now`.
    pub fn answer(&self, q: &RosterQuery, now: DateTime<Utc>) -> Result<RosterReply, String> {
        let re = q
            .regex
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| format!("bad regex: {e}"))?;
        let limit = q.limit.unwrap_or(1000).min(10_000);
        let mut counts: BTreeMap<RosterState, usize> =
            RosterState::ALL.iter().map(|s| (*s, 0)).collect();
        let mut total = 0;
        let mut rows: Vec<Row> = self
            .rows(now)
            .into_iter()
            .filter(|r| {
                re.as_ref()
                    .is_none_or(|re| re.is_match(&format!("{}/{}", r.tool, r.instance)))
            })
            .inspect(|r| {
                total += 1;
                *counts.entry(r.state).or_default() += 1;
            })
            .filter(|r| q.states.is_empty() || q.states.contains(&r.state))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(badness(r.state)));
        let matched = rows.len();
        rows.truncate(limit);
        Ok(RosterReply {
            time: Some(now),
            counts,
            total,
            matched,
            cut: matched > rows.len(),
            rows,
            live: true,
        })
    }
}

#[cfg(test)]
mod tests;
