//! The broker's topology: queues ([`QueueSpec`], [`Subscription`]), exchanges and bindings,
//! declared idempotently. A reader may start before any writer: binding to an exchange that
//! does not exist yet declares it (durable topic).

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::Link;
use super::error::{BrokerError, ErrorKind, bounded, classify};
use super::headers::table_from_headers;
use crate::headers::{HeaderValue, Headers};

/// The kinds of exchange ddmon declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes on the routing key's words (`log`, `log_<source>`).
    Topic,
    /// Routes everything to every binding (bind mode's alternate exchange).
    Fanout,
    /// Routes on header values (bind mode's per-source headers exchange).
    Headers,
}

impl ExchangeType {
    fn lapin(self) -> lapin::ExchangeKind {
        match self {
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// A queue to consume from.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Full queue name (`q_<user>.<tool>.<name>`).
    pub name: String,
    /// Survives a broker restart and the consumer's absence.
    pub durable: bool,
    /// Only this connection may use it, and it goes when the connection goes.
    pub exclusive: bool,
    /// Declared as a quorum queue (durable only).
    pub quorum: bool,
    /// Where rejected messages go, if anywhere.
    pub dead_letter_exchange: Option<String>,
}

impl QueueSpec {
    /// The queue name convention: `q_<user>.<tool>.<name>`, so that per-user permissions
    /// (`^q_<user>\..*`) can cover it.
    pub fn name_for(user: &str, tool: &str, name: &str) -> String {
        crate::topic::cut(&format!("q_{user}.{tool}.{name}")).to_string()
    }

    /// A durable, shared queue `q_<user>.<tool>.<name>` (capture, routing, a daemon's input):
    /// nothing is lost while its consumer is away.
    pub fn durable(
        user: &str,
        tool: &str,
        name: &str,
        quorum: bool,
        dead_letter_exchange: Option<String>,
    ) -> QueueSpec {
        QueueSpec {
            name: QueueSpec::name_for(user, tool, name),
            durable: true,
            exclusive: false,
            quorum,
            dead_letter_exchange,
        }
    }
}

/// What a consumer needs declared: its queue, bound to an exchange with some keys.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The topic exchange to read.
    pub exchange: String,
    /// Binding keys on that exchange.
    pub bindings: Vec<String>,
    /// The queue.
    pub queue: QueueSpec,
    /// A group's lock (SPEC §7): consume only while holding this exclusive queue (one member
    /// of the group at a time: the active), the input queue itself declared with RabbitMQ's
    /// single active consumer as the second guard. `None`: consume at once.
    pub active_lock: Option<String>,
}

/// A binding from a headers exchange to an exchange, matching one header's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeadersBinding {
    /// The exchange that receives what matches.
    pub destination: String,
    /// The headers exchange.
    pub headers_exchange: String,
    /// The header to match.
    pub header: String,
    /// Its value.
    pub value: String,
}

/// Declare a durable exchange of any kind with arguments (idempotent).
pub async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeType,
    args: &Headers,
) -> Result<(), BrokerError> {
    bounded(channel.exchange_declare(
        name.into(),
        kind.lapin(),
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        table_from_headers(args),
    ))
    .await
}

/// Bind exchange `destination` to exchange `source` (an exchange-to-exchange binding).
pub(crate) async fn bind_exchange(
    channel: &Channel,
    destination: &str,
    source: &str,
    routing_key: &str,
    args: &Headers,
) -> Result<(), BrokerError> {
    bounded(channel.exchange_bind(
        destination.into(),
        source.into(),
        routing_key.into(),
        ExchangeBindOptions::default(),
        table_from_headers(args),
    ))
    .await
}

/// Bind `b.destination` to its headers exchange on `x-match: all, <header>: <value>`.
pub(crate) async fn bind_headers(channel: &Channel, b: &HeadersBinding) -> Result<(), BrokerError> {
    let mut args = Headers::new();
    args.insert("x-match".into(), HeaderValue::Str("all".into()));
    args.insert(b.header.clone(), HeaderValue::Str(b.value.clone()));
    bind_exchange(channel, &b.destination, &b.headers_exchange, "", &args).await
}

