//! RabbitMQ streams: an append-only queue kept by age and size, read from any offset by as
//! many readers as like, each reading everything. ddmon keeps its daemons' history in one
//! (the roster, SPEC §6): declared by whichever process comes first, read from its start by
//! a monitor that wants to know every daemon seen within the retention.
//!
//! Over AMQP 0-9-1 (RabbitMQ 3.9 and later) a stream is a durable queue with
//! `x-queue-type: stream`; a reader needs a prefetch and acknowledges what it read (credit,
//! not removal), and says where to start with the consumer argument `x-stream-offset`.
//! A reader knows it has read the history when it meets its own *mark*: a message it
//! published to the stream itself (through the default exchange) before it started reading.

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::Link;
use super::error::{BrokerError, ErrorKind, bounded, classify};

/// A stream, its retention, and the keys of an exchange it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Its (queue) name.
    pub name: String,
    /// The topic exchange it is bound to.
    pub exchange: String,
    /// The binding keys.
    pub bindings: Vec<String>,
    /// Messages older than this many seconds go (`x-max-age`, a segment at a time).
    pub max_age_s: u64,
    /// At most this many bytes are kept (`x-max-length-bytes`, a segment at a time).
    pub max_bytes: u64,
}

impl StreamSpec {
    /// The segment size: retention removes whole segments, so a segment is a small part of
    /// the size bound (a tenth, between 1 MiB and RabbitMQ's default 500 MB).
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 10).clamp(1 << 20, 500_000_000)
    }

    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", self.max_age_s).into()),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.segment_bytes()).unwrap_or(i64::MAX)),
        );
        args
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest message kept.
    First,
    /// Only what arrives from now on.
    Next,
    /// The message with this offset (a reader resuming after a lost connection).
    At(i64),
    /// The first message stored at or after this time (seconds since the epoch).
    Since(u64),
}

impl StreamOffset {
    fn argument(self) -> AMQPValue {
        match self {
            StreamOffset::First => AMQPValue::LongString("first".into()),
            StreamOffset::Next => AMQPValue::LongString("next".into()),
            StreamOffset::At(n) => AMQPValue::LongLongInt(n),
            StreamOffset::Since(t) => AMQPValue::Timestamp(t),
        }
    }
}

/// Declare the stream and its bindings on a fresh channel (idempotent). A stream that exists
/// with other arguments (another retention) is used as it is: `Ok(false)`, the caller says so.
/// An exchange that does not exist is [`ErrorKind::NotFound`], and nothing is declared (a
/// monitor asked about a mistyped exchange leaves no stream behind).
pub async fn declare_stream(conn: &Connection, spec: &StreamSpec) -> Result<bool, BrokerError> {
    // (no exchange: a stream written through the default one, a group's state)
    if !spec.exchange.is_empty() {
        let check = bounded(conn.create_channel()).await?;
        bounded(check.exchange_declare(
            spec.exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ))
        .await?;
        let _ = check.close(200, "OK".into()).await;
    }
    let channel = bounded(conn.create_channel()).await?;
    let opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let as_asked =
        match bounded(channel.queue_declare(spec.name.as_str().into(), opts, spec.arguments()))
            .await
        {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::Precondition => false,
            Err(e) => return Err(e),
        };
    let channel = if as_asked {
        channel
    } else {
        bounded(conn.create_channel()).await?
    };
    for key in &spec.bindings {
        bounded(channel.queue_bind(
            spec.name.as_str().into(),
            spec.exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await?;
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(as_asked)
}

/// A reader of a stream, on a [`Link`]'s connection.
pub struct StreamReader {
    channel: Channel,
    stream: lapin::Consumer,
    /// Acknowledged in runs (credit for the next ones): the last delivery not yet acked.
    unacked: Option<lapin::Acker>,
    count: u32,
}

impl Link {
    /// Declare `spec` on this connection (see [`declare_stream`]).
    pub async fn declare_stream(&self, spec: &StreamSpec) -> Result<bool, BrokerError> {
        declare_stream(&self.conn, spec).await
    }

    /// Publish a mark to stream `name` (through the default exchange, confirmed): a reader
    /// that meets a message with this `mark` as its message id has read everything stored
    /// before it.
    pub async fn mark_stream(&self, name: &str, mark: &str) -> Result<(), BrokerError> {
        let ch = bounded(self.conn.create_channel()).await?;
        bounded(ch.confirm_select(ConfirmSelectOptions::default())).await?;
        let confirm = bounded(ch.basic_publish(
            "".into(),
            name.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"{}",
            BasicProperties::default().with_message_id(ShortString::from(mark)),
        ))
        .await?;
        let confirmation = bounded(confirm).await?;
        let _ = ch.close(200, "OK".into()).await;
        if confirmation.take_message().is_some() {
            return Err(BrokerError::new(
                ErrorKind::NotFound,
                format!("no stream {name:?} took the mark"),
            ));
        }
        Ok(())
    }

    /// Read stream `name` from `offset`, at most `prefetch` deliveries unacknowledged.
    pub async fn read_stream(
        &self,
        name: &str,
        offset: StreamOffset,
        prefetch: u16,
    ) -> Result<StreamReader, BrokerError> {
        let channel = bounded(self.conn.create_channel()).await?;
        bounded(channel.basic_qos(prefetch.max(1), BasicQosOptions::default())).await?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), offset.argument());
        let stream = bounded(
            channel.basic_consume(
                name.into(),
                format!("stream.{:08x}", super::random_u64() as u32)
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                args,
            ),
        )
        .await?;
        Ok(StreamReader {
            channel,
            stream,
            unacked: None,
            count: 0,
        })
    }
}

impl StreamReader {
    /// The next message (`None`: the channel or connection closed). Credit is given back in
    /// runs: every 64 messages, and whenever the reader would wait for more.
    pub async fn next(&mut self) -> Option<Result<StreamMessage, BrokerError>> {
        let ready = futures_lite::future::poll_once(self.stream.next()).await;
        let got = match ready {
            Some(x) => x,
            None => {
                self.credit().await;
                self.stream.next().await
            }
        };
        let d = match got? {
            Ok(d) => d,
            Err(e) => return Some(Err(classify(e))),
        };
        let offset = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(n),
                AMQPValue::LongInt(n) => Some(i64::from(n)),
                _ => None,
            });
        let message = StreamMessage {
            offset,
            mark: d.properties.message_id().as_ref().map(|m| m.to_string()),
            routing_key: d.routing_key.to_string(),
            body: d.data,
        };
        self.unacked = Some(d.acker);
        self.count += 1;
        if self.count >= 64 {
            self.credit().await;
        }
        Some(Ok(message))
    }

    async fn credit(&mut self) {
        if let Some(a) = self.unacked.take() {
            let _ = a.ack(BasicAckOptions { multiple: true }).await;
        }
        self.count = 0;
    }

    /// Stop reading (bounded).
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.channel.close(200, "OK".into()),
        )
        .await;
    }
}

/// One message read from a stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Its offset in the stream.
    pub offset: Option<i64>,
    /// Its message id, when it is a reader's mark.
    pub mark: Option<String>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its body.
    pub body: Vec<u8>,
}
