//! The daemons' own history (SPEC §6): `v01.registry.<tool>.<instance>.start` when a daemon
//! starts and `.stop` when it stops, beside its alive and status messages, and the RabbitMQ
//! streams that keep the three families so that a monitor started now knows every daemon seen
//! within the retention, with no registry service. The roster that reads them is
//! `crate::roster`'s.
//!
//! Two streams, because the families differ a thousandfold in volume and in how far back a
//! monitor must read: `ddmon.roster.<exchange>` keeps registry and status messages (a few
//! per daemon's life: read from the first kept, a day by default), and
//! `ddmon.roster.<exchange>.alive` keeps the alive messages (one per daemon per interval:
//! a monitor reads only the last minutes, enough to tell silent from dead).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::broker::StreamSpec;

/// The first words of the registry messages.
pub const REGISTRY: &str = "v01.registry";

/// The families the roster stream keeps (binding keys on the daemon exchange).
pub const KEPT: [&str; 2] = ["v01.status.#", "v01.registry.#"];

/// The family the alive stream keeps.
pub const KEPT_ALIVE: [&str; 1] = ["v01.alive.#"];

/// The roster stream's retention by age, by default: a day.
pub const DEFAULT_MAX_AGE_S: u64 = 86_400;

/// The alive stream's retention by age, by default: an hour (a monitor reads the last
/// minutes of it).
pub const DEFAULT_ALIVE_MAX_AGE_S: u64 = 3_600;

/// Each stream's retention by size, by default: 256 MiB (an hour of 10,000 daemons saying
/// alive every 30 s is about 800 MB: the size bound then keeps the last 20 minutes).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// The body of a registry message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Registration {
    /// Seconds between its alive messages.
    pub alive_interval: f64,
    /// `start` or `stop`.
    pub event: String,
    /// Why it stopped, when it was not asked to (an error): a roster reads it as its last word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The host it runs on.
    pub host: String,
    /// Its instance name.
    pub instance: String,
    /// A group member's own name; absent outside a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When this message was made.
    pub time: DateTime<Utc>,
    /// The tool.
    pub tool: String,
    /// ddmon's version (or the sr3 plugin's).
    pub version: String,
}

/// The roster stream's settings (`[daemon]` of every daemon, and the monitors' flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RosterStream {
    /// The stream's name [default: `ddmon.roster.<daemon exchange>`]; `none`: keep no history.
    pub name: Option<String>,
    /// Retention by age of registry and status messages, seconds.
    pub max_age: u64,
    /// Retention by age of alive messages (the `.alive` stream), seconds.
    pub alive_max_age: u64,
    /// Retention by size of each stream, bytes.
    pub max_bytes: u64,
}

impl Default for RosterStream {
    fn default() -> Self {
        RosterStream {
            name: None,
            max_age: DEFAULT_MAX_AGE_S,
            alive_max_age: DEFAULT_ALIVE_MAX_AGE_S,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl RosterStream {
    /// The stream's name for daemon exchange `exchange` (`None`: history is off).
    pub fn name_for(&self, exchange: &str) -> Option<String> {
        match self.name.as_deref() {
            Some("none") => None,
            Some(n) => Some(n.to_string()),
            None => Some(format!("ddmon.roster.{exchange}")),
        }
    }

    /// The streams to declare for daemon exchange `exchange`: registry and status, then
    /// alive (`None`: history is off).
    pub fn specs(&self, exchange: &str) -> Option<[StreamSpec; 2]> {
        let name = self.name_for(exchange)?;
        Some([
            StreamSpec {
                name: name.clone(),
                exchange: exchange.to_string(),
                bindings: KEPT.iter().map(|k| k.to_string()).collect(),
                max_age_s: self.max_age,
                max_bytes: self.max_bytes,
            },
            StreamSpec {
                name: crate::topic::cut(&format!("{name}.alive")).to_string(),
                exchange: exchange.to_string(),
                bindings: KEPT_ALIVE.iter().map(|k| k.to_string()).collect(),
                max_age_s: self.alive_max_age,
                max_bytes: self.max_bytes,
            },
        ])
    }

    /// Check the values.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if let Some(n) = self.name.as_deref().filter(|n| *n != "none") {
            crate::config::check_name("roster stream", n)?;
        }
        if self.max_age < 60 || self.alive_max_age < 60 {
            return Err(crate::config::ConfigError::Invalid {
                field: "roster max_age",
                message: "must be at least 60 seconds".to_string(),
            });
        }
        if self.max_bytes < 1 << 20 {
            return Err(crate::config::ConfigError::Invalid {
                field: "roster max_bytes",
                message: "must be at least 1 MiB".to_string(),
            });
        }
        Ok(())
    }
}

/// The roster flags shared by the daemons and the monitors.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RosterOpts {
    /// The stream that keeps the daemons' history [default: ddmon.roster.<daemon exchange>;
    /// `none`: keep none].
    #[arg(long, env = "DD_ROSTER_STREAM", value_name = "NAME")]
    pub roster_stream: Option<String>,
    /// Retention by age of registry and status messages, seconds [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    pub roster_max_age: Option<u64>,
    /// Retention by age of alive messages (the `.alive` stream), seconds [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub roster_alive_max_age: Option<u64>,
    /// Retention by size of each stream, bytes [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub roster_max_bytes: Option<u64>,
}

