//! `dd_log2source`: route the common `log` exchange into per-source `log_<source>` exchanges
//! that only that source (and admins) can read.
//!
//! Copy mode: every record is republished unchanged (body, headers, routing key, properties)
//! to its source's exchange, declared the first time it is needed; the input is acknowledged
//! only after the broker confirmed the copy. A record with no source, an unknown source (when
//! the known ones are listed) or a malformed body goes to `log_unknown` (or is rejected to the
//! queue's dead-letter exchange when one is configured): never dropped silently, counted.

pub mod permissions;

mod config;
mod service;

pub use config::*;
pub use service::*;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn source_exchange_names() {
        let cfg = RouteConfig::default();
        assert_eq!(cfg.source_exchange("ec_cmc"), "log_ec_cmc");
        let sarra = RouteConfig {
            source_exchange_template: "xr_{source}".into(),
            ..RouteConfig::default()
        };
        assert_eq!(sarra.source_exchange("guest"), "xr_guest");
    }

    #[test]
    fn template_needs_the_placeholder() {
        let args =
            Args::try_parse_from(["dd_log2source", "--source-exchange-template", "log_x"]).unwrap();
        assert!(RouteConfig::from_args(&args).is_err());
    }
}
