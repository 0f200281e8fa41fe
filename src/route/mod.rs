//! `dd_log2source`: route the common `log` exchange into per-source `log_<source>` exchanges
//! that only that source (and admins) can read.
//!
//! Copy mode: every record is republished unchanged (body, headers, routing key, properties)
//! to its source's exchange, declared the first time it is needed; the input is acknowledged
//! only after the broker confirmed the copy. A record with no source, an unknown source (when
//! the known ones are listed) or a malformed body goes to `log_unknown` (or is rejected to the
//! queue's dead-letter exchange when one is configured): never dropped silently, counted.

pub mod permissions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::broker::{Delivery, HeadersBinding, Outgoing, Subscription};
use crate::cli::CommonOpts;
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts, Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};

/// How records reach the source exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every record is copied through dd_log2source.
    #[default]
    Copy,
    /// RabbitMQ routes by the `source` header (an exchange-to-exchange binding from the input
    /// into a headers exchange bound to each source's exchange); dd_log2source only copies
    /// what falls to the alternate exchange (new sources, which it then binds; v03 records,
    /// whose source is in the body; records with no or an unknown source; malformed ones).
    Bind,
}

/// dd_log2source's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_log2source",
    version,
    about = "Route the common log exchange into per-source log_<source> exchanges",
    after_help = "Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
#[command(
    mut_arg("queue", |a| a.help("The durable input queue is q_<user>.dd_log2source.<NAME> [default: route]; several instances may share it")),
    mut_arg("dead_letter_exchange", |a| a.help("Reject malformed records to this dead-letter exchange instead of copying them to the unknown exchange (set on the input queue)")),
    mut_arg("topics", |a| a.help("Topic bindings on the input exchange (repeatable) [default: v02.# v03.#]")),
)]
pub struct Args {
    /// Where it reads.
    #[command(flatten)]
    pub input: InputOpts,
    /// Name of each source's exchange; `{source}` is replaced [default: log_{source}].
    #[arg(long, value_name = "TEMPLATE")]
    pub source_exchange_template: Option<String>,
    /// Known sources (comma-separated): records of any other source go to the unknown
    /// exchange [default: every source is known].
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub sources: Vec<String>,
    /// Where records with no source, an unknown source or a malformed body go
    /// [default: log_unknown].
    #[arg(long, value_name = "NAME")]
    pub unknown_exchange: Option<String>,
    /// Routing mode.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// This cluster's name: records from another cluster listed under [clusters] in the
    /// config are forwarded to that cluster's broker.
    #[arg(long, env = "DD_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Declare a source and exit: its exchange, and permissions for the user NAME to read it
    /// and use its own q_NAME.* queues only (through the management API).
    #[arg(long, value_name = "NAME")]
    pub declare_source: Option<String>,
    /// With --declare-source: create the user NAME with the password in this file (first
    /// line; keep it mode 600). (`--password-file` is dd_log2source's own broker password.)
    #[arg(long, value_name = "FILE", requires = "declare_source")]
    pub source_password_file: Option<PathBuf>,
    /// RabbitMQ management API.
    #[arg(
        long,
        env = "DD_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672/api"
    )]
    pub management_url: String,
    /// Daemon flags.
    #[command(flatten)]
    pub daemon: DaemonOpts,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// dd_log2source's effective configuration (the `--config` file has the same keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Where it reads: `exchange`, `queue`, `quorum`, `dead_letter_exchange` (malformed
    /// records are rejected there instead of copied to the unknown exchange), `topics`
    /// (ddmon's own v01 messages are not routed: dd_speedo publishes per-source speedos
    /// itself).
    #[serde(flatten)]
    pub input: InputConfig,
    /// Name of each source's exchange; `{source}` is replaced by the source.
    pub source_exchange_template: String,
    /// Known sources; empty: every source is known.
    pub sources: Vec<String>,
    /// Where records with no source, an unknown source or a malformed body go.
    pub unknown_exchange: String,
    /// Routing mode.
    pub mode: Mode,
    /// This cluster's name (records with this `from_cluster` are routed here).
    pub cluster: Option<String>,
    /// Other clusters: name = broker URL. A record whose `from_cluster` is one of them is
    /// forwarded, unchanged, to that broker's input exchange (same name as here), so that
    /// its source there sees what became of its product here.
    #[serde(serialize_with = "serialize_masked_urls")]
    pub clusters: BTreeMap<String, String>,
    /// Bind mode: the headers exchange [default: <exchange>.by_source].
    pub headers_exchange: Option<String>,
    /// Bind mode: the headers exchange's alternate exchange, read by dd_log2source
    /// [default: <exchange>.unrouted].
    pub alternate_exchange: Option<String>,
    /// Alive interval, instance name, exchange for alive/status/requests.
    pub daemon: DaemonConfig,
    /// How to reach the broker.
    pub broker: BrokerConfig,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            input: InputConfig::reading(&["v02.#", "v03.#"]).with_queue("route"),
            source_exchange_template: "log_{source}".to_string(),
            sources: Vec::new(),
            unknown_exchange: "log_unknown".to_string(),
            mode: Mode::Copy,
            headers_exchange: None,
            alternate_exchange: None,
            cluster: None,
            clusters: BTreeMap::new(),
            daemon: DaemonConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

