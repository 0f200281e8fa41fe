//! The loop every tool runs: take a delivery, let the tool's state handle it, publish what it
//! returns (confirmed), then acknowledge. With a [`Runtime`], the same loop also sends the
//! alive messages, publishes state changes and answers requests, so a wedged tool goes silent.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::runtime::{DaemonConfig, Role, Runtime, State};
use crate::shutdown::Shutdown;
use std::collections::{BTreeMap, VecDeque};

use crate::broker::{
    Backoff, Confirmed, Confirms, Consumer, Delivery, HeadersBinding, Outgoing, Publisher,
    Publishers, QueueSpec, Subscription,
};
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
    /// Durable topic exchanges to declare (once) before publishing.
    pub declare: Vec<String>,
    /// Headers bindings to make (once) before publishing.
    pub bind: Vec<HeadersBinding>,
}

impl Handled {
    /// Acknowledge, nothing to publish.
    pub fn ack() -> Handled {
        Handled::default()
    }

    /// Reject, nothing to publish.
    pub fn reject() -> Handled {
        Handled {
            verdict: Some(Verdict::Reject),
            ..Handled::default()
        }
    }
}

/// A tool driven by [`serve`]. Its methods do no broker I/O: they return what to publish.
pub trait Service {
    /// The tool's name (`dd_log`...): connection names, topics, queue names.
    fn tool(&self) -> &'static str;
    /// Handle one delivery. An `Err` stops the tool; the delivery is not acknowledged.
    fn handle(&mut self, delivery: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled>;
    /// Called at least once a second: what the tool publishes on its own clock (and the
    /// exchanges to declare first; the verdict is ignored).
    fn tick(&mut self, _now: DateTime<Utc>) -> Handled {
        Handled::default()
    }
    /// The counters shown in alive, status, `health` and (by default) `stats`.
    fn counters(&self) -> Value;
    /// Answer a command of the tool's own (or override `stats`); `None` if unknown, `Err` with
    /// why for a request it cannot answer (a bad query). `body` is the request's body (JSON
    /// arguments, e.g. a query).
    fn request(
        &mut self,
        _command: &str,
        _body: &[u8],
        _now: DateTime<Utc>,
    ) -> Option<Result<Value, String>> {
        None
    }
    /// The broker confirmed what `handle` asked to publish; `returned` are the indices of
    /// `mandatory` messages no queue received.
    fn confirmed(&mut self, _published: &[Outgoing], _returned: &[usize]) {}
    /// Make the effects of the deliveries handled so far durable (write buffered output); the
    /// loop calls it before acknowledging them.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The next window of what `tick` had to publish (empty: nothing more). A tool whose tick
    /// makes very many messages (dd_speedo's interval: one per name) makes them a window at a
    /// time here, each published and confirmed before the next is made, so that they never
    /// all exist at once.
    fn more(&mut self) -> Vec<Outgoing> {
        Vec::new()
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
    /// Where the input comes from; `None` for a daemon that only answers requests and says
    /// it is alive (dd_web, whose work is its HTTP server).
    pub input: Option<Subscription>,
    /// Alive, status and requests; `None` for a plain command (dd_log at a terminal).
    pub daemon: Option<&'a DaemonConfig>,
    /// Does the service publish what it handles (then a publisher is opened even without
    /// the daemon side)?
    pub publishes: bool,
    /// Other brokers the service may publish to, by name (`Outgoing::broker`).
    pub remotes: BTreeMap<String, BrokerConfig>,
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
    let grouped = cfg.input.as_ref().is_some_and(|s| s.active_lock.is_some());
    if let (true, Some(rt)) = (grouped, runtime.as_mut()) {
        rt.join_group();
    }
    let mut publisher: Option<Publishers> = None;
    if runtime.is_some() || cfg.publishes {
        let local = Publisher::connect(cfg.broker, tool, shutdown.clone()).await?;
        publisher = Some(Publishers::new(
            local,
            cfg.remotes.clone(),
            tool,
            shutdown.clone(),
        ));
    }
    if let (Some(rt), Some(p)) = (runtime.as_mut(), publisher.as_mut().map(Publishers::local)) {
        p.declare_exchange(rt.exchange()).await?;
        for spec in rt.roster_streams() {
            // the history is the monitors' help, not the daemon's work: a refusal is said
            match p.declare_stream(spec).await {
                Ok(true) => {}
                Ok(false) => tracing::info!(
                    stream = %spec.name,
                    "the roster stream exists with another retention: used as it is"
                ),
                Err(e) => tracing::warn!(
                    stream = %spec.name, error = %e,
                    "cannot declare the roster stream (another daemon may): going on"
                ),
            }
        }
        let mut first = Vec::new();
        first.extend(rt.set_state(State::Starting, clock.now(), &service.counters()));
        first.push(rt.registration("start", clock.now(), None));
        p.publish_all(&first).await?;
    }
    // requests first: a daemon seen consuming its input also answers `stats` and `health`
    let mut requests = match &runtime {
        Some(rt) => {
            let sub = request_subscription(rt, &cfg.broker.user());
            match Consumer::start(cfg.broker, tool, sub, shutdown.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    last_word(&runtime, &mut publisher, clock, Some(&e)).await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let mut input = match &cfg.input {
        Some(sub) => match Consumer::start(cfg.broker, tool, sub.clone(), shutdown.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot read exchange {:?} through queue {:?}",
                    sub.exchange, sub.queue.name
                )
            }) {
            Ok(Some(c)) => Some(c),
            Ok(None) => {
                if let Some(r) = requests {
                    r.close().await;
                }
                if cfg.daemon.is_none() && !cfg.publishes {
                    // a command stopped before it ever read anything did not do its job
                    anyhow::bail!(
                        "stopped before the broker at {} was ever reached",
                        crate::config::mask_url(&cfg.broker.url)
                    );
                }
                last_word(&runtime, &mut publisher, clock, None).await;
                return Ok(());
            }
            Err(e) => {
                last_word(&runtime, &mut publisher, clock, Some(&e)).await;
                return Err(e);
            }
        },
        None if requests.is_none() => {
            // stopped while connecting
            last_word(&runtime, &mut publisher, clock, None).await;
            return Ok(());
        }
        None => None,
    };
    let mut loop_ = Loop {
        service,
        runtime: &mut runtime,
        publisher: &mut publisher,
        clock,
        pending: VecDeque::new(),
        in_flight_limit: cfg.broker.prefetch,
        unsettled: Vec::new(),
        backoff: Backoff::new(cfg.broker),
        shutdown: shutdown.clone(),
        broker: cfg.broker,
    };
    loop_.set_state(State::Running).await?;
    loop_.alive_if_due().await?;
    let outcome = loop_.run(&mut input, &mut requests).await;
    if outcome.is_ok() {
        // the work is done and acknowledged: a `stopping` that cannot be said is a warning
        if let Err(e) = loop_.set_state(State::Stopping).await {
            tracing::warn!(error = %e, "could not publish the stopping message");
        }
    }
    loop_.say_stop(outcome.as_ref().err()).await;
    if let Some(i) = input {
        i.close().await;
    }
    if let Some(r) = requests {
        r.close().await;
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    outcome
}

/// A daemon's registry `stop`, with the failure when it was not asked for (bounded: a broker
/// that is gone does not hold the exit up).
async fn last_word(
    runtime: &Option<Runtime>,
    publisher: &mut Option<Publishers>,
    clock: &dyn Clock,
    failure: Option<&anyhow::Error>,
) {
    let (Some(rt), Some(p)) = (runtime.as_ref(), publisher.as_mut()) else {
        return;
    };
    let msg = rt.registration("stop", clock.now(), failure.map(|e| format!("{e:#}")));
    let said = tokio::time::timeout(Duration::from_secs(3), p.local().publish_all(&[msg])).await;
    if !matches!(said, Ok(Ok(_))) {
        tracing::warn!("could not publish the registry stop message");
    }
}

/// The daemon's own request queue: exclusive, bound to its instance's, its tool's and every
/// daemon's request keys.
fn request_subscription(rt: &Runtime, user: &str) -> Subscription {
    let tool = &rt.identity().tool;
    // a group's members each have their own (the queue is exclusive)
    let instance = match rt.member() {
        Some(m) => crate::rpc::member_instance(&rt.identity().instance, &m),
        None => rt.identity().instance.clone(),
    };
    let instance = crate::topic::escape_word(&instance);
    Subscription {
        exchange: rt.exchange().to_string(),
        bindings: rt.request_bindings(),
        queue: QueueSpec {
            name: QueueSpec::name_for(user, tool, &format!("rpc.{instance}")),
            durable: false,
            exclusive: true,
            quorum: false,
            dead_letter_exchange: None,
        },
        active_lock: None,
    }
}

struct Loop<'a, S: Service> {
    service: &'a mut S,
    runtime: &'a mut Option<Runtime>,
    publisher: &'a mut Option<Publishers>,
    clock: &'a dyn Clock,
    /// Deliveries whose copies await the broker's confirms, oldest first.
    pending: VecDeque<Pending>,
    /// At most this many pending (the prefetch: more could not arrive anyway).
    in_flight_limit: u16,
    /// Deliveries handled whose effect waits for the service's flush.
    unsettled: Vec<(Delivery, Verdict)>,
    /// Between attempts to publish again.
    backoff: Backoff,
    /// A stop ends the waits of `backoff`.
    shutdown: Shutdown,
    /// The broker (a group member's request queue is made again when its role changes).
    broker: &'a BrokerConfig,
}

impl<S: Service> Loop<'_, S> {
    async fn publish(&mut self, msgs: &[Outgoing]) -> anyhow::Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        match self.publisher.as_mut() {
            Some(p) => p
                .local()
                .publish_all(msgs)
                .await
                .map(|_| ())
                .map_err(Into::into),
            None => anyhow::bail!("{} has nothing to publish with", self.service.tool()),
        }
    }

    /// Publish alive and status messages without waiting for their confirms: they route to
    /// the roster streams too, and a stream that lost its leader (a cluster node stopped)
    /// holds confirms until it has a new one, which must not hold the daemon's loop. The next
    /// alive says it all again; a broker that is gone is the input's and the copies' to find.
    async fn say(&mut self, msgs: &[Outgoing]) -> anyhow::Result<()> {
        let Some(p) = self.publisher.as_mut() else {
            return Ok(());
        };
        match p.local().send(msgs).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "alive or status not sent: the next one will be");
                p.local().reset().await;
                Ok(())
            }
            Err(e) => Err(e.into()),
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
            self.say(&[m]).await?;
        }
        Ok(())
    }

    /// The registry's `stop` (see [`last_word`]).
    async fn say_stop(&mut self, failure: Option<&anyhow::Error>) {
        last_word(self.runtime, self.publisher, self.clock, failure).await;
    }

    async fn alive_if_due(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        let counters = self.service.counters();
        let msg = match self.runtime.as_mut() {
            Some(rt) if rt.alive_due(now) => Some(rt.alive(now, &counters)),
            _ => None,
        };
        if let Some(m) = msg {
            self.say(&[m]).await?;
        }
        Ok(())
    }

    /// A group member's role follows whether its input consumes (it holds the group's lock):
    /// said in a status message, and its request queue made again with the role's bindings.
    async fn follow_role(
        &mut self,
        input: &Option<Consumer>,
        requests: &mut Option<Consumer>,
    ) -> anyhow::Result<()> {
        let Some(rt) = self.runtime.as_mut() else {
            return Ok(());
        };
        let role = if input.as_ref().is_some_and(Consumer::is_consuming) {
            Role::Active
        } else {
            Role::Standby
        };
        // called before every delivery: nothing more unless a group member's role changed
        if rt.role().is_none_or(|r| r == role) {
            return Ok(());
        }
        let counters = self.service.counters();
        let Some(msg) = rt.set_role(role, self.clock.now(), &counters) else {
            return Ok(());
        };
        tracing::info!(role = role.as_str(), "role");
        let sub = request_subscription(rt, &self.broker.user());
        self.say(&[msg]).await?;
        if let Some(old) = requests.take() {
            old.close().await;
        }
        *requests =
            Consumer::start(self.broker, self.service.tool(), sub, self.shutdown.clone()).await?;
        Ok(())
    }

    /// A group's standby does not do the tool's work on its clock (no speedos, no reports).
    fn standby(&self) -> bool {
        self.runtime
            .as_ref()
            .is_some_and(|rt| rt.role() == Some(Role::Standby))
    }

    async fn on_tick(&mut self) -> anyhow::Result<()> {
        if self.standby() {
            self.set_state(State::Running).await?;
            return self.alive_if_due().await;
        }
        let now = self.clock.now();
        let out = self.service.tick(now);
        // declared (once) before publishing; through an outage, retried like the publishing
        if let Some(p) = self.publisher.as_mut() {
            for x in &out.declare {
                loop {
                    match p.local().declare_exchange(x).await {
                        Ok(()) => break,
                        Err(e) if e.is_transient() => {
                            tracing::warn!(error = %e, exchange = %x, "cannot declare yet, retrying");
                            p.local().reset().await;
                            if !self.backoff.wait(&mut self.shutdown).await {
                                anyhow::bail!("stopped while declaring {x}");
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            self.backoff.reset();
        }
        self.publish(&out.publish).await?;
        loop {
            let window = self.service.more();
            if window.is_empty() {
                break;
            }
            self.publish(&window).await?;
        }
        let wanted = if self.service.degraded() {
            State::Degraded
        } else {
            State::Running
        };
        self.set_state(wanted).await?;
        self.alive_if_due().await
    }

    /// Handle a delivery. What it publishes is sent without waiting: the delivery waits in
    /// `pending` (in order) until the broker confirmed its copies, then it is acknowledged.
    async fn on_delivery(&mut self, d: Delivery) -> anyhow::Result<()> {
        let handled = self.service.handle(&d, self.clock.now())?;
        let verdict = handled.verdict.unwrap_or(Verdict::Ack);
        if handled.publish.is_empty() {
            // settled after the service's flush, with the rest of the batch
            self.unsettled.push((d, verdict));
            return Ok(());
        }
        let confirms = match self.publisher.as_mut() {
            Some(p) => {
                match declare_then_send(p, &handled.declare, &handled.bind, &handled.publish).await
                {
                    Ok(c) => Some(c),
                    Err(e) if e.is_transient() => None, // resent by on_confirms' recovery
                    Err(e) => return Err(e.into()),
                }
            }
            None => anyhow::bail!("{} has nothing to publish with", self.service.tool()),
        };
        let failed = confirms.is_none();
        self.pending.push_back(Pending {
            delivery: d,
            publish: handled.publish,
            declare: handled.declare,
            bind: handled.bind,
            verdict,
            confirms,
        });
        if failed {
            self.resend_pending().await?;
        }
        Ok(())
    }

    /// The head of `pending` was confirmed (or its connection broke).
    async fn on_confirms(
        &mut self,
        outcome: Result<Confirmed, crate::broker::BrokerError>,
    ) -> anyhow::Result<()> {
        match outcome {
            Ok(confirmed) => {
                let Some(done) = self.pending.pop_front() else {
                    return Ok(());
                };
                self.service.confirmed(&done.publish, &confirmed.returned);
                if done.verdict != Verdict::Ack || !self.unsettled.is_empty() {
                    settle(&done.delivery, done.verdict).await;
                    return Ok(());
                }
                // Everything older is settled: the next heads already confirmed join it, and
                // the run is acknowledged with one frame (`multiple`, on its last).
                let mut last = done;
                let mut broke = None;
                while let Some(head) = self.pending.front_mut() {
                    if head.verdict != Verdict::Ack {
                        break;
                    }
                    match head.confirms.as_mut().and_then(|c| c.ready()) {
                        None => break,
                        Some(Ok(confirmed)) => {
                            let Some(next) = self.pending.pop_front() else {
                                break;
                            };
                            self.service.confirmed(&next.publish, &confirmed.returned);
                            last = next;
                        }
                        Some(Err(e)) => {
                            head.confirms = None;
                            broke = Some(e);
                            break;
                        }
                    }
                }
                last.delivery.ack_up_to().await;
                match broke {
                    Some(e) if e.is_transient() => {
                        tracing::warn!(error = %e, pending = self.pending.len(), "publishing interrupted, sending again");
                        self.resend_pending().await
                    }
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, pending = self.pending.len(), "publishing interrupted, sending again");
                self.resend_pending().await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reconnect and send every pending delivery's messages again, in order (at-least-once),
    /// waiting between attempts with the broker module's one backoff.
    async fn resend_pending(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.publisher.as_mut() else {
            return Ok(());
        };
        'again: loop {
            p.reset().await;
            for entry in self.pending.iter_mut() {
                match declare_then_send(p, &entry.declare, &entry.bind, &entry.publish).await {
                    Ok(c) => entry.confirms = Some(c),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "cannot publish yet, retrying");
                        if !self.backoff.wait(&mut self.shutdown).await {
                            anyhow::bail!(
                                "stopped while {} deliveries await their copies",
                                self.pending.len()
                            );
                        }
                        continue 'again;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.backoff.reset();
            return Ok(());
        }
    }

    /// Handle the deliveries that are already here (up to a batch), without waiting for more:
    /// their output is then flushed once.
    async fn take_ready(&mut self, input: &mut Consumer, limit: usize) -> anyhow::Result<()> {
        // Small enough that a burst's first line is not held back noticeably.
        const BATCH: usize = 64;
        for _ in 1..BATCH {
            if self.service.finished() || self.pending.len() >= limit {
                break;
            }
            match futures_lite::future::poll_once(input.next()).await {
                Some(Ok(Some(d))) => self.on_delivery(d).await?,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => break,
            }
        }
        Ok(())
    }

    /// Flush the service's output, then acknowledge (or reject) what it covers.
    async fn settle_batch(&mut self) -> anyhow::Result<()> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        self.service.flush()?;
        if !self.pending.is_empty() {
            // earlier deliveries still await their confirms: one at a time
            for (d, verdict) in self.unsettled.drain(..) {
                settle(&d, verdict).await;
            }
            return Ok(());
        }
        // Every earlier delivery of the input's channel is settled: a run of acks is one
        // frame (`multiple`, on the run's last), a reject ends the run. (A batch that spans a
        // reconnection acks on the new channel only: the old one's are redelivered anyway.)
        let mut last_ack: Option<&Delivery> = None;
        for (d, verdict) in &self.unsettled {
            match verdict {
                Verdict::Ack => last_ack = Some(d),
                Verdict::Reject => {
                    if let Some(a) = last_ack.take() {
                        a.ack_up_to().await;
                    }
                    d.reject().await;
                }
            }
        }
        if let Some(a) = last_ack {
            a.ack_up_to().await;
        }
        self.unsettled.clear();
        Ok(())
    }

    /// Wait for every pending delivery to be confirmed and settled (on the way out).
    async fn drain(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            let outcome = wait_head(&mut self.pending).await;
            self.on_confirms(outcome).await?;
        }
        Ok(())
    }

    async fn on_request(&mut self, d: Delivery) -> anyhow::Result<()> {
        let now = self.clock.now();
        let counters = self.service.counters();
        let service = &mut *self.service;
        let reply = match self.runtime.as_ref() {
            Some(rt) => rt.answer(&d.routing_key, now, &counters, |cmd| {
                service.request(cmd, &d.body, now)
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
        input: &mut Option<Consumer>,
        requests: &mut Option<Consumer>,
    ) -> anyhow::Result<()> {
        let limit = usize::from(self.in_flight_limit.max(1));
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // a first tick at once (dd_speedo starts its first interval now, not a second later)
        let mut last_tick = self.clock.now();
        self.on_tick().await?;
        loop {
            if self.service.finished() {
                return self.drain().await;
            }
            self.follow_role(input, requests).await?;
            // The tick runs between deliveries too, so a busy stream does not starve it.
            let now = self.clock.now();
            // (a clock stepped back ticks at once rather than in an hour)
            if now - last_tick >= chrono::Duration::seconds(1) || now < last_tick {
                last_tick = now;
                self.on_tick().await?;
            }
            // Not biased: a busy input must not starve the requests.
            tokio::select! {
                d = next_of(input), if self.pending.len() < limit => match d? {
                    Some(d) => {
                        self.on_delivery(d).await?;
                        if let Some(input) = input.as_mut() {
                            self.take_ready(input, limit).await?;
                        }
                        self.settle_batch().await?;
                    }
                    None => return self.drain().await,
                },
                c = wait_head(&mut self.pending), if !self.pending.is_empty() => {
                    self.on_confirms(c).await?;
                }
                r = next_of(requests) => match r? {
                    Some(r) => self.on_request(r).await?,
                    None => return Ok(()),
                },
                _ = ticker.tick() => {}
            }
        }
    }
}

async fn declare_then_send(
    p: &mut Publishers,
    declare: &[String],
    bind: &[HeadersBinding],
    publish: &[Outgoing],
) -> Result<Confirms, crate::broker::BrokerError> {
    for x in declare {
        p.local().declare_exchange(x).await?;
    }
    for b in bind {
        p.local().bind_headers(b).await?;
    }
    p.send(publish).await
}

/// The broker's answer for the oldest pending delivery.
async fn wait_head(
    pending: &mut VecDeque<Pending>,
) -> Result<Confirmed, crate::broker::BrokerError> {
    match pending.front_mut().and_then(|p| p.confirms.as_mut()) {
        Some(c) => c.wait().await,
        None => Err(crate::broker::BrokerError::unreachable("not sent yet")),
    }
}

async fn settle(d: &Delivery, verdict: Verdict) {
    match verdict {
        Verdict::Ack => d.ack().await,
        Verdict::Reject => d.reject().await,
    }
}

/// A delivery whose copies are published but not yet confirmed.
struct Pending {
    delivery: Delivery,
    publish: Vec<Outgoing>,
    /// Exchanges to declare and bindings to make before publishing (again after a
    /// reconnection: a first attempt may have failed before they were made).
    declare: Vec<String>,
    bind: Vec<HeadersBinding>,
    verdict: Verdict,
    confirms: Option<Confirms>,
}

/// The next delivery of a consumer that may not be there (a daemon with no input, a command
/// with no requests): never, then.
async fn next_of(
    consumer: &mut Option<Consumer>,
) -> Result<Option<Delivery>, crate::broker::BrokerError> {
    match consumer.as_mut() {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
