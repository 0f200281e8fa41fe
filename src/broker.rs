//! The only place that touches lapin: connect, recover, declare, consume, publish with
//! confirms, acknowledge, close.
//!
//! One reconnect policy for every tool: a broker that is down or goes away is retried with
//! capped exponential backoff and jitter, each attempt logged once at warn; after it comes
//! back the topology is declared again and consuming resumes. A refusal that retrying cannot
//! fix (bad credentials, a missing permission, an unknown vhost, a queue declared with other
//! arguments) is returned at once as [`BrokerError::Refused`], with the broker's reason.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{BrokerConfig, mask_url};
use crate::daemon::Shutdown;
use crate::record::{HeaderValue, Headers};

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker said no, and asking again will not change its mind.
    #[error("broker refused: {0}")]
    Refused(String),
    /// The broker cannot be reached or went away (retried by the reconnect loop).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// A local problem: an unreadable CA file, a bad URL.
    #[error("{0}")]
    Setup(String),
}

impl BrokerError {
    /// Can a retry help?
    pub fn is_transient(&self) -> bool {
        matches!(self, BrokerError::Unreachable(_))
    }

    /// Access refused (403) or not allowed (530): a login or permission no retry can mend
    /// (unlike, say, an exchange not declared yet).
    pub fn denies_access(&self) -> bool {
        matches!(self, BrokerError::Refused(m) if m.contains("(403)") || m.contains("(530)"))
    }
}

/// Sort a lapin error into "retry" or "give up". AMQP reply codes that no retry can change:
/// 403 access refused, 404 not found, 406 precondition failed, 530 not allowed, 402 invalid
/// path, 501-505 protocol errors, 540 not implemented.
fn classify(e: lapin::Error) -> BrokerError {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        let code = amqp.get_id();
        let text = format!("{} ({code})", amqp.get_message());
        return match code {
            320 | 311 | 312 | 313 | 504 | 506 | 541 => BrokerError::Unreachable(text),
            _ => BrokerError::Refused(text),
        };
    }
    match e.kind() {
        lapin::ErrorKind::AuthProviderError(msg) => BrokerError::Refused(msg.clone()),
        _ => {
            let text = e.to_string();
            // A certificate that cannot be verified (unknown CA, wrong host name, expired)
            // will not verify on the next try either.
            if is_certificate_error(&text) {
                BrokerError::Refused(format!(
                    "TLS: the broker's certificate was refused ({text}); give the CA that \
                     signs it with --tls-ca, and a host name it names"
                ))
            } else {
                BrokerError::Unreachable(text)
            }
        }
    }
}

/// Does a connection error say the broker's certificate could not be verified?
fn is_certificate_error(text: &str) -> bool {
    text.contains("invalid peer certificate") || text.contains("certificate verify failed")
}

/// A pseudo-random number from the process's hasher keys: enough for jitter and unique names
/// without another dependency.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Capped exponential backoff with full jitter (each wait is random in [d/2, d]).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from the broker settings.
    pub fn new(cfg: &BrokerConfig) -> Self {
        let min = Duration::from_millis(cfg.reconnect_min_ms);
        Backoff {
            min,
            max: Duration::from_millis(cfg.reconnect_max_ms),
            next: min,
        }
    }

    /// The next wait, doubling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random_u64() % jitter_ms)
    }

    /// Sleep the next wait (logged at debug); `false` if a stop was asked for meanwhile.
    pub async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let wait = self.next_delay();
        tracing::debug!(retry_in_ms = wait.as_millis() as u64, "backing off");
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.requested() => false,
        }
    }

    /// Back to the shortest wait (after a successful connection).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long one connection attempt may take (TCP, TLS and the AMQP handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a declaration, a channel opening or a close may take. A broker coming back from a
