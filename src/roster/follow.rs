//! The roster's edge: read the roster stream's history into a [`Roster`], then the live
//! answers (`health`, asked of every daemon, and of each silent one on its own key), and go
//! on following the stream for a monitor that stays (dd_web, `dd_status --watch`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::{Observation, Roster, Seen};
use crate::broker::{BrokerConfig, BrokerError, ErrorKind, Link, StreamOffset, StreamReader};
use crate::daemon::{Health, RosterStream};
use crate::rpc::{Question, Reply};
use crate::shutdown::Shutdown;

/// Where the roster comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The broker.
    pub broker: BrokerConfig,
    /// The daemon exchange (alive, status, registry, requests).
    pub exchange: String,
    /// The stream that keeps the history.
    pub stream: RosterStream,
}

/// What reading the history gave.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The registry and status stream read (`None`: history is off).
    pub stream: Option<String>,
    /// Messages read, both streams.
    pub read: usize,
    /// Of those, roster messages taken.
    pub taken: usize,
    /// Was each end known by our own mark (else by a pause)?
    pub marked: bool,
    /// How far back the alive messages were read.
    pub alive_window_s: f64,
    /// Why there is no history, when there is none.
    pub problem: Option<String>,
}

/// How long a pause in the history means its end, when no mark could be published.
const IDLE_END: Duration = Duration::from_millis(700);

/// How many stream messages may be unacknowledged.
const PREFETCH: u16 = 2000;

/// The alive messages are read this many of the longest alive interval back (past 5x a
/// daemon is dead anyway, with or without an older alive)...
pub const ALIVE_WINDOW_INTERVALS: f64 = 6.0;

/// ... and at least this far back, seconds.
pub const ALIVE_WINDOW_MIN_S: f64 = 60.0;

/// The two readers of the roster: registry and status, and alive.
pub struct Readers {
    history: StreamReader,
    alive: StreamReader,
}

impl Readers {
    /// The next message of either.
    pub async fn next(&mut self) -> Option<Result<crate::broker::StreamMessage, BrokerError>> {
        tokio::select! {
            m = self.history.next() => m,
            m = self.alive.next() => m,
        }
    }

    /// Stop reading.
    pub async fn close(self) {
        self.history.close().await;
        self.alive.close().await;
    }
}

/// Read one stream from `offset` up to `mark` (or a pause, unmarked), into `roster`.
async fn read_to_mark(
    reader: &mut StreamReader,
    mark: Option<&str>,
    roster: &mut Roster,
    h: &mut History,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    loop {
        let wait = match mark {
            Some(_) => deadline,
            None => deadline.min(tokio::time::Instant::now() + IDLE_END),
        };
        match tokio::time::timeout_at(wait, reader.next()).await {
            Err(_) if mark.is_some() => {
                return Err(format!(
                    "the roster streams were not read to their end in time ({} messages)",
                    h.read
                ));
            }
            Err(_) => return Ok(()),
            Ok(None) => return Err("the roster stream's reader was closed".to_string()),
            Ok(Some(Err(e))) => return Err(format!("reading the roster stream: {e}")),
            Ok(Some(Ok(m))) => {
                if m.mark.is_some() && m.mark.as_deref() == mark {
                    return Ok(());
                }
                h.read += 1;
                if let Some(o) = Observation::from_message(&m.routing_key, &m.body) {
                    roster.observe(&o);
                    h.taken += 1;
                }
            }
        }
    }
}

