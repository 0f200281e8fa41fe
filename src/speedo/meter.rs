//! The speedometer itself: a pure state machine. Records go in with their arrival time
//! ([`Speedo::observe`]); the time goes forward ([`Speedo::advance`]); out come speedo records
//! at the end of every interval and alerts on every change of a name's state. No I/O: the
//! daemon publishes what comes out, `--replay` prints it, the tests read it.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::reply::{NameStats, StatsReply, TopBy, TopSubject, TopSubjects, Totals};
use super::thresholds::{Health, Kind, Learned, Limits, Thresholds};
use super::topn::SpaceSaving;
use crate::clock::at_ms;
use crate::record::{HeaderValue, Headers, LogRecord};
use crate::topic::StatusClass;

/// Cumulative counts since the speedo started (kept across restarts by the state file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Good (2xx) deliveries.
    pub good: u64,
    /// Errors (4xx, 5xx).
    pub errors: u64,
    /// Bytes of the good deliveries.
    pub good_bytes: u64,
    /// Bytes of the errors (as far as the records say).
    pub bad_bytes: u64,
}

/// What happened in a window (an interval, or a minute).
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    files: u64,
    bytes: u64,
    errors: u64,
    lag_sum: f64,
    lag_n: u64,
    lag_max: f64,
}

impl Window {
    fn add(&mut self, good: bool, bytes: u64, lag: f64) {
        if good {
            self.files += 1;
            self.bytes = self.bytes.saturating_add(bytes);
        } else {
            self.errors += 1;
        }
        if self.lag_n == 0 || lag > self.lag_max {
            self.lag_max = lag;
        }
        self.lag_sum += lag;
        self.lag_n += 1;
    }

    fn lag(&self) -> (Option<f64>, Option<f64>) {
        if self.lag_n == 0 {
            (None, None)
        } else {
            (Some(self.lag_sum / self.lag_n as f64), Some(self.lag_max))
        }
    }
}

/// Counters of one name (or of a total).
#[derive(Debug, Clone, Copy, Default)]
struct Meter {
    counts: Counts,
    interval: Window,
    minute: Window,
}

impl Meter {
    fn add(&mut self, good: bool, bytes: u64, lag: f64) {
        // saturating: a record may claim any size (v03 `size` is any u64)
        if good {
            self.counts.good += 1;
            self.counts.good_bytes = self.counts.good_bytes.saturating_add(bytes);
        } else {
            self.counts.errors += 1;
            self.counts.bad_bytes = self.counts.bad_bytes.saturating_add(bytes);
        }
        self.interval.add(good, bytes, lag);
        self.minute.add(good, bytes, lag);
    }
}

/// The figures of a name's last whole minute and last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Good files in the last whole minute (`None` before a whole minute was seen).
    pub files_per_min: Option<f64>,
    /// Good bytes per second over the last whole minute.
    pub bytes_per_sec: Option<f64>,
    /// errors / (good + errors) in the last whole minute (`None` without attempts).
    pub error_ratio: Option<f64>,
    /// good + errors in the last whole minute.
    pub attempts: u64,
    /// Mean lag (arrival - datestamp, seconds) in the last interval.
    pub lag_mean: Option<f64>,
    /// Largest lag in the last interval.
    pub lag_max: Option<f64>,
    /// The expected files per minute (learned) at the last whole minute.
    pub expected_mean: Option<f64>,
    /// Its spread.
    pub expected_spread: Option<f64>,
}

/// What the thresholds found for a name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// The current state.
    pub state: Health,
    /// Since when (ms since the epoch).
    pub since_ms: i64,
    /// No good delivery for `td`.
    pub late: bool,
    /// Too few good files in the last minute.
    pub slow: bool,
    /// Too many errors in the last minute.
    pub failing: bool,
    /// Start of the run of minutes outside the expectation (ms).
    pub outside_since_ms: Option<i64>,
    /// Outside for at least `abnormal_after`.
    pub abnormal: bool,
    /// What its broker queues say (`stopped`, `stalled`, `slow`), with the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queues::QueueView>,
}

impl Watch {
    fn state_now(&self) -> Health {
        if let Some(h @ (Health::Stopped | Health::Stalled)) =
            self.queue.as_ref().and_then(|q| q.state)
        {
            return h;
        }
        if self.late {
            Health::Late
        } else if self.failing {
            Health::Failing
        } else if self.slow || self.queue.as_ref().and_then(|q| q.state) == Some(Health::Slow) {
            Health::Slow
        } else if self.abnormal {
            Health::Abnormal
        } else {
            Health::Ok
        }
    }
}

