//! The runtime every long-running tool shares: the consume-handle-publish-ack loop
//! ([`serve`]), the visible side of a daemon (alive, status, requests: [`Runtime`]), and
//! stopping on signals ([`Shutdown`]).

mod runtime;
mod serve;

pub use crate::shutdown::Shutdown;
pub use runtime::{DaemonConfig, DaemonOpts, Health, Identity, Runtime, State, host_name};
pub use serve::{Handled, ServeConfig, Service, Verdict, serve};
