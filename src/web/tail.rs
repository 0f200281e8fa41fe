//! Sign-in and live tails. A user signs in with their broker user and password; dd_web
//! opens an AMQP connection as that user (the broker checks the password) and keeps it for
//! the session (its id in an HttpOnly cookie; the password is kept nowhere). A tail declares
//! an exclusive, auto-delete queue `q_<user>.dd_web.tail.<id>` on that connection and binds
//! it to `log` (no `source`) or to the source's exchange: the broker decides, with the user's
//! own permissions, whether they may read it.
//!
//! A tail ends when its browser goes away: the stream is dropped (a keep-alive comment every
//! 10 s makes a dead connection show), or the page stops saying it is alive (every 10 s;
//! none for `tail_timeout`, default 30 s). Its queue is then deleted. A browser too slow to
//! take the lines gets `dropped` events with the count; memory stays bounded by
//! `tail_buffer` lines per tail.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_lite::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify, mpsc};

use super::metrics::WebCounters;
use super::{App, error};
use crate::broker::{BrokerError, ErrorKind, Link, Tail};
use crate::record::render_line;

const COOKIE: &str = "ddmon_session";

/// A signed-in user: their own connection.
pub struct Session {
    /// The broker user.
    pub user: String,
    link: Link,
}

/// One open tail.
pub struct TailCtl {
    user: String,
    session: String,
    alive: std::sync::Mutex<Instant>,
    stop: Notify,
}

/// Sessions and tails.
#[derive(Default)]
pub struct Tails {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tails: Mutex<HashMap<String, Arc<TailCtl>>>,
}

impl Tails {
    /// Stop every tail and close every session (dd_web is stopping).
    pub async fn close_all(&self) {
        for t in self.tails.lock().await.values() {
            t.stop.notify_one();
        }
        let sessions: Vec<Arc<Session>> = self.sessions.lock().await.drain().map(|e| e.1).collect();
        for s in sessions {
            s.link.close("dd_web stopping").await;
        }
    }
}

