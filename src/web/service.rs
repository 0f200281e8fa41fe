//! dd_web's server: the shared state (`App`), the routes (page, `/metrics`, `/api/speedos`, SSE events, sign-in and tails), the poller that asks dd_speedo and every daemon, and the entry points (`main`, `run`).

use crate::daemon::Shutdown;
use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use board::Board;
use chrono::Utc;
use metrics::{Metrics, WebCounters};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

use super::*;

/// What every handler shares.
pub struct App {
    /// The configuration.
    pub cfg: WebConfig,
    /// The board.
    pub board: Arc<Mutex<Board>>,
    /// The latest snapshot to every `/api/events` stream.
    pub events: broadcast::Sender<Arc<str>>,
    /// dd_web's counters.
    pub web: Arc<WebCounters>,
    /// Signed-in users and their tails.
    pub tails: tail::Tails,
    /// The roster of ddmon's daemons (followed from the roster stream).
    pub roster: Arc<Mutex<crate::roster::Roster>>,
    /// Whether the roster's streams are followed now.
    pub followed: Arc<Mutex<crate::roster::follow::Followed>>,
    /// Fires on SIGINT/SIGTERM: every stream ends, so that the server can stop.
    pub shutdown: Shutdown,
}

impl App {
    /// The board (a panic elsewhere while it was held leaves it as it was: still shown).
    pub fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        lock_board(&self.board)
    }
}