/// Declare the streams (a monitor that comes first may), mark them, and read into `roster`
/// the registry and status messages from the first kept, then the alive messages of the last
/// [`ALIVE_WINDOW_INTERVALS`] longest alive intervals. Returns the readers, to follow on with.
/// A check (`declare` false) only reads: it leaves declaring to the daemons and monitors.
pub async fn load(
    link: &Link,
    src: &Source,
    roster: &mut Roster,
    within: Duration,
    declare: bool,
) -> (History, Option<Readers>) {
    let mut h = History::default();
    let Some([spec, alive_spec]) = src.stream.specs(&src.exchange) else {
        h.problem = Some("the roster stream is off (--roster-stream none)".to_string());
        return (h, None);
    };
    h.stream = Some(spec.name.clone());
    let deadline = tokio::time::Instant::now() + within;
    let mut marks = Vec::new();
    for s in [&spec, &alive_spec] {
        if declare && let Err(e) = link.declare_stream(s).await {
            tracing::debug!(error = %e, stream = %s.name, "cannot declare the roster stream");
        }
        let mark = format!("ddmon.mark.{:016x}", crate::broker::random_u64());
        marks.push(match link.mark_stream(&s.name, &mark).await {
            Ok(()) => Some(mark),
            Err(e) => {
                tracing::debug!(error = %e, "cannot mark the roster stream: its end is a pause");
                None
            }
        });
    }
    h.marked = marks.iter().all(Option::is_some);
    let open = |name: String, offset| async move {
        link.read_stream(&name, offset, PREFETCH)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    format!("no roster stream {name:?}: no daemon has kept history")
                } else {
                    format!("cannot read the roster stream {name:?}: {e}")
                }
            })
    };
    let mut history = match open(spec.name.clone(), StreamOffset::First).await {
        Ok(r) => r,
        Err(p) => {
            h.problem = Some(p);
            return (h, None);
        }
    };
    if let Err(p) = read_to_mark(&mut history, marks[0].as_deref(), roster, &mut h, deadline).await
    {
        h.problem = Some(p);
        history.close().await;
        return (h, None);
    }
    let longest = match roster.max_alive_interval() {
        0.0 => crate::roster::DEFAULT_ALIVE_S,
        x => x,
    };
    let window = ALIVE_WINDOW_MIN_S.max(ALIVE_WINDOW_INTERVALS * longest);
    h.alive_window_s = window;
    let since = Utc::now() - chrono::Duration::milliseconds((window * 1000.0) as i64);
    roster.alive_since = Some(since);
    let offset = StreamOffset::Since(u64::try_from(since.timestamp()).unwrap_or(0));
    let mut alive = match open(alive_spec.name.clone(), offset).await {
        Ok(r) => r,
        Err(p) => {
            h.problem = Some(p);
            history.close().await;
            return (h, None);
        }
    };
    if let Err(p) = read_to_mark(&mut alive, marks[1].as_deref(), roster, &mut h, deadline).await {
        h.problem = Some(p);
        history.close().await;
        alive.close().await;
        return (h, None);
    }
    (h, Some(Readers { history, alive }))
}

/// Take a `health` answer; the daemon's `Health` when it answered.
fn observe_answer(roster: &mut Roster, reply: Reply<Health>) -> Option<Health> {
    let h = reply.result.filter(|_| reply.ok)?;
    if let Some(o) = Observation::of_health(Seen::Answer, h.clone()) {
        roster.observe(&o);
    }
    Some(h)
}

/// Whom to ask `health` while the history goes on being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Every daemon (one broadcast), answers collected for the whole wait.
    Everyone,
    /// Only the silent ones, each on its own key; no wait when none is silent.
    Silent,
}