/// One client or source.
#[derive(Debug, Clone)]
pub struct Entry {
    meter: Meter,
    /// First record (ms since the epoch).
    pub first_seen_ms: i64,
    /// Last good delivery (arrival, ms since the epoch).
    pub last_good_ms: Option<i64>,
    limits: u32,
    /// Threshold state.
    pub watch: Watch,
    /// Last figures.
    pub figures: Figures,
    /// The learned expectation (allocated at the name's first whole minute).
    pub learned: Option<Box<Learned>>,
}

impl Entry {
    /// Cumulative counts.
    pub fn counts(&self) -> Counts {
        self.meter.counts
    }
}

/// What a speedo record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `v01.speedo.client.<name>`.
    Client,
    /// `v01.speedo.source.<name>`.
    Source,
    /// `v01.speedo.client.all`.
    ClientAll,
    /// `v01.speedo.sources.all`.
    SourcesAll,
}

/// One speedo record (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedoRecord {
    /// Which.
    pub scope: Scope,
    /// The client or source (`all` for the totals).
    pub name: String,
    /// End of the interval.
    pub end: DateTime<Utc>,
    /// Interval, seconds.
    pub interval: u32,
    /// Cumulative counts.
    pub counts: Counts,
    /// Good files this interval.
    pub files: u64,
    /// Good bytes this interval.
    pub bytes: u64,
    /// Errors this interval.
    pub errors: u64,
    /// Mean lag this interval.
    pub lag_mean: Option<f64>,
    /// Largest lag this interval.
    pub lag_max: Option<f64>,
    /// A client's broker queues at the last poll: messages waiting (ready and
    /// unacknowledged) and consumers (`None`: not watched, or no queue).
    pub queue: Option<(u64, u64)>,
}

impl SpeedoRecord {
    /// The routing key: `v01.speedo.client.<client>` and so on, the name escaped and the key
    /// cut at 255 bytes.
    pub fn topic(&self) -> String {
        let key = match self.scope {
            Scope::Client => format!(
                "v01.speedo.client.{}",
                crate::topic::escape_name(&self.name)
            ),
            Scope::Source => format!(
                "v01.speedo.source.{}",
                crate::topic::escape_name(&self.name)
            ),
            Scope::ClientAll => "v01.speedo.client.all".to_string(),
            Scope::SourcesAll => "v01.speedo.sources.all".to_string(),
        };
        crate::topic::cut(&key).to_string()
    }

    /// The body: `<datetime> <goodcount> <errorcount> <goodbytecount> <badbytecount>
    /// <bytes/interval> <files/interval> <interval>`.
    pub fn body(&self) -> String {
        let mut s = String::with_capacity(80);
        let _ = write!(
            s,
            "{} {} {} {} {} {} {} {}",
            self.end.format("%Y%m%d%H%M%S"),
            self.counts.good,
            self.counts.errors,
            self.counts.good_bytes,
            self.counts.bad_bytes,
            self.bytes,
            self.files,
            self.interval
        );
        s
    }

    /// The headers: the fields as numbers, `error_files_interval`, the lag, and the name
    /// unescaped.
    pub fn headers(&self) -> Headers {
        let int = |v: u64| HeaderValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let mut h = Headers::new();
        let stamp: i64 = self
            .end
            .format("%Y%m%d%H%M%S")
            .to_string()
            .parse()
            .unwrap_or(0);
        h.insert("datetime".into(), HeaderValue::Int(stamp));
        h.insert("goodcount".into(), int(self.counts.good));
        h.insert("errorcount".into(), int(self.counts.errors));
        h.insert("goodbytecount".into(), int(self.counts.good_bytes));
        h.insert("badbytecount".into(), int(self.counts.bad_bytes));
        h.insert("bytes_interval".into(), int(self.bytes));
        h.insert("files_interval".into(), int(self.files));
        h.insert("error_files_interval".into(), int(self.errors));
        h.insert("interval".into(), int(u64::from(self.interval)));
        if let (Some(mean), Some(max)) = (self.lag_mean, self.lag_max) {
            h.insert("lag_mean".into(), HeaderValue::Float(mean));
            h.insert("lag_max".into(), HeaderValue::Float(max));
        }
        if let Some((backlog, consumers)) = self.queue {
            h.insert("backlog".into(), int(backlog));
            h.insert("consumers".into(), int(consumers));
        }
        let kind = match self.scope {
            Scope::Client | Scope::ClientAll => "client",
            Scope::Source | Scope::SourcesAll => "source",
        };
        h.insert(kind.into(), HeaderValue::Str(self.name.clone()));
        h
    }
}

