//! What every command shares at its edge: the common flags, tracing set-up, and the mapping
//! of an outcome to an exit code.
//!
//! Exit codes of every command: 0 success (also a clean stop on a signal, and a closed
//! stdout as in `dd_log | head -1`); 1 a failure at run time (the broker refused the login or
//! a permission, a file cannot be written); 2 a usage or configuration mistake.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// Flags every command has (flattened into each command's own flags).
#[derive(Debug, Clone, Args)]
pub struct CommonOpts {
    /// Broker URL: amqp://user:password@host:port/vhost (amqps:// for TLS); a URL without a
    /// vhost (amqp://host:5672) uses the default vhost `/` (%2f). Several, comma-separated:
    /// the nodes of a cluster. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "DD_BROKER", hide_env_values = true, value_name = "URL")]
    pub broker: Option<String>,
    /// TOML config file (flags beat environment beat file beat defaults).
    #[arg(long, env = "DD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PEM file of the CA that signs the broker's certificate (amqps://).
    #[arg(long, env = "DD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// File whose first line is the broker password (keep it mode 600). Beats DD_PASSWORD,
    /// which beats a password in the URL; a password on the command line is visible in ps.
    #[arg(long, env = "DD_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// More log output on stderr (repeat for more). RUST_LOG wins over -v/-q.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (repeat for less).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Print the effective configuration (password masked) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The configuration of a tool whose only settings are the broker's (dd_sim, dd_status): a
/// file of the same shape as every other tool's, a `[broker]` table.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerOnly {
    /// How to reach the broker.
    pub broker: crate::config::BrokerConfig,
}

impl crate::config::Config for BrokerOnly {
    fn broker(&self) -> Option<&crate::config::BrokerConfig> {
        Some(&self.broker)
    }
}

impl CommonOpts {
    /// The broker settings alone (for a tool with no config of its own): defaults < file <
    /// environment < flags, validated.
    pub fn broker_config(&self) -> Result<BrokerOnly, ConfigError> {
        let mut cfg: BrokerOnly = crate::config::load_file(self.config.as_deref())?;
        self.apply_broker(&mut cfg.broker)?;
        cfg.broker.validate()?;
        Ok(cfg)
    }

    /// Lay the broker flags over a broker config from the file layer: the URL, the CA, and
    /// the password (`--password-file`, else `DD_PASSWORD`, else the URL's own).
    pub fn apply_broker(
        &self,
        broker: &mut crate::config::BrokerConfig,
    ) -> Result<(), ConfigError> {
        use crate::config::PasswordOrigin;
        broker.password_from = match (&self.config, &self.broker) {
            (_, Some(_))
                if std::env::args().any(|a| a == "--broker" || a.starts_with("--broker=")) =>
            {
                PasswordOrigin::BrokerFlag
            }
            (_, Some(_)) => PasswordOrigin::BrokerEnv,
            (Some(file), None) if broker.url != crate::config::DEFAULT_BROKER => {
                PasswordOrigin::ConfigFile(file.clone())
            }
            _ if broker.url == crate::config::DEFAULT_BROKER => PasswordOrigin::Default,
            _ => PasswordOrigin::Url,
        };
        crate::config::overlay(&mut broker.url, self.broker.clone());
        if self.tls_ca.is_some() {
            broker.tls_ca = self.tls_ca.clone();
        }
        if let Some(file) = &self.password_file {
            let password = crate::config::read_password_file(file)?;
            broker.url = crate::config::with_password(&broker.url, &password);
            broker.password_from = PasswordOrigin::PasswordFile(file.clone());
        } else if let Ok(password) = std::env::var("DD_PASSWORD") {
            if !password.is_empty() {
                broker.url = crate::config::with_password(&broker.url, &password);
                broker.password_from = PasswordOrigin::PasswordEnv;
            }
        }
        if let Some(url) = &self.broker {
            if crate::config::url_has_password(url)
                && std::env::args().any(|a| a.contains(url.as_str()))
            {
                tracing::warn!(
                    "the broker password is on the command line, where ps shows it: \
                     use DD_BROKER, DD_PASSWORD or --password-file"
                );
            }
        }
        Ok(())
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Start tracing on stderr. `default_level` is an index in off/error/warn/info/debug/trace
/// (a command-line tool starts at warn, a daemon at info); each -v adds one, each -q takes
/// one. lapin's own logs show only from -vv on. `RUST_LOG` replaces all of this.
pub fn init_tracing(common: &CommonOpts, default_level: usize) {
    let level =
        (default_level + usize::from(common.verbose)).saturating_sub(usize::from(common.quiet));
    let ours = LEVELS[level.min(LEVELS.len() - 1)];
    let lapin = if common.verbose >= 2 { ours } else { "off" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{ours},lapin={lapin},amq_protocol={lapin}")));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

/// Is this error (or what caused it) a closed pipe on our output?
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Map a command's outcome to its exit code, printing a failure in one line on stderr.
pub fn exit_code(tool: &str, outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The frame of every command's `main`: tracing on stderr (`default_level`, see
/// [`init_tracing`]), the effective config (`--print-config` prints it and stops), the body,
/// and the exit code (a failure is one line on stderr).
pub fn main<C: crate::config::Config>(
    tool: &str,
    common: &CommonOpts,
    default_level: usize,
    config: impl FnOnce() -> anyhow::Result<C>,
    body: impl FnOnce(C) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    init_tracing(common, default_level);
    let outcome = config().and_then(|cfg| {
        if common.print_config {
            print!("{}", print_config(&cfg));
            Ok(ExitCode::SUCCESS)
        } else {
            if let Some(broker) = cfg.broker() {
                say_broker(broker);
            }
            body(cfg)
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => exit_code(tool, Err(e)),
    }
}

/// `--print-config`'s text: the effective config as TOML, the broker password masked and
/// where it came from said in a comment above (a TOML comment: the text reads back).
pub fn print_config<C: crate::config::Config>(cfg: &C) -> String {
    let toml = crate::config::to_toml(cfg);
    match cfg.broker() {
        Some(b) if crate::config::url_has_password(&b.url) => format!(
            "# broker {} (masked as {}: reading this file back needs the real password \
             there, or DD_PASSWORD or --password-file)\n{toml}",
            b.password_said(),
            crate::config::MASK
        ),
        Some(b) => format!("# broker: {}\n{toml}", b.password_said()),
        None => toml,
    }
}

/// Say at info (a daemon's default, a command's -v) which broker and vhost a command uses
/// and where its password came from: a URL without a vhost means `/`.
fn say_broker(broker: &crate::config::BrokerConfig) {
    for url in broker.urls() {
        let vhost = crate::config::BrokerUrl::parse(url)
            .map(|u| u.vhost)
            .unwrap_or_default();
        let given = url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        tracing::info!(
            broker = %crate::config::mask_url(url),
            vhost = %vhost,
            "using the broker ({}){}",
            broker.password_said(),
            if given { "" } else { "; the URL names no vhost: the default vhost / is used" }
        );
    }
}

/// Run an async command body on a fresh tokio runtime.
pub fn block_on<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    fut: F,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fut)
}
