//! dd_speedo as a daemon: its service on the serve loop (count, publish, answer), its persistence (the state file and the count journal, kept by `Keeper`), and the entry points (`main`, `run`, `run_replay`).

use crate::broker::{Delivery, Outgoing};
use crate::clock::{Clock, SystemClock};
use crate::daemon::{Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;

/// The state file's bookkeeping, and the count journal that covers what the last state file
/// does not yet hold.
#[derive(Default)]
struct Keeper {
    path: Option<PathBuf>,
    journal: Option<journal::CountJournal>,
    last: Option<DateTime<Utc>>,
    writes: u64,
    bytes: u64,
    error: Option<String>,
}

impl Keeper {
    fn failed(&mut self, msg: String) {
        if self.error.as_deref() != Some(msg.as_str()) {
            tracing::error!("{msg}");
        }
        self.error = Some(msg);
    }

    fn save(&mut self, speedo: &Speedo, now: DateTime<Utc>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.last = Some(now);
        let seq = self.journal.as_ref().map_or(0, journal::CountJournal::seq);
        match state::save(&path, speedo, now, seq) {
            Ok(n) => {
                if self.error.take().is_some() {
                    tracing::info!(file = %path.display(), "state file written again");
                }
                self.writes += 1;
                self.bytes = n;
                // the state file holds every count the journal held
                if let Some(j) = self.journal.as_mut() {
                    if let Err(e) = j.truncate() {
                        let msg = format!("cannot empty {}: {e}", j.path().display());
                        self.failed(msg);
                    }
                }
            }
            Err(e) => self.failed(format!("cannot write state file {}: {e}", path.display())),
        }
    }

    /// Note a counted record in the journal.
    fn note(&mut self, r: &crate::record::LogRecord, at: DateTime<Utc>) {
        if let Some(j) = self.journal.as_mut() {
            j.record(r, at);
        }
    }

    /// Write the journal before the records are acknowledged.
    fn flush(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            if let Err(e) = j.flush() {
                let msg = format!("cannot write {}: {e}", j.path().display());
                self.failed(msg);
            }
        }
    }
}

/// dd_speedo as a [`Service`].
struct SpeedoService {
    cfg: SpeedoConfig,
    speedo: Speedo,
    tally: MalformedTally,
    skipped: u64,
    speedos: u64,
    alerts: u64,
    keeper: Keeper,
    /// What the last tick has still to publish: its messages are made a window at a time
    /// (`more`), never the whole interval's at once (100,000 names: 240 MiB of messages).
    backlog: std::collections::VecDeque<Output>,
    /// The management API polls (`--management-url`), from the poller task.
    polls: Option<tokio::sync::mpsc::UnboundedReceiver<Polled>>,
}

/// One management API's answer: its URL, and its queues or why not.
type Polled = (String, Result<Vec<queues::QueueSample>, String>);

/// Poll every management API every `poll` seconds (a task of its own: a slow API never holds
/// the loop) until the receiver is gone.
fn spawn_poller(cfg: &SpeedoConfig) -> Option<tokio::sync::mpsc::UnboundedReceiver<Polled>> {
    if cfg.queues.management.is_empty() {
        return None;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let urls = cfg.queues.management.clone();
    let broker = cfg.broker.clone();
    let every = std::time::Duration::from_secs_f64(cfg.queues.poll);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for url in &urls {
                let polled = poll_once(url, &broker).await;
                if tx.send((url.clone(), polled)).is_err() {
                    return;
                }
            }
        }
    });
    Some(rx)
}

async fn poll_once(
    url: &str,
    broker: &crate::config::BrokerConfig,
) -> Result<Vec<queues::QueueSample>, String> {
    let api = crate::route::permissions::client(url, broker).map_err(|e| format!("{e:#}"))?;
    let listed = tokio::time::timeout(std::time::Duration::from_secs(10), api.list_queues())
        .await
        .map_err(|_| format!("{url}: no answer in 10 s"))?
        .map_err(|e| crate::route::permissions::api_error(&e, url))?;
    Ok(samples_of(url, listed))
}