/// Lock the board, taking it back from a poisoned lock.
pub fn lock_board(board: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    board
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const PAGE: &str = include_str!("page.html");

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    let text = metrics::render(Metrics {
        roster: Some(app.roster.clone()),
        board: app.board.clone(),
        web: app.web.clone(),
        poll_s: app.cfg.poll,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

fn snapshot(app: &App) -> Value {
    app.board().snapshot(Utc::now(), app.cfg.poll)
}

/// The daemons panel: the roster's rows, the worst first.
async fn daemons(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut rows = app
        .roster
        .lock()
        .map(|r| r.rows(Utc::now()))
        .unwrap_or_default();
    rows.sort_by_key(|r| std::cmp::Reverse(crate::roster::badness(r.state)));
    axum::Json(serde_json::json!({ "daemons": rows }))
}

async fn speedos(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(snapshot(&app))
}

async fn events(State(app): State<Arc<App>>) -> impl IntoResponse {
    let first: Arc<str> = snapshot(&app).to_string().into();
    let rx = app.events.subscribe();
    let state = (Some(first), rx, app.shutdown.clone());
    let stream = futures_lite::stream::unfold(state, |(first, mut rx, mut stop)| async move {
        if let Some(f) = first {
            let ev = Event::default().event("speedos").data(&*f);
            return Some((Ok::<_, Infallible>(ev), (None, rx, stop)));
        }
        loop {
            let next = tokio::select! {
                n = rx.recv() => n,
                _ = stop.requested() => return None,
            };
            match next {
                Ok(s) => {
                    let ev = Event::default().event("speedos").data(&*s);
                    return Some((Ok(ev), (None, rx, stop)));
                }
                // a slow page skips to the newest snapshot
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

/// The search box's question: `q` a regex on names (empty: every name), `kind` one kind,
/// `cursor` the next page of the previous answer.
#[derive(Debug, serde::Deserialize)]
pub struct Search {
    /// The regex.
    #[serde(default)]
    q: String,
    /// `client` or `source`.
    kind: Option<String>,
    /// The next page.
    cursor: Option<String>,
}

/// Lines of a search page.
pub const SEARCH_PAGE: usize = 50;

/// `/api/search?q=REGEX&kind=&cursor=`: any name, found by dd_speedo (asked for one page,
/// by name): `{"items": [...], "page": {...}, "matched": {...}}`; 400 for a bad query, 502
/// when dd_speedo does not answer.
async fn search(
    State(app): State<Arc<App>>,
    axum::extract::Query(s): axum::extract::Query<Search>,
) -> Response {
    let cfg = &app.cfg;
    let q = crate::rpc::Query {
        kind: s.kind.filter(|k| !k.is_empty()),
        regex: (!s.q.is_empty()).then_some(s.q),
        cursor: s.cursor.filter(|c| !c.is_empty()),
        sort: Some(crate::rpc::Sort::Name),
        limit: Some(SEARCH_PAGE),
        ..crate::rpc::Query::default()
    };
    let key = crate::rpc::request_key("dd_speedo", cfg.speedo_instance.as_deref(), "stats");
    let question = crate::rpc::Question::new(&cfg.exchange, key, Duration::from_secs(3))
        .with_body(&q)
        .at_most(1);
    let answers =
        crate::rpc::ask_once::<crate::speedo::StatsReply>(&cfg.broker, "dd_web search", &question)
            .await;
    let reply = match answers {
        Ok(a) => a.replies.into_iter().next(),
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    match reply {
        Some(r) if r.ok => {
            let s = r.result.unwrap_or_default();
            let kind = |k: &str, v: &crate::speedo::reply::NameStats| {
                let mut j = serde_json::to_value(v).unwrap_or_default();
                j["kind"] = k.into();
                j
            };
            let items: Vec<Value> = s
                .clients
                .iter()
                .map(|v| kind("client", v))
                .chain(s.sources.iter().map(|v| kind("source", v)))
                .collect();
            axum::Json(serde_json::json!({"items": items, "page": s.page, "matched": s.matched}))
                .into_response()
        }
        Some(r) => error(
            StatusCode::BAD_REQUEST,
            r.error.unwrap_or_else(|| "refused".into()),
        ),
        None => error(StatusCode::BAD_GATEWAY, "dd_speedo did not answer"),
    }
}

/// A JSON error with a status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": message.into()});
    (status, axum::Json(body)).into_response()
}

fn security_headers(mut r: Response) -> Response {
    let h: &mut HeaderMap = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The router (also used by the tests).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_text))
        .route("/api/speedos", get(speedos))
        .route("/api/search", get(search))
        .route("/api/daemons", get(daemons))
        .route("/api/events", get(events))
        .route("/api/login", post(tail::login))
        .route("/api/logout", post(tail::logout))
        .route("/api/me", get(tail::me))
        .route("/api/tails/{id}/alive", post(tail::alive))
        .route("/tail", get(tail::open))
        .layer(axum::middleware::map_response(|r: Response| async move {
            security_headers(r)
        }))
        .with_state(app)
}

/// Ask dd_speedo for its stats every `poll` seconds, and every daemon for its health every
/// `health_interval`; reconnect with backoff when the broker goes away. A refused login or
/// permission ends it with the error (dd_web then exits: no retry can mend it).
async fn poller(app: Arc<App>, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let cfg = &app.cfg;
    let key = crate::rpc::request_key("dd_speedo", cfg.speedo_instance.as_deref(), "stats");
    let poll = Duration::from_secs_f64(cfg.poll);
    let mut backoff = crate::broker::Backoff::new(&cfg.broker);
    let mut last_health: Option<std::time::Instant> = None;
    let mut warned_many = false;
    let mut warned_unreadable = false;
    // the worst names for the cards, with the whole pump's counts: never the world
    let cards = crate::rpc::Query {
        sort: Some(crate::rpc::Sort::Worst),
        limit: Some(cfg.cards),
        ..crate::rpc::Query::default()
    };
    'connect: loop {
        let link = match crate::broker::Link::open_with_retry(
            &cfg.broker,
            "dd_web",
            &mut backoff,
            &mut shutdown,
        )
        .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e).context("cannot poll dd_speedo"),
        };
        tracing::info!("connected; asking dd_speedo for stats every {:?}", poll);
        loop {
            let started = std::time::Instant::now();
            let wait = poll.min(Duration::from_secs(2));
            let question =
                crate::rpc::Question::new(&cfg.exchange, key.clone(), wait).with_body(&cards);
            let replies = tokio::select! {
                r = crate::rpc::ask::<crate::speedo::StatsReply>(&link, &question) => r,
                _ = shutdown.requested() => return Ok(()),
            };
            let replies = match replies {
                Ok(r) => r,
                // a missing permission (403, 530); a missing exchange (404) is dd_speedo not
                // started yet, and anything else is retried
                Err(e) if e.denies_access() => {
                    return Err(e).with_context(|| {
                        format!("cannot ask dd_speedo on exchange {:?}", cfg.exchange)
                    });
                }
                Err(e) => {
                    // no exchange yet, or the connection went: wait, then start again
                    tracing::warn!(error = %e, "stats request failed; trying again");
                    if !backoff.wait(&mut shutdown).await {
                        return Ok(());
                    }
                    continue 'connect;
                }
            };
            if let Some(e) = replies.unreadable.first().filter(|_| !warned_unreadable) {
                tracing::warn!(error = %e, "a stats answer could not be read; it is not shown");
                warned_unreadable = true;
            }
            if replies.answered() > 1 && !warned_many {
                tracing::warn!(
                    instances = replies.answered(),
                    "several dd_speedo instances answer; showing the first (pick one with --speedo-instance)"
                );
                warned_many = true;
            }
            let extra = match &cfg.metrics_names {
                Some(regex) => metrics_names(&link, &cfg.exchange, &key, regex, wait).await,
                None => None,
            };
            show(&app, &replies, extra.as_ref());
            if last_health.is_none_or(|t| t.elapsed().as_secs_f64() >= cfg.health_interval) {
                last_health = Some(std::time::Instant::now());
                ask_health(&app, &link).await;
            }
            let left = poll.saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = shutdown.requested() => return Ok(()),
            }
        }
    }
}

/// Names whose series /metrics exports besides the cards' (`--metrics-names`).
pub const MAX_METRICS_NAMES: usize = 1000;

/// The `--metrics-names` names' lines (`None` when not answered: the last ones are dropped
/// from the board until the next answer).
async fn metrics_names(
    link: &crate::broker::Link,
    exchange: &str,
    key: &str,
    regex: &str,
    wait: Duration,
) -> Option<crate::speedo::StatsReply> {
    let q = crate::rpc::Query {
        regex: Some(regex.to_string()),
        limit: Some(MAX_METRICS_NAMES),
        ..crate::rpc::Query::default()
    };
    let question = crate::rpc::Question::new(exchange, key.to_string(), wait).with_body(&q);
    let a = crate::rpc::ask::<crate::speedo::StatsReply>(link, &question)
        .await
        .ok()?;
    a.first_ok().map(|(_, s)| s.clone())
}

/// Put dd_speedo's answers on the board and send the board to every open page.
fn show(
    app: &App,
    replies: &crate::rpc::Answers<crate::speedo::StatsReply>,
    extra: Option<&crate::speedo::StatsReply>,
) {
    let snapshot = {
        let mut board = app.board();
        board.polls[0] += 1;
        match replies.first_ok() {
            Some((a, stats)) => {
                board.polls[1] += 1;
                board.update_with(stats, extra, &a.instance, Utc::now());
            }
            None => board.polls[2] += 1,
        }
        board.snapshot(Utc::now(), app.cfg.poll).to_string()
    };
    let _ = app.events.send(snapshot.into());
}

/// Ask every daemon for its health (for `/metrics`); a failed request keeps the last answers.
async fn ask_health(app: &App, link: &crate::broker::Link) {
    let question = crate::rpc::Question::new(
        &app.cfg.exchange,
        crate::rpc::broadcast_key("health"),
        Duration::from_secs(1),
    );
    if let Ok(h) = crate::rpc::ask::<crate::daemon::Health>(link, &question).await {
        app.board().daemons = h.replies;
    }
}

/// dd_web as a daemon: no input, its work is the HTTP server; it says it is alive and answers
/// `health` and `stats` (its counters) on the daemon exchange, so dd_status lists it.
struct Liveness {
    app: Arc<App>,
}

impl crate::daemon::Service for Liveness {
    fn tool(&self) -> &'static str {
        "dd_web"
    }

    fn handle(
        &mut self,
        _delivery: &crate::broker::Delivery,
        _now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<crate::daemon::Handled> {
        // no input subscription: nothing is ever delivered here
        Ok(crate::daemon::Handled::ack())
    }

    /// `roster`: the roster dd_web follows, asked with a `roster::RosterQuery` (what
    /// check_dd_alive `--from-monitor` asks).
    fn request(
        &mut self,
        command: &str,
        body: &[u8],
        now: chrono::DateTime<Utc>,
    ) -> Option<Result<Value, String>> {
        if command != "roster" {
            return None;
        }
        let q: crate::roster::RosterQuery = if body.iter().all(u8::is_ascii_whitespace) {
            Default::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(q) => q,
                Err(e) => return Some(Err(format!("bad roster query: {e}"))),
            }
        };
        let live = self.app.followed.lock().map(|f| f.live).unwrap_or(false);
        let answer = match self.app.roster.lock() {
            Ok(r) => r.answer(&q, now),
            Err(_) => Err("the roster is not readable".to_string()),
        };
        Some(answer.map(|mut a| {
            a.live = live;
            serde_json::json!(a)
        }))
    }

    fn counters(&self) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let w = &self.app.web;
        let polls = self.app.board().polls;
        serde_json::json!({
            "logins_accepted": w.logins[0].load(Relaxed),
            "logins_refused": w.logins[1].load(Relaxed),
            "polls": polls[0],
            "polls_answered": polls[1],
            "polls_unanswered": polls[2],
            "tail_dropped": w.tail_dropped.load(Relaxed),
            "tail_lines": w.tail_lines.load(Relaxed),
            "tails_open": w.tails_open.load(Relaxed),
        })
    }
}

