//! The typed replies of dd_watchdog: the `inflight` answer ([`InflightReply`], made by
//! `Table::inflight`), the `stats` answer ([`StatsReply`]: the counters plus the same table
//! under `inflight`), the counters alone ([`Counters`], also in health/alive/status), and the
//! request body both take ([`InflightFilter`]). Read by `dd_watchdog --query` and the tests.
//!
//! Wire compatibility with the `json!` code this replaces:
//! - same keys and values; `Option`s are written as `null` (`source`, `flow`, `down_since`,
//!   `oldest`, `journal`), except [`TransferRow::age_s`], which the old `view` left out when it
//!   had no "now" (down reports) and always wrote in `inflight`/`stats` and stuck reports: it
//!   is skipped when `None`, so the same row type also fits the down and stuck reports;
//! - serde_json has no `preserve_order` here: the `json!` objects were `BTreeMap`s, keys
//!   sorted. Fields are declared sorted, so direct serialization keeps the byte order, except
//!   inside the reused [`Counts`] (`table::Counts`, declared in its own order): byte-identical
//!   output there needs a pass through `serde_json::Value` (as `Runtime::answer` does);
//! - a node's `state` was the literal `"up"`/`"down"`: now [`NodeState`] (no existing enum);
//! - `total`, `in_flight`, `nodes` were `usize`: `u64` here (same JSON integers).
//!
//! Reading is lenient like the readers were: a missing key takes its default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::table::Counts;

/// Whether a node is speaking (`"up"`) or was silent for the node timeout (`"down"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Speaking (records or heartbeats).
    #[default]
    Up,
    /// Silent for `--node-timeout`.
    Down,
}

impl NodeState {
    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

/// The body of an `inflight` or `stats` request: `{"node"|"client"|"source": NAME,
/// "limit": N}`, every key optional. `dd_watchdog --query` sends the three names, `null` when
/// not given (so they are not skipped when `None`), and no `limit`.
///
/// Read with [`InflightFilter::from_body`]: a key of the wrong type is ignored on its own
/// (a `"limit": "5"` does not undo a `"node"` beside it), an unreadable body asks for all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InflightFilter {
    /// Only this client.
    #[serde(deserialize_with = "lenient")]
    pub client: Option<String>,
    /// Transfers listed at most (default [`DEFAULT_LIMIT`], capped at `table::MAX_LISTED`).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub limit: Option<u64>,
    /// Only this node.
    #[serde(deserialize_with = "lenient")]
    pub node: Option<String>,
    /// Only this source.
    #[serde(deserialize_with = "lenient")]
    pub source: Option<String>,
}

/// A value of the wanted type, or none (a wrong type, `null`).
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// Transfers listed when the request gives no `limit`.
pub const DEFAULT_LIMIT: u64 = crate::rpc::query::DEFAULT_LIMIT as u64;

impl InflightFilter {
    /// A request's body as a filter (an empty or unreadable body: everything).
    pub fn from_body(body: &[u8]) -> InflightFilter {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The limit asked for, or the default.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT) as usize
    }
}

/// The in-flight table (`inflight` answer; `stats.inflight`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InflightReply {
    /// The table's counters (cumulative).
    pub counts: Counts,
    /// Every node (or the one asked for), by name.
    pub nodes: Vec<NodeRow>,
    /// When the answer was made.
    pub time: DateTime<Utc>,
    /// Transfers matching the filter (always whole, even when the list is cut).
    pub total: u64,
    /// The transfers, oldest `started` first, at most the limit.
    pub transfers: Vec<TransferRow>,
    /// `total` > the limit: the list was cut.
    pub truncated: bool,
    /// A query's page (SPEC §8): the next page's cursor when the list was cut. (Left out of
    /// an answer made before queries.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<crate::rpc::Page>,
}

/// One node of the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeRow {
    /// Bytes of its transfers in flight (as far as the records said).
    pub bytes: u64,
    /// Down since (`null`: up).
    pub down_since: Option<DateTime<Utc>>,
    /// Transfers in flight there (all of them, not only those matching the filter).
    pub in_flight: u64,
    /// Last record or heartbeat.
    pub last_seen: DateTime<Utc>,
    /// Its name.
    pub node: String,
    /// `started` of its oldest transfer matching the filter (`null`: none).
    pub oldest: Option<DateTime<Utc>>,
    /// Up or down.
    pub state: NodeState,
}

