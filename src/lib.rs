//! ddmon: watch a data-dissemination pump through its AMQP log messages.
//!
//! One library, thin binaries (`bin/`). The data flow of every tool is the same:
//! the [`broker`] module delivers raw messages, [`record`] turns each into a
//! [`record::LogRecord`] (or a typed [`record::Malformed`]), the tool's state decides what to
//! emit, and the edge prints or publishes it and only then acknowledges the delivery.

pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod headers;
pub mod log;
pub mod nagios;
pub mod record;
pub mod roster;
pub mod route;
pub mod rpc;
pub mod shutdown;
pub mod sim;
pub mod speedo;
pub mod status;
pub mod topic;
pub mod watchdog;
pub mod web;
