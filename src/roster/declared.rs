//! The daemons an operator declares (a TOML file they keep): one that never started is
//! `missing` on the roster.

use serde::{Deserialize, Serialize};

/// The declared daemons (`[[daemon]]` tables).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Declared {
    /// Each declared daemon.
    pub daemon: Vec<DeclaredDaemon>,
}

/// One declared daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDaemon {
    /// Its tool (`dd_speedo`...).
    pub tool: String,
    /// Its `--instance`.
    pub instance: String,
    /// The host it should run on (shown until it is seen).
    #[serde(default)]
    pub host: Option<String>,
}

impl Declared {
    /// Read a declared-daemons file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Declared> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Declared::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Read the text of one.
    pub fn parse(text: &str) -> anyhow::Result<Declared> {
        let d: Declared = toml::from_str(text)?;
        for x in &d.daemon {
            crate::config::check_name("declared tool", &x.tool)?;
            crate::config::check_name("declared instance", &x.instance)?;
        }
        Ok(d)
    }
}