impl RosterOpts {
    /// Lay the flags over the file layer.
    pub fn apply(&self, cfg: &mut RosterStream) {
        if self.roster_stream.is_some() {
            cfg.name = self.roster_stream.clone();
        }
        crate::config::overlay(&mut cfg.max_age, self.roster_max_age);
        crate::config::overlay(&mut cfg.alive_max_age, self.roster_alive_max_age);
        crate::config::overlay(&mut cfg.max_bytes, self.roster_max_bytes);
    }
}

/// A daemon's input as a member of its group when `group` (SPEC §7): consumed only while
/// holding the lock the group's active holds, an exclusive queue of the group's own name
/// (`q_<user>.<tool>.<instance>.active`).
pub fn in_group(
    mut sub: crate::broker::Subscription,
    group: bool,
    user: &str,
    tool: &str,
    cfg: &super::DaemonConfig,
) -> crate::broker::Subscription {
    if let (true, Some(instance)) = (group, &cfg.instance) {
        sub.active_lock = Some(crate::broker::QueueSpec::name_for(
            user,
            tool,
            &format!("{instance}.active"),
        ));
    }
    sub
}

/// `--group`'s check: a group is named by its `--instance`.
pub fn check_group(
    group: bool,
    cfg: &super::DaemonConfig,
) -> Result<(), crate::config::ConfigError> {
    if group && cfg.instance.is_none() {
        return Err(crate::config::ConfigError::Invalid {
            field: "group",
            message: "a group is named by its --instance: give the same --instance and --queue to each member".to_string(),
        });
    }
    Ok(())
}

/// The registry key of `event` (`start`, `stop`) for a daemon.
pub fn registry_key(tool: &str, instance: &str, event: &str) -> String {
    let mut k = crate::topic::build(REGISTRY, &[tool, instance]);
    k.push('.');
    k.push_str(event);
    k
}

/// Another process's word about a daemon (`event` `died` or `forget`), on `exchange`: what
/// `dd_status --died` (its host's last word, from systemd's `ExecStopPost`) and
/// `dd_status --forget` (an operator's) publish.
pub fn word_about(
    exchange: &str,
    tool: &str,
    instance: &str,
    event: &str,
    failure: Option<String>,
    now: DateTime<Utc>,
) -> crate::broker::Outgoing {
    let body = Registration {
        event: event.to_string(),
        failure,
        host: super::host_name(),
        instance: instance.to_string(),
        time: now,
        tool: tool.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Registration::default()
    };
    crate::broker::Outgoing {
        exchange: exchange.to_string(),
        routing_key: registry_key(tool, instance, event),
        body: serde_json::to_vec(&body).unwrap_or_default(),
        content_type: Some("application/json".to_string()),
        ..crate::broker::Outgoing::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        assert_eq!(
            registry_key("dd_log", "h1.a", "start"),
            "v01.registry.dd_log.h1%2Ea.start"
        );
        let r = RosterStream::default();
        assert_eq!(r.name_for("log").as_deref(), Some("ddmon.roster.log"));
        let off = RosterStream {
            name: Some("none".into()),
            ..RosterStream::default()
        };
        assert!(off.specs("log").is_none());
        let [history, alive] = r.specs("xreport").unwrap();
        assert_eq!(history.name, "ddmon.roster.xreport");
        assert_eq!(history.bindings, ["v01.status.#", "v01.registry.#"]);
        assert_eq!(alive.name, "ddmon.roster.xreport.alive");
        assert_eq!((alive.bindings.len(), alive.max_age_s), (1, 3600));
        assert_eq!(history.segment_bytes(), (256 << 20) / 10);
    }
}