/// A change of a name's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Client or source.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// State before.
    pub old: Health,
    /// State now.
    pub new: Health,
    /// Why (every condition that holds; `within thresholds` when none).
    pub reason: String,
    /// When.
    pub time: DateTime<Utc>,
    /// Last good delivery.
    pub last_good: Option<DateTime<Utc>>,
    /// The figures it was judged on.
    pub figures: Figures,
}

impl Alert {
    /// `v01.speedo.alert.<client|source>.<name>`.
    pub fn topic(&self) -> String {
        let key = format!(
            "v01.speedo.alert.{}.{}",
            self.kind.as_str(),
            crate::topic::escape_name(&self.name)
        );
        crate::topic::cut(&key).to_string()
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the speedo emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A speedo record.
    Speedo(SpeedoRecord),
    /// A state change.
    Alert(Alert),
}

/// At most this many empty intervals are published after a jump of the time.
pub const MAX_CATCH_UP: i64 = 1000;

/// How many subjects each ranking keeps.
pub const TOP_N: usize = 10;

/// The speedo's settings.
pub struct Settings {
    /// Interval, seconds (at least 1).
    pub interval: u32,
    /// Counters of each heavy-hitters structure.
    pub top_capacity: usize,
    /// Thresholds.
    pub thresholds: Thresholds,
}

/// Per-name counters, windows, thresholds and the top subjects.
pub struct Speedo {
    interval: i64,
    thresholds: Thresholds,
    clients: HashMap<Box<str>, Entry>,
    sources: HashMap<Box<str>, Entry>,
    client_all: Meter,
    sources_all: Meter,
    /// Start of the current interval (s).
    interval_start: Option<i64>,
    /// Start of the current minute (s).
    minute_start: Option<i64>,
    /// Last second the states were judged.
    judged: i64,
    /// Earliest second at which `advance` has something to do.
    next_due: i64,
    started_ms: i64,
    /// A group's active took over here: a name not late gets its `td` from here too.
    resumed_ms: Option<i64>,
    /// The clients' broker queues (`None`: not watched).
    queues: Option<super::queues::ClientQueues>,
    files: SpaceSaving,
    bytes: SpaceSaving,
    top: TopSubjects,
    last_end: Option<DateTime<Utc>>,
    /// Log records counted (good or error).
    pub counted: u64,
    /// 1xx and 3xx records (in neither count).
    pub neutral: u64,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at_s(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or_default()
}

/// The start of the aligned window of `len` seconds holding second `t`.
fn align(t: i64, len: i64) -> i64 {
    t.div_euclid(len) * len
}

/// The subject of a record: its relpath's directory (without leading `/`; `/` for none).
pub fn subject_of(relpath: &str) -> &str {
    let rel = relpath.trim_start_matches('/');
    match rel.rfind('/') {
        Some(i) if i > 0 => &rel[..i],
        _ => "/",
    }
}

impl Speedo {
    /// A speedo started at `now`.
    pub fn new(settings: Settings, now: DateTime<Utc>) -> Speedo {
        let capacity = settings.top_capacity.max(TOP_N);
        Speedo {
            interval: i64::from(settings.interval.max(1)),
            thresholds: settings.thresholds,
            clients: HashMap::new(),
            sources: HashMap::new(),
            client_all: Meter::default(),
            sources_all: Meter::default(),
            interval_start: None,
            minute_start: None,
            judged: i64::MIN,
            next_due: i64::MIN,
            started_ms: ms(now),
            resumed_ms: None,
            queues: None,
            files: SpaceSaving::new(capacity),
            bytes: SpaceSaving::new(capacity),
            top: TopSubjects {
                capacity,
                ..TopSubjects::default()
            },
            last_end: None,
            counted: 0,
            neutral: 0,
        }
    }

    /// Say when the speedo started (replay: the first record's time).
    pub fn set_start(&mut self, t: DateTime<Utc>) {
        self.started_ms = ms(t);
    }

    /// The interval, seconds.
    pub fn interval(&self) -> u32 {
        self.interval as u32
    }

