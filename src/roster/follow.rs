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
    /// The stream read (`None`: history is off).
    pub stream: Option<String>,
    /// Messages read.
    pub read: usize,
    /// Of those, roster messages taken.
    pub taken: usize,
    /// Was the end known by our own mark (else by a pause)?
    pub marked: bool,
    /// Why there is no history, when there is none.
    pub problem: Option<String>,
}

/// How long a pause in the history means its end, when no mark could be published.
const IDLE_END: Duration = Duration::from_millis(700);

/// How many stream messages may be unacknowledged.
const PREFETCH: u16 = 2000;

/// Declare the stream (a monitor that comes first may), publish a mark and read from the
/// first message kept to the mark, into `roster`. Returns the reader, to follow on with.
pub async fn load(
    link: &Link,
    src: &Source,
    roster: &mut Roster,
    within: Duration,
) -> (History, Option<StreamReader>) {
    let mut h = History::default();
    let Some(spec) = src.stream.spec(&src.exchange) else {
        h.problem = Some("the roster stream is off (--roster-stream none)".to_string());
        return (h, None);
    };
    h.stream = Some(spec.name.clone());
    if let Err(e) = link.declare_stream(&spec).await {
        tracing::debug!(error = %e, stream = %spec.name, "cannot declare the roster stream");
    }
    let mark = format!("ddmon.mark.{:016x}", crate::broker::random_u64());
    h.marked = match link.mark_stream(&spec.name, &mark).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot mark the roster stream: its end is a pause");
            false
        }
    };
    let mut reader = match link
        .read_stream(&spec.name, StreamOffset::First, PREFETCH)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            h.problem = Some(if e.kind() == ErrorKind::NotFound {
                format!(
                    "no roster stream {:?}: no daemon has kept history",
                    spec.name
                )
            } else {
                format!("cannot read the roster stream {:?}: {e}", spec.name)
            });
            return (h, None);
        }
    };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let wait = if h.marked {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + IDLE_END)
        };
        match tokio::time::timeout_at(wait, reader.next()).await {
            Err(_) => {
                if h.marked {
                    h.problem = Some(format!(
                        "the roster stream was not read to its end within {within:?} ({} messages)",
                        h.read
                    ));
                }
                break;
            }
            Ok(None) => {
                h.problem = Some("the roster stream's reader was closed".to_string());
                return (h, None);
            }
            Ok(Some(Err(e))) => {
                h.problem = Some(format!("reading the roster stream: {e}"));
                return (h, None);
            }
            Ok(Some(Ok(m))) => {
                if m.mark.as_deref() == Some(mark.as_str()) {
                    break;
                }
                h.read += 1;
                if let Some(o) = Observation::from_message(&m.routing_key, &m.body) {
                    roster.observe(&o);
                    h.taken += 1;
                }
            }
        }
    }
    (h, Some(reader))
}

/// Take a `health` answer; the daemon's `Health` when it answered.
fn observe_answer(roster: &mut Roster, reply: Reply<Health>) -> Option<Health> {
    let h = reply.result.filter(|_| reply.ok)?;
    if let Some(o) = Observation::of_health(Seen::Answer, h.clone()) {
        roster.observe(&o);
    }
    Some(h)
}

/// Ask every daemon `health` (one broadcast, answers for `wait`) while the history goes on
/// being read (so what is said meanwhile counts), and count the silent ones that did not
/// answer as asked directly. Returns the answers.
pub async fn ask_everyone(
    link: &Link,
    exchange: &str,
    roster: &mut Roster,
    mut reader: Option<&mut StreamReader>,
    wait: Duration,
) -> Result<Vec<Health>, BrokerError> {
    let asked_at = Utc::now();
    let q = Question::new(exchange, crate::rpc::broadcast_key("health"), wait);
    let ask = crate::rpc::ask::<Health>(link, &q);
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

/// Ask each silent daemon not yet asked, on its own key, waiting `wait` for each.
pub async fn ask_silent(
    link: &Link,
    exchange: &str,
    roster: &Mutex<Roster>,
    wait: Duration,
) -> Result<(), BrokerError> {
    let silent = lock(roster).to_ask(Utc::now());
    for (tool, instance) in silent {
        let at = Utc::now();
        let key = crate::rpc::request_key(&tool, Some(&instance), "health");
        let answers = crate::rpc::ask::<Health>(link, &Question::new(exchange, key, wait)).await?;
        let mut r = lock(roster);
        r.asked(&tool, &instance, at);
        for reply in answers.replies {
            let _ = observe_answer(&mut r, reply);
        }
    }
    Ok(())
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
/// and resume after the last offset read.
pub async fn follow(
    src: Source,
    roster: Arc<Mutex<Roster>>,
    state: Arc<Mutex<Followed>>,
    mut shutdown: Shutdown,
) {
    let mut backoff = crate::broker::Backoff::new(&src.broker);
    let mut resume: Option<i64> = None;
    loop {
        let link =
            match Link::open_with_retry(&src.broker, "roster", &mut backoff, &mut shutdown).await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the roster");
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
        let reader = match resume {
            None => {
                let mut fresh = Roster::new(lock(&roster).missing_after);
                let (h, reader) = load(&link, &src, &mut fresh, Duration::from_secs(60)).await;
                lock(&roster).absorb(fresh);
                let mut f = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f.history = h;
                f.live = reader.is_some();
                reader
            }
            Some(at) => {
                let name = src.stream.name_for(&src.exchange).unwrap_or_default();
                link.read_stream(&name, StreamOffset::At(at + 1), PREFETCH)
                    .await
                    .ok()
            }
        };
        let Some(mut reader) = reader else {
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
                    reader.close().await;
                    link.close("OK").await;
                    return;
                }
                m = reader.next() => match m {
                    Some(Ok(m)) => {
                        if let Some(at) = m.offset {
                            resume = Some(at);
                        }
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
        if resume.is_none() {
            resume = Some(-1);
        }
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}
