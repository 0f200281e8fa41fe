//! The mapping of the speedo's outputs (records, alerts) to messages: the output exchange,
//! and a source's own exchange too. Beside the state machine (`meter.rs`) whose outputs it
//! maps; pure.

use crate::broker::Outgoing;

use super::*;

impl SpeedoConfig {
    /// The exchanges that `outputs`' messages go to (declared before any is published).
    pub fn exchanges(&self, outputs: &[Output]) -> std::collections::BTreeSet<String> {
        let mut x = std::collections::BTreeSet::from([self.output_exchange.clone()]);
        if self.source_copies {
            for o in outputs {
                let source = match o {
                    Output::Speedo(r) => (r.scope == Scope::Source).then_some(r.name.as_str()),
                    Output::Alert(a) => (a.kind == Kind::Source).then_some(a.name.as_str()),
                };
                if let Some(s) = source {
                    x.insert(self.source_exchange(s));
                }
            }
        }
        x
    }

    /// The messages that publish `outputs`: each to the output exchange, and a source's also
    /// to its own exchange.
    pub fn outgoing(&self, outputs: &[Output]) -> Vec<Outgoing> {
        let mut msgs = Vec::with_capacity(outputs.len() + outputs.len() / 4);
        for o in outputs {
            let (topic, body, headers, content_type, source) = match o {
                Output::Speedo(r) => (
                    r.topic(),
                    r.body(),
                    r.headers(),
                    "text/plain",
                    (r.scope == Scope::Source).then_some(r.name.as_str()),
                ),
                Output::Alert(a) => (
                    a.topic(),
                    a.body(),
                    Default::default(),
                    "application/json",
                    (a.kind == Kind::Source).then_some(a.name.as_str()),
                ),
            };
            let m = Outgoing {
                exchange: self.output_exchange.clone(),
                routing_key: topic,
                headers,
                body: body.into_bytes(),
                content_type: Some(content_type.to_string()),
                ..Outgoing::default()
            };
            if let Some(source) = source.filter(|_| self.source_copies) {
                let exchange = self.source_exchange(source);
                if exchange != self.output_exchange {
                    msgs.push(Outgoing {
                        exchange,
                        ..m.clone()
                    });
                }
            }
            msgs.push(m);
        }
        msgs
    }
}