    /// Count one record that arrived at `arrival`. Call [`Speedo::advance`] first, so that
    /// it lands in the interval holding its arrival.
    pub fn observe(&mut self, r: &LogRecord, arrival: DateTime<Utc>) {
        let now = ms(arrival);
        let good = match r.class() {
            StatusClass::Good => true,
            StatusClass::Error => false,
            StatusClass::Informational | StatusClass::Neutral => {
                // not counted, but seen: the client and source get their speedo records
                self.neutral += 1;
                let t = &mut self.thresholds;
                ensure_entry(&mut self.clients, t, Kind::Client, &r.client, now);
                if let Some(source) = r.source.as_deref().filter(|s| !s.is_empty()) {
                    ensure_entry(&mut self.sources, t, Kind::Source, source, now);
                }
                return;
            }
        };
        self.counted += 1;
        let bytes = r.bytes.unwrap_or(0);
        let lag = (now - ms(r.time)) as f64 / 1000.0;
        let e = entry_of(
            &mut self.clients,
            &mut self.thresholds,
            Kind::Client,
            &r.client,
            now,
        );
        e.meter.add(good, bytes, lag);
        if good {
            e.last_good_ms = Some(now);
        }
        self.client_all.add(good, bytes, lag);
        if let Some(source) = r.source.as_deref().filter(|s| !s.is_empty()) {
            let e = entry_of(
                &mut self.sources,
                &mut self.thresholds,
                Kind::Source,
                source,
                now,
            );
            e.meter.add(good, bytes, lag);
            if good {
                e.last_good_ms = Some(now);
            }
            self.sources_all.add(good, bytes, lag);
        }
        if good {
            let subject = subject_of(&r.relpath);
            self.files.offer(subject, 1);
            self.bytes.offer(subject, bytes);
        }
    }

    /// Move the time to `now`: close every interval and minute that ended, judge the states
    /// (once per second at most). Returns the speedo records and alerts, in order.
    pub fn advance(&mut self, now: DateTime<Utc>) -> Vec<Output> {
        let now_s = now.timestamp();
        let mut out = Vec::new();
        let went_back = self.interval_start.is_some_and(|start| now_s < start);
        if now_s < self.next_due && !went_back {
            return out;
        }
        let interval = self.interval;
        match self.interval_start {
            None => self.interval_start = Some(align(now_s, interval)),
            // the clock went back (or a replayed record is far older): start again from now
            Some(start) if now_s < start => self.interval_start = Some(align(now_s, interval)),
            Some(mut start) => {
                let mut closed = 0;
                while now_s >= start + interval {
                    start += interval;
                    self.close_interval(start, &mut out);
                    closed += 1;
                    // a jump of the clock (or a record from far ahead): after a day's worth of
                    // empty intervals (at most 1000), skip to now instead of flooding
                    if closed >= MAX_CATCH_UP.min(86_400 / interval).max(1)
                        && now_s >= start + interval
                    {
                        tracing::warn!(
                            from = start,
                            to = now_s,
                            "time jumped: empty intervals skipped"
                        );
                        start = align(now_s, interval);
                    }
                }
                self.interval_start = Some(start);
            }
        }
        match self.minute_start {
            None => self.minute_start = Some(align(now_s, 60)),
            Some(start) if now_s < start => self.minute_start = Some(align(now_s, 60)),
            Some(mut start) => {
                let mut closed = 0;
                while now_s >= start + 60 {
                    self.close_minute(start);
                    start += 60;
                    closed += 1;
                    if closed >= 1440 && now_s >= start + 60 {
                        start = align(now_s, 60);
                    }
                }
                self.minute_start = Some(start);
            }
        }
        if now_s < self.judged {
            self.judged = now_s - 1;
        }
        if now_s > self.judged {
            self.judged = now_s;
            self.judge(ms(now), &mut out);
        }
        let interval_end = self.interval_start.unwrap_or(now_s) + interval;
        let minute_end = self.minute_start.unwrap_or(now_s) + 60;
        self.next_due = (now_s + 1).min(interval_end).min(minute_end);
        out
    }

    /// The end of the stream (replay): close the current interval as if it had ended.
    pub fn finish(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(start) = self.interval_start.take() {
            self.close_interval(start + self.interval, &mut out);
        }
        out
    }

