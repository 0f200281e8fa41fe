//! The loop every tool runs: take a delivery, let the tool's state handle it, publish what it
//! returns (confirmed), then acknowledge. With a [`Runtime`], the same loop also sends the
//! alive messages, publishes state changes and answers requests, so a wedged tool goes silent.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::replica::{self, Apply, Event, Replica, Replication};
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
    /// The whole state, for a group's standbys to [`Service::restore`] (hot standby, see
    /// `replica`); `None`: the tool does not form groups.
    fn snapshot(&mut self, _now: DateTime<Utc>) -> Option<Vec<u8>> {
        None
    }
    /// Replace the state by a [`Service::snapshot`] taken at `at`.
    fn restore(&mut self, _snapshot: &[u8], _at: DateTime<Utc>) -> anyhow::Result<()> {
        anyhow::bail!("{} keeps no group state", self.tool())
    }
    /// A group's new active starts at `at` (every member hears it, at the same time): what
    /// no member could see between the old active's last word and now is not held against
    /// the names (dd_speedo: a name not late gets its `td` from here, as after a start).
    fn took_over(&mut self, _at: DateTime<Utc>) {}
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
    // a group's member keeps the group's state through the broker (replica)
    let replication = match (&runtime, grouped) {
        (Some(rt), true) => Some(Replication::new(
            cfg.broker,
            tool,
            &crate::topic::escape_word(&rt.identity().instance),
            cfg.broker.prefetch,
        )),
        _ => None,
    };
    let mut loop_ = Loop {
        service,
        replication,
        runtime: &mut runtime,
        publisher: &mut publisher,
        clock,
        pending: VecDeque::new(),
        in_flight_limit: cfg.broker.prefetch,
        unsettled: Vec::new(),
        backoff: Backoff::new(cfg.broker),
        shutdown: shutdown.clone(),
        broker: cfg.broker,
        input_sub: cfg.input.clone(),
        stepping_down: false,
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
    if let Some(r) = loop_.replication.take() {
        r.close().await;
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
    /// A group member's side of the group's state stream.
    replication: Option<Replication>,
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
    /// The input (a group's member that stands down starts consuming it again).
    input_sub: Option<Subscription>,
    /// A group's active could not publish or write its state: it stands down at the top of
    /// the loop (see `step_down`).
    stepping_down: bool,
}

impl<S: Service> Loop<'_, S> {
    /// The service's counters, with a group member's `state_stream`.
    fn counters(&self) -> Value {
        let mut c = self.service.counters();
        if let (Some(r), Value::Object(map)) = (self.replication.as_ref(), &mut c) {
            map.insert(
                "state_stream".into(),
                serde_json::to_value(&r.replica.counters).unwrap_or_default(),
            );
        }
        c
    }

    /// Publish what the tool made on its clock. A group's active does not publish it again on
    /// a new connection: it stands down (the new active, or itself once it took the lock
    /// again, publishes what the group's state says is not published yet).
    async fn publish_work(&mut self, msgs: &[Outgoing]) -> anyhow::Result<()> {
        if self.replication.is_none() {
            return self.publish(msgs).await;
        }
        if msgs.is_empty() || self.stepping_down {
            return Ok(());
        }
        let Some(p) = self.publisher.as_mut() else {
            anyhow::bail!("{} has nothing to publish with", self.service.tool());
        };
        match p.local().publish_all_once(msgs).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "a group's active could not publish: standing down");
                self.stepping_down = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A group's active that could not publish or write its state stands down: what it
    /// handled and did not acknowledge goes back to the queue (for whoever holds the lock),
    /// its state is no longer the group's (it reads the stream again), and it waits for the
    /// lock again on a new connection.
    async fn step_down(&mut self, input: &mut Option<Consumer>) -> anyhow::Result<()> {
        self.stepping_down = false;
        tracing::warn!(
            unacknowledged = self.pending.len() + self.unsettled.len(),
            "standing down: the group's state stream says where the group is"
        );
        self.pending.clear();
        self.unsettled.clear();
        while !self.service.more().is_empty() {}
        if let Some(r) = self.replication.as_mut() {
            r.stand_by().await;
            r.reset().await;
        }
        if let Some(p) = self.publisher.as_mut() {
            p.reset().await;
        }
        // a consumer that lost its connection is already waiting for the lock again (and its
        // close would wait with it); one that still consumes gives the lock up here
        if input.as_ref().is_some_and(Consumer::is_consuming) {
            if let Some(old) = input.take() {
                old.close().await;
            }
            if let Some(sub) = self.input_sub.clone() {
                *input =
                    Consumer::start(self.broker, self.service.tool(), sub, self.shutdown.clone())
                        .await?;
            }
        }
        Ok(())
    }

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
        let counters = self.counters();
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
        let counters = self.counters();
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
        let counters = self.counters();
        let Some(rt) = self.runtime.as_mut() else {
            return Ok(());
        };
        let Some(msg) = rt.set_role(role, self.clock.now(), &counters) else {
            return Ok(());
        };
        tracing::info!(role = role.as_str(), "role");
        let sub = request_subscription(rt, &self.broker.user());
        match role {
            // in step with the stream before the first delivery is handled
            Role::Active => self.take_over().await?,
            Role::Standby => {
                if let Some(r) = self.replication.as_mut() {
                    r.stand_by().await;
                }
            }
        }
        self.say(&[msg]).await?;
        if let Some(old) = requests.take() {
            old.close().await;
        }
        *requests =
            Consumer::start(self.broker, self.service.tool(), sub, self.shutdown.clone()).await?;
        Ok(())
    }

    /// A member that became active reads the group's state stream to its end before it
    /// handles a delivery, then writes a snapshot: from here it writes what it does.
    async fn take_over(&mut self) -> anyhow::Result<()> {
        let Some(rep) = self.replication.as_mut() else {
            return Ok(());
        };
        if rep.writing {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let service = &mut *self.service;
        loop {
            match rep.catch_up(|r, body| apply_frame(service, r, body)).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    tracing::warn!(stream = %rep.spec().name, error = %e, "cannot read the group's state yet, retrying");
                    rep.reset().await;
                    if !self.backoff.wait(&mut self.shutdown).await {
                        anyhow::bail!("stopped while reading the group's state");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.backoff.reset();
        if !rep.replica.counters.synced {
            tracing::info!(stream = %rep.spec().name, "no whole state in the stream: this member's own is the group's from here");
        }
        rep.replica.open_term();
        rep.writing = true;
        rep.fresh = rep.replica.ring_len();
        let now = self.clock.now();
        self.service.took_over(now);
        let took = started.elapsed().as_secs_f64();
        rep.replica.counters.catch_up_seconds = Some(took);
        tracing::info!(
            seq = rep.replica.counters.seq,
            applied = rep.replica.counters.applied,
            seconds = took,
            "in step with the group's state: writing it"
        );
        self.write_snapshot(now).await
    }

    /// Write the events noted so far to the group's stream, confirmed, before the deliveries
    /// they cover are acknowledged.
    async fn replicate(&mut self) -> anyhow::Result<()> {
        let Some(rep) = self.replication.as_mut().filter(|r| r.writing) else {
            return Ok(());
        };
        let Some(frame) = rep.replica.take_frame() else {
            return Ok(());
        };
        let msg = replica::outgoing(rep.replica.stream(), frame);
        self.write_stream(vec![msg]).await
    }

    /// A snapshot of the service's state (after the events noted so far).
    async fn write_snapshot(&mut self, now: DateTime<Utc>) -> anyhow::Result<()> {
        self.replicate().await?;
        let Some(bytes) = self.service.snapshot(now) else {
            return Ok(());
        };
        let Some(rep) = self.replication.as_mut().filter(|r| r.writing) else {
            return Ok(());
        };
        let stream = rep.replica.stream().to_string();
        let msgs: Vec<Outgoing> = rep
            .replica
            .snapshot(now, &bytes)
            .into_iter()
            .map(|f| replica::outgoing(&stream, f))
            .collect();
        tracing::debug!(
            bytes = bytes.len(),
            parts = msgs.len(),
            "snapshot of the group's state"
        );
        self.write_stream(msgs).await
    }

    /// Publish to the group's stream until the broker confirmed it (through an outage: retried
    /// with the backoff; a stream that is gone is declared again).
    async fn write_stream(&mut self, msgs: Vec<Outgoing>) -> anyhow::Result<()> {
        let Some(spec) = self.replication.as_ref().map(|r| r.spec().clone()) else {
            return Ok(());
        };
        let Some(p) = self.publisher.as_mut() else {
            anyhow::bail!("{} has nothing to publish with", self.service.tool());
        };
        loop {
            match p.local().publish_all_once(&msgs).await {
                Ok(c) if c.returned.is_empty() => {
                    self.backoff.reset();
                    return Ok(());
                }
                Ok(_) => {
                    tracing::warn!(stream = %spec.name, "the group's state stream is gone: declaring it again");
                    if let Err(e) = p.local().declare_stream(&spec).await {
                        tracing::warn!(stream = %spec.name, error = %e, "cannot declare the group's state stream");
                    }
                }
                Err(e) if e.is_transient() => {
                    // the lock may be gone with the connection: what is not written is not
                    // the group's, and the deliveries it covers are not acknowledged
                    tracing::warn!(stream = %spec.name, error = %e, "cannot write the group's state: standing down");
                    self.stepping_down = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            if !self.backoff.wait(&mut self.shutdown).await {
                anyhow::bail!("stopped while writing the group's state");
            }
        }
    }

    /// A standby read a frame of the group's stream.
    async fn on_frame(&mut self, frame: Option<Result<Vec<u8>, crate::broker::BrokerError>>) {
        let Some(rep) = self.replication.as_mut() else {
            return;
        };
        match frame {
            Some(Ok(body)) => apply_frame(&mut *self.service, &mut rep.replica, &body),
            Some(Err(e)) => {
                tracing::warn!(stream = %rep.spec().name, error = %e, "lost the group's state stream, reading it again");
                rep.reset().await;
            }
            None => rep.reset().await,
        }
    }

    /// A new subscription of a group's active (a reconnection it came through without losing
    /// its role): what comes first is checked against the fingerprints.
    fn note_subscription(&mut self, input: &Option<Consumer>) {
        if let (Some(r), Some(i)) = (self.replication.as_mut(), input.as_ref()) {
            if r.subscription != i.generation() {
                r.subscription = i.generation();
                r.fresh = r.replica.ring_len();
            }
        }
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
        let writing = self.replication.as_ref().is_some_and(|r| r.writing);
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
        self.publish_work(&out.publish).await?;
        loop {
            let window = self.service.more();
            if window.is_empty() || self.stepping_down {
                break;
            }
            self.publish_work(&window).await?;
        }
        if writing && !self.stepping_down {
            // the tick after what it published (a standby does it again, and publishes it
            // itself only if it takes over before reading this)
            if let Some(r) = self.replication.as_mut() {
                r.replica.wrote_tick(now);
            }
            let due = self
                .replication
                .as_ref()
                .and_then(|r| r.replica.last_snapshot)
                .is_none_or(|t| (now - t).num_seconds() >= replica::SNAPSHOT_EVERY_S || now < t);
            if due {
                self.write_snapshot(now).await?;
            } else {
                self.replicate().await?;
            }
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
        if self.replication.as_ref().is_some_and(|r| !r.writing) {
            // the lock came with a delivery before the role was seen
            self.take_over().await?;
        }
        if let Some(r) = self.replication.as_mut() {
            let suspect =
                d.redelivered || r.fresh > 0 || d.headers.contains_key("x-delivery-count");
            r.fresh = r.fresh.saturating_sub(1);
            if suspect
                && r.replica
                    .seen(replica::fingerprint(&d.routing_key, &d.body))
            {
                // the old active handled and wrote it, and did not live to acknowledge it
                r.replica.counters.duplicates += 1;
                self.unsettled.push((d, Verdict::Ack));
                return Ok(());
            }
        }
        let now = self.clock.now();
        let handled = self.service.handle(&d, now)?;
        if let Some(r) = self.replication.as_mut() {
            r.replica.wrote_delivery(&d, now);
        }
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
                // what the group's standbys need is written before any acknowledgement
                self.replicate().await?;
                if self.stepping_down {
                    return Ok(());
                }
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
        if self.replication.is_some() {
            // a group's active does not publish again on a new connection (see publish_work)
            self.stepping_down = true;
            return Ok(());
        }
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
        self.replicate().await?;
        if self.unsettled.is_empty() || self.stepping_down {
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
        let counters = self.counters();
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
            if self.stepping_down {
                self.step_down(input).await?;
            }
            self.follow_role(input, requests).await?;
            self.note_subscription(input);
            if self.standby() {
                if let Some(r) = self.replication.as_mut() {
                    r.follow().await;
                }
            }
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
                        self.note_subscription(input);
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
                f = next_frame(&mut self.replication) => self.on_frame(f).await,
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

/// The next frame of the group's stream a standby reads (never, outside a group or while
/// writing).
async fn next_frame(
    replication: &mut Option<Replication>,
) -> Option<Result<Vec<u8>, crate::broker::BrokerError>> {
    match replication.as_mut().filter(|r| !r.writing) {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

/// Do again what a frame of the group's stream says (a standby, or a new active catching
/// up): restore a snapshot, handle a delivery, tick; what it would publish is dropped (the
/// active published it).
fn apply_frame<S: Service>(service: &mut S, replica: &mut Replica, body: &[u8]) {
    let mut any = false;
    for a in replica.accept(body) {
        any = true;
        match a {
            Apply::Restore(bytes, at) => match service.restore(&bytes, at) {
                Ok(()) => tracing::info!(
                    stream = %replica.stream(),
                    seq = replica.counters.seq,
                    bytes = bytes.len(),
                    "the group's state restored from its snapshot"
                ),
                Err(e) => {
                    tracing::error!(stream = %replica.stream(), "cannot restore the group's snapshot: {e:#}");
                    replica.counters.synced = false;
                }
            },
            Apply::Event(Event::Delivery {
                at,
                routing_key,
                headers,
                body,
                ..
            }) => {
                let d = Delivery::replayed(&routing_key, headers, body);
                if let Err(e) = service.handle(&d, at) {
                    tracing::warn!("a delivery of the group's state was not handled again: {e:#}");
                }
                while !service.more().is_empty() {}
            }
            Apply::NewTerm(at) => service.took_over(at),
            Apply::Event(Event::Tick { at, .. }) => {
                let _ = service.tick(at);
                while !service.more().is_empty() {}
            }
        }
    }
    if any {
        if let Err(e) = service.flush() {
            tracing::warn!("{e:#}");
        }
    }
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
