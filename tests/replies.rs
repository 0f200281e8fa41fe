//! The wire of the replies (SPEC §5) against replies recorded from the daemons before the
//! replies were typed (`tests/fixtures/replies/`: dd_speedo and dd_watchdog fed by dd_sim on a
//! throw-away vhost, asked `stats`, `inflight` and `health`). Each is read as the typed reply
//! every reader now takes and written back: the same JSON, key for key and value for value.

#![allow(clippy::unwrap_used)]

use ddmon::daemon::Health;
use ddmon::rpc::Reply;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/replies/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Read as `T`, write again: exactly the recorded JSON.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let recorded = fixture(name);
    let typed: T = serde_json::from_value(recorded.clone())
        .unwrap_or_else(|e| panic!("{name} is not a {}: {e}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        again, recorded,
        "{name} changed on the way through the type"
    );
    typed
}

#[test]
fn dd_speedo_stats_reads_and_writes_back_unchanged() {
    let r: Reply<ddmon::speedo::StatsReply> = round_trip("speedo_stats.json");
    assert!(r.ok);
    assert_eq!(
        (r.tool.as_str(), r.command.as_str()),
        ("dd_speedo", "stats")
    );
    let stats = r.result.unwrap();
    assert_eq!(stats.clients.len(), 5);
    assert_eq!(stats.sources.len(), 3);
    // figures of a whole minute, and the states as the enum
    assert!(stats.clients.iter().all(|c| c.files_per_min.is_some()));
    assert!(
        stats
            .clients
            .iter()
            .all(|c| c.state == ddmon::speedo::Health::Ok)
    );
    assert_eq!(stats.counters.clients, 5);
}

#[test]
fn dd_watchdog_stats_and_inflight_read_and_write_back_unchanged() {
    let s: Reply<ddmon::watchdog::StatsReply> = round_trip("watchdog_stats.json");
    let s = s.result.unwrap();
    assert_eq!(s.in_flight, s.inflight.total);
    let i: Reply<ddmon::watchdog::InflightReply> = round_trip("watchdog_inflight.json");
    let i = i.result.unwrap();
    assert!(!i.nodes.is_empty());
    assert_eq!(i.total as usize, i.transfers.len());
    assert!(i.transfers.iter().all(|t| t.age_s.is_some()));
}

#[test]
fn health_reads_and_writes_back_unchanged() {
    for name in ["speedo_health.json", "watchdog_health.json"] {
        let h: Reply<Health> = round_trip(name);
        assert_eq!(h.result.unwrap().state, ddmon::daemon::State::Running);
    }
    // health answers as dd_status --json printed them before the roster (each row's `result` now)
    let status = fixture("dd_status.json");
    for answer in status.as_array().unwrap() {
        let h: Reply<Health> = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(&serde_json::to_value(&h).unwrap(), answer);
    }
}
