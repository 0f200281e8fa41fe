//! Every example config under config/ parses as the tool it is for, with no unknown key.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn dd_log_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dd_log.toml");
    let cfg: ddmon::log::LogConfig = ddmon::config::load_file(Some(&path)).unwrap();
    assert_eq!(cfg.input.exchange, "log");
    assert_eq!(cfg.input.queue.as_deref(), Some("capture"));
    assert_eq!(cfg.input.topics.len(), 3);
    assert_eq!(cfg.broker.prefetch, 256);
}

#[test]
fn dd_log2source_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dd_log2source.toml");
    let cfg: ddmon::route::RouteConfig = ddmon::config::load_file(Some(&path)).unwrap();
    assert_eq!(cfg.source_exchange("ec_cmc"), "log_ec_cmc");
    assert_eq!(cfg.sources, ["ec_cmc", "noaa"]);
    assert_eq!(cfg.cluster.as_deref(), Some("ddsr.cmc"));
    assert!(cfg.clusters["ddsr.science"].starts_with("amqp://relay:"));
    assert_eq!(cfg.daemon.alive_interval, 30.0);
    // the remote broker's password is masked when the config is printed
    let printed = ddmon::config::to_toml(&cfg);
    assert!(
        printed.contains("relay:****@science-pump") && !printed.contains("PASSWORD"),
        "{printed}"
    );
}

#[test]
fn dd_speedo_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dd_speedo.toml");
    let cfg: ddmon::speedo::SpeedoConfig = ddmon::config::load_file(Some(&path)).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.interval, 60);
    assert_eq!(cfg.source_exchange("ec_cmc"), "log_ec_cmc");
    assert_eq!(cfg.thresholds.defaults.td, 3600.0);
    assert_eq!(cfg.thresholds.overrides.len(), 3);
    // the thresholds resolve per name as the comments say
    let mut t = ddmon::speedo::Thresholds::new(&cfg.thresholds).unwrap();
    use ddmon::speedo::Kind;
    let i = t.resolve(Kind::Client, "ssc_ddsr");
    assert_eq!((t.get(i).td, t.get(i).tminr), (300.0, 10.0));
    let i = t.resolve(Kind::Client, "test_x");
    assert_eq!((t.get(i).td, t.get(i).k), (0.0, 0.0));
    let i = t.resolve(Kind::Source, "ec_cmc");
    assert_eq!(t.get(i).max_error_ratio, 0.1);
    let i = t.resolve(Kind::Source, "ssc_ddsr");
    assert_eq!(t.get(i).td, 3600.0, "a client override is not a source's");
    // the roster stream's block; not a group member
    assert!(!cfg.group);
    assert_eq!(cfg.daemon.roster.max_age, 86_400);
    assert_eq!(
        cfg.daemon.roster.specs("log").unwrap()[1].name,
        "ddmon.roster.log.alive"
    );
}

#[test]
fn dd_watchdog_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dd_watchdog.toml");
    let cfg: ddmon::watchdog::WatchdogConfig = ddmon::config::load_file(Some(&path)).unwrap();
    assert_eq!(cfg.node_timeout, 120.0);
    assert_eq!(cfg.limits().stuck_after_ms, 3_600_000);
    assert!(cfg.input.topics.iter().any(|t| t == "v01.alive.#"));
    assert_eq!(
        cfg.journal.as_deref(),
        Some(Path::new("/var/lib/ddmon/dd_watchdog.journal"))
    );
}

#[test]
fn dd_web_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dd_web.toml");
    let cfg: ddmon::web::WebConfig = ddmon::config::load_file(Some(&path)).unwrap();
    assert_eq!(cfg.listen, "127.0.0.1:8080");
    assert_eq!((cfg.poll, cfg.tail_timeout), (5.0, 30.0));
    assert_eq!(cfg.max_tails_per_user, 3);
    assert_eq!(cfg.speedo_instance, None);
    assert!(ddmon::config::to_toml(&cfg).contains("dd_web:****@localhost"));
}

#[test]
fn check_dd_speedo_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/check_dd_speedo.toml");
    let cfg: ddmon::nagios::CheckConfig = ddmon::config::load_file(Some(&path)).unwrap();
    assert_eq!(cfg.exchange, "log");
    assert_eq!(cfg.instance, None);
    assert_eq!(cfg.broker.url, "amqp://nagios@localhost:5672/%2f");
    cfg.broker.validate().unwrap();
}

#[test]
fn declared_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/declared.toml");
    let d = ddmon::roster::Declared::load(&path).unwrap();
    assert_eq!(d.daemon.len(), 3);
    assert_eq!(d.daemon[0].host.as_deref(), Some("pump1.example.org"));
    assert_eq!(d.daemon[1].host, None);
}

#[test]
fn every_example_is_checked_by_a_test() {
    // A new example file must get its own test above.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "check_dd_speedo.toml",
            "dd_log.toml",
            "dd_log2source.toml",
            "dd_speedo.toml",
            "dd_watchdog.toml",
            "dd_web.toml",
            "declared.toml"
        ]
    );
}

/// A file that leaves the input block out keeps each daemon's own defaults (the block is
/// flattened into the file's top level; serde alone would give the block's generic default).
#[test]
fn a_file_without_the_input_keys_keeps_each_daemons_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("only_broker.toml");
    std::fs::write(&path, "[broker]\nprefetch = 7\n").unwrap();
    let p = Some(path.as_path());
    let log: ddmon::log::LogConfig = ddmon::config::load_file(p).unwrap();
    let speedo: ddmon::speedo::SpeedoConfig = ddmon::config::load_file(p).unwrap();
    let route: ddmon::route::RouteConfig = ddmon::config::load_file(p).unwrap();
    let watchdog: ddmon::watchdog::WatchdogConfig = ddmon::config::load_file(p).unwrap();
    assert_eq!(log.input, ddmon::log::LogConfig::default().input);
    assert_eq!(speedo.input, ddmon::speedo::SpeedoConfig::default().input);
    assert_eq!(route.input, ddmon::route::RouteConfig::default().input);
    assert_eq!(
        watchdog.input,
        ddmon::watchdog::WatchdogConfig::default().input
    );
    assert_eq!(speedo.input.topics, ["v02.#", "v03.#"]);
    assert_eq!(route.input.queue.as_deref(), Some("route"));
    assert_eq!(speedo.broker.prefetch, 7);
    // a key given is kept, the others still the daemon's
    std::fs::write(&path, "queue = \"mine\"\n").unwrap();
    let route: ddmon::route::RouteConfig = ddmon::config::load_file(p).unwrap();
    assert_eq!(route.input.queue.as_deref(), Some("mine"));
    assert_eq!(route.input.topics, ["v02.#", "v03.#"]);
}

/// An unknown key at the top level of a daemon's file still names the key, its line and the
/// keys there are (the flattened block hides the place from the TOML parser).
#[test]
fn an_unknown_top_level_key_names_its_line_and_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "exchange = \"log\"\nintervall = 5\n").unwrap();
    let err = ddmon::config::load_file::<ddmon::speedo::SpeedoConfig>(Some(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("typo.toml"), "{err}");
    assert!(err.contains("unknown field `intervall`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(
        err.contains("`interval`") && err.contains("`topics`"),
        "{err}"
    );
}
