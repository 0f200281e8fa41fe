//! The layering rules of the README's architecture section, checked on the source text so
//! they cannot quietly come back: lapin is named only in `src/broker/`; the broker imports no
//! daemon, record, rpc or tool module; nothing outside it uses its raw (lapin-level) entry
//! points; a request key is built only in `src/rpc/`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of code (comments and unit tests left out: those spell the wire on purpose) of
/// the `.rs` files under `dir`, with its place.
fn code_lines(dir: &str) -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        if rel.ends_with("/tests.rs") {
            continue;
        }
        for (i, line) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            let code = line.split("//").next().unwrap_or("").to_string();
            if !code.trim().is_empty() {
                out.push((rel.clone(), i + 1, code));
            }
        }
    }
    out
}

fn offenders(dir: &str, keep: impl Fn(&str, &str) -> bool) -> Vec<String> {
    code_lines(dir)
        .into_iter()
        .filter(|(file, _, code)| keep(file, code))
        .map(|(file, n, code)| format!("{file}:{n}: {}", code.trim()))
        .collect()
}

#[test]
fn lapin_is_named_only_in_the_broker() {
    let names = |code: &str| {
        let t = code.trim_start();
        code.contains("lapin::")
            || t.starts_with("use lapin")
            || t.starts_with("extern crate lapin")
    };
    let mut bad = offenders("src", |file, code| {
        !file.starts_with("src/broker/") && names(code)
    });
    bad.extend(offenders("bin", |_, code| code.contains("lapin")));
    assert!(
        bad.is_empty(),
        "lapin outside src/broker/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_broker_imports_no_daemon_record_rpc_or_tool() {
    let above = [
        "crate::daemon",
        "crate::record",
        "crate::rpc",
        "crate::cli",
        "crate::config",
        "crate::log",
        "crate::route",
        "crate::speedo",
        "crate::watchdog",
        "crate::nagios",
        "crate::web",
        "crate::sim",
        "crate::status",
    ];
    let bad = offenders("src/broker", |_, code| {
        above.iter().any(|m| code.contains(m))
    });
    assert!(
        bad.is_empty(),
        "src/broker/ reaches up:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_tests_and_benches_use_the_raw_broker() {
    let bad = offenders("src", |file, code| {
        !file.starts_with("src/broker/") && code.contains("broker::raw")
    });
    assert!(
        bad.is_empty(),
        "broker::raw in the library:\n{}",
        bad.join("\n")
    );
}

#[test]
fn request_keys_are_built_only_by_rpc() {
    let bad = offenders("src", |file, code| {
        !file.starts_with("src/rpc/") && code.contains("v01.rpc")
    });
    assert!(
        bad.is_empty(),
        "a request key built by hand:\n{}",
        bad.join("\n")
    );
}
