//! Every `[default: X]` a command's `--help` shows for a setting of its config file is the
//! default the config really has: the one `--print-config` prints with no file, no
//! environment and no flag. (A help text written by hand drifts from the code; this finds it.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The commands with a config file, and the flags every daemon's input block must show.
const COMMANDS: [(&str, &str, &[&str]); 6] = [
    (
        "dd_log",
        env!("CARGO_BIN_EXE_dd_log"),
        &["--exchange", "--topic"],
    ),
    (
        "dd_log2source",
        env!("CARGO_BIN_EXE_dd_log2source"),
        &["--exchange", "--topic", "--queue"],
    ),
    (
        "dd_speedo",
        env!("CARGO_BIN_EXE_dd_speedo"),
        &["--exchange", "--topic"],
    ),
    (
        "dd_watchdog",
        env!("CARGO_BIN_EXE_dd_watchdog"),
        &["--exchange", "--topic"],
    ),
    ("dd_web", env!("CARGO_BIN_EXE_dd_web"), &[]),
    (
        "check_dd_speedo",
        env!("CARGO_BIN_EXE_check_dd_speedo"),
        &["--exchange"],
    ),
];

fn run(bin: &str, arg: &str) -> String {
    let mut c = Command::new(bin);
    c.arg(arg).env("STATE_DIRECTORY", std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("DD_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{bin} {arg}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `(flag, default)` for every long option whose help says `[default: ...]`.
fn help_defaults(help: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut flag: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with('-') && line.starts_with("  ") && !line.starts_with("          ") {
            flag = t
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(str::to_string);
        }
        if let (Some(f), Some(i)) = (&flag, line.find("[default: ")) {
            let rest = &line[i + "[default: ".len()..];
            if let Some(end) = rest.find(']') {
                out.push((f.clone(), rest[..end].to_string()));
            }
        }
    }
    out
}

/// A default said in words (`every source is known`, `$STATE_DIRECTORY, else ...`), not a
/// value: several words that are not all topic bindings.
fn prose(shown: &str) -> bool {
    let words: Vec<&str> = shown.split(' ').collect();
    words.len() > 1 && !words.iter().all(|w| w.contains('#') || w.contains('.'))
}

/// The config key of a flag: its name with `_`, in the top table, `[daemon]` or `[broker]`.
fn config_value<'a>(cfg: &'a toml::Table, flag: &str) -> Option<&'a toml::Value> {
    let key = match flag {
        "--topic" => "topics".to_string(),
        "--daemon-exchange" => return cfg.get("daemon")?.get("exchange"),
        "--broker" => return cfg.get("broker")?.get("url"),
        other => other.trim_start_matches("--").replace('-', "_"),
    };
    cfg.get(&key)
        .or_else(|| cfg.get("daemon")?.get(&key))
        .or_else(|| cfg.get("broker")?.get(&key))
}

/// The value as the help writes it: words for a list, the number, the string.
fn same(help: &str, value: &toml::Value) -> bool {
    match value {
        toml::Value::Array(a) => {
            let words: Vec<String> = a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect();
            words.join(" ") == help
        }
        toml::Value::Integer(i) => help.parse::<f64>().ok() == Some(*i as f64),
        toml::Value::Float(f) => help.parse::<f64>().ok() == Some(*f),
        toml::Value::String(s) => *s == ddmon::config::mask_url(help) || s == help,
        toml::Value::Boolean(b) => help.parse::<bool>().ok() == Some(*b),
        _ => false,
    }
}

#[test]
fn every_help_default_is_the_config_default() {
    let mut wrong = Vec::new();
    for (name, bin, must) in COMMANDS {
        let help = run(bin, "--help");
        let cfg: toml::Table = toml::from_str(&run(bin, "--print-config")).unwrap();
        let defaults = help_defaults(&help);
        let mut compared = Vec::new();
        for (flag, shown) in &defaults {
            if prose(shown) {
                continue;
            }
            let Some(value) = config_value(&cfg, flag) else {
                continue; // not a setting of the file (a replay format, a timeout...)
            };
            compared.push(flag.as_str());
            if !same(shown, value) {
                wrong.push(format!(
                    "{name} {flag}: help says {shown:?}, config has {value}"
                ));
            }
        }
        for m in must {
            assert!(
                compared.contains(m),
                "{name}: {m} shows no default matched with the config (compared {compared:?})"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
