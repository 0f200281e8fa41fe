//! The request protocol between ddmon's programs (SPEC §5): the request key, the reply
//! envelope, and [`ask`], the one way a command asks a daemon something.
//!
//! A request is published on the daemon exchange (`log`) with the key
//! `v01.rpc.<tool>.<instance>.<command>` (`all` for every instance of a tool, or
//! `v01.rpc.all.<command>` for every daemon), a JSON body (the command's arguments, `{}` for
//! none), and a reply-to; each daemon that hears it answers one [`Reply`]. What a `result`
//! holds is the answering module's type (`speedo::StatsReply`, `watchdog::InflightReply`,
//! `daemon::Health`): the reader names that type, and never spells a key again.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerConfig, BrokerError, Link};

pub mod query;

use crate::topic::escape_word;
pub use query::{Bounds, Key, Outside, Page, Pager, Query, QueryError, Sort};

/// A time as the replies write it (RFC 3339, UTC as `Z`, the fraction's digits as needed:
/// chrono's serde form), for a reader that prints a reply's time.
pub fn wire_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The first words of every request key.
pub const PREFIX: &str = "v01.rpc";

/// The word that stands for every instance (or, in place of a tool, every daemon).
pub const ALL: &str = "all";

/// The key of `command` for one instance of `tool` (`None`: every instance of it).
pub fn request_key(tool: &str, instance: Option<&str>, command: &str) -> String {
    format!(
        "{PREFIX}.{}.{}.{command}",
        escape_word(tool),
        instance.map_or_else(|| ALL.to_string(), escape_word)
    )
}

/// The key of `command` for every ddmon daemon, whatever its tool.
pub fn broadcast_key(command: &str) -> String {
    format!("{PREFIX}.{ALL}.{command}")
}

/// The bindings a daemon's request queue needs: its own instance, every instance of its
/// tool, and every daemon.
pub fn request_bindings(tool: &str, instance: &str) -> Vec<String> {
    vec![
        format!("{PREFIX}.{}.{}.*", escape_word(tool), escape_word(instance)),
        format!("{PREFIX}.{}.{ALL}.*", escape_word(tool)),
        format!("{PREFIX}.{ALL}.*"),
    ]
}

/// The instance word of one member of a group (SPEC §7): `<instance>@<member>`, where the
/// member is `<short host>-<pid>`. Every member answers on it; the group's own instance key
/// is the active's alone.
pub fn member_instance(instance: &str, member: &str) -> String {
    format!("{instance}@{member}")
}

/// The bindings of a group member's request queue: its member key, and every daemon's
/// broadcast; the active adds [`request_bindings`] of the group's instance.
pub fn member_bindings(tool: &str, instance: &str, member: &str, active: bool) -> Vec<String> {
    let own = format!(
        "{PREFIX}.{}.{}.*",
        escape_word(tool),
        escape_word(&member_instance(instance, member))
    );
    let mut b = if active {
        request_bindings(tool, instance)
    } else {
        vec![format!("{PREFIX}.{ALL}.*")]
    };
    b.push(own);
    b
}

/// The command a request key asks for (its last word).
pub fn command_of(routing_key: &str) -> &str {
    routing_key.rsplit('.').next().unwrap_or("")
}

/// One daemon's answer. Its fields are in the order the wire has always had them
/// (alphabetical); `result` is there when `ok`, `error` when not. Read leniently: a key left
/// out is empty (`ok`: false).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    /// The command answered.
    #[serde(default)]
    pub command: String,
    /// Why it was not answered (an unknown command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The host the daemon runs on.
    #[serde(default)]
    pub host: String,
    /// The daemon's instance name.
    #[serde(default)]
    pub instance: String,
    /// Answered?
    #[serde(default)]
    pub ok: bool,
    /// The answer.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// The daemon's tool (`dd_speedo`...).
    #[serde(default)]
    pub tool: String,
}

fn none<T>() -> Option<T> {
    None
}

/// A question: what to ask, where, and how long to wait for how many answers.
#[derive(Debug, Clone)]
pub struct Question {
    /// The daemon exchange (`log`).
    pub exchange: String,
    /// The request key (see [`request_key`]).
    pub key: String,
    /// The command's arguments, JSON.
    pub body: Vec<u8>,
    /// How long to wait for answers.
    pub wait: Duration,
    /// Stop after this many answers (`None`: every answer within `wait`).
    pub max: Option<usize>,
}

impl Question {
    /// Ask `key` on `exchange` with no arguments: one answer when the key names an instance,
    /// every answer within `wait` when it names them all.
    pub fn new(exchange: &str, key: String, wait: Duration) -> Question {
        let one = !key.split('.').any(|w| w == ALL);
        Question {
            exchange: exchange.to_string(),
            key,
            body: b"{}".to_vec(),
            wait,
            max: one.then_some(1),
        }
    }

    /// The same question with arguments.
    pub fn with_body(mut self, body: &impl Serialize) -> Question {
        self.body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        self
    }

