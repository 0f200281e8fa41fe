//! A daemon's identity and state, and the messages that make it visible: alive, status, and
//! answers to requests. Pure: the serve loop feeds it the time and publishes what it returns.
//!
//! - `v01.alive.<tool>.<instance>` every alive interval, sent by the loop that does the work,
//!   so a wedged daemon goes silent instead of hiding behind a healthy timer;
//! - `v01.status.<tool>.<instance>` on each change of state;
//! - requests on `v01.rpc.<tool>.<instance>.<command>` and `v01.rpc.all.<command>`, answered
//!   with `health`, `stats` or a command of the daemon's own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::broker::Outgoing;

/// The life of a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Connecting, declaring, loading state.
    Starting,
    /// Doing its work (and what a reply that says nothing is read as).
    #[default]
    Running,
    /// Working, but something is wrong (it says what in its counters).
    Degraded,
    /// Draining and closing.
    Stopping,
}

impl State {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Degraded => "degraded",
            State::Stopping => "stopping",
        }
    }
}

/// A group member's role (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It consumes the group's queue, answers its requests and publishes.
    Active,
    /// It waits for the active's place.
    Standby,
}

impl Role {
    /// The lowercase name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// The body of alive and status messages and the `result` of a `health` answer: who the
/// daemon is, its state, and its tool's counters. Fields in the wire's (alphabetical) order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// Seconds between its alive messages (a roster's clock for "silent").
    pub alive_interval: f64,
    /// The tool's own counters (each tool's; dd_speedo's are `speedo::reply::Counters`).
    pub counters: Value,
    /// The host it runs on.
    pub host: String,
    /// Its instance name.
    pub instance: String,
    /// When it last sent an alive message (`null`: not yet).
    pub last_alive: Option<DateTime<Utc>>,
    /// A group member's own name (`<short host>-<pid>`); absent outside a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Its process id.
    pub pid: u32,
    /// A group member's role; absent outside a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// When it started.
    pub started: DateTime<Utc>,
    /// `starting`, `running`, `degraded`, `stopping`.
    pub state: State,
    /// When this body was made.
    pub time: DateTime<Utc>,
    /// The tool (`dd_speedo`...).
    pub tool: String,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// ddmon's version.
    pub version: String,
}

/// The daemon settings every daemon shares (`[daemon]` in its config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Instance name [default: host name plus a short id, new at each start].
    pub instance: Option<String>,
    /// Seconds between alive messages.
    pub alive_interval: f64,
    /// Exchange for alive, status and requests.
    pub exchange: String,
    /// The stream that keeps the daemons' history (`[daemon.roster]`).
    pub roster: super::registry::RosterStream,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            instance: None,
            alive_interval: 30.0,
            exchange: "log".to_string(),
            roster: Default::default(),
        }
    }
}

/// The daemon flags (flattened into each daemon's command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonOpts {
    /// Instance name in alive/status topics and requests [default: <host>-<short id>].
    #[arg(long, env = "DD_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,
    /// Seconds between alive messages [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub alive_interval: Option<f64>,
    /// Exchange for alive, status and requests [default: log].
    #[arg(long, env = "DD_DAEMON_EXCHANGE", value_name = "NAME")]
    pub daemon_exchange: Option<String>,
    /// The roster stream's flags.
    #[command(flatten)]
    pub roster: super::registry::RosterOpts,
}

impl DaemonOpts {
    /// Lay the flags over the file layer.
    pub fn apply(&self, cfg: &mut DaemonConfig) {
        if self.instance.is_some() {
            cfg.instance = self.instance.clone();
        }
        crate::config::overlay(&mut cfg.alive_interval, self.alive_interval);
        crate::config::overlay(&mut cfg.exchange, self.daemon_exchange.clone());
        self.roster.apply(&mut cfg.roster);
    }
}

impl DaemonConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        crate::config::check_name("daemon exchange", &self.exchange)?;
        self.roster.validate()?;
        if let Some(i) = &self.instance {
            crate::config::check_name("instance", i)?;
        }
        if !(self.alive_interval.is_finite() && self.alive_interval >= 0.1) {
            return Err(crate::config::ConfigError::Invalid {
                field: "alive_interval",
                message: "must be at least 0.1 seconds".to_string(),
            });
        }
        Ok(())
    }
}

/// Who a daemon is.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// The tool (`dd_speedo`...).
    pub tool: String,
    /// The instance name.
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// ddmon's version.
    pub version: &'static str,
    /// When it started.
    pub started: DateTime<Utc>,
}

/// This machine's host name (Linux), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A daemon's visible side.
#[derive(Debug)]
pub struct Runtime {
    id: Identity,
    state: State,
    exchange: String,
    alive_every: chrono::Duration,
    last_alive: Option<DateTime<Utc>>,
    announced: bool,
    roster: Vec<crate::broker::StreamSpec>,
    role: Option<Role>,
}

