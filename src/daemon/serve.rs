//! The loop every tool runs: take a delivery, let the tool's state handle it, publish what it
//! returns (confirmed), then acknowledge. With a [`Runtime`], the same loop also sends the
//! alive messages, publishes state changes and answers requests, so a wedged tool goes silent.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::runtime::{DaemonConfig, Runtime, State};
use super::shutdown::Shutdown;
use crate::broker::{Consumer, Delivery, Outgoing, Publisher, QueueSpec, Subscription};
use crate::clock::Clock;
use crate::config::BrokerConfig;

/// What to do with a delivery once its effect is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its effect is durable: acknowledge.
    Ack,
    /// It can never succeed: reject without requeue (dead-letter where configured).
    Reject,
}

/// A tool's answer to one delivery: what to publish first, then the verdict.
#[derive(Debug, Default)]
pub struct Handled {
    /// Messages to publish (confirmed) before the delivery is acknowledged.
    pub publish: Vec<Outgoing>,
    /// `None` is `Ack`.
    pub verdict: Option<Verdict>,
}

impl Handled {
    /// Acknowledge, nothing to publish.
    pub fn ack() -> Handled {
        Handled::default()
    }

    /// Reject, nothing to publish.
    pub fn reject() -> Handled {
        Handled {
            publish: Vec::new(),
            verdict: Some(Verdict::Reject),
        }
    }
}

/// A tool driven by [`serve`]. Its methods do no broker I/O: they return what to publish.
pub trait Service {
    /// The tool's name (`dd_log`...): connection names, topics, queue names.
    fn tool(&self) -> &'static str;
    /// Handle one delivery. An `Err` stops the tool; the delivery is not acknowledged.
    fn handle(&mut self, delivery: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled>;
    /// Called at least once a second: what the tool publishes on its own clock.
    fn tick(&mut self, _now: DateTime<Utc>) -> Vec<Outgoing> {
        Vec::new()
    }
    /// The counters shown in alive, status, `health` and (by default) `stats`.
    fn counters(&self) -> Value;
    /// Answer a command of the tool's own (or override `stats`); `None` if unknown.
    fn request(&mut self, _command: &str, _now: DateTime<Utc>) -> Option<Value> {
        None
    }
    /// Is the tool done (e.g. `dd_log -n` reached)?
    fn finished(&self) -> bool {
        false
    }
    /// Is something wrong that an operator should see (state `degraded`)?
    fn degraded(&self) -> bool {
        false
    }
}

/// How to run a service.
pub struct ServeConfig<'a> {
    /// The broker.
    pub broker: &'a BrokerConfig,
    /// Where the input comes from.
    pub input: Subscription,
    /// Alive, status and requests; `None` for a plain command (dd_log at a terminal).
    pub daemon: Option<&'a DaemonConfig>,
}

