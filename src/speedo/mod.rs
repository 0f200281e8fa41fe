//! `dd_speedo`: every interval, speedo records per client and per source (SPEC §3); threshold
//! states with alerts; learned expectations; the top subjects; full stats on request.
//!
//! The counting is a pure state machine ([`Speedo`]); this module is its edge: the daemon
//! (consume `log`, publish speedos to `log` and each source's to `log_<source>`, keep the
//! state file) and `--replay` (a capture file in, speedo lines out).

pub mod journal;
mod meter;
mod query;
pub mod queues;
pub mod replay;
pub mod reply;
pub mod state;
mod thresholds;
pub mod topn;

pub use meter::{
    Alert, Counts, Entry, Figures, MAX_CATCH_UP, Output, Scope, Settings, Speedo, SpeedoRecord,
    TOP_N, Watch, subject_of,
};
pub use reply::{StatsReply, TopBy, TopSubject, TopSubjects};
pub use thresholds::{
    Ewma, HOURS_OF_WEEK, Health, Kind, Learned, Limits, Override, Thresholds, ThresholdsConfig,
};

mod config;
mod messages;
mod service;

pub use config::*;
pub use service::*;

#[cfg(test)]
mod tests;
