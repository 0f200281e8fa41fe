//! The mapping of the table's events (down in parts, up, stuck) to report messages. Beside the
//! state machine (`table.rs`) whose events it maps; pure.

use crate::broker::Outgoing;

use super::*;
use serde_json::json;

impl WatchdogConfig {
    /// The messages for the table's events: a down report split in parts under the size
    /// limit.
    pub fn outgoing(&self, events: &[Event]) -> Vec<Outgoing> {
        let msg = |kind: &str, node: &str, body: String| Outgoing {
            exchange: self.output_exchange.clone(),
            routing_key: crate::topic::cut(&format!(
                "v01.watchdog.{kind}.{}",
                crate::topic::escape_word(node)
            ))
            .to_string(),
            body: body.into_bytes(),
            content_type: Some("application/json".into()),
            ..Outgoing::default()
        };
        let at = crate::clock::at_ms;
        let mut out = Vec::new();
        for e in events {
            match e {
                Event::Down {
                    node,
                    last_seen_ms,
                    at_ms,
                    transfers,
                } => {
                    let items: Vec<String> = transfers
                        .iter()
                        .map(|t| serde_json::to_string(t).unwrap_or_default())
                        .collect();
                    let head_room = 400 + node.len() * 2;
                    let budget = self.max_report_bytes.saturating_sub(head_room).max(1);
                    let mut parts: Vec<Vec<&str>> = vec![Vec::new()];
                    let mut size = 0;
                    for it in &items {
                        let last = parts.last_mut().expect("one part at least");
                        if !last.is_empty() && size + it.len() + 1 > budget {
                            parts.push(Vec::new());
                            size = 0;
                        }
                        parts.last_mut().expect("pushed").push(it);
                        size += it.len() + 1;
                    }
                    let n = parts.len();
                    for (i, p) in parts.iter().enumerate() {
                        let body = format!(
                            "{{\"node\":{},\"last_seen\":{},\"down_at\":{},\"in_flight\":{},\"part\":{},\"parts\":{n},\"transfers\":[{}]}}",
                            json!(node),
                            json!(at(*last_seen_ms)),
                            json!(at(*at_ms)),
                            transfers.len(),
                            i + 1,
                            p.join(",")
                        );
                        out.push(msg("down", node, body));
                    }
                }
                Event::Up {
                    node,
                    down_since_ms,
                    at_ms,
                    in_flight,
                } => out.push(msg(
                    "up",
                    node,
                    json!({"node": node, "down_since": at(*down_since_ms), "up_at": at(*at_ms), "in_flight": in_flight}).to_string(),
                )),
                Event::Stuck { node, transfer } => {
                    out.push(msg("stuck", node, serde_json::to_string(transfer).unwrap_or_default()))
                }
                Event::Forgotten { .. } => {}
            }
        }
        out
    }
}