/// restart can leave a half-open connection that never answers: the operation then fails
/// (and is retried on a new connection) instead of hanging the tool.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the broker may take to confirm a batch before it is published again on a new
/// connection.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long declaring a queue, binding it and subscribing may take (quorum queues in a
/// cluster missing a node are slow to declare).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an ack or reject may take to be handed to the connection.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run a broker operation with [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(r) => r.map_err(classify),
        Err(_) => Err(BrokerError::Unreachable(format!(
            "the broker did not answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

/// Does the queue exist? A passive declare on a channel of its own: `Ok(false)` when the
/// broker says there is no such queue (another 404, such as a durable queue whose cluster
/// node is down, is an error: it exists, it cannot be reached).
pub async fn queue_exists(conn: &Connection, name: &str) -> Result<bool, BrokerError> {
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
        Err(BrokerError::Refused(m)) if m.contains("(404)") && m.contains("no queue") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Close a connection without waiting long for a broker that may be gone.
async fn close_quietly(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, why.into())).await;
}

/// Open one connection, named after the tool so the broker's view shows who is connected.
/// With several URLs (the nodes of a cluster) each is tried in turn: a node that cannot be
/// reached passes to the next; a refusal (login, certificate) is final.
pub async fn connect(cfg: &BrokerConfig, name: &str) -> Result<Connection, BrokerError> {
    let urls = cfg.urls();
    let mut last = BrokerError::Setup("no broker URL".into());
    for (i, url) in urls.iter().enumerate() {
        match connect_one(cfg, url, name).await {
            Ok(c) => {
                if i > 0 {
                    tracing::info!(node = %mask_url(url), "connected to another node of the cluster");
                }
                return Ok(c);
            }
            Err(e) if e.is_transient() => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

async fn connect_one(cfg: &BrokerConfig, url: &str, name: &str) -> Result<Connection, BrokerError> {
    let tls = match &cfg.tls_ca {
        None => lapin::tcp::OwnedTLSConfig::default(),
        Some(path) => lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                BrokerError::Setup(format!("cannot read CA file {}: {e}", path.display()))
            })?),
        },
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| BrokerError::Setup(e.to_string()))?;
    // A broker that accepts the TCP connection but never answers (booting, wedged) must not
    // hang the tool: the attempt fails and the backoff retries.
    let attempt = Connection::connect_with_config(url, props, tls, runtime);
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| BrokerError::Unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))
        .and_then(|r| r.map_err(classify))
        .map_err(|e| match e {
            // lapin reports a login refused by the broker as a closed socket on some paths;
            // name the URL (masked) so the operator knows which broker said no.
            BrokerError::Refused(m) => BrokerError::Refused(format!("{m} at {}", mask_url(url))),
            BrokerError::Unreachable(m) => {
                BrokerError::Unreachable(format!("{m} at {}", mask_url(url)))
            }
            other => other,
        })
}

/// Connect, retrying transient failures with backoff until `shutdown` fires (then `None`).
pub async fn connect_with_retry(
    cfg: &BrokerConfig,
    name: &str,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
) -> Result<Option<Connection>, BrokerError> {
    loop {
        if shutdown.is_requested() {
            return Ok(None);
        }
        match connect(cfg, name).await {
            Ok(c) => {
                backoff.reset();
                return Ok(Some(c));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot reach broker, retrying");
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
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
    kind: ExchangeKind,
    args: &Headers,
) -> Result<(), BrokerError> {
    bounded(channel.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        table_from_headers(args),
    ))
    .await
}

/// Bind exchange `destination` to exchange `source` (an exchange-to-exchange binding).
pub async fn bind_exchange(
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
        lapin::options::ExchangeBindOptions::default(),
        table_from_headers(args),
    ))
    .await
}

/// Bind `b.destination` to its headers exchange on `x-match: all, <header>: <value>`.
pub async fn bind_headers(channel: &Channel, b: &HeadersBinding) -> Result<(), BrokerError> {
    let mut args = Headers::new();
    args.insert("x-match".into(), HeaderValue::Str("all".into()));
    args.insert(b.header.clone(), HeaderValue::Str(b.value.clone()));
    bind_exchange(channel, &b.destination, &b.headers_exchange, "", &args).await
}

/// Declare a durable topic exchange (idempotent).
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    bounded(channel.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
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
    let opts = QueueDeclareOptions {
        durable: sub.queue.durable,
        exclusive: sub.queue.exclusive,
        auto_delete: sub.queue.exclusive,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(sub.queue.name.as_str().into(), opts, args)
        .await
        .map_err(classify)?;
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
        channel = match bind(channel).await {
            Ok(ch) => ch,
            Err(e) if is_not_found(&e) => {
                tracing::info!(exchange = %sub.exchange, "exchange missing: declaring it");
                let ch = conn.create_channel().await.map_err(classify)?;
                declare_topic_exchange(&ch, &sub.exchange).await?;
                bind(ch).await.map_err(classify)?
            }
            Err(e) => return Err(classify(e)),
        };
    }
    Ok(channel)
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404)
}

