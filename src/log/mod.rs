//! `dd_log`: tail and grep the log stream, or capture it to files with nothing lost.
//!
//! Each delivery is parsed, rendered (line or JSON), filtered, written, and only then
//! acknowledged. Ordinary posts (no report) are acknowledged and skipped; malformed messages
//! are counted, warned about at most once a second per kind, and rejected (dead-lettered when
//! the queue has a dead-letter exchange). With `--queue` the queue is durable, so whatever is
//! published while dd_log is down is printed when it comes back, once.

mod output;

pub use output::{DailyFiles, Filter, Sink};

mod config;
mod service;

pub use config::*;
pub use service::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InputConfig;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dd_log.toml");
        std::fs::write(
            &file,
            "exchange = \"xreport\"\nformat = \"json\"\ntopics = [\"v02.#\"]\n[broker]\nprefetch = 7\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "dd_log",
            "--config",
            file.to_str().unwrap(),
            "--format",
            "line",
            "--broker",
            "amqp://bob:pw@h/%2f",
            "ec_cmc",
        ])
        .unwrap();
        let cfg = LogConfig::from_args(&args).unwrap();
        assert_eq!(cfg.input.exchange, "xreport");
        assert_eq!(cfg.format, Format::Line);
        assert_eq!(cfg.input.topics, vec!["v02.#"]);
        assert_eq!(cfg.broker.prefetch, 7);
        assert_eq!(cfg.broker.url, "amqp://bob:pw@h/%2f");
        assert_eq!(cfg.patterns, vec!["ec_cmc"]);
        assert_eq!(
            cfg.subscription().queue.name.split('.').next(),
            Some("q_bob")
        );
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let args = Args::try_parse_from(["dd_log", "--broker", "amqp://h/%2f", "("]).unwrap();
        assert!(LogConfig::from_args(&args).is_err());
    }

    #[test]
    fn durable_queue_is_named_by_convention() {
        let cfg = LogConfig {
            input: InputConfig::reading(&["#"]).with_queue("capture"),
            ..LogConfig::default()
        };
        let sub = cfg.subscription();
        assert_eq!(sub.queue.name, "q_guest.dd_log.capture");
        assert!(sub.queue.durable && !sub.queue.exclusive);
        let tail = LogConfig::default().subscription();
        assert!(tail.queue.exclusive && tail.queue.name.starts_with("q_guest.dd_log.tail."));
    }
}
