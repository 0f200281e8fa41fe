//! The input block every daemon shares: the exchange it reads, its durable input queue, and
//! the bindings. One set of flags ([`InputOpts`], flattened into each daemon's command line,
//! with the defaults of that daemon in its help) and one config table ([`InputConfig`],
//! flattened into each daemon's config, so a file keeps writing `exchange = ...` and
//! `queue = ...` at its top level), laid over each other by [`InputOpts::apply`].

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::broker::{QueueSpec, Subscription};

/// Where a daemon reads: the flags. Each daemon's help names its own defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct InputOpts {
    /// Exchange to read [default: log].
    #[arg(long, env = "DD_EXCHANGE", value_name = "NAME")]
    pub exchange: Option<String>,
    /// The durable input queue is q_<user>.<tool>.<NAME>.
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// Declare the input queue as a quorum queue.
    #[arg(long)]
    pub quorum: bool,
    /// Reject malformed records to this dead-letter exchange (set on the input queue).
    #[arg(long, value_name = "NAME")]
    pub dead_letter_exchange: Option<String>,
    /// Topic bindings on the input exchange (repeatable).
    #[arg(long = "topic", value_name = "BINDING")]
    pub topics: Vec<String>,
}

/// Where a daemon reads: the config keys (at the top level of its file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Exchange to read.
    pub exchange: String,
    /// The NAME of the durable input queue q_<user>.<tool>.<NAME> (none, or empty: the
    /// daemon's default).
    pub queue: Option<String>,
    /// Declare the input queue as a quorum queue.
    pub quorum: bool,
    /// Dead-letter exchange of the input queue, for rejected (malformed) messages.
    pub dead_letter_exchange: Option<String>,
    /// Topic bindings on the input exchange.
    pub topics: Vec<String>,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig::reading(&["#"])
    }
}

impl InputConfig {
    /// Reading `log` on these bindings, into the daemon's default queue.
    pub fn reading(topics: &[&str]) -> InputConfig {
        InputConfig {
            exchange: "log".to_string(),
            queue: None,
            quorum: false,
            dead_letter_exchange: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The same, into the queue NAME by default.
    pub fn with_queue(mut self, name: &str) -> InputConfig {
        self.queue = Some(name.to_string());
        self
    }

    /// The queue's NAME, if one was given (an empty one was not).
    pub fn queue_name(&self) -> Option<&str> {
        self.queue.as_deref().filter(|q| !q.is_empty())
    }

    /// The durable input queue `q_<user>.<tool>.<NAME>` bound to the exchange on the
    /// topics; NAME is the queue given, else the exchange's name.
    pub fn durable(&self, user: &str, tool: &str) -> Subscription {
        self.durable_or(user, tool, &self.exchange)
    }

    /// The same, NAME `fallback` when no queue (or an empty one) is given.
    pub fn durable_or(&self, user: &str, tool: &str, fallback: &str) -> Subscription {
        let name = self.queue_name().unwrap_or(fallback);
        Subscription {
            exchange: self.exchange.clone(),
            bindings: self.topics.clone(),
            queue: QueueSpec::durable(
                user,
                tool,
                name,
                self.quorum,
                self.dead_letter_exchange.clone(),
            ),
            active_lock: None,
        }
    }

    /// At least one binding; names the broker can carry.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        super::check_name("exchange", &self.exchange)?;
        if let Some(q) = &self.queue {
            super::check_name("queue", q)?;
        }
        if let Some(x) = &self.dead_letter_exchange {
            super::check_name("dead_letter_exchange", x)?;
        }
        for t in &self.topics {
            super::check_name("topics", t)?;
        }
        if self.topics.is_empty() {
            return Err(super::ConfigError::Invalid {
                field: "topics",
                message: "at least one binding is needed".to_string(),
            });
        }
        Ok(())
    }
}

impl InputConfig {
    /// Keep the keys the file gave (`given`, its top-level table); take the others from the
    /// tool's default.
    pub fn keep_given(&mut self, given: &toml::Table, default: &InputConfig) {
        let d = default.clone();
        if !given.contains_key("exchange") {
            self.exchange = d.exchange;
        }
        if !given.contains_key("queue") {
            self.queue = d.queue;
        }
        if !given.contains_key("quorum") {
            self.quorum = d.quorum;
        }
        if !given.contains_key("dead_letter_exchange") {
            self.dead_letter_exchange = d.dead_letter_exchange;
        }
        if !given.contains_key("topics") {
            self.topics = d.topics;
        }
    }
}

impl InputOpts {
    /// Lay the flags (and `DD_EXCHANGE`) over the file layer.
    pub fn apply(&self, cfg: &mut InputConfig) {
        super::overlay(&mut cfg.exchange, self.exchange.clone());
        if self.queue.is_some() {
            cfg.queue = self.queue.clone();
        }
        cfg.quorum |= self.quorum;
        if self.dead_letter_exchange.is_some() {
            cfg.dead_letter_exchange = self.dead_letter_exchange.clone();
        }
        if !self.topics.is_empty() {
            cfg.topics = self.topics.clone();
        }
    }
}