/// The management API's queue listing of `url` as the samples the queues are judged on.
pub fn samples_of(
    url: &str,
    listed: Vec<rabbitmq_http_client::responses::QueueInfo>,
) -> Vec<queues::QueueSample> {
    listed
        .into_iter()
        .map(|q| queues::QueueSample {
            broker: url.to_string(),
            vhost: q.vhost.to_string(),
            ready: q
                .message_count
                .saturating_sub(q.unacknowledged_message_count),
            unacked: q.unacknowledged_message_count,
            consumers: u64::from(q.consumer_count),
            name: q.name,
        })
        .collect()
}

impl SpeedoService {
    /// The counters of health, alive, status and `stats`.
    fn typed_counters(&self) -> reply::Counters {
        let (clients, sources) = self.speedo.names();
        reply::Counters {
            alerts: self.alerts,
            clients: clients as u64,
            counted: self.speedo.counted,
            malformed: self.tally.total(),
            neutral: self.speedo.neutral,
            skipped: self.skipped,
            sources: sources as u64,
            speedos: self.speedos,
            state_file: reply::StateFile {
                bytes: self.keeper.bytes,
                error: self.keeper.error.clone(),
                path: self.keeper.path.clone(),
                saved_at: self.keeper.last,
                writes: self.keeper.writes,
            },
            states: self
                .speedo
                .states()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n as u64))
                .collect(),
            queues: self.speedo.queues().map(|q| reply::QueuesCounters {
                polls: q.polls,
                unseen: q.unseen.clone(),
            }),
        }
    }

    fn publish(&mut self, outputs: Vec<Output>) -> Handled {
        if outputs.is_empty() {
            return Handled::ack();
        }
        for o in &outputs {
            match o {
                Output::Speedo(_) => self.speedos += 1,
                Output::Alert(a) => {
                    self.alerts += 1;
                    tracing::info!(kind = a.kind.as_str(), name = %a.name, old = a.old.as_str(), new = a.new.as_str(), reason = %a.reason, "state change");
                }
            }
        }
        // every exchange declared before the first window
        let declare: BTreeSet<String> = self.cfg.exchanges(&outputs);
        self.backlog.extend(outputs);
        Handled {
            publish: self.more(),
            declare: declare.into_iter().collect(),
            ..Handled::default()
        }
    }
}

