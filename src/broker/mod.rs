//! The only place that touches lapin: connect, recover, declare, consume, publish with
//! confirms, acknowledge, ask, close. It knows no daemon, record or tool: the stop signal
//! ([`crate::shutdown`]) and the header map ([`crate::headers`]) are leaves both sides use.
//!
//! One reconnect policy for every tool: a broker that is down or goes away is retried with
//! capped exponential backoff and jitter, each attempt logged once at warn; after it comes
//! back the topology is declared again and consuming resumes. A refusal that retrying cannot
//! fix (bad credentials, a missing permission, an unknown vhost, a queue declared with other
//! arguments) is returned at once as a [`BrokerError`] whose [`ErrorKind`] and reply code say
//! which, with the broker's reason.
//!
//! By role: [`error`] (kinds, reply codes, timeouts), [`settings`] (the `[broker]` table and
//! its URLs), [`connect`] (connections, backoff, [`Link`]), [`topology`] (queues, exchanges,
//! bindings), [`consume`] (the reconnecting [`Consumer`], a user's [`Tail`]), [`publish`]
//! (confirmed publishing), [`headers`] (AMQP tables), [`rpc`] (the request transport),
//! [`stream`] (RabbitMQ streams: the daemons' history).

pub mod connect;
pub mod consume;
pub mod error;
pub mod headers;
pub mod publish;
pub mod rpc;
pub mod settings;
pub mod stream;
pub mod topology;

pub use connect::{Backoff, Link, random_u64};
pub use consume::{Consumer, Delivery, Tail};
pub use error::{
    BrokerError, CONFIRM_TIMEOUT, CONNECT_TIMEOUT, ErrorKind, OPERATION_TIMEOUT, SETTLE_TIMEOUT,
    SUBSCRIBE_TIMEOUT,
};
pub use publish::{Confirmed, Confirms, Outgoing, PUBLISH_WINDOW, Publisher, Publishers};
pub use rpc::RawReply;
pub use settings::{BrokerConfig, BrokerUrl};
pub use stream::{StreamMessage, StreamOffset, StreamReader, StreamSpec};
pub use topology::{Declare, ExchangeType, HeadersBinding, QueueSpec, Subscription, Unbind};

/// The lapin-level entry points, for the tests and benchmarks that drive the broker as any
/// client would (a raw connection, a channel, a table of headers). The tools never use them:
/// they go through [`Link`], [`Consumer`] and [`Publisher`].
pub mod raw {
    pub use super::connect::connect;
    pub use super::headers::{headers_from_table, headers_of, table_from_headers};
    pub use super::rpc::request;
    pub use super::topology::{
        declare_exchange, declare_queue, declare_topic_exchange, delete_queue,
    };
}
