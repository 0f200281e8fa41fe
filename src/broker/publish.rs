//! Publishing with confirms: a message counts as published only when the broker confirmed
//! it. [`Publisher`] reconnects and publishes again what was not confirmed (at-least-once);
//! [`Publishers`] adds the publishers to other brokers (other clusters) a batch may name.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use super::connect::{Backoff, close_quietly, connect_with_retry};
use super::consume::Delivery;
use super::error::{BrokerError, CONFIRM_TIMEOUT, ErrorKind, bounded, classify};
use super::headers::{amqp_value, table_from_headers};
use super::settings::BrokerConfig;
use super::topology::{HeadersBinding, bind_headers, declare_topic_exchange};
use crate::headers::{HeaderValue, Headers};
use crate::shutdown::Shutdown;

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
    /// `correlation_id` are not used). Set by [`Outgoing::copy_of`]. Boxed: a message of
    /// ddmon's own has none, and 100,000 of them at once (dd_speedo's interval) should not
    /// carry 300 bytes each for nothing.
    pub properties: Option<Box<BasicProperties>>,
}

impl Outgoing {
    /// The same message (body, headers, routing key, every property) for another exchange.
    pub fn copy_of(d: &Delivery, exchange: &str) -> Outgoing {
        Outgoing {
            exchange: exchange.to_string(),
            routing_key: d.routing_key.clone(),
            headers: d.headers.clone(),
            body: d.body.clone(),
            properties: Some(Box::new(d.inner.properties.clone())),
            ..Outgoing::default()
        }
    }

    /// Add (or replace) one header, on a copy's own properties as well.
    pub fn set_header(&mut self, name: &str, value: HeaderValue) {
        if let Some(props) = self.properties.take() {
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(name.into(), amqp_value(&value));
            self.properties = Some(Box::new(props.with_headers(headers)));
        }
        self.headers.insert(name.to_string(), value);
    }
}

/// Messages [`Publisher::publish_all`] has in flight at most: sent, their confirms awaited.
pub const PUBLISH_WINDOW: usize = 4096;

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
            Err(_) => Err(BrokerError::unreachable(
                "confirms lost with the connection",
            )),
        }
    }

    /// Their outcome if it is already here (`None`: not yet). Once taken, it is gone.
    pub fn ready(&mut self) -> Option<Result<Confirmed, BrokerError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(Err(BrokerError::unreachable(
                "confirms lost with the connection",
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
                    .ok_or_else(|| BrokerError::unreachable("stopped while connecting"))?;
            let channel = bounded(conn.create_channel()).await?;
            bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            for ex in &self.declared {
                declare_topic_exchange(&channel, ex).await?;
            }
            self.live = Some((conn, channel));
        }
        match &self.live {
            Some((_, ch)) => Ok(ch),
            None => Err(BrokerError::unreachable("no channel")),
        }
    }

    /// Declare a stream and its bindings (see [`super::stream::declare_stream`]), once, on
    /// this publisher's connection; `Ok(false)`: it exists with other arguments.
    pub async fn declare_stream(
        &mut self,
        spec: &super::stream::StreamSpec,
    ) -> Result<bool, BrokerError> {
        self.ensure().await?;
        match &self.live {
            Some((conn, _)) => super::stream::declare_stream(conn, spec).await,
            None => Err(BrokerError::unreachable("no connection")),
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
            Err(e) if e.kind() == ErrorKind::Precondition => {
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

    /// Publish a batch, pipelined, and wait until the broker confirmed every message. A big
    /// batch (dd_speedo's interval: a record per name, 100,000 at a big pump) goes in windows
    /// of [`PUBLISH_WINDOW`], each confirmed before the next is sent, so that what waits in the
    /// client is one window, not the batch. When the connection breaks before every confirm of
    /// a window arrived, that window is published again after reconnecting (at-least-once:
    /// the broker may see some twice).
    pub async fn publish_all(&mut self, msgs: &[Outgoing]) -> Result<Confirmed, BrokerError> {
        let mut returned = Vec::new();
        for (n, window) in msgs.chunks(PUBLISH_WINDOW).enumerate() {
            let c = self.publish_window(window).await?;
            returned.extend(c.returned.into_iter().map(|i| i + n * PUBLISH_WINDOW));
        }
        Ok(Confirmed { returned })
    }

    /// As [`Publisher::publish_all`], but a broken connection is an error, not a reason to
    /// publish again on a new one (a group's active that lost its connection may no longer
    /// be the active: it must not publish what another now publishes).
    pub async fn publish_all_once(&mut self, msgs: &[Outgoing]) -> Result<Confirmed, BrokerError> {
        let mut returned = Vec::new();
        for (n, window) in msgs.chunks(PUBLISH_WINDOW).enumerate() {
            let c = self.send(window).await?.wait().await?;
            returned.extend(c.returned.into_iter().map(|i| i + n * PUBLISH_WINDOW));
        }
        Ok(Confirmed { returned })
    }

    async fn publish_window(&mut self, msgs: &[Outgoing]) -> Result<Confirmed, BrokerError> {
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
                Some(p) => (**p).clone(),
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
        tokio::spawn(watch_confirms(ch, confirms, std::time::Instant::now(), tx));
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

/// Wait for a batch's confirms in order and send the outcome: which `mandatory` messages came
/// back, or why the batch must be sent again. lapin does not always settle a confirm whose
/// channel died with the broker: the channel is watched, so that a lost connection is an
/// error (and a resend), not a wait forever. A broker that never confirms (seen on
/// connections opened while it was restarting) gets the same treatment after
/// [`CONFIRM_TIMEOUT`]: the batch is published again on a new connection (duplicates, never
/// a stall).
async fn watch_confirms(
    ch: Channel,
    confirms: Vec<lapin::PublisherConfirm>,
    sent_at: std::time::Instant,
    tx: tokio::sync::oneshot::Sender<Result<Confirmed, BrokerError>>,
) {
    let mut returned = Vec::new();
    for (i, c) in confirms.into_iter().enumerate() {
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
                    let _ = tx.send(Err(BrokerError::unreachable(why)));
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
                let nack = BrokerError::unreachable("the broker refused (nack) a message");
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
                .ok_or_else(|| BrokerError::setup(format!("no broker configured for {name:?}")))?;
            let conn_name = format!("{} to {name}", self.name);
            let p = Publisher::connect(cfg, &conn_name, self.shutdown.clone()).await?;
            self.remotes.insert(name.to_string(), p);
        }
        self.remotes
            .get_mut(name)
            .ok_or_else(|| BrokerError::setup(format!("no publisher for {name:?}")))
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