/// Declare a durable topic exchange (idempotent).
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    declare_exchange(channel, name, ExchangeType::Topic, &Headers::new()).await
}

/// Declare the queue and its bindings on a fresh channel. A binding to an exchange that does
/// not exist yet declares the exchange (durable topic) and tries again, so a reader can start
/// before any writer; a user who may not create it gets the broker's refusal. Returns the
/// channel it was declared on.
pub async fn declare_queue(conn: &Connection, sub: &Subscription) -> Result<Channel, BrokerError> {
    let channel = conn.create_channel().await.map_err(classify)?;
    let mut args = FieldTable::default();
    if sub.queue.quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if let Some(dlx) = &sub.queue.dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
    }
    if sub.active_lock.is_some() {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    let opts = QueueDeclareOptions {
        durable: sub.queue.durable,
        exclusive: sub.queue.exclusive,
        auto_delete: sub.queue.exclusive,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(sub.queue.name.as_str().into(), opts, args)
        .await
        .map_err(|e| queue_mismatch(classify(e), sub))?;
    let mut channel = channel;
    for key in &sub.bindings {
        let bind = |ch: Channel| async move {
            ch.queue_bind(
                sub.queue.name.as_str().into(),
                sub.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(|_| ch)
        };
        channel = match bind(channel).await.map_err(classify) {
            Ok(ch) => ch,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // a mistyped --exchange would otherwise run on, silent, on a new exchange
                tracing::warn!(
                    exchange = %sub.exchange,
                    "exchange {:?} did not exist: declared it (a durable topic exchange); \
                     check the name if nothing arrives",
                    sub.exchange
                );
                let ch = conn.create_channel().await.map_err(classify)?;
                declare_topic_exchange(&ch, &sub.exchange).await?;
                bind(ch).await.map_err(classify)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(channel)
}

/// A queue that exists with other arguments (406): name it and say how to mend it.
fn queue_mismatch(e: BrokerError, sub: &Subscription) -> BrokerError {
    if e.kind() != ErrorKind::Precondition {
        return e;
    }
    let name = &sub.queue.name;
    let fix = if e.reason().contains("x-queue-type") {
        if sub.queue.quorum {
            "or drop --quorum to use it as it is"
        } else {
            "or add --quorum (quorum = true) to use it as it is"
        }
    } else {
        "or give the settings it was declared with"
    };
    e.noting(&format!(
        "the queue {name:?} already exists with other arguments: delete it \
         (rabbitmqctl delete_queue {name}, losing what it holds) {fix}"
    ))
}

/// Does the queue exist? A passive declare on a channel of its own: `Ok(false)` when the
/// broker says there is no such queue (another 404, such as a durable queue whose cluster
/// node is down, is an error: it exists, it cannot be reached).
pub(crate) async fn queue_exists(conn: &Connection, name: &str) -> Result<bool, BrokerError> {
    let ch = bounded(conn.create_channel()).await?;
    let found = bounded(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await;
    match found {
        Ok(_) => {
            let _ = bounded(ch.close(200, "OK".into())).await;
            Ok(true)
        }
        Err(e) if e.is_absent() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Delete a queue (tests and clean-up). Returns how many messages it held.
pub async fn delete_queue(conn: &Connection, name: &str) -> Result<u32, BrokerError> {
    let ch = conn.create_channel().await.map_err(classify)?;
    let n = ch
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .map_err(classify)?;
    let _ = ch.close(200, "OK".into()).await;
    Ok(n)
}

impl Link {
    /// Does the queue exist? (see [`queue_exists`]).
    pub async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        queue_exists(&self.conn, name).await
    }

    /// Declare a subscription's queue and bindings now (a consumer declares them again).
    pub async fn declare_subscription(&self, sub: &Subscription) -> Result<(), BrokerError> {
        let ch = declare_queue(&self.conn, sub).await?;
        let _ = bounded(ch.close(200, "OK".into())).await;
        Ok(())
    }

    /// Delete a queue; how many messages it held.
    pub async fn delete_queue(&self, name: &str) -> Result<u32, BrokerError> {
        delete_queue(&self.conn, name).await
    }

    /// Declare exchanges and bindings on one channel of this connection, in order.
    pub async fn declare(&self, steps: &[Declare<'_>]) -> Result<(), BrokerError> {
        let ch = bounded(self.conn.create_channel()).await?;
        for step in steps {
            match step {
                Declare::Exchange { name, kind, args } => {
                    declare_exchange(&ch, name, *kind, args).await?
                }
                Declare::ExchangeBinding {
                    destination,
                    source,
                    routing_key,
                } => bind_exchange(&ch, destination, source, routing_key, &Headers::new()).await?,
                Declare::HeadersBinding(b) => bind_headers(&ch, b).await?,
            }
        }
        let _ = bounded(ch.close(200, "OK".into())).await;
        Ok(())
    }
}

/// A binding to remove (see [`Link::unbind`]).
#[derive(Debug, Clone)]
pub enum Unbind<'a> {
    /// Queue `queue` from exchange `exchange` on `routing_key`.
    Queue {
        /// The queue.
        queue: &'a str,
        /// The exchange it is bound to.
        exchange: &'a str,
        /// The binding key.
        routing_key: &'a str,
    },
    /// Exchange `destination` from exchange `source` on `routing_key`.
    Exchange {
        /// The exchange that received.
        destination: &'a str,
        /// The exchange bound from.
        source: &'a str,
        /// The binding key.
        routing_key: &'a str,
    },
}

impl Link {
    /// Remove bindings, each on a channel of its own. A binding that is not there is no
    /// error (RabbitMQ says so too), nor is an exchange or queue that does not exist (then
    /// there is nothing bound to it): removing is idempotent.
    pub async fn unbind(&self, steps: &[Unbind<'_>]) -> Result<(), BrokerError> {
        for step in steps {
            let ch = bounded(self.conn.create_channel()).await?;
            let done = match step {
                Unbind::Queue {
                    queue,
                    exchange,
                    routing_key,
                } => {
                    bounded(ch.queue_unbind(
                        (*queue).into(),
                        (*exchange).into(),
                        (*routing_key).into(),
                        FieldTable::default(),
                    ))
                    .await
                }
                Unbind::Exchange {
                    destination,
                    source,
                    routing_key,
                } => {
                    bounded(ch.exchange_unbind(
                        (*destination).into(),
                        (*source).into(),
                        (*routing_key).into(),
                        lapin::options::ExchangeUnbindOptions::default(),
                        FieldTable::default(),
                    ))
                    .await
                }
            };
            match done {
                Ok(()) => {
                    let _ = bounded(ch.close(200, "OK".into())).await;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One step of a set-up on a [`Link`].
#[derive(Debug, Clone)]
pub enum Declare<'a> {
    /// A durable exchange of a kind, with arguments (`alternate-exchange`...).
    Exchange {
        /// Its name.
        name: &'a str,
        /// Its kind.
        kind: ExchangeType,
        /// Its arguments.
        args: Headers,
    },
    /// An exchange-to-exchange binding: `destination` receives what `source` routes on
    /// `routing_key`.
    ExchangeBinding {
        /// The exchange that receives.
        destination: &'a str,
        /// The exchange bound from.
        source: &'a str,
        /// The binding key.
        routing_key: &'a str,
    },
    /// A headers binding (see [`HeadersBinding`]).
    HeadersBinding(&'a HeadersBinding),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_convention() {
        assert_eq!(
            QueueSpec::name_for("guest", "dd_log", "capture"),
            "q_guest.dd_log.capture"
        );
    }
}