impl RouteConfig {
    /// Merge the layers: defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<RouteConfig, ConfigError> {
        let mut cfg: RouteConfig = load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut cfg.broker)?;
        args.daemon.apply(&mut cfg.daemon);
        args.input.apply(&mut cfg.input);
        overlay(
            &mut cfg.source_exchange_template,
            args.source_exchange_template.clone(),
        );
        if !args.sources.is_empty() {
            cfg.sources = args.sources.clone();
        }
        overlay(&mut cfg.unknown_exchange, args.unknown_exchange.clone());
        overlay(&mut cfg.mode, args.mode);
        if args.cluster.is_some() {
            cfg.cluster = args.cluster.clone();
        }
        cfg.broker.validate()?;
        for b in cfg.remotes().values() {
            b.validate()?;
        }
        cfg.daemon.validate()?;
        if !cfg.source_exchange_template.contains("{source}") {
            return Err(ConfigError::Invalid {
                field: "source_exchange_template",
                message: "must contain {source}".to_string(),
            });
        }
        Ok(cfg)
    }

    /// The exchange of a source.
    pub fn source_exchange(&self, source: &str) -> String {
        crate::topic::cut(&self.source_exchange_template.replace("{source}", source)).to_string()
    }

    /// The other clusters' brokers, with this broker's other settings.
    pub fn remotes(&self) -> BTreeMap<String, BrokerConfig> {
        self.clusters
            .iter()
            .map(|(name, url)| {
                let cfg = BrokerConfig {
                    url: url.clone(),
                    ..self.broker.clone()
                };
                (name.clone(), cfg)
            })
            .collect()
    }

    /// Bind mode's headers exchange.
    pub fn headers_exchange(&self) -> String {
        self.headers_exchange
            .clone()
            .unwrap_or_else(|| format!("{}.by_source", self.input.exchange))
    }

    /// Bind mode's alternate exchange.
    pub fn alternate_exchange(&self) -> String {
        self.alternate_exchange
            .clone()
            .unwrap_or_else(|| format!("{}.unrouted", self.input.exchange))
    }

    fn source_binding(&self, source: &str) -> HeadersBinding {
        HeadersBinding {
            destination: self.source_exchange(source),
            headers_exchange: self.headers_exchange(),
            header: "source".to_string(),
            value: source.to_string(),
        }
    }

    fn subscription(&self) -> Subscription {
        let mut sub = self.input.durable(&self.broker.user(), "dd_log2source");
        if self.mode == Mode::Bind {
            // the alternate exchange is a fanout: the key does not matter
            sub.exchange = self.alternate_exchange();
            sub.bindings = vec!["#".to_string()];
        }
        sub
    }
}

