//! The layered configuration: built-in defaults < TOML file < environment < flags.
//!
//! Every tool's config struct implements `Default` (the built-in layer) and `Deserialize` with
//! `deny_unknown_fields` and `default` (the file layer: a key left out keeps its default, an
//! unknown key is an error naming the key and the file). Environment and flags arrive together
//! through clap (`#[arg(env = ...)]`, a flag beats its variable), as `Option`s that the tool's
//! `merge` lays over the file layer. [`BrokerConfig`] is shared by every tool and masks its
//! password whenever it is serialised, so `--print-config` and logs never show it.

use std::path::{Path, PathBuf};

use serde::Serialize;

mod input;

pub use input::{InputConfig, InputOpts};
use serde::de::DeserializeOwned;

pub use crate::broker::settings::{
    BrokerConfig, BrokerUrl, DEFAULT_BROKER, MASK, PasswordOrigin, SettingsError, mask_url,
    split_urls, url_has_password, with_credentials, with_password,
};

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

impl From<SettingsError> for ConfigError {
    fn from(e: SettingsError) -> ConfigError {
        ConfigError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
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
pub fn load_file<T: Config>(path: Option<&Path>) -> Result<T, ConfigError> {
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
pub fn parse_toml<T: Config>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let mut cfg: T = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: explain::<T>(&e, text).trim_end().replace('\n', " "),
    })?;
    if let Some(input) = cfg.input_block() {
        // serde fills a flattened block's missing keys from the block's own default, not
        // the tool's: lay the file's keys over the tool's default instead
        let given: toml::Table = toml::from_str(text).unwrap_or_default();
        let mut defaults = T::default();
        if let Some(d) = defaults.input_block() {
            input.keep_given(&given, d);
        }
    }
    Ok(cfg)
}

impl Config for BrokerConfig {
    fn broker(&self) -> Option<&BrokerConfig> {
        Some(self)
    }
}

/// A tool's configuration: the file layer's type. A daemon's has an input block.
pub trait Config: DeserializeOwned + Serialize + Default {
    /// The flattened input block, if the tool has one.
    fn input_block(&mut self) -> Option<&mut InputConfig> {
        None
    }

    /// The broker settings, if the tool talks to one broker.
    fn broker(&self) -> Option<&BrokerConfig> {
        None
    }
}

/// The parser's message. A key unknown at the top level of a config whose input block is
/// flattened comes without its place and the keys it could be: they are added here (the
/// line of the key, and the top-level keys of the defaults).
fn explain<T: Serialize + Default>(e: &toml::de::Error, text: &str) -> String {
    let message = e.message();
    let placed = e.span().is_some_and(|s| !s.is_empty());
    let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        .filter(|_| !placed && !message.contains("expected"))
    else {
        return e.to_string();
    };
    // a top-level key: before the first `[table]`
    let line = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(String::new(), |n| format!(" at line {}", n + 1));
    // JSON keeps the keys whose default is none (TOML leaves them out)
    let keys: Vec<String> = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().map(|k| format!("`{k}`")).collect(),
        _ => Vec::new(),
    };
    format!(
        "TOML parse error{line}: unknown field `{key}`, expected one of {}",
        keys.join(", ")
    )
}

/// The effective config as TOML, for `--print-config` (the broker password is masked by
/// [`BrokerConfig`]'s serialisation).
pub fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// The longest name AMQP carries: exchanges, queues, routing keys and bindings are short
/// strings.
pub const MAX_NAME_BYTES: usize = 255;

/// A name the broker will carry: at most [`MAX_NAME_BYTES`] bytes (a longer one is a usage
/// mistake, said at start, not a failure deep in the client).
pub fn check_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.len() <= MAX_NAME_BYTES {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field,
        message: format!(
            "{} bytes long, more than the {MAX_NAME_BYTES} an AMQP name may have",
            name.len()
        ),
    })
}

/// A source exchange template must name the source (`log_{source}`).
pub fn check_source_template(template: &str) -> Result<(), ConfigError> {
    if template.contains("{source}") {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field: "source_exchange_template",
        message: "must contain {source}".to_string(),
    })
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
}