/// One message as delivered, with what is needed to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    /// The routing key it was published with.
    pub routing_key: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its headers, converted.
    pub headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
    /// Was it delivered before (to us or another consumer) without being acknowledged?
    pub redelivered: bool,
    /// Where a request wants its reply.
    pub reply_to: Option<String>,
    /// A request's correlation id.
    pub correlation_id: Option<String>,
    inner: lapin::message::Delivery,
}

impl Delivery {
    /// Acknowledge: its effect is durable. If the channel it came on is gone, the broker
    /// redelivers it (at-least-once); that is logged, not an error.
    pub async fn ack(&self) {
        self.settle("ack", self.inner.acker.ack(BasicAckOptions::default()))
            .await;
    }

    /// Acknowledge this delivery and every earlier one of its channel not yet settled (one
    /// frame for a batch). Only for a caller that knows every earlier delivery of the channel
    /// is settled or meant to be acknowledged now.
    pub async fn ack_up_to(&self) {
        let opts = BasicAckOptions { multiple: true };
        self.settle("ack", self.inner.acker.ack(opts)).await;
    }

    /// Reject without requeue: it can never succeed (dead-lettered where the queue has a
    /// dead-letter exchange, else dropped by the broker after being counted by the tool).
    pub async fn reject(&self) {
        let opts = BasicRejectOptions { requeue: false };
        self.settle("reject", self.inner.acker.reject(opts)).await;
    }

    /// Bounded by [`SETTLE_TIMEOUT`]: lapin may never settle an ack asked for just as its
    /// connection died (seen after a broker restart: dd_speedo waited there forever, its
    /// consumers gone and nothing logged). Not settled means redelivered by the broker.
    async fn settle(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<bool, lapin::Error>>,
    ) {
        match tokio::time::timeout(SETTLE_TIMEOUT, op).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "{what} on a closed channel: the broker will redeliver")
            }
            Err(_) => tracing::warn!(
                "{what} not sent within {SETTLE_TIMEOUT:?} (connection lost?): the broker will redeliver"
            ),
        }
    }
}

/// A consumer that survives the broker going away: [`Consumer::next`] reconnects, declares
/// again and resumes; unacknowledged messages of the lost channel are redelivered by the broker.
pub struct Consumer {
    cfg: BrokerConfig,
    name: String,
    sub: Subscription,
    shutdown: Shutdown,
    backoff: Backoff,
    live: Option<Live>,
    /// A (re)connection under way, in its own task, so that a `select!` that drops
    /// [`Consumer::next`] (a tick, a request) never abandons a half-made subscription.
    establishing: Option<Establishing>,
    /// The last connection was lost: back off before the next attempt.
    lost: bool,
    /// When to look whether the connection is still open.
    watch: tokio::time::Interval,
}

type Establishing = tokio::task::JoinHandle<(Backoff, Result<Option<Live>, BrokerError>)>;

struct Live {
    conn: Connection,
    channel: Channel,
    stream: lapin::Consumer,
    tag: String,
}

impl Consumer {
    /// Connect (retrying while the broker is unreachable), declare and start consuming.
    /// `Ok(None)` when a stop was asked for before the broker answered.
    pub async fn start(
        cfg: &BrokerConfig,
        name: &str,
        sub: Subscription,
        shutdown: Shutdown,
    ) -> Result<Option<Consumer>, BrokerError> {
        let mut c = Consumer {
            cfg: cfg.clone(),
            name: name.to_string(),
            sub,
            backoff: Backoff::new(cfg),
            shutdown,
            live: None,
            establishing: None,
            lost: false,
            watch: {
                let mut i = tokio::time::interval(Duration::from_secs(1));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            },
        };
        if c.establish().await? {
            Ok(Some(c))
        } else {
            Ok(None)
        }
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        &self.sub.queue.name
    }