/// Ask `health` (see [`Ask`]) for at most `wait` while the history goes on being read (so what
/// is said meanwhile counts), then count the silent ones that did not answer as asked
/// directly. Returns the answers.
pub async fn ask_while_reading(
    link: &Link,
    exchange: &str,
    roster: &mut Roster,
    mut reader: Option<&mut Readers>,
    wait: Duration,
    whom: Ask,
) -> Result<Vec<Health>, BrokerError> {
    let asked_at = Utc::now();
    let silent = roster.to_ask(asked_at);
    if whom == Ask::Silent && silent.is_empty() {
        return Ok(Vec::new());
    }
    let ask = async {
        match whom {
            Ask::Everyone => {
                let q = Question::new(exchange, crate::rpc::broadcast_key("health"), wait);
                crate::rpc::ask::<Health>(link, &q).await
            }
            Ask::Silent => {
                crate::rpc::ask_each::<Health>(link, exchange, &silent, "health", wait).await
            }
        }
    };
    tokio::pin!(ask);
    let answers = loop {
        let next = async {
            match reader.as_mut() {
                Some(r) => r.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            a = &mut ask => break a?,
            m = next => match m {
                Some(Ok(m)) => {
                    if let Some(o) = Observation::from_message(&m.routing_key, &m.body) {
                        roster.observe(&o);
                    }
                }
                _ => reader = None,
            },
        }
    };
    let got: Vec<Health> = answers
        .replies
        .into_iter()
        .filter_map(|r| observe_answer(roster, r))
        .collect();
    for (tool, instance) in roster.to_ask(Utc::now()) {
        roster.asked(&tool, &instance, asked_at);
    }
    Ok(got)
}

/// Ask each silent daemon not yet asked, on its own key (all at once), waiting at most `wait`
/// for their answers; the answers are observed, the others stay asked with no answer.
pub async fn ask_silent(
    link: &Link,
    exchange: &str,
    roster: &Mutex<Roster>,
    wait: Duration,
) -> Result<usize, BrokerError> {
    let at = Utc::now();
    let silent = lock(roster).to_ask(at);
    let answers = crate::rpc::ask_each::<Health>(link, exchange, &silent, "health", wait).await?;
    let mut r = lock(roster);
    for (tool, instance) in &silent {
        r.asked(tool, instance, at);
    }
    for reply in answers.replies {
        let _ = observe_answer(&mut r, reply);
    }
    Ok(silent.len())
}

fn lock(m: &Mutex<Roster>) -> std::sync::MutexGuard<'_, Roster> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a following monitor knows of its source, beside the roster.
#[derive(Debug, Clone, Default)]
pub struct Followed {
    /// The last history read (at start or after a reconnection).
    pub history: History,
    /// Is the stream being followed now?
    pub live: bool,
}

/// Follow the roster for as long as `shutdown` allows: load the history, then every new
/// message; ask the silent ones directly; through a lost connection, reconnect with backoff
/// and read the history again.
pub async fn follow(
    src: Source,
    roster: Arc<Mutex<Roster>>,
    state: Arc<Mutex<Followed>>,
    mut shutdown: Shutdown,
) {
    let mut backoff = crate::broker::Backoff::new(&src.broker);
    loop {
        let link =
            match Link::open_with_retry(&src.broker, "roster", &mut backoff, &mut shutdown).await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                // a refusal is the daemon's to say (it stops on it, in one line)
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow the roster");
                    return;
                }
            };
        let mut fresh = Roster::new(lock(&roster).missing_after);
        let (h, readers) = load(&link, &src, &mut fresh, Duration::from_secs(60), true).await;
        if let Some(p) = &h.problem {
            tracing::warn!("{p}");
        }
        lock(&roster).absorb(fresh);
        {
            let mut f = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.history = h;
            f.live = readers.is_some();
        }
        let Some(mut readers) = readers else {
            link.close("OK").await;
            if !backoff.wait(&mut shutdown).await {
                return;
            }
            continue;
        };
        backoff.reset();
        let mut ask = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.requested() => {
                    readers.close().await;
                    link.close("OK").await;
                    return;
                }
                m = readers.next() => match m {
                    Some(Ok(m)) => {
                        if let Some(o) = Observation::from_message(&m.routing_key, &m.body) {
                            lock(&roster).observe(&o);
                        }
                    }
                    _ => break,
                },
                _ = ask.tick() => {
                    if ask_silent(&link, &src.exchange, &roster, Duration::from_secs(2)).await.is_err() {
                        break;
                    }
                }
            }
        }
        if let Ok(mut f) = state.lock() {
            f.live = false;
        }
        tracing::warn!("the roster stream's reader was lost: following again");
        link.close("lost").await;
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}