impl Service for SpeedoService {
    fn tool(&self) -> &'static str {
        "dd_speedo"
    }

    fn handle(&mut self, d: &Delivery, now: DateTime<Utc>) -> anyhow::Result<Handled> {
        let record = match self.tally.parse(&d.routing_key, &d.headers, &d.body, now) {
            Ok(Parsed::Log(r)) => r,
            Ok(Parsed::NotReport | Parsed::Event(_)) => {
                self.skipped += 1;
                return Ok(Handled::ack());
            }
            // counted and warned about by the tally; rejected (dead-lettered where configured)
            Err(_) => return Ok(Handled::reject()),
        };
        // Close what ended before this record arrived, then count it.
        let outputs = self.speedo.advance(now);
        self.speedo.observe(&record, now);
        self.keeper.note(&record, now);
        Ok(self.publish(outputs))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.keeper.flush();
        Ok(())
    }

    fn tick(&mut self, now: DateTime<Utc>) -> Handled {
        if let Some(rx) = self.polls.as_mut() {
            while let Ok((url, polled)) = rx.try_recv() {
                let was = self
                    .speedo
                    .queues()
                    .and_then(|q| q.unseen.get(&url).cloned());
                match (&polled, was) {
                    (Err(why), None) => {
                        tracing::warn!(api = %url, "cannot read the clients' queues ({why}): judging from the reports alone until it answers")
                    }
                    (Ok(_), Some(_)) => {
                        tracing::info!(api = %url, "the clients' queues can be read again")
                    }
                    _ => {}
                }
                self.speedo.queues_polled(&url, polled, now);
            }
        }
        let outputs = self.speedo.advance(now);
        let due = match self.keeper.last {
            None => true,
            Some(t) => (now - t).as_seconds_f64() >= self.cfg.state_interval,
        };
        if due {
            self.keeper.save(&self.speedo, now);
        }
        self.publish(outputs)
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.typed_counters()).unwrap_or_default()
    }

    fn request(
        &mut self,
        command: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Option<Result<serde_json::Value, String>> {
        (command == "stats").then(|| {
            let query = crate::rpc::Query::from_body(body);
            let answer = self.speedo.answer(&query, now).map_err(|e| e.to_string())?;
            let reply = StatsReply {
                counters: self.typed_counters(),
                malformed_by_kind: self
                    .tally
                    .by_kind()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
                ..answer
            };
            Ok(serde_json::to_value(reply).unwrap_or_default())
        })
    }

    fn more(&mut self) -> Vec<Outgoing> {
        let n = self.backlog.len().min(crate::broker::PUBLISH_WINDOW);
        let window: Vec<Output> = self.backlog.drain(..n).collect();
        self.cfg.outgoing(&window)
    }

    fn degraded(&self) -> bool {
        self.keeper.error.is_some()
    }

    /// A group's snapshot: its counters on a first line, then the state file's JSON.
    fn snapshot(&mut self, now: DateTime<Utc>) -> Option<Vec<u8>> {
        let head = GroupHead {
            started_ms: self.speedo.started_ms(),
            counted: self.speedo.counted,
            neutral: self.speedo.neutral,
            skipped: self.skipped,
            speedos: self.speedos,
            alerts: self.alerts,
            resumed_ms: self.speedo.resumed_ms(),
        };
        let speedo = &self.speedo;
        Some(crate::daemon::replica::snapshot_with_head(&head, |out| {
            out.extend(state::to_vec(speedo, now))
        }))
    }

    fn took_over(&mut self, at: DateTime<Utc>) {
        self.speedo.resume(at);
    }

    fn restore(&mut self, snapshot: &[u8], at: DateTime<Utc>) -> anyhow::Result<()> {
        let (head, body): (GroupHead, _) = crate::daemon::replica::split_snapshot(snapshot)?;
        let saved: state::Saved = serde_json::from_slice(body)?;
        let mut speedo = self.cfg.speedo(at)?;
        speedo.restore_exact(saved);
        if let Some(q) = self.cfg.client_queues() {
            speedo.watch_queues(q);
        }
        speedo.set_start(crate::clock::at_ms(head.started_ms));
        speedo.counted = head.counted;
        speedo.neutral = head.neutral;
        if let Some(t) = head.resumed_ms {
            speedo.resume(crate::clock::at_ms(t));
        }
        self.speedo = speedo;
        self.skipped = head.skipped;
        self.speedos = head.speedos;
        self.alerts = head.alerts;
        self.backlog.clear();
        Ok(())
    }
}

/// The counters a group's snapshot carries beside the state file's JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct GroupHead {
    started_ms: i64,
    counted: u64,
    neutral: u64,
    skipped: u64,
    speedos: u64,
    alerts: u64,
    #[serde(default)]
    resumed_ms: Option<i64>,
}

