//! SPEC §4's common flags on every command: `--broker`, `--config`, `-v/-q`,
//! `--print-config` (effective config, password masked, exit 0), `--help`, `--version`.
//! No broker is needed: nothing here connects.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const TOOLS: [(&str, &str); 9] = [
    ("dd_log", env!("CARGO_BIN_EXE_dd_log")),
    ("dd_log2source", env!("CARGO_BIN_EXE_dd_log2source")),
    ("dd_speedo", env!("CARGO_BIN_EXE_dd_speedo")),
    ("check_dd_speedo", env!("CARGO_BIN_EXE_check_dd_speedo")),
    ("check_dd_alive", env!("CARGO_BIN_EXE_check_dd_alive")),
    ("dd_watchdog", env!("CARGO_BIN_EXE_dd_watchdog")),
    ("dd_sim", env!("CARGO_BIN_EXE_dd_sim")),
    ("dd_status", env!("CARGO_BIN_EXE_dd_status")),
    ("dd_web", env!("CARGO_BIN_EXE_dd_web")),
];

fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("DD_BROKER")
        .env_remove("DD_CONFIG")
        .env_remove("DD_PASSWORD")
        .env_remove("DD_PASSWORD_FILE")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_command_has_the_common_flags() {
    for (name, bin) in TOOLS {
        let (code, help, _) = run(bin, &["--help"], &[]);
        assert_eq!(code, 0, "{name} --help");
        for flag in [
            "--broker <URL>",
            "--config <FILE>",
            "-v, --verbose",
            "-q, --quiet",
            "--print-config",
            "-h, --help",
            "-V, --version",
        ] {
            assert!(help.contains(flag), "{name} --help lacks {flag}:\n{help}");
        }
        let (code, version, err) = run(bin, &["--version"], &[]);
        assert_eq!(
            (code, version.trim_end(), err.as_str()),
            (0, format!("{name} 0.1.0").as_str(), ""),
            "{name} --version"
        );
    }
}

#[test]
fn print_config_is_toml_with_the_password_masked_from_flag_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[broker]\nurl = \"amqp://filer:file-secret@filehost:5672/%2f\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for (name, bin) in TOOLS {
        // the file alone, the environment over it, the flag over both
        for (args, envs, user) in [
            (vec!["--config", file], vec![], "filer"),
            (
                vec!["--config", file],
                vec![("DD_BROKER", "amqp://envy:env-secret@envhost/%2f")],
                "envy",
            ),
            (
                vec![
                    "--config",
                    file,
                    "--broker",
                    "amqp://flag:flag-secret@flaghost/%2f",
                ],
                vec![("DD_BROKER", "amqp://envy:env-secret@envhost/%2f")],
                "flag",
            ),
        ] {
            let mut args = args.clone();
            args.push("--print-config");
            let (code, out, err) = run(bin, &args, &envs);
            assert_eq!(code, 0, "{name} {args:?}: {out}{err}");
            let v: toml::Table = toml::from_str(&out)
                .unwrap_or_else(|e| panic!("{name} --print-config is not TOML ({e}):\n{out}"));
            let url = v["broker"]["url"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("amqp://{user}:****@")),
                "{name}: {url}"
            );
            for s in ["file-secret", "env-secret", "flag-secret"] {
                assert!(!out.contains(s) && !err.contains(s), "{name} shows {s}");
            }
        }
    }
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    for (name, bin) in TOOLS {
        let (code, out, err) = run(bin, &["--config", file.to_str().unwrap()], &[]);
        // the Nagios plugin says UNKNOWN (3) on stdout, as plugins must; the others exit 2
        let (want, text) = if name.starts_with("check_") {
            (3, &out)
        } else {
            (2, &err)
        };
        assert_eq!(code, want, "{name}: {out}{err}");
        assert!(text.contains("no_such_key"), "{name}: {out}{err}");
        assert_eq!(text.trim().lines().count(), 1, "{name}: one line: {text}");
    }
}