/// 128 random bits from the kernel, in hex: session and tail ids.
fn token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if ok.is_err() {
        // never a guessable id: fall back on two independently keyed hashes
        b[..8].copy_from_slice(&crate::broker::random_u64().to_le_bytes());
        b[8..].copy_from_slice(&crate::broker::random_u64().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

async fn session(app: &App, headers: &HeaderMap) -> Option<(String, Arc<Session>)> {
    let id = session_id(headers)?;
    let s = app.tails.sessions.lock().await.get(&id).cloned()?;
    Some((id, s))
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct Login {
    user: String,
    password: String,
}

/// `POST /api/login {user, password}`: the broker checks them.
pub async fn login(State(app): State<Arc<App>>, Json(form): Json<Login>) -> Response {
    if form.user.is_empty() || form.user.chars().any(char::is_control) {
        return error(StatusCode::BAD_REQUEST, "a user name is needed");
    }
    let mut broker = app.cfg.broker.clone();
    broker.url = crate::config::with_credentials(&broker.url, &form.user, &form.password);
    let name = format!("dd_web tail for {}", form.user);
    match Link::open(&broker, &name).await {
        Ok(link) => {
            WebCounters::bump(&app.web.logins[0]);
            let id = token();
            tracing::info!(user = %form.user, "signed in");
            app.tails.sessions.lock().await.insert(
                id.clone(),
                Arc::new(Session {
                    user: form.user.clone(),
                    link,
                }),
            );
            let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
            (
                [(header::SET_COOKIE, cookie)],
                Json(json!({"user": form.user})),
            )
                .into_response()
        }
        Err(e) if !e.is_transient() && e.kind() != ErrorKind::Setup => {
            WebCounters::bump(&app.web.logins[1]);
            tracing::info!(user = %form.user, "sign-in refused by the broker");
            error(
                StatusCode::UNAUTHORIZED,
                format!("the broker refused {}: {}", form.user, e.reason()),
            )
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("cannot reach the broker: {e}"),
        ),
    }
}

/// `POST /api/logout`: the session's tails stop and its connection closes.
pub async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some((id, s)) = session(&app, &headers).await {
        app.tails.sessions.lock().await.remove(&id);
        for t in app.tails.tails.lock().await.values() {
            if t.session == id {
                t.stop.notify_one();
            }
        }
        s.link.close("signed out").await;
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

/// `GET /api/me`: who is signed in.
pub async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match session(&app, &headers).await {
        Some((_, s)) => Json(json!({"user": s.user})).into_response(),
        None => error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// `POST /api/tails/{id}/alive`: the page is still there.
pub async fn alive(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((sid, _)) = session(&app, &headers).await else {
        return error(StatusCode::UNAUTHORIZED, "not signed in");
    };
    match app.tails.tails.lock().await.get(&id) {
        Some(t) if t.session == sid => {
            if let Ok(mut a) = t.alive.lock() {
                *a = Instant::now();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "no such tail"),
    }
}

/// `/tail?pattern=REGEX&exclude=REGEX&source=NAME`.
#[derive(Deserialize)]
pub struct TailQuery {
    pattern: Option<String>,
    exclude: Option<String>,
    source: Option<String>,
}

fn status_of(e: &BrokerError) -> StatusCode {
    match e.kind() {
        ErrorKind::Refused => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    }
}

enum Out {
    Line(String),
    Dropped(u64),
    Closed(String),
}

/// `GET /tail`: a Server-Sent Events stream: `tail` (its id), then `line` events, `dropped`
/// when the browser was too slow, `closed` at the end.
pub async fn open(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<TailQuery>,
) -> Response {
    let Some((sid, s)) = session(&app, &headers).await else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    let patterns: Vec<String> = q.pattern.into_iter().filter(|p| !p.is_empty()).collect();
    let exclude = q.exclude.filter(|e| !e.is_empty());
    let filter = match crate::log::Filter::new(&patterns, exclude.as_deref()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad pattern: {e}")),
    };
    let exchange = match q.source.as_deref().filter(|s| !s.is_empty()) {
        Some(src) => crate::topic::source_exchange(&app.cfg.source_exchange_template, src),
        None => app.cfg.exchange.clone(),
    };
    if let Some(refused) = too_many_tails(&app, &s.user).await {
        return refused;
    }
    if !s.link.is_open() {
        app.tails.sessions.lock().await.remove(&sid);
        return error(
            StatusCode::UNAUTHORIZED,
            "the session's connection is gone; sign in again",
        );
    }
    let id = token();
    let queue =
        crate::broker::QueueSpec::name_for(&s.user, "dd_web", &format!("tail.{}", &id[..12]));
    let tag = format!("dd_web.{}", &id[..12]);
    let tail = match s.link.open_tail(&queue, &exchange, 200, &tag).await {
        Ok(t) => t,
        Err(e) if e.is_transient() && !s.link.is_open() => {
            app.tails.sessions.lock().await.remove(&sid);
            return error(
                StatusCode::UNAUTHORIZED,
                format!("the session's connection is gone ({e}); sign in again"),
            );
        }
        Err(e) => {
            let text = e.reason().to_string();
            tracing::info!(user = %s.user, exchange = %exchange, "tail refused: {text}");
            return error(
                status_of(&e),
                format!("the broker refused {}'s tail on {exchange}: {text}", s.user),
            );
        }
    };
    let ctl = Arc::new(TailCtl {
        user: s.user.clone(),
        session: sid,
        alive: std::sync::Mutex::new(Instant::now()),
        stop: Notify::new(),
    });
    app.tails.tails.lock().await.insert(id.clone(), ctl.clone());
    WebCounters::bump(&app.web.tails_opened);
    WebCounters::bump(&app.web.tails_open);
    tracing::info!(user = %s.user, exchange = %exchange, queue = %queue, "tail opened");
    let (tx, rx) = mpsc::channel(app.cfg.tail_buffer);
    tokio::spawn(run_tail(
        app.clone(),
        id.clone(),
        ctl,
        tail,
        queue,
        filter,
        tx,
    ));
    events(&id, &exchange, rx)
}

/// A 429 when `user` has as many tails open as allowed.
async fn too_many_tails(app: &App, user: &str) -> Option<Response> {
    let tails = app.tails.tails.lock().await;
    let mine = tails.values().filter(|t| t.user == user).count();
    (mine >= app.cfg.max_tails_per_user).then(|| {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{user} has {mine} tails open, the most allowed; close one first"),
        )
    })
}

/// The tail's Server-Sent Events: `tail` (its id) first, then what the tail sends.
fn events(id: &str, exchange: &str, rx: mpsc::Receiver<Out>) -> Response {
    let first = Event::default()
        .event("tail")
        .data(json!({"id": id, "exchange": exchange}).to_string());
    let stream = futures_lite::stream::once(Ok::<_, Infallible>(first)).chain(
        futures_lite::stream::unfold(rx, |mut rx| async move {
            let ev = match rx.recv().await? {
                Out::Line(l) => Event::default().event("line").data(l),
                Out::Dropped(n) => Event::default().event("dropped").data(n.to_string()),
                Out::Closed(why) => Event::default().event("closed").data(why),
            };
            Some((Ok(ev), rx))
        }),
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

async fn run_tail(
    app: Arc<App>,
    id: String,
    ctl: Arc<TailCtl>,
    mut tail: Tail,
    queue: String,
    filter: crate::log::Filter,
    tx: mpsc::Sender<Out>,
) {
    let timeout = Duration::from_secs_f64(app.cfg.tail_timeout);
    let mut stop = app.shutdown.clone();
    let mut dropped: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        tokio::select! {
            d = tail.next() => match d {
                Some(d) => {
                    // acknowledged here, not in the wait that a tick may drop
                    d.ack().await;
                    let line = crate::record::parse(&d.routing_key, &d.headers, &d.body)
                        .ok()
                        .and_then(|p| render_line(&d.routing_key, &p));
                    let Some(line) = line.filter(|l| filter.accepts(l)) else {
                        continue;
                    };
                    if dropped > 0 && tx.try_send(Out::Dropped(dropped)).is_ok() {
                        dropped = 0;
                    }
                    match tx.try_send(Out::Line(line)) {
                        Ok(()) => WebCounters::bump(&app.web.tail_lines),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropped += 1;
                            WebCounters::bump(&app.web.tail_dropped);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break "browser gone",
                    }
                }
                _ => {
                    let _ = tx.try_send(Out::Closed("the broker closed the tail".into()));
                    break "broker closed it";
                }
            },
            _ = ctl.stop.notified() => {
                let _ = tx.try_send(Out::Closed("stopped".into()));
                break "stopped";
            }
            _ = stop.requested() => {
                let _ = tx.try_send(Out::Closed("dd_web is stopping".into()));
                break "dd_web stopping";
            }
            _ = tick.tick() => {
                if tx.is_closed() {
                    break "browser gone";
                }
                let quiet = ctl.alive.lock().map(|a| a.elapsed()).unwrap_or_default();
                if quiet > timeout {
                    let _ = tx.try_send(Out::Closed("no sign of life from the page".into()));
                    break "page silent";
                }
            }
        }
    };
    if why == "browser gone" || why == "page silent" {
        WebCounters::bump(&app.web.tails_expired);
    }
    tail.close("tail closed").await;
    app.tails.tails.lock().await.remove(&id);
    app.web.tails_open.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(user = %ctl.user, queue = %queue, why, "tail closed");
}

/// Close sessions whose connection died (the broker restarted, the user was deleted).
pub async fn sweep(app: Arc<App>, mut shutdown: crate::daemon::Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.requested() => return,
        }
        let mut sessions = app.tails.sessions.lock().await;
        sessions.retain(|_, s| s.link.is_open());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_replace_the_urls_and_are_encoded() {
        use crate::config::{with_credentials, with_password};
        assert_eq!(
            with_credentials("amqp://guest:guest@h:5672/%2f", "src a", "p@ss:w/d"),
            "amqp://src%20a:p%40ss%3Aw%2Fd@h:5672/%2f"
        );
        assert_eq!(with_credentials("amqps://h/v", "u", "p"), "amqps://u:p@h/v");
        assert_eq!(
            with_password("amqp://bob@h/v", "p w"),
            "amqp://bob:p%20w@h/v"
        );
        assert_eq!(with_password("amqp://h/v", "x"), "amqp://guest:x@h/v");
    }

    #[test]
    fn tokens_are_128_bits_and_differ() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; ddmon_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
    }
}