impl Runtime {
    /// A daemon of `tool` starting now.
    pub fn new(tool: &str, cfg: &DaemonConfig, now: DateTime<Utc>) -> Runtime {
        let host = host_name();
        let short = host.split('.').next().unwrap_or("host").to_string();
        let instance = cfg
            .instance
            .clone()
            .unwrap_or_else(|| format!("{short}-{:04x}", crate::broker::random_u64() as u16));
        Runtime {
            id: Identity {
                tool: tool.to_string(),
                instance,
                host,
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION"),
                started: now,
            },
            state: State::Starting,
            exchange: cfg.exchange.clone(),
            alive_every: chrono::Duration::milliseconds((cfg.alive_interval * 1000.0) as i64),
            last_alive: None,
            announced: false,
            roster: cfg
                .roster
                .specs(&cfg.exchange)
                .map(Vec::from)
                .unwrap_or_default(),
            role: None,
        }
    }

    /// Make it a member of a group (SPEC §7), standby until it holds the group's lock.
    pub fn join_group(&mut self) {
        self.role = Some(Role::Standby);
    }

    /// Its role (`None`: not in a group).
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// A group member's own name: `<short host>-<pid>`.
    pub fn member(&self) -> Option<String> {
        self.role.map(|_| {
            let short = self.id.host.split('.').next().unwrap_or("host");
            format!("{short}-{}", self.id.pid)
        })
    }

    /// Change role; the status message to publish when it did change.
    pub fn set_role(
        &mut self,
        role: Role,
        now: DateTime<Utc>,
        counters: &Value,
    ) -> Option<Outgoing> {
        if self.role.is_none() || self.role == Some(role) {
            return None;
        }
        self.role = Some(role);
        let mut body = json!(self.describe(now, counters));
        body["previous"] = json!(self.state);
        Some(self.message("status", &body))
    }

    /// The streams that keep the daemons' history (none when it is not kept).
    pub fn roster_streams(&self) -> &[crate::broker::StreamSpec] {
        &self.roster
    }

    /// The registry message of `event` (`start`, `stop`); `failure` says why a stop was not
    /// asked for.
    pub fn registration(
        &self,
        event: &str,
        now: DateTime<Utc>,
        failure: Option<String>,
    ) -> Outgoing {
        let body = super::registry::Registration {
            alive_interval: self.alive_every.num_milliseconds() as f64 / 1000.0,
            event: event.to_string(),
            failure,
            host: self.id.host.clone(),
            instance: self.id.instance.clone(),
            member: self.member(),
            pid: self.id.pid,
            started: self.id.started,
            time: now,
            tool: self.id.tool.clone(),
            version: self.id.version.to_string(),
        };
        Outgoing {
            routing_key: super::registry::registry_key(&self.id.tool, &self.id.instance, event),
            ..self.message("registry", &json!(body))
        }
    }

    /// Who this daemon is.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Its current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The exchange it publishes alive/status on and takes requests from.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Bindings of its request queue.
    pub fn request_bindings(&self) -> Vec<String> {
        match (self.role, self.member()) {
            (Some(role), Some(member)) => crate::rpc::member_bindings(
                &self.id.tool,
                &self.id.instance,
                &member,
                role == Role::Active,
            ),
            _ => crate::rpc::request_bindings(&self.id.tool, &self.id.instance),
        }
    }

    fn topic(&self, kind: &str) -> String {
        crate::topic::build(&format!("v01.{kind}"), &[&self.id.tool, &self.id.instance])
    }

    /// The body shared by alive, status and `health`.
    pub fn describe(&self, now: DateTime<Utc>, counters: &Value) -> Health {
        Health {
            alive_interval: self.alive_every.num_milliseconds() as f64 / 1000.0,
            counters: counters.clone(),
            host: self.id.host.clone(),
            instance: self.id.instance.clone(),
            last_alive: self.last_alive,
            member: self.member(),
            pid: self.id.pid,
            role: self.role,
            started: self.id.started,
            state: self.state,
            time: now,
            tool: self.id.tool.clone(),
            uptime_s: (now - self.id.started).num_milliseconds() as f64 / 1000.0,
            version: self.id.version.to_string(),
        }
    }

    fn message(&self, kind: &str, body: &Value) -> Outgoing {
        Outgoing {
            exchange: self.exchange.clone(),
            routing_key: self.topic(kind),
            headers: Default::default(),
            body: body.to_string().into_bytes(),
            content_type: Some("application/json".to_string()),
            correlation_id: None,
            ..Outgoing::default()
        }
    }

    /// Change state; the status message to publish when it did change.
    pub fn set_state(
        &mut self,
        new: State,
        now: DateTime<Utc>,
        counters: &Value,
    ) -> Option<Outgoing> {
        if self.announced && new == self.state {
            return None;
        }
        let previous = self.announced.then_some(self.state);
        self.state = new;
        self.announced = true;
        let mut body = json!(self.describe(now, counters));
        body["previous"] = json!(previous);
        Some(self.message("status", &body))
    }