    fn close_interval(&mut self, end_s: i64, out: &mut Vec<Output>) {
        let end = at_s(end_s);
        let interval = self.interval as u32;
        let record = |scope, name: &str, m: &mut Meter| {
            let (lag_mean, lag_max) = m.interval.lag();
            let r = SpeedoRecord {
                scope,
                name: name.to_string(),
                end,
                interval,
                counts: m.counts,
                files: m.interval.files,
                bytes: m.interval.bytes,
                errors: m.interval.errors,
                lag_mean,
                lag_max,
                queue: None,
            };
            m.interval = Window::default();
            r
        };
        for (map, scope, all_scope, all) in [
            (
                &mut self.clients,
                Scope::Client,
                Scope::ClientAll,
                &mut self.client_all,
            ),
            (
                &mut self.sources,
                Scope::Source,
                Scope::SourcesAll,
                &mut self.sources_all,
            ),
        ] {
            // the totals go out once anything was counted, even with no name of this kind
            if map.is_empty() && self.counted == 0 {
                continue;
            }
            let mut names: Vec<&Box<str>> = map.keys().collect();
            names.sort_unstable();
            let names: Vec<Box<str>> = names.into_iter().cloned().collect();
            for name in names {
                if let Some(e) = map.get_mut(&name) {
                    let (lag_mean, lag_max) = e.meter.interval.lag();
                    e.figures.lag_mean = lag_mean;
                    e.figures.lag_max = lag_max;
                    let mut r = record(scope, &name, &mut e.meter);
                    r.queue = e.watch.queue.as_ref().map(|q| (q.backlog, q.consumers));
                    out.push(Output::Speedo(r));
                }
            }
            out.push(Output::Speedo(record(all_scope, "all", all)));
        }
        self.last_end = Some(end);
    }

    fn close_minute(&mut self, start_s: i64) {
        let start_ms = start_s * 1000;
        let end_ms = start_ms + 60_000;
        let t = at_s(start_s);
        let hour = t.weekday().num_days_from_monday() as usize * 24 + t.hour() as usize;
        let started = self.started_ms;
        for map in [&mut self.clients, &mut self.sources] {
            for e in map.values_mut() {
                let w = e.meter.minute;
                e.meter.minute = Window::default();
                // A minute the speedo (or the name) did not see whole is neither shown nor judged.
                if e.first_seen_ms.max(started) > start_ms {
                    continue;
                }
                let attempts = w.files + w.errors;
                e.figures.files_per_min = Some(w.files as f64);
                e.figures.bytes_per_sec = Some(w.bytes as f64 / 60.0);
                e.figures.attempts = attempts;
                e.figures.error_ratio = (attempts > 0).then(|| w.errors as f64 / attempts as f64);
                let limits = self.thresholds.get(e.limits);
                let x = w.files as f64;
                e.watch.slow = limits.tminr > 0.0 && x < limits.tminr;
                e.watch.failing = limits.max_error_ratio < 1.0
                    && attempts >= u64::from(limits.min_attempts)
                    && e.figures.error_ratio.unwrap_or(0.0) > limits.max_error_ratio;
                if limits.k > 0.0 {
                    let learned = e.learned.get_or_insert_with(Box::default);
                    let mut learn = true;
                    match learned.expectation(hour, limits) {
                        Some((exp, _)) => {
                            let spread = exp.spread().max(limits.min_spread);
                            let mean = f64::from(exp.mean);
                            e.figures.expected_mean = Some(mean);
                            e.figures.expected_spread = Some(spread);
                            if (x - mean).abs() > limits.k * spread {
                                let since = *e.watch.outside_since_ms.get_or_insert(start_ms);
                                let outside = (end_ms - since) as f64;
                                e.watch.abnormal = outside >= limits.abnormal_after * 1000.0;
                                learn = outside >= limits.adapt_after * 1000.0;
                            } else {
                                e.watch.outside_since_ms = None;
                                e.watch.abnormal = false;
                            }
                        }
                        None => {
                            e.figures.expected_mean = None;
                            e.figures.expected_spread = None;
                        }
                    }
                    if learn {
                        learned.update(hour, x, limits.alpha);
                    }
                } else {
                    e.watch.abnormal = false;
                    e.watch.outside_since_ms = None;
                }
            }
        }
        self.rotate_top(at_ms(end_ms));
    }

