//! The typed `stats` reply of dd_speedo (the `result` of a `v01.rpc.dd_speedo.<instance>.stats`
//! answer, SPEC §5), and the `counters` it carries (also the `counters` of dd_speedo's health,
//! alive and status bodies). The producer ([`super::Speedo::stats`], completed by the service
//! with its counters) writes these types, and every reader (check_dd_speedo, dd_web, the
//! tests) reads them: no key or state name is spelled anywhere else.
//!
//! The wire is what it was when the reply was built with `json!`: the same keys (fields are
//! declared in the alphabetical order `json!`'s maps gave them), the same `null`s (no key is
//! ever left out), integers for counts and floats for figures. `tests/fixtures/replies/`
//! holds a reply recorded from that code, and a test reads and writes it back unchanged.
//!
//! Reading is lenient as the readers were: a missing key takes the fallback they used
//! (`state` ok, `interval` 60, counts 0, figures none).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Counts, Health};
use crate::speedo::thresholds;

/// The `result` of dd_speedo's `stats` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatsReply {
    /// Every client seen, by name.
    pub clients: Vec<NameStats>,
    /// Log records counted (good or error).
    pub counted: u64,
    /// dd_speedo's counters (the same as in its health answer).
    pub counters: Counters,
    /// End of the last interval published (`null` before the first one).
    pub data_time: Option<DateTime<Utc>>,
    /// Seconds per speedo record.
    #[serde(default = "default_interval")]
    pub interval: u32,
    /// Malformed records per kind of fault (`MalformedTally::by_kind`).
    pub malformed_by_kind: BTreeMap<String, u64>,
    /// 1xx and 3xx records (in neither count).
    pub neutral: u64,
    /// Every source seen, by name.
    pub sources: Vec<NameStats>,
    /// When the speedo started (or, in a replay, the first record's time).
    pub started: DateTime<Utc>,
    /// When the answer was made.
    pub time: DateTime<Utc>,
    /// The top subjects of the last whole minute.
    pub top_subjects: TopSubjects,
    /// The totals `client.all` and `sources.all`.
    pub totals: Totals,
    /// A query's answer (SPEC §8): what the lists hold of what matched, and the next page.
    /// (Left out of an answer made before queries.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<crate::rpc::Page>,
    /// Names in the query's scope, by kind (`client`, `source`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub in_scope: BTreeMap<String, u64>,
    /// Names in the query's scope by kind, then by state (every state, 0s included).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_state: BTreeMap<String, BTreeMap<String, u64>>,
    /// Names matched by the query, by kind (the exact count; the lists may be cut).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub matched: BTreeMap<String, u64>,
    /// With `outside`: names of the scope that have the figure (the others cannot be judged
    /// yet), by kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub with_figure: BTreeMap<String, u64>,
    /// Names asked for by name that dd_speedo has not seen, as `<kind> <name>`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_seen: Vec<String>,
}

/// The figure a query's `outside` (and check_dd_speedo's `--metric`) judges: `None` for a
/// name that does not have it yet, and the outer `None` for a metric that is not one.
/// `error_ratio` is 0 for a name with a whole minute and no attempt; `lag` is 0 without
/// records in the interval.
pub fn figure(
    metric: &str,
    files_per_min: Option<f64>,
    bytes_per_sec: Option<f64>,
    error_ratio: Option<f64>,
    lag_max: Option<f64>,
) -> Option<Option<f64>> {
    match metric {
        "files_per_min" => Some(files_per_min),
        "bytes_per_sec" => Some(bytes_per_sec),
        "error_ratio" => Some(files_per_min.map(|_| error_ratio.unwrap_or(0.0))),
        "lag" => Some(Some(lag_max.unwrap_or(0.0))),
        _ => None,
    }
}

/// The metrics [`figure`] knows.
pub const METRICS: [&str; 4] = ["files_per_min", "bytes_per_sec", "error_ratio", "lag"];

/// check_dd_speedo's fallback when `interval` is missing.
fn default_interval() -> u32 {
    60
}