    /// The same question, stopping at the first `max` answers.
    pub fn at_most(mut self, max: usize) -> Question {
        self.max = Some(max);
        self
    }
}

/// What came back: the replies that could be read, and why the others could not.
#[derive(Debug, Clone)]
pub struct Answers<T> {
    /// Replies in the order they arrived.
    pub replies: Vec<Reply<T>>,
    /// One line per reply that was not a [`Reply<T>`].
    pub unreadable: Vec<String>,
}

impl<T> Default for Answers<T> {
    fn default() -> Self {
        Answers {
            replies: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

impl<T> Answers<T> {
    /// The first reply that answered (`ok` with a result).
    pub fn first_ok(&self) -> Option<(&Reply<T>, &T)> {
        self.replies
            .iter()
            .find_map(|r| r.result.as_ref().filter(|_| r.ok).map(|t| (r, t)))
    }

    /// How many replies answered.
    pub fn answered(&self) -> usize {
        self.replies.iter().filter(|r| r.ok).count()
    }
}

/// Ask on an open connection and read every reply as a [`Reply<T>`].
pub async fn ask<T: DeserializeOwned>(
    link: &Link,
    q: &Question,
) -> Result<Answers<T>, BrokerError> {
    let raw = link
        .request(&q.exchange, &q.key, &q.body, q.wait, q.max)
        .await?;
    let mut out = Answers {
        replies: Vec::with_capacity(raw.len()),
        unreadable: Vec::new(),
    };
    for r in raw {
        match serde_json::from_slice::<Reply<T>>(&r.body) {
            Ok(reply) => out.replies.push(reply),
            Err(e) => out.unreadable.push(e.to_string()),
        }
    }
    Ok(out)
}

/// Ask `command` of each of several daemons at once (one request per `(tool, instance)`,
/// answers collected for `wait` or until each answered), each reply read as a [`Reply<T>`].
pub async fn ask_each<T: DeserializeOwned>(
    link: &Link,
    exchange: &str,
    daemons: &[(String, String)],
    command: &str,
    wait: Duration,
) -> Result<Answers<T>, BrokerError> {
    let mut out = Answers::default();
    if daemons.is_empty() {
        return Ok(out);
    }
    let keys: Vec<String> = daemons
        .iter()
        .map(|(t, i)| request_key(t, Some(i), command))
        .collect();
    for r in link.request_each(exchange, &keys, b"{}", wait).await? {
        match serde_json::from_slice::<Reply<T>>(&r.body) {
            Ok(reply) => out.replies.push(reply),
            Err(e) => out.unreadable.push(e.to_string()),
        }
    }
    Ok(out)
}

/// Ask on an open connection and keep every reply that is JSON as it came (for a command
/// that prints the answers themselves: `dd_status --json`).
pub async fn ask_raw(link: &Link, q: &Question) -> Result<Vec<serde_json::Value>, BrokerError> {
    let raw = link
        .request(&q.exchange, &q.key, &q.body, q.wait, q.max)
        .await?;
    Ok(raw
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect())
}

/// Connect (once), ask, close: a command's whole question. `name` names the connection in
/// the broker's view.
pub async fn ask_once<T: DeserializeOwned>(
    broker: &BrokerConfig,
    name: &str,
    q: &Question,
) -> Result<Answers<T>, BrokerError> {
    let link = Link::open(broker, name).await?;
    let answers = ask(&link, q).await;
    link.close("OK").await;
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_in_one_place() {
        assert_eq!(
            request_key("dd_speedo", Some("speedo-1"), "stats"),
            "v01.rpc.dd_speedo.speedo-1.stats"
        );
        assert_eq!(
            request_key("dd_watchdog", None, "inflight"),
            "v01.rpc.dd_watchdog.all.inflight"
        );
        assert_eq!(broadcast_key("health"), "v01.rpc.all.health");
        assert_eq!(command_of("v01.rpc.dd_speedo.all.stats"), "stats");
        assert_eq!(
            request_bindings("dd_speedo", "a.b"),
            [
                "v01.rpc.dd_speedo.a%2Eb.*",
                "v01.rpc.dd_speedo.all.*",
                "v01.rpc.all.*"
            ]
        );
    }

    #[test]
    fn one_instance_is_one_answer_all_is_every_answer() {
        let w = Duration::from_secs(1);
        let one = Question::new("log", request_key("dd_speedo", Some("x"), "stats"), w);
        assert_eq!(one.max, Some(1));
        let all = Question::new("log", request_key("dd_speedo", None, "stats"), w);
        assert_eq!(all.max, None);
    }

    #[test]
    fn a_refusal_reads_as_a_reply_without_result() {
        let r: Reply<serde_json::Value> = serde_json::from_str(
            r#"{"command":"nope","error":"unknown command \"nope\"","host":"h","instance":"i","ok":false,"tool":"dd_log"}"#,
        )
        .unwrap();
        assert!(!r.ok && r.result.is_none());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"command":"nope","error":"unknown command \"nope\"","host":"h","instance":"i","ok":false,"tool":"dd_log"}"#
        );
    }
}