/// Say dd_web is alive and answer its requests until the stop (through outages, as every
/// daemon); a refusal ends dd_web, as the poller's does.
async fn liveness(app: Arc<App>, shutdown: Shutdown) -> anyhow::Result<()> {
    let cfg = crate::daemon::ServeConfig {
        broker: &app.cfg.broker,
        input: None,
        daemon: Some(&app.cfg.daemon),
        publishes: false,
        remotes: Default::default(),
    };
    let mut service = Liveness { app: app.clone() };
    let clock = crate::clock::SystemClock;
    crate::daemon::serve(&mut service, cfg, shutdown, &clock)
        .await
        .context("cannot answer health requests")
}

/// Serve until SIGINT/SIGTERM.
pub async fn run(cfg: WebConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (events, _) = broadcast::channel(4);
    let mut roster = crate::roster::Roster::new(300.0);
    if let Some(p) = &cfg.declared {
        roster.declare(&crate::roster::Declared::load(p)?);
    }
    let roster = Arc::new(Mutex::new(roster));
    let source = crate::roster::follow::Source {
        broker: cfg.broker.clone(),
        exchange: cfg.exchange.clone(),
        stream: cfg.daemon.roster.clone(),
    };
    let followed = Arc::new(Mutex::new(crate::roster::follow::Followed::default()));
    let app = Arc::new(App {
        roster: roster.clone(),
        followed: followed.clone(),
        board: Arc::new(Mutex::new(Board::new(cfg.history))),
        events,
        web: Arc::default(),
        tails: tail::Tails::default(),
        shutdown: shutdown.clone(),
        cfg,
    });
    tracing::info!("dd_web serving http://{addr}/");
    let mut poll = tokio::spawn(poller(app.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(tail::sweep(app.clone(), shutdown.clone()));
    let follower = tokio::spawn(crate::roster::follow::follow(
        source,
        roster,
        followed,
        shutdown.clone(),
    ));
    let mut alive = tokio::spawn(liveness(app.clone(), shutdown.clone()));
    let mut stop = shutdown.clone();
    let server = axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(async move { stop.requested().await })
        .into_future();
    tokio::pin!(server);
    // a refused login or permission (the poller's or the liveness'): said in one line, and
    // dd_web stops; otherwise the stop, and the server finishes its graceful shutdown
    let (mut poll_done, mut alive_done, mut served) = (false, false, false);
    let failed = tokio::select! {
        r = &mut server => {
            r.context("HTTP server failed")?;
            served = true;
            None
        }
        r = &mut poll => {
            poll_done = true;
            r.ok().and_then(Result::err)
        }
        r = &mut alive => {
            alive_done = true;
            r.ok().and_then(Result::err)
        }
    };
    // every task ends before the runtime does (a connection still opening in one of them
    // would outlive it otherwise); bounded: a broker that is gone does not hold us
    shutdown.stop();
    let bound = Duration::from_secs(3);
    if !poll_done {
        let _ = tokio::time::timeout(bound, &mut poll).await;
    }
    // it publishes `stopping` on the stop
    if !alive_done {
        let _ = tokio::time::timeout(bound, &mut alive).await;
    }
    let _ = tokio::time::timeout(bound, sweeper).await;
    let _ = tokio::time::timeout(bound, follower).await;
    if let Some(e) = failed {
        return Err(e);
    }
    if !served {
        (&mut server).await.context("HTTP server failed")?;
    }
    app.tails.close_all().await;
    tracing::info!("dd_web stopped");
    Ok(())
}

/// Entry point of the `dd_web` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(WebConfig::from_args(&args)?);
    crate::cli::main("dd_web", &args.common, 3, config, |cfg| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(cfg, shutdown).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}