/// One transfer in flight (`table::view`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TransferRow {
    /// Seconds since its `102` arrived. Always there in `inflight`, `stats` and stuck reports;
    /// left out (not `null`) in down reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<f64>,
    /// Bytes, when the record said (else 0).
    pub bytes: u64,
    /// The client.
    pub client: String,
    /// The flow (`null`: none).
    pub flow: Option<String>,
    /// The node.
    pub node: String,
    /// The source (`null`: none).
    pub source: Option<String>,
    /// The `102`'s datestamp.
    pub started: DateTime<Utc>,
    /// srcpath + relpath.
    pub url: String,
}

/// `counters.journal`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JournalCounters {
    /// Compactions done.
    pub compactions: u64,
    /// Bytes written since it was opened.
    pub written: u64,
}

/// dd_watchdog's counters (`WatchdogService::counters`: health, alive, status).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Counters {
    /// The table's counters.
    pub counts: Counts,
    /// `v01.alive` heartbeats received.
    pub heartbeats: u64,
    /// Transfers in flight.
    pub in_flight: u64,
    /// The journal (`null`: `--no-journal`; present as `null`, not left out).
    pub journal: Option<JournalCounters>,
    /// Malformed records.
    pub malformed: u64,
    /// Nodes known.
    pub nodes: u64,
    /// Reports published (down parts, up, stuck).
    pub reports: u64,
    /// Messages that were neither records nor heartbeats.
    pub skipped: u64,
}

/// The `stats` answer: the [`Counters`] with the table under `inflight`. Written out flat
/// (not `#[serde(flatten)]` of `Counters`): the keys stay in sorted order (`in_flight` <
/// `inflight` < `journal`) and deserializing needs no buffering.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatsReply {
    /// See [`Counters::counts`].
    pub counts: Counts,
    /// See [`Counters::heartbeats`].
    pub heartbeats: u64,
    /// See [`Counters::in_flight`].
    pub in_flight: u64,
    /// The in-flight table (filtered by the request body, transfers up to its `limit`).
    pub inflight: InflightReply,
    /// See [`Counters::journal`].
    pub journal: Option<JournalCounters>,
    /// See [`Counters::malformed`].
    pub malformed: u64,
    /// See [`Counters::nodes`].
    pub nodes: u64,
    /// See [`Counters::reports`].
    pub reports: u64,
    /// See [`Counters::skipped`].
    pub skipped: u64,
}

impl StatsReply {
    /// The counters and the table.
    pub fn new(c: Counters, inflight: InflightReply) -> StatsReply {
        StatsReply {
            counts: c.counts,
            heartbeats: c.heartbeats,
            in_flight: c.in_flight,
            inflight,
            journal: c.journal,
            malformed: c.malformed,
            nodes: c.nodes,
            reports: c.reports,
            skipped: c.skipped,
        }
    }

    /// The counters alone.
    pub fn counters(&self) -> Counters {
        Counters {
            counts: self.counts.clone(),
            heartbeats: self.heartbeats,
            in_flight: self.in_flight,
            journal: self.journal.clone(),
            malformed: self.malformed,
            nodes: self.nodes,
            reports: self.reports,
            skipped: self.skipped,
        }
    }
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
    fn declared_in_sorted_order() {
        let row = TransferRow {
            age_s: Some(1.5),
            ..TransferRow::default()
        };
        assert!(same_bytes(&row));
        assert!(same_bytes(&NodeRow::default()));
        assert!(same_bytes(&InflightFilter::default()));
        // the reused `table::Counts` is declared in its own order
        assert!(!same_bytes(&InflightReply::default()));
    }

    #[test]
    fn age_s_skipped_only_when_none_and_nulls_kept() {
        let row = TransferRow::default();
        let v = serde_json::to_value(&row).expect("serializable");
        assert!(v.get("age_s").is_none());
        assert!(v["source"].is_null() && v["flow"].is_null());
        let v = serde_json::to_value(Counters::default()).expect("serializable");
        assert!(v.get("journal").is_some_and(|j| j.is_null()));
        let v = serde_json::to_value(NodeRow::default()).expect("serializable");
        assert_eq!(v["state"], "up");
    }

    #[test]
    fn a_key_of_the_wrong_type_is_ignored_alone() {
        let f = InflightFilter::from_body(br#"{"node":"n1","limit":"5","client":7}"#);
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert_eq!((f.limit, f.client), (None, None));
        assert_eq!(InflightFilter::from_body(br#"{"limit":50}"#).limit(), 50);
        assert_eq!(InflightFilter::from_body(b"").limit(), 1000);
        assert_eq!(InflightFilter::from_body(b"[1]"), InflightFilter::default());
    }

    #[test]
    fn query_filter_is_sent_as_today() {
        let f = InflightFilter {
            node: Some("n1".into()),
            ..InflightFilter::default()
        };
        assert_eq!(
            serde_json::to_string(&f).expect("serializable"),
            r#"{"client":null,"node":"n1","source":null}"#
        );
    }
}
