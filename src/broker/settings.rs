//! How to reach the broker: [`BrokerConfig`] (the `[broker]` table of every config file) and
//! the URL text helpers (mask a password, put credentials in, split a cluster's list).
//!
//! It lives with the transport because it is what a connection needs; `config` re-exports it
//! and lays the file, environment and flags over it. Its password is masked whenever it is
//! serialised, so `--print-config` and logs never show it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

/// The default broker: the local RabbitMQ's default vhost as guest.
pub const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A broker setting that is not valid (the URL does not parse, backoff bounds reversed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct SettingsError {
    /// Which setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// The mask `--print-config` writes in place of a password.
pub const MASK: &str = "****";

/// Where the broker password in effect came from, said in a refused login, in
/// `--print-config` and at `-v`, so a wrong password in one place is not taken for another.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PasswordOrigin {
    /// The URL, wherever it came from (a config built in code, another cluster's URL).
    #[default]
    Url,
    /// The built-in default URL (`guest:guest`).
    Default,
    /// The `[broker] url` of this config file.
    ConfigFile(PathBuf),
    /// The `--broker` flag's URL.
    BrokerFlag,
    /// The `DD_BROKER` variable's URL.
    BrokerEnv,
    /// The `DD_PASSWORD` variable.
    PasswordEnv,
    /// The first line of this `--password-file` (or `DD_PASSWORD_FILE`).
    PasswordFile(PathBuf),
}

impl std::fmt::Display for PasswordOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordOrigin::Url => write!(f, "the broker URL"),
            PasswordOrigin::Default => write!(f, "the built-in default URL"),
            PasswordOrigin::ConfigFile(p) => write!(f, "the [broker] url of {}", p.display()),
            PasswordOrigin::BrokerFlag => write!(f, "the --broker URL"),
            PasswordOrigin::BrokerEnv => write!(f, "the DD_BROKER URL"),
            PasswordOrigin::PasswordEnv => write!(f, "DD_PASSWORD"),
            PasswordOrigin::PasswordFile(p) => write!(f, "the password file {}", p.display()),
        }
    }
}

/// The parts of one broker URL that tools need besides connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The user (`guest` when the URL names none, as RabbitMQ does).
    pub user: String,
    /// The password (empty when none).
    pub password: String,
    /// The host name, as written.
    pub host: String,
    /// The port (the scheme's default when none is written).
    pub port: u16,
    /// The vhost, decoded (`/` for `%2f`).
    pub vhost: String,
}

impl BrokerUrl {
    /// Parse one `amqp://` or `amqps://` URL.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let u = url.parse::<lapin::uri::AMQPUri>()?;
        Ok(BrokerUrl {
            user: u.authority.userinfo.username,
            password: u.authority.userinfo.password,
            host: u.authority.host,
            port: u.authority.port,
            vhost: u.vhost,
        })
    }
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
    /// Where the password came from (not a setting: said in errors and `--print-config`).
    #[serde(skip)]
    pub password_from: PasswordOrigin,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: DEFAULT_BROKER.to_string(),
            prefetch: 256,
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            tls_ca: None,
            password_from: PasswordOrigin::Url,
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
        let first = self.urls().first().copied().unwrap_or_default();
        BrokerUrl::parse(first)
            .map(|u| u.user)
            .unwrap_or_else(|_| "guest".to_string())
    }

    /// Where the password came from, as said to the user: `"<origin>"`, or that none was
    /// given.
    pub fn password_said(&self) -> String {
        if self.urls().iter().any(|u| url_has_password(u)) {
            format!("password from {}", self.password_from)
        } else {
            "no password given".to_string()
        }
    }

    /// Check the URL parses, so a typo is a configuration error and not a retry loop; a
    /// password that is the mask `--print-config` printed is refused (it reads back as a
    /// wrong password otherwise).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.urls().is_empty() {
            return Err(SettingsError {
                field: "broker url",
                message: "no URL".into(),
            });
        }
        for url in self.urls() {
            let parsed = BrokerUrl::parse(url).map_err(|e| SettingsError {
                field: "broker url",
                message: format!("{e} in {}", mask_url(url)),
            })?;
            if parsed.password == MASK {
                return Err(SettingsError {
                    field: "broker url",
                    message: format!(
                        "the password in {} is {MASK}, the mask --print-config writes: put the \
                         real password there, or give it with DD_PASSWORD or --password-file",
                        self.password_from
                    ),
                });
            }
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(SettingsError {
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
    let user = BrokerUrl::parse(url)
        .map(|u| u.user)
        .unwrap_or_else(|_| "guest".to_string());
    with_credentials(url, &user, password)
}

/// Does `url` carry a password?
pub fn url_has_password(url: &str) -> bool {
    mask_url(url) != url
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
        let text = toml::to_string_pretty(&b).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("admin:****@h"), "{text}");
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