/// One client or source in [`StatsReply::clients`] / [`StatsReply::sources`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NameStats {
    /// Bytes of the errors (cumulative).
    pub bad_bytes: u64,
    /// Good bytes per second over the last whole minute (`null` before a whole minute).
    pub bytes_per_sec: Option<f64>,
    /// errors / attempts in the last whole minute (`null` without attempts).
    pub error_ratio: Option<f64>,
    /// Errors (cumulative).
    pub errors: u64,
    /// The learned expectation, files per minute.
    pub expected_files_per_min: Option<f64>,
    /// Its spread.
    pub expected_spread: Option<f64>,
    /// Good files in the last whole minute (`null` before a whole minute was seen).
    pub files_per_min: Option<f64>,
    /// First record of this name.
    pub first_seen: DateTime<Utc>,
    /// Good deliveries (cumulative).
    pub good: u64,
    /// Bytes of the good deliveries (cumulative).
    pub good_bytes: u64,
    /// Largest lag in the last interval.
    pub lag_max: Option<f64>,
    /// Mean lag in the last interval.
    pub lag_mean: Option<f64>,
    /// Last good delivery (`null`: none yet; the key is always there).
    pub last_good: Option<DateTime<Utc>>,
    /// The limits that apply to this name.
    pub limits: NameLimits,
    /// The client or source name (unescaped).
    pub name: String,
    /// Every condition that holds, or `within thresholds`.
    pub reason: String,
    /// Seconds since the last good delivery (`null`: none yet).
    pub seconds_since_good: Option<f64>,
    /// Since when the name is in `state`.
    pub since: DateTime<Utc>,
    /// The threshold state (`ok`, `late`, `failing`, `slow`, `abnormal`, `stalled`,
    /// `stopped`).
    pub state: Health,
    /// Its broker queues (a client's, when they are watched): backlog, consumers, their
    /// state and its evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queues::QueueView>,
}

/// The four limits shown per name: a subset of [`thresholds::Limits`], whose other fields
/// are not in the answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NameLimits {
    /// Spreads away from the expectation that count as outside (0: never abnormal).
    pub k: f64,
    /// Largest share of errors in a minute before *failing*.
    pub max_error_ratio: f64,
    /// Seconds without a good delivery before *late* (0: never late).
    pub td: f64,
    /// Minimum good files per minute (0: never slow).
    pub tminr: f64,
}

impl From<&thresholds::Limits> for NameLimits {
    fn from(l: &thresholds::Limits) -> NameLimits {
        NameLimits {
            k: l.k,
            max_error_ratio: l.max_error_ratio,
            td: l.td,
            tminr: l.tminr,
        }
    }
}

/// The totals: `{"client.all": Counts, "sources.all": Counts}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Totals {
    /// Every client together.
    #[serde(rename = "client.all")]
    pub client_all: Counts,
    /// Every source together.
    #[serde(rename = "sources.all")]
    pub sources_all: Counts,
}

/// The top subjects of the last whole minute (kept by the speedo, shown in `stats`). Every
/// files figure is within `files_error_bound` of the truth (over, never under); bytes alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TopSubjects {
    /// total_bytes / capacity.
    pub bytes_error_bound: u64,
    /// Counters of each heavy-hitters structure (the memory bound).
    pub capacity: usize,
    /// total_files / capacity.
    pub files_error_bound: u64,
    /// End of the minute (`null` before the first whole minute).
    pub minute_end: Option<DateTime<Utc>>,
    /// The top 10 by files and the top 10 by bytes, merged (at most 20), by files first.
    pub subjects: Vec<TopSubject>,
    /// Good bytes in the minute.
    pub total_bytes: u64,
    /// Good files in the minute.
    pub total_files: u64,
}

/// One of the top subjects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TopSubject {
    /// Estimated good bytes in the minute (`null`: not among the bytes counters).
    pub bytes: Option<u64>,
    /// bytes / 60.
    pub bytes_per_sec: Option<f64>,
    /// Estimated good files in the minute (`null`: not among the files counters).
    pub files: Option<u64>,
    /// files / 60.
    pub files_per_sec: Option<f64>,
    /// The relpath directory.
    pub subject: String,
    /// In the top 10 by files, by bytes, or both (in that order).
    pub top_by: Vec<TopBy>,
}

