//! dd_log2source as a daemon: its service on the serve loop (route each record to its source's exchange, count who was heard), and the entry points (`main`, `run`).

use crate::broker::{Delivery, Outgoing};
use crate::clock::{Clock, SystemClock};
use crate::daemon::{Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Per-source figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SourceCounts {
    /// Records copied to the source's exchange and confirmed.
    pub routed: u64,
    /// Of those, how many no queue received (nothing bound to the source's exchange).
    pub unheard: u64,
}

/// What dd_log2source did, for `stats`, alive and the tests.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RouteCounts {
    /// Per source.
    pub sources: BTreeMap<String, SourceCounts>,
    /// Records sent to the unknown exchange because they had no source.
    pub no_source: u64,
    /// Records sent to the unknown exchange because their source is not a known one.
    pub unknown_source: u64,
    /// Malformed records (copied to the unknown exchange, or rejected to the DLX).
    pub malformed: u64,
    /// Ordinary posts and ddmon's own messages: not log records, acknowledged and skipped.
    pub skipped: u64,
    /// Bind mode: sources bound in the broker by this instance (learned from the alternate
    /// exchange or configured).
    pub bound: BTreeSet<String>,
    /// Records forwarded to another cluster's broker (and confirmed there), per cluster.
    pub forwarded: BTreeMap<String, u64>,
}

/// Why a record goes to the unknown exchange; the header `ddmon_unrouted` says it.
const UNROUTED_HEADER: &str = "ddmon_unrouted";

struct RouteService {
    cfg: RouteConfig,
    known: BTreeSet<String>,
    counts: RouteCounts,
    tally: MalformedTally,
}

impl RouteService {
    fn to_unknown(&self, d: &Delivery, why: &str) -> Handled {
        let mut copy = Outgoing::copy_of(d, &self.cfg.unknown_exchange);
        copy.set_header(UNROUTED_HEADER, crate::record::HeaderValue::Str(why.into()));
        Handled {
            publish: vec![copy],
            declare: vec![self.cfg.unknown_exchange.clone()],
            ..Handled::default()
        }
    }
}