#[test]
fn dd_watchdog_names_its_default_journal_by_broker_vhost_and_queue() {
    let bin = env!("CARGO_BIN_EXE_dd_watchdog");
    let journal = |broker: &str, extra: &[&str], envs: &[(&str, &str)]| -> (i32, String) {
        let mut args = vec!["--print-config"];
        args.extend_from_slice(extra);
        let mut c = Command::new(bin);
        c.args(&args)
            .env("DD_BROKER", broker)
            .env_remove("DD_WATCHDOG_JOURNAL")
            .env_remove("STATE_DIRECTORY")
            .env_remove("XDG_STATE_HOME")
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let v: toml::Table = toml::from_str(&text).unwrap_or_default();
        let j = v.get("journal").and_then(|j| j.as_str()).unwrap_or("?");
        let err = String::from_utf8(out.stderr).unwrap();
        (out.status.code().unwrap(), format!("{j}{err}"))
    };
    let xdg = [("XDG_STATE_HOME", "/st")];
    assert_eq!(
        journal("amqp://u:p@Host/%2f", &[], &xdg),
        (
            0,
            "/st/ddmon/dd_watchdog.host_5672.%2F.q_u.dd_watchdog.log.journal".into()
        )
    );
    // a cluster list in any order is the same broker; another vhost is another table
    let ab = journal("amqp://u:p@b:5673/v,amqp://u:p@a/v", &[], &xdg);
    assert_eq!(
        ab,
        journal("amqp://u:p@a:5672/v,amqp://u:p@b:5673/v", &[], &xdg)
    );
    assert_eq!(
        ab.1,
        "/st/ddmon/dd_watchdog.a_5672+b_5673.v.q_u.dd_watchdog.log.journal"
    );
    assert_ne!(
        journal("amqp://u:p@h/a%2Fb", &[], &xdg),
        journal("amqp://u:p@h/a_b", &[], &xdg)
    );
    // systemd's StateDirectory wins; --no-journal is shown as ""
    assert!(
        journal(
            "amqp://u:p@h/v",
            &[],
            &[("STATE_DIRECTORY", "/var/lib/ddmon:/x")]
        )
        .1
        .starts_with("/var/lib/ddmon/dd_watchdog.h_5672.v.")
    );
    assert_eq!(
        journal("amqp://u:p@h/v", &["--no-journal"], &xdg),
        (0, String::new())
    );
    // nowhere to put it: a usage error that says what to do
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DD_BROKER", "amqp://u:p@h/v");
    let out = c.output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--journal FILE or --no-journal"), "{err}");
}

/// A name longer than AMQP's 255 bytes (an exchange, a binding, an instance) is a usage
/// mistake said at start in one line: exit 2 (the Nagios plugin: UNKNOWN, 3), never a panic
/// deep in the client (it was: "ShortString exceeds maximum length", exit 1, no status line).
#[test]
fn a_name_over_255_bytes_is_a_usage_error() {
    let long = "x".repeat(300);
    let state = std::env::temp_dir();
    let state = state.to_str().unwrap();
    for (name, bin) in TOOLS {
        let mut cases = vec![vec!["--exchange", long.as_str()]];
        if name == "dd_log" {
            cases.push(vec!["--topic", long.as_str()]);
        }
        if [
            "dd_speedo",
            "dd_log2source",
            "dd_watchdog",
            "check_dd_speedo",
        ]
        .contains(&name)
        {
            cases.push(vec!["--instance", long.as_str()]);
        }
        for args in cases {
            let (code, out, err) = run(bin, &args, &[("STATE_DIRECTORY", state)]);
            let what = format!("{name} {} <300 bytes>", args[0]);
            if let Some(plugin) = name.strip_prefix("check_") {
                assert_eq!(code, 3, "{what}: {out}{err}");
                let head = format!("{} UNKNOWN - ", plugin.to_uppercase());
                assert!(out.starts_with(&head), "{what}: {out}");
                assert!(out.contains("300 bytes"), "{what}: {out}");
                assert_eq!(out.lines().count(), 1, "{what}: {out}");
            } else {
                assert_eq!(code, 2, "{what}: {out}{err}");
                assert_eq!(out, "", "{what}");
                assert_eq!(err.lines().count(), 1, "{what}: {err}");
                assert!(
                    err.contains("300 bytes") && !err.contains("panicked"),
                    "{what}: {err}"
                );
            }
        }
    }
}

/// Issue 17: every command's help has examples and its exit codes; dd_sim's says it runs until stopped
/// without --count/--duration; the broker URL's help says a URL without a vhost means `/`;
/// check_dd_speedo's quotes `~`.
#[test]
fn every_help_has_examples_and_exit_codes() {
    for (name, bin) in TOOLS {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}");
        let help = String::from_utf8(out.stdout).unwrap();
        let examples = help
            .split_once("\nExamples:\n")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{name} --help has no examples: {help}"));
        let first = examples.lines().next().unwrap();
        assert!(first.trim_start().starts_with(name), "{name}: {first}");
        assert!(help.contains("Exit codes: 0 "), "{name}: {help}");
        assert!(
            help.contains("a URL without a vhost (amqp://host:5672) uses the default vhost `/`"),
            "{name}: {help}"
        );
    }
    let help = |bin: &str| {
        String::from_utf8(Command::new(bin).arg("--help").output().unwrap().stdout).unwrap()
    };
    assert!(
        help(env!("CARGO_BIN_EXE_dd_sim"))
            .contains("Without --count or --duration, dd_sim runs until stopped (Ctrl-C)")
    );
    let check = help(env!("CARGO_BIN_EXE_check_dd_speedo"));
    assert!(check.contains("'~:10' (above 10; quote it"), "{check}");
    assert!(!check.contains(" ~:"), "{check}");
}
