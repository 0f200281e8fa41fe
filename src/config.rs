//! The layered configuration: built-in defaults < TOML file < environment < flags.
//!
//! Every tool's config struct implements `Default` (the built-in layer) and `Deserialize` with
//! `deny_unknown_fields` and `default` (the file layer: a key left out keeps its default, an
//! unknown key is an error naming the key and the file). Environment and flags arrive together
//! through clap (`#[arg(env = ...)]`, a flag beats its variable), as `Option`s that the tool's
//! `merge` lays over the file layer. [`BrokerConfig`] is shared by every tool and masks its
//! password whenever it is serialised, so `--print-config` and logs never show it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// The default broker: the local RabbitMQ's default vhost as guest.
pub const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A configuration mistake: nothing a retry could fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this tool (an unknown key, a wrong type...).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (it names the key and line).
        message: String,
    },
    /// A value is invalid.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// How to reach the broker: shared by every tool (`[broker]` in each config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Broker URL, `amqp://user:password@host:port/vhost` or `amqps://` for TLS. The vhost is
    /// URL-encoded (`%2f` is `/`). Several, separated by commas, are the nodes of a cluster,
    /// tried in turn. Env `DD_BROKER`, flag `--broker`.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: String,
    /// Messages the broker may send before they are acknowledged (AMQP prefetch).
    pub prefetch: u16,
    /// First wait before reconnecting after the broker went away, in milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnection attempts, in milliseconds.
    pub reconnect_max_ms: u64,
    /// PEM file of the CA that signs the broker's certificate (amqps), instead of the system's.
    pub tls_ca: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: DEFAULT_BROKER.to_string(),
            prefetch: 256,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            tls_ca: None,
        }
    }
}

impl BrokerConfig {
    /// The URLs, in order (several for the nodes of a cluster).
    pub fn urls(&self) -> Vec<&str> {
        split_urls(&self.url)
    }

    /// The user name in the (first) URL (`guest` when none is given, as RabbitMQ does).
    pub fn user(&self) -> String {
        self.urls()
            .first()
            .copied()
            .unwrap_or_default()
            .parse::<lapin::uri::AMQPUri>()
            .map(|u| u.authority.userinfo.username)
            .unwrap_or_else(|_| "guest".to_string())
    }

    /// Check the URL parses, so a typo is a configuration error and not a retry loop.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.urls().is_empty() {
            return Err(ConfigError::Invalid {
                field: "broker url",
                message: "no URL".into(),
            });
        }
        for url in self.urls() {
            url.parse::<lapin::uri::AMQPUri>()
                .map(|_| ())
                .map_err(|e| ConfigError::Invalid {
                    field: "broker url",
                    message: format!("{e} in {}", mask_url(url)),
                })?;
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(ConfigError::Invalid {
                field: "broker reconnect_min_ms",
                message: "must be at least 1 and at most reconnect_max_ms".to_string(),
            });
        }
        Ok(())
    }
}

fn serialize_masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

/// The URLs of a comma-separated list, trimmed.
pub fn split_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Replace the password of each URL's user information with `****` (a list stays a list).
pub fn mask_url(url: &str) -> String {
    if url.contains(',') {
        return split_urls(url)
            .into_iter()
            .map(mask_one)
            .collect::<Vec<_>>()
            .join(",");
    }
    mask_one(url)
}

fn mask_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:****{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// Percent-encode a URL's user or password.
fn encode_userinfo(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `url` (each of a list) with its user information replaced by `user:password`
/// (percent-encoded).
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    if url.contains(',') {
        return split_urls(url)
            .into_iter()
            .map(|u| with_credentials(u, user, password))
            .collect::<Vec<_>>()
            .join(",");
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!(
        "{}{}:{}@{}",
        &url[..scheme_end + 3],
        encode_userinfo(user),
        encode_userinfo(password),
        host
    )
}

/// `url` (each of a list) with its password replaced, its user kept (`guest` when it names
/// none).
pub fn with_password(url: &str, password: &str) -> String {
    if url.contains(',') {
        return split_urls(url)
            .into_iter()
            .map(|u| with_password(u, password))
            .collect::<Vec<_>>()
            .join(",");
    }
    let user = url
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_string());
    with_credentials(url, &user, password)
}

/// Does `url` carry a password?
pub fn url_has_password(url: &str) -> bool {
    mask_url(url) != url
}

/// Read a password file (its first line), warning when others may read it. The password is
/// never part of an error or a log line.
pub fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |message: String| ConfigError::Invalid {
        field: "password file",
        message,
    };
    let meta =
        std::fs::metadata(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "password file is readable by others: chmod 600 it"
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(bad(format!("{} is empty", path.display())));
    }
    Ok(password)
}

/// Read the file layer: `T::default()` when no file is given, else the file's keys over the
/// defaults. Unknown keys are errors that name the key and the file.
pub fn load_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parse TOML text as the file layer (see [`load_file`]); `path` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// The effective config as TOML, for `--print-config` (the broker password is masked by
/// [`BrokerConfig`]'s serialisation).
pub fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// Lay a flag or environment value over the file layer when one was given.
pub fn overlay<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:****@127.0.0.1:5672/%2f"
        );
        assert_eq!(mask_url("amqps://u:p@ss@h/v"), "amqps://u:****@h/v");
        assert_eq!(mask_url("amqp://h:5672/"), "amqp://h:5672/");
        assert_eq!(mask_url("amqp://user@h"), "amqp://user@h");
    }

    #[test]
    fn a_list_of_urls_is_the_nodes_of_a_cluster() {
        let cfg = BrokerConfig {
            url: "amqp://u:pw@n1:5672/%2f, amqp://u:pw@n2:5673/%2f,".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(
            cfg.urls(),
            ["amqp://u:pw@n1:5672/%2f", "amqp://u:pw@n2:5673/%2f"]
        );
        assert_eq!(cfg.user(), "u");
        cfg.validate().unwrap();
        assert_eq!(
            mask_url(&cfg.url),
            "amqp://u:****@n1:5672/%2f,amqp://u:****@n2:5673/%2f"
        );
        assert_eq!(
            with_password("amqp://u@n1/v,amqp://u@n2/v", "s"),
            "amqp://u:s@n1/v,amqp://u:s@n2/v"
        );
        let bad = BrokerConfig {
            url: "amqp://n1,nonsense://x".into(),
            ..BrokerConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn serialised_broker_config_hides_the_password() {
        let b = BrokerConfig {
            url: "amqp://admin:hunter2@h/%2f".into(),
            ..BrokerConfig::default()
        };
        let text = to_toml(&b);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("admin:****@h"), "{text}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse_toml::<BrokerConfig>("urll = \"x\"\n", Path::new("/etc/ddmon/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/ddmon/x.toml"), "{err}");
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn file_keys_override_defaults_only_where_given() {
        let b: BrokerConfig = parse_toml("prefetch = 10\n", Path::new("f")).unwrap();
        assert_eq!(b.prefetch, 10);
        assert_eq!(b.url, DEFAULT_BROKER);
    }

    #[test]
    fn user_and_validation() {
        let b = BrokerConfig {
            url: "amqp://alice:pw@h/%2f".into(),
            ..BrokerConfig::default()
        };
        assert_eq!(b.user(), "alice");
        assert!(b.validate().is_ok());
        let bad = BrokerConfig {
            url: "http//nope".into(),
            ..BrokerConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