    /// Connect, declare and subscribe, in a task of its own: awaiting it is cancel-safe (a
    /// dropped wait leaves the task running; the next call picks up its result).
    async fn establish(&mut self) -> Result<bool, BrokerError> {
        if self.establishing.is_none() {
            let cfg = self.cfg.clone();
            let name = self.name.clone();
            let sub = self.sub.clone();
            let mut shutdown = self.shutdown.clone();
            let mut backoff = self.backoff.clone();
            let wait_first = std::mem::take(&mut self.lost);
            self.establishing = Some(tokio::spawn(async move {
                if wait_first && !backoff.wait(&mut shutdown).await {
                    return (backoff, Ok(None));
                }
                let r = establish(&cfg, &name, &sub, &mut backoff, &mut shutdown).await;
                (backoff, r)
            }));
        }
        let Some(task) = self.establishing.as_mut() else {
            return Ok(false);
        };
        let joined = task.await;
        self.establishing = None;
        let (backoff, outcome) =
            joined.map_err(|e| BrokerError::Setup(format!("reconnection task failed: {e}")))?;
        self.backoff = backoff;
        match outcome? {
            Some(live) => {
                self.live = Some(live);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next delivery; `Ok(None)` once a stop was asked for.
    ///
    /// Cancel-safe (it may lose a `select!`): a connection lost while waiting is dropped, and
    /// the next call establishes a new one.
    pub async fn next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        loop {
            if self.shutdown.is_requested() {
                return Ok(None);
            }
            let Some(live) = self.live.as_mut() else {
                if !self.establish().await? {
                    return Ok(None);
                }
                continue;
            };
            let item = tokio::select! {
                biased;
                _ = self.shutdown.requested() => return Ok(None),
                item = live.stream.next() => Some(item),
                // lapin may miss telling a consumer that its connection died: look as well
                _ = self.watch.tick() => {
                    if live.channel.status().connected() && live.conn.status().connected() {
                        continue;
                    }
                    None
                }
            };
            match item {
                Some(Some(Ok(d))) => return Ok(Some(convert(d))),
                Some(Some(Err(e))) => {
                    let e = classify(e);
                    if !e.is_transient() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "lost the broker, reconnecting");
                }
                Some(None) => {
                    tracing::warn!("consumer cancelled or connection closed, reconnecting")
                }
                None => tracing::warn!("the connection is no longer open, reconnecting"),
            }
            if let Some(old) = self.live.take() {
                // closed in the background: this wait may itself be dropped by a select
                tokio::spawn(async move { close_quietly(&old.conn, "reconnecting").await });
            }
            self.lost = true;
        }
    }

    /// Stop consuming and close the channel and connection. Messages received but not
    /// acknowledged go back to the queue.
    pub async fn close(mut self) {
        if let Some(task) = self.establishing.take() {
            // a reconnection under way ends on the stop (it watches the same shutdown)
            if let Ok((_, Ok(Some(live)))) = task.await {
                self.live = Some(live);
            }
        }
        if let Some(live) = self.live.take() {
            let _ = bounded(
                live.channel
                    .basic_cancel(live.tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
            let _ = bounded(live.channel.close(200, "OK".into())).await;
            close_quietly(&live.conn, "OK").await;
        }
    }
}

/// Connect (retrying while the broker is unreachable), declare and subscribe; `None` when a
/// stop was asked for first.
async fn establish(
    cfg: &BrokerConfig,
    name: &str,
    sub: &Subscription,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
) -> Result<Option<Live>, BrokerError> {
    loop {
        // Named after the tool and its queue, so the broker's connection list (and a test
        // that must cut one connection) can tell them apart.
        let conn_name = format!("{name} {}", sub.queue.name);
        let Some(conn) = connect_with_retry(cfg, &conn_name, backoff, shutdown).await? else {
            return Ok(None);
        };
        // Bounded (a connection opened while the broker boots may never answer), and the
        // connection given up is closed: a consumer registered by a late answer goes with it
        // instead of holding deliveries unacknowledged.
        let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(cfg, name, sub, &conn))
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Unreachable(format!(
                    "the broker did not answer the subscription within {SUBSCRIBE_TIMEOUT:?}"
                )))
            });
        match subscribed {
            Ok((channel, stream, tag)) => {
                tracing::info!(queue = %sub.queue.name, exchange = %sub.exchange, "consuming");
                return Ok(Some(Live {
                    conn,
                    channel,
                    stream,
                    tag,
                }));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot subscribe, retrying");
                close_quietly(&conn, "subscription failed").await;
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn subscribe(
    cfg: &BrokerConfig,
    name: &str,
    sub: &Subscription,
    conn: &Connection,
) -> Result<(Channel, lapin::Consumer, String), BrokerError> {
    let channel = declare_queue(conn, sub).await?;
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .map_err(classify)?;
    let tag = format!("{name}.{:08x}", random_u64() as u32);
    let stream = channel
        .basic_consume(
            sub.queue.name.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(classify)?;
    Ok((channel, stream, tag))
}

fn convert(mut d: lapin::message::Delivery) -> Delivery {
    // The body moves out of lapin's delivery: no copy on the hot path.
    let body = std::mem::take(&mut d.data);
    let headers = headers_of(&d.properties);
    Delivery {
        routing_key: d.routing_key.to_string(),
        exchange: d.exchange.to_string(),
        headers,
        body,
        redelivered: d.redelivered,
        reply_to: d.properties.reply_to().as_ref().map(|s| s.to_string()),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string()),
        inner: d,
    }
}

/// A message's headers, converted (none: empty).
pub fn headers_of(props: &BasicProperties) -> Headers {
    props
        .headers()
        .as_ref()
        .map(headers_from_table)
        .unwrap_or_default()
}

/// Convert an AMQP table to [`Headers`].
pub fn headers_from_table(t: &FieldTable) -> Headers {
    t.inner()
        .iter()
        .map(|(k, v)| (k.to_string(), header_value(v)))
        .collect()
}

fn header_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => {
            HeaderValue::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_string()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(a) => {
            HeaderValue::Array(a.as_slice().iter().map(header_value).collect())
        }
        AMQPValue::FieldTable(t) => HeaderValue::Table(headers_from_table(t)),
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Bytes(Vec::new()),
    }
}

/// Convert [`Headers`] to an AMQP table (strings become long strings).
pub fn table_from_headers(h: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        t.insert(ShortString::from(k.as_str()), amqp_value(v));
    }
    t
}

fn amqp_value(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Table(t) => AMQPValue::FieldTable(table_from_headers(t)),
        HeaderValue::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(amqp_value(x));
            }
            AMQPValue::FieldArray(arr)
        }
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// MIME type of the body, if any.
    pub content_type: Option<String>,
    /// Correlation id (a reply carries its request's).
    pub correlation_id: Option<String>,
    /// Ask the broker to return the message when no queue receives it.
    pub mandatory: bool,
    /// Another broker to publish to, by name (see [`Publishers`]); `None`: the local one.
    pub broker: Option<String>,
    /// A copy keeps every property of the original (then `headers`, `content_type` and
    /// `correlation_id` are not used). Set by [`Outgoing::copy_of`].
    pub properties: Option<BasicProperties>,
}

