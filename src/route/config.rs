//! dd_log2source's flags and its configuration: the command line, the file's keys and their defaults, the modes, the per-source exchanges and bindings, and bind mode's broker side.

use crate::broker::{HeadersBinding, Subscription};
use crate::cli::CommonOpts;
use crate::config::{BrokerConfig, ConfigError, InputConfig, InputOpts, load_file, overlay};
use crate::daemon::{DaemonConfig, DaemonOpts};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// The input queue's NAME when none is given: `q_<user>.dd_log2source.route`, shared by every
/// instance.
pub const DEFAULT_QUEUE: &str = "route";

/// dd_log2source's command line.
#[derive(Debug, Parser)]
#[command(
    name = "dd_log2source",
    version,
    about = "Route the common log exchange into per-source log_<source> exchanges",
    after_help = "Examples:\n  \
                  dd_log2source                              # copy mode: log -> log_<source>\n  \
                  dd_log2source --mode bind                  # bind mode: the broker routes by the source header\n  \
                  dd_log2source --declare-source acme --source-password-file acme.pw\n  \
                                                             # user acme, log_acme and its permissions (management API)\n\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
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

impl crate::config::Config for RouteConfig {
    fn input_block(&mut self) -> Option<&mut crate::config::InputConfig> {
        Some(&mut self.input)
    }

    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            input: InputConfig::reading(&["v02.#", "v03.#"]).with_queue(DEFAULT_QUEUE),
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
        cfg.input.validate()?;
        crate::config::check_name("unknown_exchange", &cfg.unknown_exchange)?;
        crate::config::check_source_template(&cfg.source_exchange_template)?;
        Ok(cfg)
    }

    /// The exchange of a source.
    pub fn source_exchange(&self, source: &str) -> String {
        crate::topic::source_exchange(&self.source_exchange_template, source)
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

    pub(crate) fn source_binding(&self, source: &str) -> HeadersBinding {
        HeadersBinding {
            destination: self.source_exchange(source),
            headers_exchange: self.headers_exchange(),
            header: "source".to_string(),
            value: source.to_string(),
        }
    }

    pub(crate) fn subscription(&self) -> Subscription {
        let mut sub = self
            .input
            .durable_or(&self.broker.user(), "dd_log2source", DEFAULT_QUEUE);
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
pub(crate) async fn set_up_bind_mode(
    cfg: &RouteConfig,
    link: &crate::broker::Link,
) -> anyhow::Result<()> {
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
    link.declare(&steps).await?;
    tracing::info!(headers_exchange = %hx, alternate_exchange = %ae, "bind mode set up");
    Ok(())
}

/// Make the broker's routing this mode's own, once this mode's bindings are in place (so that
/// no record finds no way meanwhile: at worst, one is copied twice during the switch). Copy
/// mode removes what bind mode left: the input exchange's bindings into the headers exchange
/// (which would deliver every record to its source a second time) and the queue's binding to
/// the alternate exchange; bind mode removes copy mode's bindings of the queue on the input
/// exchange. On the topics configured now: bindings a past run made on other topics stay
/// (they are said in the README). Removing what is not there is no error.
pub(crate) async fn clear_other_mode(
    cfg: &RouteConfig,
    link: &crate::broker::Link,
) -> anyhow::Result<()> {
    use crate::broker::Unbind;
    let sub = cfg.subscription();
    let queue = sub.queue.name.as_str();
    let (hx, ae) = (cfg.headers_exchange(), cfg.alternate_exchange());
    let input = cfg.input.exchange.as_str();
    let mut steps = Vec::new();
    for topic in &cfg.input.topics {
        steps.push(match cfg.mode {
            Mode::Copy => Unbind::Exchange {
                destination: &hx,
                source: input,
                routing_key: topic,
            },
            Mode::Bind => Unbind::Queue {
                queue,
                exchange: input,
                routing_key: topic,
            },
        });
    }
    if cfg.mode == Mode::Copy {
        steps.push(Unbind::Queue {
            queue,
            exchange: &ae,
            routing_key: "#",
        });
    }
    // this mode's queue bindings first: records keep a way while the other's go
    link.declare_subscription(&sub).await?;
    link.unbind(&steps).await?;
    let other = match cfg.mode {
        Mode::Copy => format!("bind mode's bindings of {input} into {hx} and of {queue} to {ae}"),
        Mode::Bind => format!("copy mode's bindings of {queue} on {input}"),
    };
    tracing::info!(mode = ?cfg.mode, "removed {other} (where there were any): one route per record");
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