    fn rotate_top(&mut self, minute_end: DateTime<Utc>) {
        let by_files = self.files.top(TOP_N);
        let by_bytes = self.bytes.top(TOP_N);
        let mut subjects: Vec<TopSubject> = Vec::new();
        for c in by_files.iter().chain(by_bytes.iter()) {
            if subjects.iter().any(|s| s.subject == c.key) {
                continue;
            }
            let files = self.files.get(&c.key).map(|c| c.count);
            let bytes = self.bytes.get(&c.key).map(|c| c.count);
            let mut top_by = Vec::new();
            if by_files.iter().any(|f| f.key == c.key) {
                top_by.push(TopBy::Files);
            }
            if by_bytes.iter().any(|f| f.key == c.key) {
                top_by.push(TopBy::Bytes);
            }
            subjects.push(TopSubject {
                subject: c.key.clone(),
                files,
                bytes,
                files_per_sec: files.map(|f| f as f64 / 60.0),
                bytes_per_sec: bytes.map(|b| b as f64 / 60.0),
                top_by,
            });
        }
        subjects.sort_by(|a, b| {
            b.files
                .unwrap_or(0)
                .cmp(&a.files.unwrap_or(0))
                .then_with(|| b.bytes.unwrap_or(0).cmp(&a.bytes.unwrap_or(0)))
                .then_with(|| a.subject.cmp(&b.subject))
        });
        self.top = TopSubjects {
            minute_end: Some(minute_end),
            capacity: self.top.capacity,
            total_files: self.files.total(),
            files_error_bound: self.files.bound(),
            total_bytes: self.bytes.total(),
            bytes_error_bound: self.bytes.bound(),
            subjects,
        };
        self.files.reset();
        self.bytes.reset();
    }

    fn judge(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let started = self.started_ms.max(self.resumed_ms.unwrap_or(i64::MIN));
        let mut alerts = Vec::new();
        for (kind, map) in [
            (Kind::Client, &mut self.clients),
            (Kind::Source, &mut self.sources),
        ] {
            for (name, e) in map.iter_mut() {
                let limits = self.thresholds.get(e.limits);
                e.watch.late = is_late(e, limits, now_ms, started);
                let state = e.watch.state_now();
                if state != e.watch.state {
                    let old = e.watch.state;
                    e.watch.state = state;
                    e.watch.since_ms = now_ms;
                    alerts.push(Alert {
                        kind,
                        name: name.to_string(),
                        old,
                        new: state,
                        reason: reason(e, limits, now_ms),
                        time: at_ms(now_ms),
                        last_good: e.last_good_ms.map(at_ms),
                        figures: e.figures,
                    });
                }
            }
        }
        // a stable order: by kind, then name
        alerts.sort_by(|x, y| (x.kind, &x.name).cmp(&(y.kind, &y.name)));
        out.extend(alerts.into_iter().map(Output::Alert));
    }

    /// Full statistics, every name (the tests, the state file's readers); a request is
    /// answered by [`Speedo::answer`], bounded. The service adds its counters.
    pub fn stats(&self, now: DateTime<Utc>) -> StatsReply {
        let now_ms = ms(now);
        let names = |map: &HashMap<Box<str>, Entry>| {
            let mut v: Vec<(&Box<str>, &Entry)> = map.iter().collect();
            v.sort_unstable_by(|a, b| a.0.cmp(b.0));
            v.into_iter()
                .map(|(name, e)| self.name_stats(name, e, now_ms))
                .collect::<Vec<_>>()
        };
        StatsReply {
            clients: names(&self.clients),
            sources: names(&self.sources),
            ..self.frame(now)
        }
    }

    /// A reply with everything but the lines of names: counts, times, totals, top subjects.
    pub(crate) fn frame(&self, now: DateTime<Utc>) -> StatsReply {
        StatsReply {
            counted: self.counted,
            data_time: self.last_end,
            interval: u32::try_from(self.interval).unwrap_or(u32::MAX),
            neutral: self.neutral,
            started: at_ms(self.started_ms),
            time: now,
            top_subjects: self.top.clone(),
            totals: Totals {
                client_all: self.client_all.counts,
                sources_all: self.sources_all.counts,
            },
            ..StatsReply::default()
        }
    }

    /// One name's line of the `stats` reply.
    pub(crate) fn name_stats(&self, name: &str, e: &Entry, now_ms: i64) -> NameStats {
        let limits = self.thresholds.get(e.limits);
        let c = e.meter.counts;
        NameStats {
            bad_bytes: c.bad_bytes,
            bytes_per_sec: e.figures.bytes_per_sec,
            error_ratio: e.figures.error_ratio,
            errors: c.errors,
            expected_files_per_min: e.figures.expected_mean,
            expected_spread: e.figures.expected_spread,
            files_per_min: e.figures.files_per_min,
            first_seen: at_ms(e.first_seen_ms),
            good: c.good,
            good_bytes: c.good_bytes,
            lag_max: e.figures.lag_max,
            lag_mean: e.figures.lag_mean,
            last_good: e.last_good_ms.map(at_ms),
            limits: limits.into(),
            name: name.to_string(),
            reason: reason(e, limits, now_ms),
            seconds_since_good: e.last_good_ms.map(|g| (now_ms - g) as f64 / 1000.0),
            since: at_ms(e.watch.since_ms),
            state: e.watch.state,
            queue: e.watch.queue.clone(),
        }
    }