    /// Is an alive message due?
    pub fn alive_due(&self, now: DateTime<Utc>) -> bool {
        // a clock stepped back must not silence the daemon until it catches up
        self.last_alive
            .is_none_or(|t| now - t >= self.alive_every || now < t)
    }

    /// When the next alive message is due.
    pub fn next_alive(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.last_alive.map_or(now, |t| t + self.alive_every)
    }

    /// The alive message (and remember it was sent).
    pub fn alive(&mut self, now: DateTime<Utc>, counters: &Value) -> Outgoing {
        self.last_alive = Some(now);
        self.message("alive", &json!(self.describe(now, counters)))
    }

    /// Answer a request that arrived with `routing_key`. `own` answers the daemon's own
    /// commands (and may override `stats`); `health` is always the runtime's.
    pub fn answer(
        &self,
        routing_key: &str,
        now: DateTime<Utc>,
        counters: &Value,
        own: impl FnOnce(&str) -> Option<Result<Value, String>>,
    ) -> Value {
        let command = crate::rpc::command_of(routing_key);
        let result = match command {
            "health" => Some(Ok(json!(self.describe(now, counters)))),
            _ if self.role == Some(Role::Standby) => Some(Err(format!(
                "standby of group {:?}: the active answers {command:?}",
                self.id.instance
            ))),
            _ => own(command).or_else(|| (command == "stats").then(|| Ok(counters.clone()))),
        };
        let (result, error) = match result {
            Some(Ok(v)) => (Some(v), None),
            Some(Err(why)) => (None, Some(why)),
            None => (None, Some(format!("unknown command {command:?}"))),
        };
        // the envelope every reader reads (`rpc::Reply`): written by the same type
        let reply = crate::rpc::Reply {
            command: command.to_string(),
            error,
            host: self.id.host.clone(),
            instance: self.id.instance.clone(),
            ok: result.is_some(),
            result,
            tool: self.id.tool.clone(),
        };
        json!(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_790_000 + s, 0).unwrap()
    }

    fn runtime() -> Runtime {
        let cfg = DaemonConfig {
            instance: Some("h1.example-a".into()),
            alive_interval: 30.0,
            ..DaemonConfig::default()
        };
        Runtime::new("dd_log", &cfg, t(0))
    }

    #[test]
    fn alive_every_interval_in_virtual_time() {
        let mut r = runtime();
        let c = json!({"printed": 3});
        assert!(r.alive_due(t(0)));
        let m = r.alive(t(0), &c);
        assert_eq!(m.routing_key, "v01.alive.dd_log.h1%2Eexample-a");
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["counters"]["printed"], 3);
        assert_eq!(body["tool"], "dd_log");
        assert!(!r.alive_due(t(29)));
        assert!(r.alive_due(t(30)));
        assert_eq!(r.next_alive(t(10)), t(30));
    }

    #[test]
    fn status_only_on_change() {
        let mut r = runtime();
        let c = json!({});
        let starting = r.set_state(State::Starting, t(0), &c).unwrap();
        let body: Value = serde_json::from_slice(&starting.body).unwrap();
        assert_eq!(body["previous"], Value::Null);
        assert!(r.set_state(State::Starting, t(0), &c).is_none());
        let first = r.set_state(State::Running, t(1), &c).unwrap();
        assert_eq!(first.routing_key, "v01.status.dd_log.h1%2Eexample-a");
        let body: Value = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(
            (body["state"].as_str(), body["previous"].as_str()),
            (Some("running"), Some("starting"))
        );
        assert!(r.set_state(State::Running, t(2), &c).is_none());
        assert!(r.set_state(State::Stopping, t(3), &c).is_some());
    }

    #[test]
    fn answers_health_stats_own_and_unknown() {
        let r = runtime();
        let c = json!({"printed": 1});
        let h = r.answer("v01.rpc.all.health", t(5), &c, |_| None);
        assert_eq!(h["ok"], true);
        assert_eq!(h["result"]["uptime_s"], 5.0);
        let s = r.answer("v01.rpc.dd_log.x.stats", t(5), &c, |_| None);
        assert_eq!(s["result"]["printed"], 1);
        let own = r.answer("v01.rpc.dd_log.x.inflight", t(5), &c, |cmd| {
            (cmd == "inflight").then(|| Ok(json!([1, 2])))
        });
        assert_eq!(own["result"], json!([1, 2]));
        let bad = r.answer("v01.rpc.dd_log.x.explode", t(5), &c, |_| None);
        assert_eq!(bad["ok"], false);
    }

    #[test]
    fn request_bindings_cover_own_and_broadcast() {
        let r = runtime();
        let b = r.request_bindings();
        assert!(crate::topic::matches(
            &b[0],
            "v01.rpc.dd_log.h1%2Eexample-a.health"
        ));
        assert!(crate::topic::matches(&b[1], "v01.rpc.dd_log.all.stats"));
        assert!(crate::topic::matches(&b[2], "v01.rpc.all.stats"));
    }
}