impl Outgoing {
    /// The same message (body, headers, routing key, every property) for another exchange.
    pub fn copy_of(d: &Delivery, exchange: &str) -> Outgoing {
        Outgoing {
            exchange: exchange.to_string(),
            routing_key: d.routing_key.clone(),
            headers: d.headers.clone(),
            body: d.body.clone(),
            properties: Some(d.inner.properties.clone()),
            ..Outgoing::default()
        }
    }
}

/// What the broker confirmed for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Indices (in the batch) of `mandatory` messages the broker returned as unroutable: no
    /// queue was bound to receive them.
    pub returned: Vec<usize>,
}

/// The broker's confirms of a batch sent with [`Publisher::send`], still to come.
#[derive(Debug)]
pub struct Confirms(tokio::sync::oneshot::Receiver<Result<Confirmed, BrokerError>>);

impl Confirms {
    /// Wait for them (cancel-safe: may be awaited again after losing a `select!`).
    pub async fn wait(&mut self) -> Result<Confirmed, BrokerError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(_) => Err(BrokerError::Unreachable(
                "confirms lost with the connection".into(),
            )),
        }
    }

    /// Their outcome if it is already here (`None`: not yet). Once taken, it is gone.
    pub fn ready(&mut self) -> Option<Result<Confirmed, BrokerError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(Err(BrokerError::Unreachable(
                "confirms lost with the connection".into(),
            ))),
        }
    }
}