    /// Number of clients and sources seen.
    pub fn names(&self) -> (usize, usize) {
        (self.clients.len(), self.sources.len())
    }

    /// How many names are in each state (for alive and health).
    pub fn states(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.clients.values().chain(self.sources.values()) {
            *m.entry(e.watch.state.as_str()).or_default() += 1;
        }
        m
    }

    /// The top subjects of the last whole minute.
    pub fn top(&self) -> &TopSubjects {
        &self.top
    }

    /// Totals: (client.all, sources.all).
    pub fn totals(&self) -> (Counts, Counts) {
        (self.client_all.counts, self.sources_all.counts)
    }

    /// Every entry of a kind, unordered (the state file).
    pub fn entries(&self, kind: Kind) -> impl Iterator<Item = (&str, &Entry)> {
        let map = match kind {
            Kind::Client => &self.clients,
            Kind::Source => &self.sources,
        };
        map.iter().map(|(k, e)| (&**k, e))
    }

    /// One entry.
    pub fn entry(&self, kind: Kind, name: &str) -> Option<&Entry> {
        match kind {
            Kind::Client => self.clients.get(name),
            Kind::Source => self.sources.get(name),
        }
    }

    /// Put back what a state file kept: counts, times, states, learning.
    pub fn restore(&mut self, saved: super::state::Saved) {
        self.restore_runs(saved, false);
    }

    /// When it started (ms since the epoch).
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// Watch the clients' broker queues (the client-health issue).
    pub fn watch_queues(&mut self, queues: super::queues::ClientQueues) {
        self.queues = Some(queues);
    }

    /// The broker queues watched, if they are.
    pub fn queues(&self) -> Option<&super::queues::ClientQueues> {
        self.queues.as_ref()
    }

    /// A poll of `broker`'s management API at `now`: its queues, or why it could not be
    /// read. A client seen only by its queue gets an entry (its reports may never come: a
    /// stopped client).
    pub fn queues_polled(
        &mut self,
        broker: &str,
        polled: Result<Vec<super::queues::QueueSample>, String>,
        now: DateTime<Utc>,
    ) {
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        match polled {
            Ok(samples) => q.update(broker, samples, now),
            Err(why) => q.unseen(broker, why),
        }
        // judged at each poll (the samples change only then), for every client with a queue;
        // a client whose queues are gone has none
        let now_ms = ms(now);
        let w = q.window_ms();
        let clients = q.clients();
        for e in self.clients.values_mut() {
            e.watch.queue = None;
        }
        for client in clients {
            let e = entry_of(
                &mut self.clients,
                &mut self.thresholds,
                Kind::Client,
                &client,
                now_ms,
            );
            // the report side's good deliveries in the window, from the last whole minute
            let good = match e.last_good_ms {
                Some(g) if now_ms - g <= w => {
                    let per_min = e.figures.files_per_min.unwrap_or(0.0);
                    ((per_min * w as f64 / 60_000.0).round() as u64).max(1)
                }
                _ => 0,
            };
            e.watch.queue = q.view(&client, good, now);
        }
    }

    /// When a group's active took over (ms since the epoch), if it did.
    pub fn resumed_ms(&self) -> Option<i64> {
        self.resumed_ms
    }

    /// A group's active takes over at `at` (or a snapshot says it did): as after a start, a
    /// name not late is given its `td` from here (the records that waited in the queue while
    /// no member judged come in first).
    pub fn resume(&mut self, at: DateTime<Utc>) {
        self.resumed_ms = Some(ms(at));
    }

    /// Put back a group's snapshot: as [`Speedo::restore`], and a run of minutes outside the
    /// expectation goes on (there was no downtime: the active was judging).
    pub fn restore_exact(&mut self, saved: super::state::Saved) {
        self.restore_runs(saved, true);
    }