/// Run `service` until it is finished, a stop is asked for, or it fails. Returns once the
/// connections are closed (after publishing `stopping` when it is a daemon).
pub async fn serve<S: Service>(
    service: &mut S,
    cfg: ServeConfig<'_>,
    shutdown: Shutdown,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let tool = service.tool();
    let mut runtime = cfg.daemon.map(|d| Runtime::new(tool, d, clock.now()));
    let mut publisher: Option<Publisher> = None;
    if let Some(rt) = runtime.as_mut() {
        let mut p = Publisher::connect(cfg.broker, tool, shutdown.clone()).await?;
        p.declare_exchange(rt.exchange()).await?;
        if let Some(m) = rt.set_state(State::Starting, clock.now(), &service.counters()) {
            p.publish_all(&[m]).await?;
        }
        publisher = Some(p);
    }
    let Some(mut input) = Consumer::start(cfg.broker, tool, cfg.input.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot read exchange {:?}", cfg.input.exchange))?
    else {
        return Ok(());
    };
    let mut requests = match &runtime {
        Some(rt) => {
            let sub = Subscription {
                exchange: rt.exchange().to_string(),
                bindings: rt.request_bindings(),
                queue: QueueSpec {
                    name: QueueSpec::name_for(
                        &cfg.broker.user(),
                        tool,
                        &format!("rpc.{}", crate::topic::escape_word(&rt.identity().instance)),
                    ),
                    durable: false,
                    exclusive: true,
                    quorum: false,
                    dead_letter_exchange: None,
                },
            };
            Consumer::start(cfg.broker, tool, sub, shutdown.clone()).await?
        }
        None => None,
    };
    let mut loop_ = Loop {
        service,
        runtime: &mut runtime,
        publisher: &mut publisher,
        clock,
    };
    loop_.set_state(State::Running).await?;
    loop_.alive_if_due().await?;
    let outcome = loop_.run(&mut input, &mut requests).await;
    if outcome.is_ok() {
        loop_.set_state(State::Stopping).await?;
    }
    input.close().await;
    if let Some(r) = requests {
        r.close().await;
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    outcome
}

struct Loop<'a, S: Service> {
    service: &'a mut S,
    runtime: &'a mut Option<Runtime>,
    publisher: &'a mut Option<Publisher>,
    clock: &'a dyn Clock,
}

impl<S: Service> Loop<'_, S> {
    async fn publish(&mut self, msgs: &[Outgoing]) -> anyhow::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        match self.publisher.as_mut() {
            Some(p) => Ok(p.publish_all(msgs).await?),
            None => anyhow::bail!("{} has nothing to publish with", self.service.tool()),
        }
    }

    async fn set_state(&mut self, state: State) -> anyhow::Result<()> {
        let counters = self.service.counters();
        let msg = self
            .runtime
            .as_mut()
            .and_then(|rt| rt.set_state(state, self.clock.now(), &counters));
        if let Some(m) = msg {
            tracing::info!(state = state.as_str(), "state");
            self.publish(&[m]).await?;
        }
        Ok(())
    }

    async fn alive_if_due(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let counters = self.service.counters();
        let msg = match self.runtime.as_mut() {
            Some(rt) if rt.alive_due(now) => Some(rt.alive(now, &counters)),
            _ => None,
        };
        if let Some(m) = msg {
            self.publish(&[m]).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let out = self.service.tick(now);
        self.publish(&out).await?;
        let wanted = if self.service.degraded() {
            State::Degraded
        } else {
            State::Running
        };
        self.set_state(wanted).await?;
        self.alive_if_due().await
    }

    async fn on_delivery(&mut self, d: Delivery) -> anyhow::Result<()> {
        let handled = self.service.handle(&d, self.clock.now())?;
        self.publish(&handled.publish).await?;
        match handled.verdict.unwrap_or(Verdict::Ack) {
            Verdict::Ack => d.ack().await,
            Verdict::Reject => d.reject().await,
        }
        Ok(())
    }

    async fn on_request(&mut self, d: Delivery) -> anyhow::Result<()> {
        let now = self.clock.now();
        let counters = self.service.counters();
        let service = &mut *self.service;
        let reply = match self.runtime.as_ref() {
            Some(rt) => rt.answer(&d.routing_key, now, &counters, |cmd| {
                service.request(cmd, now)
            }),
            None => return Ok(()),
        };
        if let Some(to) = &d.reply_to {
            let msg = Outgoing {
                exchange: String::new(),
                routing_key: to.clone(),
                body: reply.to_string().into_bytes(),
                content_type: Some("application/json".to_string()),
                correlation_id: d.correlation_id.clone(),
                ..Outgoing::default()
            };
            self.publish(&[msg]).await?;
        }
        d.ack().await;
        Ok(())
    }

    async fn run(
        &mut self,
        input: &mut Consumer,
        requests: &mut Option<Consumer>,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = self.clock.now();
        loop {
            if self.service.finished() {
                return Ok(());
            }
            // The tick runs between deliveries too, so a busy stream does not starve it.
            let now = self.clock.now();
            if now - last_tick >= chrono::Duration::seconds(1) {
                last_tick = now;
                self.on_tick().await?;
            }
            // Not biased: a busy input must not starve the requests.
            tokio::select! {
                d = input.next() => match d? {
                    Some(d) => self.on_delivery(d).await?,
                    None => return Ok(()),
                },
                r = next_request(requests) => match r? {
                    Some(r) => self.on_request(r).await?,
                    None => return Ok(()),
                },
                _ = ticker.tick() => {}
            }
        }
    }
}

async fn next_request(
    requests: &mut Option<Consumer>,
) -> Result<Option<Delivery>, crate::broker::BrokerError> {
    match requests.as_mut() {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
