//! Consuming: [`Consumer`] survives the broker going away (it reconnects, declares again and
//! resumes; what the lost channel had not acknowledged is redelivered by the broker), and
//! [`Tail`] is a consumer of a signed-in user's own connection that ends with it. Each
//! [`Delivery`] carries what is needed to acknowledge or reject it.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::Link;
use super::connect::{Backoff, close_quietly, connect_with_retry, random_u64};
use super::error::{BrokerError, SETTLE_TIMEOUT, SUBSCRIBE_TIMEOUT, bounded, classify};
use super::headers::headers_of;
use super::settings::BrokerConfig;
use super::topology::{Subscription, declare_queue};
use crate::headers::Headers;
use crate::shutdown::Shutdown;

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
    pub(crate) inner: lapin::message::Delivery,
}

impl Delivery {
    /// A delivery made again from what a group's active wrote (its state stream): handled by
    /// a standby's service, never acknowledged (settling it does nothing).
    pub fn replayed(
        routing_key: &str,
        headers: crate::headers::Headers,
        body: Vec<u8>,
    ) -> Delivery {
        Delivery {
            routing_key: routing_key.to_string(),
            exchange: String::new(),
            headers,
            body,
            redelivered: false,
            reply_to: None,
            correlation_id: None,
            inner: lapin::message::Delivery::mock(
                0,
                "".into(),
                routing_key.into(),
                false,
                Vec::new(),
            ),
        }
    }

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
    /// Subscriptions made so far (a new one: what the last did not acknowledge may come
    /// again, not always marked `redelivered`).
    generation: u64,
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
            generation: 0,
            watch: {
                let mut i = tokio::time::interval(Duration::from_secs(1));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            },
        };
        if c.sub.active_lock.is_some() {
            // a group's member: a standby waits for the lock in the background, and `next`
            // gives nothing until it holds it
            c.spawn_establish();
            return Ok(Some(c));
        }
        if c.establish().await? {
            Ok(Some(c))
        } else {
            Ok(None)
        }
    }

    /// How many subscriptions it made: a new one (a reconnection) may bring again what the
    /// last did not acknowledge.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Is it consuming (a group's member: holding the lock, the active)?
    pub fn is_consuming(&self) -> bool {
        self.live.is_some()
    }

    fn spawn_establish(&mut self) {
        if self.establishing.is_some() {
            return;
        }
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

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        &self.sub.queue.name
    }

    /// Connect, declare and subscribe, in a task of its own: awaiting it is cancel-safe (a
    /// dropped wait leaves the task running; the next call picks up its result).
    async fn establish(&mut self) -> Result<bool, BrokerError> {
        self.spawn_establish();
        let Some(task) = self.establishing.as_mut() else {
            return Ok(false);
        };
        let joined = task.await;
        self.establishing = None;
        let (backoff, outcome) =
            joined.map_err(|e| BrokerError::setup(format!("reconnection task failed: {e}")))?;
        self.backoff = backoff;
        match outcome? {
            Some(live) => {
                self.live = Some(live);
                self.generation += 1;
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
                self.generation += 1;
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
        // A group's member consumes only while it holds the group's lock, on this same
        // connection (they go together): a standby waits here.
        if let Some(lock) = &sub.active_lock {
            match hold_lock(&conn, lock, shutdown).await {
                Ok(true) => tracing::info!(lock = %lock, "active: holding the group's lock"),
                Ok(false) => {
                    close_quietly(&conn, "stopped").await;
                    return Ok(None);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "lost the broker while standing by, reconnecting");
                    close_quietly(&conn, "lost").await;
                    if !backoff.wait(shutdown).await {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        // Bounded (a connection opened while the broker boots may never answer), and the
        // connection given up is closed: a consumer registered by a late answer goes with it
        // instead of holding deliveries unacknowledged.
        let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(cfg, name, sub, &conn))
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::timeout(format!(
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

/// How often a standby tries the group's lock.
pub const LOCK_RETRY: Duration = Duration::from_millis(500);

/// Declare the exclusive lock queue `lock` on `conn`, trying again every [`LOCK_RETRY`] while
/// another connection holds it (405 RESOURCE_LOCKED); `Ok(false)` on a stop.
async fn hold_lock(
    conn: &Connection,
    lock: &str,
    shutdown: &mut Shutdown,
) -> Result<bool, BrokerError> {
    let mut said = false;
    loop {
        let ch = bounded(conn.create_channel()).await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        match bounded(ch.queue_declare(lock.into(), opts, FieldTable::default())).await {
            Ok(_) => return Ok(true),
            Err(e) if e.code() == Some(405) => {
                if !said {
                    tracing::info!(lock = %lock, "standby: another member of the group is active");
                    said = true;
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.requested() => return Ok(false),
            _ = tokio::time::sleep(LOCK_RETRY) => {}
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

/// A tail: an exclusive, auto-delete queue on a signed-in user's own [`Link`], bound to one
/// exchange, consumed until [`Tail::close`] deletes it. It does not reconnect: it lives and
/// ends with its user's connection, and the broker checks that user's permissions.
pub struct Tail {
    channel: Channel,
    stream: lapin::Consumer,
    queue: String,
}

impl Link {
    /// Open a tail of `exchange` (every key) on queue `queue`, at most `prefetch` deliveries
    /// unacknowledged. A refusal leaves nothing behind (the queue is deleted).
    pub async fn open_tail(
        &self,
        queue: &str,
        exchange: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Tail, BrokerError> {
        let ch = bounded(self.conn.create_channel()).await?;
        let setup = async {
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            ch.basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        };
        match bounded(setup).await {
            Ok(stream) => Ok(Tail {
                channel: ch,
                stream,
                queue: queue.to_string(),
            }),
            Err(e) => {
                // the refusal closed the channel; the exclusive queue lives with the connection
                // until deleted
                if let Ok(c) = self.conn.create_channel().await {
                    let _ = c
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await;
                    let _ = c.close(200, "tail refused".into()).await;
                }
                Err(e)
            }
        }
    }
}

impl Tail {
    /// The next delivery (to acknowledge with [`Delivery::ack`]); `None` when the broker
    /// closed the tail or its connection. Cancel-safe: a `select!` that drops this wait
    /// loses no delivery.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.stream.next().await {
            Some(Ok(d)) => Some(convert(d)),
            _ => None,
        }
    }

    /// Delete its queue and close its channel (bounded: two seconds at most).
    pub async fn close(self, why: &str) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self
                .channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = self.channel.close(200, why.into()).await;
        })
        .await;
    }
}