/// Entry point of the `dd_speedo` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(SpeedoConfig::from_args(&args)?);
    let format = args.format;
    let files = args.replay.clone();
    // a replay is a command at a terminal (warnings only); the daemon logs at info
    let level = if files.is_empty() { 3 } else { 2 };
    crate::cli::main("dd_speedo", &args.common, level, config, move |cfg| {
        if !files.is_empty() {
            return run_replay(&cfg, &files, format).map(|_| std::process::ExitCode::SUCCESS);
        }
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// `--replay`: every file in order through one speedo, the speedos on stdout.
pub fn run_replay(
    cfg: &SpeedoConfig,
    files: &[PathBuf],
    format: Format,
) -> anyhow::Result<replay::ReplayTotals> {
    use std::io::Write as _;
    // The start is set by the first record: the capture's own time.
    let mut speedo = cfg.speedo(Utc::now())?;
    let mut totals = replay::ReplayTotals::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let json = format == Format::Json;
    for path in files {
        let mut input: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, f))
        };
        replay::replay(&mut speedo, &mut input, &mut out, json, &mut totals)
            .with_context(|| format!("cannot replay {}", path.display()))?;
    }
    replay::finish(&mut speedo, &mut out, json, &mut totals)?;
    out.flush()?;
    tracing::info!(
        lines = totals.lines,
        records = totals.records,
        skipped = totals.skipped,
        bad = totals.bad,
        printed = totals.printed,
        "replay done"
    );
    Ok(totals)
}

/// Run the daemon until a stop is asked for.
pub async fn run(cfg: &SpeedoConfig, shutdown: Shutdown, clock: &dyn Clock) -> anyhow::Result<()> {
    let mut speedo = cfg.speedo(clock.now())?;
    if let Some(dir) = cfg.state_file.as_ref().and_then(|p| p.parent()) {
        // as dd_log --output does: the state file's directory is made when it is missing
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the state file's directory {}", dir.display())
            })?;
            tracing::info!(dir = %dir.display(), "made the state file's directory");
        }
    }
    let mut covered = 0;
    match &cfg.state_file {
        None => {
            tracing::warn!("no --state-file: counters and learning start from zero at every start")
        }
        Some(path) => match state::load(path, clock.now())
            .with_context(|| format!("cannot read state file {}", path.display()))?
        {
            state::Loaded::Missing => {
                tracing::info!(file = %path.display(), "no state file yet: starting from zero")
            }
            state::Loaded::State(saved) => {
                tracing::info!(file = %path.display(), saved_at = %saved.saved_at, clients = saved.clients.len(), sources = saved.sources.len(), "state restored");
                covered = saved.journal_seq;
                speedo.restore(*saved);
            }
            state::Loaded::Unreadable(why, aside) => tracing::error!(
                file = %path.display(), moved_to = %aside.display(),
                "state file unreadable ({why}): moved aside, starting from zero"
            ),
        },
    }
    // the records counted after the last state file, from the count journal
    let mut journal = None;
    if let Some(path) = &cfg.state_file {
        let jpath = journal::CountJournal::path_for(path);
        let lines = journal::CountJournal::replay(&jpath, covered)
            .with_context(|| format!("cannot read count journal {}", jpath.display()))?;
        let last = lines.last().map_or(covered, |l| l.0);
        if !lines.is_empty() {
            tracing::info!(file = %jpath.display(), records = lines.len(), "counting again what the state file did not hold yet");
        }
        for (_, at, r) in &lines {
            speedo.observe(r, *at);
        }
        journal = Some(
            journal::CountJournal::open(&jpath, last)
                .with_context(|| format!("cannot open count journal {}", jpath.display()))?,
        );
    }
    let mut service = SpeedoService {
        cfg: cfg.clone(),
        speedo,
        tally: MalformedTally::default(),
        skipped: 0,
        speedos: 0,
        alerts: 0,
        keeper: Keeper {
            path: cfg.state_file.clone(),
            journal,
            ..Keeper::default()
        },
        backlog: Default::default(),
        polls: spawn_poller(cfg),
    };
    if let Some(q) = cfg.client_queues() {
        service.speedo.watch_queues(q);
    }
    // the replayed counts go into a state file at once, and the journal starts afresh
    service.keeper.save(&service.speedo, clock.now());
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: Some(cfg.subscription()),
        daemon: Some(&cfg.daemon),
        publishes: true,
        remotes: Default::default(),
    };
    let outcome = serve(&mut service, serve_cfg, shutdown, clock).await;
    // Whatever happened, keep what was counted.
    service.keeper.save(&service.speedo, clock.now());
    outcome
}
