//! `dd_web`: the web side. An HTTP server (axum) with
//!
//! - `/metrics`: OpenMetrics text (speedo counters, rates, states, lag; the daemons' own
//!   counters; dd_web's) through the `prometheus-client` crate;
//! - `/api/speedos` (JSON) and `/api/events` (Server-Sent Events, one `speedos` event per
//!   poll): what dd_speedo's `stats` request answers, with a short rate history per name;
//! - `/`: one page (HTML/JS/SVG compiled into the binary) with a dial and a sparkline per
//!   client and source, coloured by threshold state;
//! - `/tail`: a live tail of the log stream for a user signed in with **their broker
//!   credentials** (`/api/login`): the tail's queue is declared and bound on a connection
//!   opened as that user, so the broker alone decides what they may read.
//!
//! dd_web is its own binary rather than an `--http` on dd_speedo: the process that faces
//! browsers holds no counts (restart it, run several, put it elsewhere), dd_speedo keeps no
//! HTTP surface, and dd_web reads dd_speedo through the request channel every daemon already
//! answers (`v01.rpc.dd_speedo.<instance>.stats`), as check_dd_speedo does.

pub mod board;
pub mod metrics;
pub mod tail;

mod config;
mod service;

pub use config::*;
pub use service::*;