impl Service for RouteService {
    fn tool(&self) -> &'static str {
        "dd_log2source"
    }

    fn handle(&mut self, d: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled> {
        let record = match self.tally.parse(&d.routing_key, &d.headers, &d.body, now) {
            Ok(Parsed::Log(r)) => r,
            Ok(Parsed::NotReport | Parsed::Event(_)) => {
                self.counts.skipped += 1;
                return Ok(Handled::ack());
            }
            Err(m) => {
                self.counts.malformed += 1;
                return Ok(if self.cfg.input.dead_letter_exchange.is_some() {
                    Handled::reject()
                } else {
                    self.to_unknown(d, &format!("malformed: {}", m.kind()))
                });
            }
        };
        // Back to the source across clusters: a record about a product from another cluster
        // goes to that cluster's broker, whose dd_log2source routes it to the source there.
        if let Some(from) = record.from_cluster.as_deref() {
            if self.cfg.cluster.as_deref() != Some(from) && self.cfg.clusters.contains_key(from) {
                let mut copy = Outgoing::copy_of(d, &self.cfg.input.exchange);
                copy.broker = Some(from.to_string());
                return Ok(Handled {
                    publish: vec![copy],
                    ..Handled::default()
                });
            }
        }
        let Some(source) = record.source.filter(|s| !s.is_empty()) else {
            self.counts.no_source += 1;
            return Ok(self.to_unknown(d, "no source"));
        };
        if !self.known.is_empty() && !self.known.contains(&source) {
            self.counts.unknown_source += 1;
            return Ok(self.to_unknown(d, "unknown source"));
        }
        let exchange = self.cfg.source_exchange(&source);
        let mut copy = Outgoing::copy_of(d, &exchange);
        copy.mandatory = true;
        // Bind mode: a source named in a header is bound now, so the broker routes its next
        // records itself (v03 carries the source in the body: the broker cannot match it).
        let mut bind = Vec::new();
        if self.cfg.mode == Mode::Bind && d.headers.contains_key("source") {
            bind.push(self.cfg.source_binding(&source));
            if self.counts.bound.insert(source.clone()) {
                tracing::info!(source = %source, "new source: bound in the broker");
            }
        }
        Ok(Handled {
            publish: vec![copy],
            declare: vec![exchange],
            bind,
            ..Handled::default()
        })
    }

    fn confirmed(&mut self, published: &[Outgoing], returned: &[usize]) {
        let template_start = self
            .cfg
            .source_exchange_template
            .split("{source}")
            .next()
            .unwrap_or("");
        let template_end = self
            .cfg
            .source_exchange_template
            .rsplit("{source}")
            .next()
            .unwrap_or("");
        for (i, m) in published.iter().enumerate() {
            if let Some(cluster) = &m.broker {
                *self.counts.forwarded.entry(cluster.clone()).or_default() += 1;
                continue;
            }
            if m.exchange == self.cfg.unknown_exchange {
                continue;
            }
            let source = m
                .exchange
                .strip_prefix(template_start)
                .and_then(|s| s.strip_suffix(template_end))
                .unwrap_or(&m.exchange)
                .to_string();
            let c = self.counts.sources.entry(source).or_default();
            c.routed += 1;
            if returned.contains(&i) {
                c.unheard += 1;
            }
        }
    }

    fn counters(&self) -> serde_json::Value {
        let routed: u64 = self.counts.sources.values().map(|c| c.routed).sum();
        serde_json::json!({
            "routed": routed,
            "sources": self.counts.sources.len(),
            "no_source": self.counts.no_source,
            "unknown_source": self.counts.unknown_source,
            "malformed": self.counts.malformed,
            "skipped": self.counts.skipped,
            "bound": self.counts.bound.len(),
            "forwarded": self.counts.forwarded.values().sum::<u64>(),
        })
    }

    fn request(
        &mut self,
        command: &str,
        _body: &[u8],
        _now: DateTime<Utc>,
    ) -> Option<Result<serde_json::Value, String>> {
        (command == "stats").then(|| {
            let mut v = serde_json::to_value(&self.counts).unwrap_or_default();
            v["malformed_by_kind"] = serde_json::json!(self.tally.by_kind());
            v["mode"] = serde_json::json!(self.cfg.mode);
            Ok(v)
        })
    }
}

/// Entry point of the `dd_log2source` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(RouteConfig::from_args(&args)?);
    crate::cli::main("dd_log2source", &args.common, 3, config, |cfg| {
        if let Some(source) = &args.declare_source {
            let password = args
                .source_password_file
                .as_deref()
                .map(crate::config::read_password_file)
                .transpose()?;
            let api = permissions::client(&args.management_url, &cfg.broker)?;
            let vhost = permissions::vhost(&cfg.broker);
            let exchange = cfg.source_exchange(source);
            let declare = permissions::declare_source(
                &api,
                &args.management_url,
                &vhost,
                source,
                &exchange,
                password.as_deref(),
            );
            crate::cli::block_on(declare)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// Route until a stop is asked for; returns the counts.
pub async fn run(
    cfg: &RouteConfig,
    shutdown: Shutdown,
    clock: &dyn Clock,
) -> anyhow::Result<RouteCounts> {
    // one connection for the set-up: this mode's routing, then the other's removed
    let link = crate::broker::Link::open(&cfg.broker, "dd_log2source setup").await?;
    let mut set_up = Ok(());
    if cfg.mode == Mode::Bind {
        set_up = set_up_bind_mode(cfg, &link)
            .await
            .context("cannot set up bind mode");
    }
    if set_up.is_ok() {
        set_up = clear_other_mode(cfg, &link)
            .await
            .context("cannot remove the other mode's bindings");
    }
    link.close("OK").await;
    set_up?;
    let mut service = RouteService {
        known: cfg.sources.iter().cloned().collect(),
        cfg: cfg.clone(),
        counts: RouteCounts::default(),
        tally: MalformedTally::default(),
    };
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: Some(cfg.subscription()),
        daemon: Some(&cfg.daemon),
        publishes: true,
        remotes: cfg.remotes(),
    };
    serve(&mut service, serve_cfg, shutdown, clock).await?;
    Ok(service.counts)
}
