//! The runtime every long-running tool shares: the consume-handle-publish-ack loop
//! ([`serve`]), the visible side of a daemon (alive, status, registry, requests: [`Runtime`]),
//! the history that keeps them ([`registry`]), and
//! stopping on signals ([`Shutdown`]).

pub mod registry;
pub mod replica;
mod runtime;
mod serve;

pub use crate::shutdown::Shutdown;
pub use registry::{Registration, RosterOpts, RosterStream};
pub use runtime::{DaemonConfig, DaemonOpts, Health, Identity, Role, Runtime, State, host_name};
pub use serve::{Handled, ServeConfig, Service, Verdict, serve};