/// Bind mode's broker side: the alternate exchange (fanout), the headers exchange that falls
/// back to it, the binding from the input exchange into it for each topic, and one headers
/// binding per known source. All durable, so they outlive dd_log2source.
async fn set_up_bind_mode(cfg: &RouteConfig) -> anyhow::Result<()> {
    use crate::broker::{Declare, ExchangeType};
    let none = crate::record::Headers::new();
    let ae = cfg.alternate_exchange();
    let hx = cfg.headers_exchange();
    let mut args = crate::record::Headers::new();
    args.insert(
        "alternate-exchange".into(),
        crate::record::HeaderValue::Str(ae.clone()),
    );
    let source_exchanges: Vec<String> =
        cfg.sources.iter().map(|s| cfg.source_exchange(s)).collect();
    let source_bindings: Vec<crate::broker::HeadersBinding> =
        cfg.sources.iter().map(|s| cfg.source_binding(s)).collect();
    let mut steps = vec![
        Declare::Exchange {
            name: &ae,
            kind: ExchangeType::Fanout,
            args: none.clone(),
        },
        Declare::Exchange {
            name: &hx,
            kind: ExchangeType::Headers,
            args,
        },
        Declare::Exchange {
            name: &cfg.input.exchange,
            kind: ExchangeType::Topic,
            args: none.clone(),
        },
    ];
    for topic in &cfg.input.topics {
        steps.push(Declare::ExchangeBinding {
            destination: &hx,
            source: &cfg.input.exchange,
            routing_key: topic,
        });
    }
    for (x, b) in source_exchanges.iter().zip(&source_bindings) {
        steps.push(Declare::Exchange {
            name: x,
            kind: ExchangeType::Topic,
            args: none.clone(),
        });
        steps.push(Declare::HeadersBinding(b));
    }
    let link = crate::broker::Link::open(&cfg.broker, "dd_log2source setup").await?;
    let done = link.declare(&steps).await;
    link.close("OK").await;
    done?;
    tracing::info!(headers_exchange = %hx, alternate_exchange = %ae, "bind mode set up");
    Ok(())
}

fn serialize_masked_urls<S: serde::Serializer>(
    urls: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(urls.len()))?;
    for (k, v) in urls {
        m.serialize_entry(k, &crate::config::mask_url(v))?;
    }
    m.end()
}

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
    ) -> Option<serde_json::Value> {
        (command == "stats").then(|| {
            let mut v = serde_json::to_value(&self.counts).unwrap_or_default();
            v["malformed_by_kind"] = serde_json::json!(self.tally.by_kind());
            v["mode"] = serde_json::json!(self.cfg.mode);
            v
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
            let declare =
                permissions::declare_source(&api, &vhost, source, &exchange, password.as_deref());
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
    if cfg.mode == Mode::Bind {
        set_up_bind_mode(cfg)
            .await
            .context("cannot set up bind mode")?;
    }
    let mut service = RouteService {
        known: cfg.sources.iter().cloned().collect(),
        cfg: cfg.clone(),
        counts: RouteCounts::default(),
        tally: MalformedTally::default(),
    };
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: cfg.subscription(),
        daemon: Some(&cfg.daemon),
        publishes: true,
        remotes: cfg.remotes(),
    };
    serve(&mut service, serve_cfg, shutdown, clock).await?;
    Ok(service.counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn source_exchange_names() {
        let cfg = RouteConfig::default();
        assert_eq!(cfg.source_exchange("ec_cmc"), "log_ec_cmc");
        let sarra = RouteConfig {
            source_exchange_template: "xr_{source}".into(),
            ..RouteConfig::default()
        };
        assert_eq!(sarra.source_exchange("guest"), "xr_guest");
    }

    #[test]
    fn template_needs_the_placeholder() {
        let args =
            Args::try_parse_from(["dd_log2source", "--source-exchange-template", "log_x"]).unwrap();
        assert!(RouteConfig::from_args(&args).is_err());
    }
}