/// A publisher with confirms: a message counts as published only when the broker confirmed
/// it. On a lost connection it reconnects and publishes again what was not confirmed
/// (at-least-once).
pub struct Publisher {
    cfg: BrokerConfig,
    name: String,
    shutdown: Shutdown,
    backoff: Backoff,
    live: Option<(Connection, Channel)>,
    declared: std::collections::BTreeSet<String>,
    /// Exchanges that exist with other properties: used as they are, never declared again.
    as_is: std::collections::BTreeSet<String>,
    bound: std::collections::BTreeSet<HeadersBinding>,
}

impl Publisher {
    /// Connect (retrying while the broker is unreachable) with confirms enabled.
    pub async fn connect(
        cfg: &BrokerConfig,
        name: &str,
        shutdown: Shutdown,
    ) -> Result<Publisher, BrokerError> {
        let mut p = Publisher {
            cfg: cfg.clone(),
            name: name.to_string(),
            shutdown,
            backoff: Backoff::new(cfg),
            live: None,
            declared: Default::default(),
            as_is: Default::default(),
            bound: Default::default(),
        };
        p.ensure().await?;
        Ok(p)
    }

    async fn ensure(&mut self) -> Result<&Channel, BrokerError> {
        if self.live.is_none() {
            let conn =
                connect_with_retry(&self.cfg, &self.name, &mut self.backoff, &mut self.shutdown)
                    .await?
                    .ok_or_else(|| BrokerError::Unreachable("stopped while connecting".into()))?;
            let channel = bounded(conn.create_channel()).await?;
            bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            for ex in &self.declared {
                declare_topic_exchange(&channel, ex).await?;
            }
            self.live = Some((conn, channel));
        }
        match &self.live {
            Some((_, ch)) => Ok(ch),
            None => Err(BrokerError::Unreachable("no channel".into())),
        }
    }