    fn restore_runs(&mut self, saved: super::state::Saved, keep_runs: bool) {
        self.client_all.counts = saved.client_all;
        self.sources_all.counts = saved.sources_all;
        for (kind, map) in [(Kind::Client, saved.clients), (Kind::Source, saved.sources)] {
            for (name, s) in map {
                let limits = self.thresholds.resolve(kind, &name);
                let e = Entry {
                    meter: Meter {
                        counts: s.counts,
                        ..Meter::default()
                    },
                    first_seen_ms: s.first_seen_ms,
                    last_good_ms: s.last_good_ms,
                    limits,
                    // a run outside the expectation does not span the downtime
                    watch: if keep_runs {
                        s.watch
                    } else {
                        Watch {
                            outside_since_ms: None,
                            abnormal: false,
                            ..s.watch
                        }
                    },
                    figures: Figures::default(),
                    learned: s.learned.map(|l| Box::new(l.into_learned())),
                };
                let target = match kind {
                    Kind::Client => &mut self.clients,
                    Kind::Source => &mut self.sources,
                };
                target.insert(name.into_boxed_str(), e);
            }
        }
    }
}

fn entry_of<'a>(
    map: &'a mut HashMap<Box<str>, Entry>,
    thresholds: &mut Thresholds,
    kind: Kind,
    name: &str,
    now_ms: i64,
) -> &'a mut Entry {
    ensure_entry(map, thresholds, kind, name, now_ms);
    map.get_mut(name).expect("inserted above")
}

/// Make `name`'s entry if it has none (first seen at `now_ms`).
fn ensure_entry(
    map: &mut HashMap<Box<str>, Entry>,
    thresholds: &mut Thresholds,
    kind: Kind,
    name: &str,
    now_ms: i64,
) {
    // Look up by &str first: no allocation for a name already known (the common case).
    if !map.contains_key(name) {
        let limits = thresholds.resolve(kind, name);
        map.insert(
            name.into(),
            Entry {
                meter: Meter::default(),
                first_seen_ms: now_ms,
                last_good_ms: None,
                limits,
                watch: Watch {
                    since_ms: now_ms,
                    ..Watch::default()
                },
                figures: Figures::default(),
                learned: None,
            },
        );
    }
}

/// Late: no good delivery for `td` seconds. Counted from the last good delivery (or first
/// sight); a name that was not late is given `td` from this speedo's start too (records that
/// waited in the queue while it was down come in first), and a name that was late stays late
/// until a good delivery.
fn is_late(e: &Entry, limits: &Limits, now_ms: i64, started_ms: i64) -> bool {
    if limits.td <= 0.0 {
        return false;
    }
    let td_ms = limits.td * 1000.0;
    let since_good = (now_ms - e.last_good_ms.unwrap_or(e.first_seen_ms)) as f64;
    if since_good <= td_ms {
        false
    } else if e.watch.late {
        true
    } else {
        (now_ms - started_ms) as f64 > td_ms
    }
}

/// Every condition that holds, most serious first.
fn reason(e: &Entry, limits: &Limits, now_ms: i64) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(ev) = e.watch.queue.as_ref().and_then(|q| q.evidence.clone()) {
        parts.push(ev);
    }
    if e.watch.late {
        let since = (now_ms - e.last_good_ms.unwrap_or(e.first_seen_ms)) / 1000;
        let what = if e.last_good_ms.is_some() {
            "no good delivery for"
        } else {
            "no good delivery since first seen,"
        };
        parts.push(format!("{what} {since} s (td {} s)", limits.td));
    }
    if e.watch.failing {
        parts.push(format!(
            "error ratio {:.2} in the last minute ({} attempts; max {})",
            e.figures.error_ratio.unwrap_or(0.0),
            e.figures.attempts,
            limits.max_error_ratio
        ));
    }
    if e.watch.slow {
        parts.push(format!(
            "{} good files in the last minute (tminr {})",
            e.figures.files_per_min.unwrap_or(0.0),
            limits.tminr
        ));
    }
    if e.watch.abnormal {
        let minutes = e
            .watch
            .outside_since_ms
            .map(|s| (now_ms - s) / 60_000)
            .unwrap_or(0);
        parts.push(format!(
            "{} files/min, expected {:.1} ± {:.1} (k {}), outside for {} min",
            e.figures.files_per_min.unwrap_or(0.0),
            e.figures.expected_mean.unwrap_or(0.0),
            e.figures.expected_spread.unwrap_or(0.0),
            limits.k,
            minutes
        ));
    }
    if parts.is_empty() {
        "within thresholds".to_string()
    } else {
        parts.join("; ")
    }
}
