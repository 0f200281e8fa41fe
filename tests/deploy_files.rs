//! The deployment files cannot run here (no container engine, no systemd), so they are
//! checked by parsing: the compose file is valid YAML with the expected services, and every
//! command they start is one of our binaries with arguments that its own parser accepts.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use clap::Parser;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Parse a command line with the named binary's own clap parser.
fn check_command(argv: &[String]) {
    let r = match argv[0].rsplit('/').next().unwrap() {
        "dd_log" => ddmon::log::Args::try_parse_from(argv).map(|_| ()),
        "dd_sim" => ddmon::sim::Args::try_parse_from(argv).map(|_| ()),
        "dd_status" => ddmon::status::Args::try_parse_from(argv).map(|_| ()),
        "dd_log2source" => ddmon::route::Args::try_parse_from(argv).map(|_| ()),
        "dd_speedo" => ddmon::speedo::Args::try_parse_from(argv).map(|_| ()),
        "dd_watchdog" => ddmon::watchdog::Args::try_parse_from(argv).map(|_| ()),
        "dd_web" => ddmon::web::Args::try_parse_from(argv).map(|_| ()),
        other => panic!("{other} is not a ddmon binary"),
    };
    if let Err(e) = r {
        panic!("{argv:?}: {e}");
    }
}

#[test]
fn compose_file_parses_and_its_commands_are_valid() {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let services = &docs[0]["services"];
    let names: Vec<&str> = services
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rabbitmq",
            "capture",
            "log2source",
            "speedo",
            "watchdog",
            "web",
            "sim",
            "tail",
            "status"
        ]
    );
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .contains("management")
    );
    assert!(services["rabbitmq"]["healthcheck"]["test"].is_array());
    let mut commands = 0;
    for (_, svc) in services.as_hash().unwrap() {
        if let Yaml::Array(cmd) = &svc["command"] {
            let argv: Vec<String> = cmd
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            check_command(&argv);
            commands += 1;
        }
    }
    assert_eq!(commands, 8);
    // the daemons stop on SIGTERM and are restarted on failure
    for svc in ["capture", "log2source", "speedo", "watchdog", "web", "sim"] {
        assert_eq!(services[svc]["stop_signal"].as_str(), Some("SIGTERM"));
        assert_eq!(services[svc]["restart"].as_str(), Some("on-failure"));
    }
}

#[test]
fn dockerfile_ships_every_binary() {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"dd_"))
        .map(|rest| rest.trim_end_matches('"'))
        .collect();
    assert!(bins.len() >= 3);
    for b in bins {
        assert!(
            text.contains(&format!("/src/target/release/dd_{b}")),
            "dd_{b} not shipped"
        );
    }
    assert!(text.contains("STOPSIGNAL SIGTERM"));
}

#[test]
fn systemd_units_restart_on_failure_and_stop_on_sigterm() {
    let dir = root().join("config/systemd");
    let mut units = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
                .to_string()
        };
        assert_eq!(value("Restart"), "on-failure");
        assert_eq!(value("KillSignal"), "SIGTERM");
        let argv: Vec<String> = value("ExecStart")
            .split_whitespace()
            .map(String::from)
            .collect();
        check_command(&argv);
        units += 1;
    }
    assert!(units >= 1);
}