    /// Declare a durable topic exchange now and again after every reconnection (once: an
    /// exchange already declared by this publisher is not declared again).
    pub async fn declare_exchange(&mut self, name: &str) -> Result<(), BrokerError> {
        if (self.declared.contains(name) && self.live.is_some()) || self.as_is.contains(name) {
            return Ok(());
        }
        let ch = self.ensure().await?;
        match declare_topic_exchange(ch, name).await {
            Ok(()) => {}
            // It exists, with other properties (a fanout, not durable...): no reason to stop
            // a daemon (and crash-loop it on every restart). The broker closed the channel:
            // open a new one, check that it exists, and publish to it as it is.
            Err(BrokerError::Refused(m)) if m.contains("(406)") => {
                self.reset().await;
                let ch = self.ensure().await?;
                bounded(ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ))
                .await?;
                tracing::warn!(exchange = %name, "exchange exists with other properties than a durable topic exchange: used as it is");
                self.as_is.insert(name.to_string());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.declared.insert(name.to_string());
        Ok(())
    }

    /// Bind with a headers binding (once per publisher; bindings are durable in the broker).
    pub async fn bind_headers(&mut self, b: &HeadersBinding) -> Result<(), BrokerError> {
        if self.bound.contains(b) {
            return Ok(());
        }
        let ch = self.ensure().await?;
        bind_headers(ch, b).await?;
        self.bound.insert(b.clone());
        Ok(())
    }

    /// Publish a batch, pipelined, and wait until the broker confirmed every message. When the
    /// connection breaks before every confirm arrived, the whole batch is published again after
    /// reconnecting (at-least-once: the broker may see some twice).
    pub async fn publish_all(&mut self, msgs: &[Outgoing]) -> Result<Confirmed, BrokerError> {
        // once stopping, one more connection is still tried (the connection may have died
        // quietly, as when a cluster node stops), then no more
        let mut last_chance = true;
        loop {
            let outcome = match self.send(msgs).await {
                Ok(mut confirms) => confirms.wait().await,
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_transient() && (!self.shutdown.is_requested() || last_chance) => {
                    if self.shutdown.is_requested() {
                        last_chance = false;
                    }
                    tracing::warn!(error = %e, "publish interrupted, reconnecting");
                    self.reset().await;
                }
                other => return other,
            }
        }
    }

    /// Publish a batch without waiting for the broker: the returned [`Confirms`] resolves once
    /// every message was confirmed. After an error (here or from the confirms), call
    /// [`Publisher::reset`] and send again.
    pub async fn send(&mut self, msgs: &[Outgoing]) -> Result<Confirms, BrokerError> {
        let ch = self.ensure().await?.clone();
        let mut confirms = Vec::with_capacity(msgs.len());
        for m in msgs {
            let props = match &m.properties {
                Some(p) => p.clone(),
                None => {
                    let mut props = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(table_from_headers(&m.headers));
                    if let Some(ct) = &m.content_type {
                        props = props.with_content_type(ct.as_str().into());
                    }
                    if let Some(id) = &m.correlation_id {
                        props = props.with_correlation_id(id.as_str().into());
                    }
                    props
                }
            };
            let opts = BasicPublishOptions {
                mandatory: m.mandatory,
                ..BasicPublishOptions::default()
            };
            // Bounded: on a connection that died under it, lapin may never finish a publish
            // (seen after a broker restart: a daemon publishing every second hung there, no
            // error, no log); the timeout makes it an error, and the caller reconnects.
            let c = bounded(ch.basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                opts,
                &m.body,
                props,
            ))
            .await?;
            confirms.push(c);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent_at = std::time::Instant::now();
        tokio::spawn(async move {
            let mut returned = Vec::new();
            for (i, c) in confirms.into_iter().enumerate() {
                // lapin does not always settle a confirm whose channel died with the broker:
                // watch the channel, so that a lost connection is an error (and a resend), not
                // a wait forever.
                // A broker that never confirms (seen on connections opened while it was
                // restarting) gets the same treatment after CONFIRM_TIMEOUT: the batch is
                // published again on a new connection (duplicates, never a stall).
                let mut c = Box::pin(c);
                let outcome = loop {
                    tokio::select! {
                        r = &mut c => break r,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            let why = if !ch.status().connected() {
                                "channel closed before the broker confirmed"
                            } else if sent_at.elapsed() > CONFIRM_TIMEOUT {
                                "no confirm from the broker in time"
                            } else {
                                continue;
                            };
                            let _ = tx.send(Err(BrokerError::Unreachable(why.into())));
                            return;
                        }
                    }
                };
                match outcome {
                    Ok(conf) if conf.is_ack() => {
                        if conf.take_message().is_some() {
                            returned.push(i);
                        }
                    }
                    Ok(_) => {
                        let nack =
                            BrokerError::Unreachable("the broker refused (nack) a message".into());
                        let _ = tx.send(Err(nack));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(classify(e)));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(Confirmed { returned }));
        });
        Ok(Confirms(rx))
    }

    /// Drop the connection after an error, so that the next send reconnects.
    pub async fn reset(&mut self) {
        if let Some((conn, _)) = self.live.take() {
            close_quietly(&conn, "reconnecting").await;
        }
    }

    /// Close the channel and connection.
    pub async fn close(mut self) {
        if let Some((conn, ch)) = self.live.take() {
            let _ = bounded(ch.close(200, "OK".into())).await;
            close_quietly(&conn, "OK").await;
        }
    }
}

/// A reply to a request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply's body.
    pub body: Vec<u8>,
}

/// Publish a request to `exchange` with `routing_key` and collect the replies that arrive
/// within `wait` (through RabbitMQ's direct reply-to), stopping early after `max` replies.
pub async fn request(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    wait: Duration,
    max: Option<usize>,
) -> Result<Vec<Reply>, BrokerError> {
    const REPLY_TO: &str = "amq.rabbitmq.reply-to";
    let ch = conn.create_channel().await.map_err(classify)?;
    let mut replies = ch
        .basic_consume(
            REPLY_TO.into(),
            format!("request.{:08x}", random_u64() as u32)
                .as_str()
                .into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(classify)?;
    let id = format!("{:016x}", random_u64());
    let props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id(id.as_str().into())
        .with_content_type("application/json".into());
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .map_err(classify)?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while max.is_none_or(|m| out.len() < m) {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(classify(e)),
            Ok(Some(Ok(d))) => {
                let matches = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == id);
                if matches {
                    out.push(Reply { body: d.data });
                }
            }
        }
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(out)
}

