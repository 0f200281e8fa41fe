//! dd_web's flags and its configuration: the command line, the file's keys and their defaults, and the layering.

use crate::cli::CommonOpts;
use crate::config::{BrokerConfig, ConfigError, load_file, overlay};
use serde::{Deserialize, Serialize};

/// dd_web's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dd_web",
    version,
    about = "Live speedometers, a live tail the broker authorises, and Prometheus metrics, on the web",
    after_help = "Binds 127.0.0.1 unless --listen says otherwise.\n\n\
                  Examples:\n  \
                  dd_web                                  # http://127.0.0.1:8080/ (page, /metrics, /tail)\n  \
                  dd_web --listen 0.0.0.0:8080 --poll 10  # on every interface, polling dd_speedo every 10 s\n  \
                  curl -s http://127.0.0.1:8080/metrics\n\n\
                  Exit codes: 0 ok (also on SIGINT/SIGTERM), 1 failure, 2 usage or config error."
)]
pub struct Args {
    /// Address to serve on [default: 127.0.0.1:8080] (port 0: any free port; the address is
    /// logged).
    #[arg(long, env = "DD_WEB_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Exchange the daemons take requests on, and the admins' tail reads [default: log].
    #[arg(long, env = "DD_EXCHANGE", value_name = "NAME")]
    pub exchange: Option<String>,
    /// A source's exchange, for `/tail?source=NAME` [default: log_{source}].
    #[arg(long, value_name = "TEMPLATE")]
    pub source_exchange_template: Option<String>,
    /// The dd_speedo instance to show [default: the first that answers].
    #[arg(long, value_name = "NAME")]
    pub speedo_instance: Option<String>,
    /// Seconds between stats requests to dd_speedo (and events to the pages) [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub poll: Option<f64>,
    /// Seconds between health requests to every daemon (for /metrics) [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub health_interval: Option<f64>,
    /// Points of history per name (the sparkline) [default: 60].
    #[arg(long, value_name = "N")]
    pub history: Option<usize>,
    /// Names shown as cards, the worst first (dd_speedo is asked for these, not the world)
    /// [default: 48].
    #[arg(long, value_name = "N")]
    pub cards: Option<usize>,
    /// Names whose series /metrics exports besides the cards' (a regex; at most 1000 names)
    /// [default: none: the cards' names and the totals].
    #[arg(long, value_name = "REGEX")]
    pub metrics_names: Option<String>,
    /// Live tails one user may have open at once [default: 3].
    #[arg(long, value_name = "N")]
    pub max_tails_per_user: Option<usize>,
    /// Lines kept for a tail's browser before lines are dropped (and counted) [default: 1000].
    #[arg(long, value_name = "N")]
    pub tail_buffer: Option<usize>,
    /// Seconds without a sign of life from a tail's page before the tail is closed
    /// [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub tail_timeout: Option<f64>,
    /// TOML file of the daemons that should run (`[[daemon]]` tool, instance, host): the
    /// daemons panel shows one never seen as `missing`.
    #[arg(long, env = "DD_DECLARED", value_name = "FILE")]
    pub declared: Option<std::path::PathBuf>,
    /// dd_web's own liveness (it answers `health` and `stats` like every daemon, so dd_status
    /// lists it).
    #[command(flatten)]
    pub daemon: crate::daemon::DaemonOpts,
    /// Flags shared by every command. The broker URL's user is dd_web's own (stats and
    /// health requests); a tail runs as the user who signed in.
    #[command(flatten)]
    pub common: CommonOpts,
}

/// dd_web's effective configuration (the `--config` file has the same keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address to serve on.
    pub listen: String,
    /// Exchange of requests and of the admins' tail.
    pub exchange: String,
    /// A source's exchange (`{source}` replaced).
    pub source_exchange_template: String,
    /// The dd_speedo instance shown (none: the first that answers).
    pub speedo_instance: Option<String>,
    /// Seconds between stats requests.
    pub poll: f64,
    /// Seconds between health requests.
    pub health_interval: f64,
    /// Points of history per name.
    pub history: usize,
    /// Names shown as cards, the worst first.
    pub cards: usize,
    /// Names with series in /metrics besides the cards' (a regex).
    pub metrics_names: Option<String>,
    /// Tails per user.
    pub max_tails_per_user: usize,
    /// Lines buffered per tail.
    pub tail_buffer: usize,
    /// Seconds without a sign of life before a tail is closed.
    pub tail_timeout: f64,
    /// The declared daemons (the daemons panel's `missing`).
    pub declared: Option<std::path::PathBuf>,
    /// dd_web's own alive, status and requests.
    pub daemon: crate::daemon::DaemonConfig,
    /// How to reach the broker (dd_web's own user).
    pub broker: BrokerConfig,
}

impl crate::config::Config for WebConfig {
    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: "127.0.0.1:8080".into(),
            exchange: "log".into(),
            source_exchange_template: "log_{source}".into(),
            speedo_instance: None,
            poll: 5.0,
            health_interval: 15.0,
            history: 60,
            cards: 48,
            metrics_names: None,
            max_tails_per_user: 3,
            tail_buffer: 1000,
            tail_timeout: 30.0,
            declared: None,
            daemon: crate::daemon::DaemonConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

impl WebConfig {
    /// Merge the layers: defaults < file < environment < flags.
    pub fn from_args(args: &Args) -> Result<WebConfig, ConfigError> {
        let mut cfg: WebConfig = load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut cfg.broker)?;
        overlay(&mut cfg.listen, args.listen.clone());
        overlay(&mut cfg.exchange, args.exchange.clone());
        overlay(
            &mut cfg.source_exchange_template,
            args.source_exchange_template.clone(),
        );
        if args.speedo_instance.is_some() {
            cfg.speedo_instance = args.speedo_instance.clone();
        }
        overlay(&mut cfg.poll, args.poll);
        overlay(&mut cfg.health_interval, args.health_interval);
        overlay(&mut cfg.history, args.history);
        overlay(&mut cfg.cards, args.cards);
        if args.metrics_names.is_some() {
            cfg.metrics_names = args.metrics_names.clone();
        }
        if let Some(r) = &cfg.metrics_names {
            regex::Regex::new(r).map_err(|e| ConfigError::Invalid {
                field: "metrics_names",
                message: e.to_string(),
            })?;
        }
        overlay(&mut cfg.max_tails_per_user, args.max_tails_per_user);
        overlay(&mut cfg.tail_buffer, args.tail_buffer);
        overlay(&mut cfg.tail_timeout, args.tail_timeout);
        if args.declared.is_some() {
            cfg.declared = args.declared.clone();
        }
        args.daemon.apply(&mut cfg.daemon);
        cfg.daemon.validate()?;
        cfg.broker.validate()?;
        crate::config::check_name("exchange", &cfg.exchange)?;
        cfg.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                field: "listen",
                message: format!(
                    "{e}: {:?} (want host:port, e.g. 127.0.0.1:8080)",
                    cfg.listen
                ),
            })?;
        for (field, v, min) in [
            ("poll", cfg.poll, 0.1),
            ("health_interval", cfg.health_interval, 1.0),
            ("tail_timeout", cfg.tail_timeout, 5.0),
        ] {
            if !(v.is_finite() && v >= min) {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("must be a number of seconds >= {min}, not {v}"),
                });
            }
        }
        for (field, v) in [
            ("history", cfg.history),
            ("cards", cfg.cards),
            ("max_tails_per_user", cfg.max_tails_per_user),
            ("tail_buffer", cfg.tail_buffer),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        crate::config::check_source_template(&cfg.source_exchange_template)?;
        Ok(cfg)
    }
}
