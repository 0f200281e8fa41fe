//! `dd_watchdog`: which transfers are in flight on which node, and what was lost when a node
//! died.
//!
//! The table is a pure state machine ([`table::Table`]); this module is its edge: consume the
//! log records (and `v01.alive` heartbeats), keep the journal ([`journal::Journal`]) written
//! before acknowledging, publish `v01.watchdog.down|up|stuck.<node>`, answer `inflight`.

pub mod journal;
pub mod reply;
pub mod table;

pub use reply::{InflightFilter, InflightReply, NodeState, StatsReply, TransferRow};
pub use table::{Event, INPUT_SILENCE_MS, Limits, Table};

mod config;
mod messages;
mod service;

pub use config::*;
pub use service::*;

#[cfg(test)]
mod tests;