/// Which ranking a top subject is in (`"files"`, `"bytes"` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopBy {
    /// Top 10 by good files.
    Files,
    /// Top 10 by good bytes.
    Bytes,
}

/// dd_speedo's counters (`SpeedoService::counters`): in `stats` under `counters`, and the
/// `counters` of its health answer, alive and status messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Counters {
    /// Alerts published (state changes).
    pub alerts: u64,
    /// Clients seen.
    pub clients: u64,
    /// Log records counted (good or error).
    pub counted: u64,
    /// Malformed records (all kinds).
    pub malformed: u64,
    /// 1xx and 3xx records.
    pub neutral: u64,
    /// Messages that were not log records (skipped).
    pub skipped: u64,
    /// Sources seen.
    pub sources: u64,
    /// Speedo records published.
    pub speedos: u64,
    /// The state file's bookkeeping.
    pub state_file: StateFile,
    /// How many names are in each state, by the state's name; only states that occur
    /// (`Speedo::states`). String keys: `Health` has no `Ord`, and the wire order is the
    /// names' alphabetical order, not the variants'.
    pub states: BTreeMap<String, u64>,
    /// The clients' broker queues, when they are watched (`--management-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueuesCounters>,
}

/// `counters.queues`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueuesCounters {
    /// Polls of the management APIs that answered.
    pub polls: u64,
    /// The APIs whose last poll failed, with why: what dd_speedo could not see.
    pub unseen: BTreeMap<String, String>,
}

/// `counters.state_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StateFile {
    /// Size of the last state file written.
    pub bytes: u64,
    /// The last write's error (`null` when the last write worked).
    pub error: Option<String>,
    /// The state file (`null`: no `--state-file`).
    pub path: Option<PathBuf>,
    /// When it was last written (`null`: never).
    pub saved_at: Option<DateTime<Utc>>,
    /// Writes done.
    pub writes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct output in declaration order == `Value` output (sorted keys, what `json!` gave).
    fn same_bytes<T: Serialize>(x: &T) -> bool {
        let direct = serde_json::to_string(x).expect("serializable");
        let sorted = serde_json::to_value(x).expect("serializable").to_string();
        direct == sorted
    }

    #[test]
    fn sorted_keys_and_nulls_kept() {
        let top = TopSubjects {
            subjects: vec![TopSubject {
                top_by: vec![TopBy::Files, TopBy::Bytes],
                ..TopSubject::default()
            }],
            ..TopSubjects::default()
        };
        assert!(same_bytes(&NameStats::default()));
        assert!(same_bytes(&Counters::default()));
        assert!(same_bytes(&top));
        // `Counts` (reused, not declared sorted) is why the whole reply is not:
        assert!(!same_bytes(&StatsReply::default()));
        let v = serde_json::to_value(StatsReply::default()).expect("serializable");
        assert!(v["data_time"].is_null());
        assert!(v["clients"].is_array());
        assert!(v["top_subjects"]["minute_end"].is_null());
        assert!(v["counters"]["state_file"]["path"].is_null());
        assert!(v["totals"]["client.all"]["good"].is_u64());
        assert_eq!(
            serde_json::to_value(&top).expect("ok")["subjects"][0]["top_by"],
            serde_json::json!(["files", "bytes"])
        );
    }

    #[test]
    fn partial_answer_parses_with_the_readers_fallbacks() {
        let v = serde_json::json!({"data_time": "2026-11-22T10:01:00Z",
            "clients": [{"name": "a", "state": "late", "files_per_min": 12, "good": 3}]});
        let r: StatsReply = serde_json::from_value(v).expect("lenient");
        assert_eq!(r.interval, 60);
        assert_eq!(r.clients[0].state, Health::Late);
        assert_eq!(r.clients[0].files_per_min, Some(12.0));
        assert_eq!(r.clients[0].last_good, None);
    }
}