/// The local publisher and publishers to other brokers (other clusters), opened on first use.
/// A batch whose messages go to several brokers is confirmed when every broker confirmed.
pub struct Publishers {
    local: Publisher,
    remotes: BTreeMap<String, Publisher>,
    configs: BTreeMap<String, BrokerConfig>,
    name: String,
    shutdown: Shutdown,
}

impl Publishers {
    /// Wrap the local publisher; `configs` name the other brokers.
    pub fn new(
        local: Publisher,
        configs: BTreeMap<String, BrokerConfig>,
        name: &str,
        shutdown: Shutdown,
    ) -> Publishers {
        Publishers {
            local,
            remotes: BTreeMap::new(),
            configs,
            name: name.to_string(),
            shutdown,
        }
    }

    /// The local publisher.
    pub fn local(&mut self) -> &mut Publisher {
        &mut self.local
    }

    async fn target(&mut self, broker: Option<&str>) -> Result<&mut Publisher, BrokerError> {
        let Some(name) = broker else {
            return Ok(&mut self.local);
        };
        if !self.remotes.contains_key(name) {
            let cfg = self
                .configs
                .get(name)
                .ok_or_else(|| BrokerError::Setup(format!("no broker configured for {name:?}")))?;
            let conn_name = format!("{} to {name}", self.name);
            let p = Publisher::connect(cfg, &conn_name, self.shutdown.clone()).await?;
            self.remotes.insert(name.to_string(), p);
        }
        self.remotes
            .get_mut(name)
            .ok_or_else(|| BrokerError::Setup(format!("no publisher for {name:?}")))
    }

    /// Send a batch (see [`Publisher::send`]); remote messages' exchanges are declared there
    /// first (once).
    pub async fn send(&mut self, msgs: &[Outgoing]) -> Result<Confirms, BrokerError> {
        if msgs.iter().all(|m| m.broker.is_none()) {
            return self.local.send(msgs).await;
        }
        let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (i, m) in msgs.iter().enumerate() {
            groups.entry(m.broker.clone()).or_default().push(i);
        }
        let mut waits = Vec::new();
        for (broker, idx) in groups {
            let part: Vec<Outgoing> = idx.iter().map(|i| msgs[*i].clone()).collect();
            let p = self.target(broker.as_deref()).await?;
            if broker.is_some() {
                for m in &part {
                    p.declare_exchange(&m.exchange).await?;
                }
            }
            waits.push((idx, p.send(&part).await?));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut returned = Vec::new();
            for (idx, mut c) in waits {
                match c.wait().await {
                    Ok(conf) => returned.extend(conf.returned.iter().map(|r| idx[*r])),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            returned.sort_unstable();
            let _ = tx.send(Ok(Confirmed { returned }));
        });
        Ok(Confirms(rx))
    }

    /// Drop every connection after an error, so that the next send reconnects.
    pub async fn reset(&mut self) {
        self.local.reset().await;
        for p in self.remotes.values_mut() {
            p.reset().await;
        }
    }

    /// Close every connection.
    pub async fn close(self) {
        self.local.close().await;
        for (_, p) in self.remotes {
            p.close().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let cfg = BrokerConfig {
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            ..BrokerConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        let waits: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert!((50..=100).contains(&waits[0]), "{waits:?}");
        assert!((100..=200).contains(&waits[1]), "{waits:?}");
        assert!(
            waits[5..].iter().all(|w| (500..=1000).contains(w)),
            "{waits:?}"
        );
        b.reset();
        assert!(b.next_delay().as_millis() <= 100);
    }

    #[test]
    fn headers_convert_both_ways() {
        let mut report = Headers::new();
        report.insert("code".into(), HeaderValue::Int(204));
        let mut h = Headers::new();
        h.insert("source".into(), HeaderValue::Str("ec_cmc".into()));
        h.insert("report".into(), HeaderValue::Table(report));
        h.insert("flag".into(), HeaderValue::Bool(true));
        assert_eq!(headers_from_table(&table_from_headers(&h)), h);
    }

    #[test]
    fn queue_names_follow_the_convention() {
        assert_eq!(
            QueueSpec::name_for("guest", "dd_log", "capture"),
            "q_guest.dd_log.capture"
        );
    }
}
