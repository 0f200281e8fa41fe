//! A group's state through the broker (hot standby): the active writes what it does to a
//! RabbitMQ stream, `ddmon.state.<tool>.<instance>`, before it acknowledges the deliveries it
//! covers; its standbys read the stream and do the same, so that the one that takes the lock
//! goes on from where the active was.
//!
//! What is written is the active's *inputs*, not its results: every delivery it handled (its
//! routing key, headers, body and the time it was handled at) and every tick of its clock.
//! A standby hands them to its own service (`handle`, `tick`) and throws away what they would
//! publish, so its state is the active's to the delivery: counters, thresholds and learned
//! expectations, the open interval's figures, the in-flight table. A snapshot of the
//! service's state (`Service::snapshot`) is written when a member becomes active and every
//! [`SNAPSHOT_EVERY_S`]: a standby that starts reads the stream from its oldest message,
//! restores the first whole snapshot and replays what follows. Every write carries the group's
//! sequence number: a standby that finds a gap waits for the next snapshot.
//!
//! The new active reads the stream to a mark of its own before it handles its first delivery.
//! A delivery the old active handled and wrote, but did not live to acknowledge, comes again
//! `redelivered`: its fingerprint (routing key and body) is among the last ones applied, and
//! it is acknowledged without being counted again.
//!
//! Every active writes under a *term*, one more than the last it read: its first snapshot
//! opens the term. What an old active writes late (it stalled, and its connection came back
//! after another took over) carries an older term, and a reader leaves it out.
//!
//! The frames (one AMQP message each, through the default exchange):
//!
//! ```text
//! E{"term":t}\n{"s":seq,"at":ms,"k":key,"h":{headers},"b":body}\n{"s":seq,"at":ms}\n...
//! S{"id":id,"part":i,"parts":n,"s":seq,"at":ms,"term":t,"ring":[...]}\n<bytes>
//! ```
//!
//! The first is a run of events: one without `k` is a tick; `x` (an array of bytes) replaces
//! `b` for a body that is not UTF-8. The second is a snapshot's part; the first part carries
//! the fingerprints of the last deliveries (`ring`).

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::broker::{
    BrokerConfig, BrokerError, Delivery, Link, Outgoing, StreamOffset, StreamReader, StreamSpec,
    random_u64,
};
use crate::headers::{HeaderValue, Headers};

/// A snapshot is written this often by the active (and whenever a member becomes active).
pub const SNAPSHOT_EVERY_S: i64 = 300;

/// The stream keeps this long: several snapshots, so that a standby starting now finds a
/// whole one.
pub const MAX_AGE_S: u64 = 4 * SNAPSHOT_EVERY_S as u64;

/// The stream keeps at most this many bytes.
pub const MAX_BYTES: u64 = 2 << 30;

/// A snapshot is cut in parts of at most this many bytes (RabbitMQ's messages have a limit).
pub const PART_BYTES: usize = 4 << 20;

/// The stream of a group.
pub fn stream_name(tool: &str, instance: &str) -> String {
    format!("ddmon.state.{tool}.{instance}")
}

/// The stream's declaration (no exchange: it is written and marked through the default one).
pub fn stream_spec(tool: &str, instance: &str) -> StreamSpec {
    StreamSpec {
        name: stream_name(tool, instance),
        exchange: String::new(),
        bindings: Vec::new(),
        max_age_s: MAX_AGE_S,
        max_bytes: MAX_BYTES,
    }
}

/// A delivery's fingerprint: FNV-1a over its routing key and body (the same in every
/// member, whatever its build).
pub fn fingerprint(routing_key: &str, body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in routing_key
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(body)
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An event line as read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Line {
    s: u64,
    at: i64,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    h: Headers,
    #[serde(default)]
    b: Option<String>,
    #[serde(default)]
    x: Option<Vec<u8>>,
}

/// An event line as written: borrowed from the delivery (the active writes one per delivery,
/// on its hot path).
#[derive(Debug, Serialize)]
struct LineOut<'a> {
    s: u64,
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
    #[serde(skip_serializing_if = "no_headers")]
    h: &'a Headers,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<&'a [u8]>,
}

fn no_headers(h: &&Headers) -> bool {
    h.is_empty()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartHead {
    id: u64,
    part: u32,
    parts: u32,
    s: u64,
    at: i64,
    #[serde(default)]
    term: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ring: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EventsHead {
    term: u64,
}

/// What the active did, to do again.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A delivery it handled at `at`.
    Delivery {
        /// The group's sequence number.
        seq: u64,
        /// When it was handled.
        at: DateTime<Utc>,
        /// Its routing key.
        routing_key: String,
        /// Its headers.
        headers: Headers,
        /// Its body.
        body: Vec<u8>,
    },
    /// A tick of its clock.
    Tick {
        /// The group's sequence number.
        seq: u64,
        /// The time it ticked at.
        at: DateTime<Utc>,
    },
}

impl Event {
    fn seq(&self) -> u64 {
        match self {
            Event::Delivery { seq, .. } | Event::Tick { seq, .. } => *seq,
        }
    }
}

/// One frame read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A run of events, written under `term`.
    Events(u64, Vec<Event>),
    /// A part of a snapshot.
    Part {
        /// The snapshot it belongs to.
        id: u64,
        /// Its index, from 0.
        part: u32,
        /// How many parts.
        parts: u32,
        /// The sequence number the snapshot is at.
        seq: u64,
        /// When it was taken.
        at: DateTime<Utc>,
        /// The term it opens (or is written in).
        term: u64,
        /// The fingerprints of the last deliveries (the first part).
        ring: Vec<u64>,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Headers as JSON keeps them: bytes that are text become a string (what the parser reads
/// of them is the same); headers with no bytes are written as they are.
fn portable(h: &Headers) -> std::borrow::Cow<'_, Headers> {
    fn plain(v: &HeaderValue) -> bool {
        match v {
            HeaderValue::Bytes(_) => false,
            HeaderValue::Table(t) => t.values().all(plain),
            HeaderValue::Array(a) => a.iter().all(plain),
            _ => true,
        }
    }
    if h.values().all(plain) {
        std::borrow::Cow::Borrowed(h)
    } else {
        std::borrow::Cow::Owned(converted(h))
    }
}

fn converted(h: &Headers) -> Headers {
    fn one(v: &HeaderValue) -> HeaderValue {
        match v {
            HeaderValue::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => HeaderValue::Str(s.to_string()),
                Err(_) => v.clone(),
            },
            HeaderValue::Table(t) => HeaderValue::Table(converted(t)),
            HeaderValue::Array(a) => HeaderValue::Array(a.iter().map(one).collect()),
            other => other.clone(),
        }
    }
    h.iter().map(|(k, v)| (k.clone(), one(v))).collect()
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable state frame: {0}")]
pub struct BadFrame(String);

/// Read one frame.
pub fn decode(body: &[u8]) -> Result<Frame, BadFrame> {
    match body.first() {
        Some(b'E') => {
            let mut out = Vec::new();
            let mut lines = body[1..].split(|&c| c == b'\n');
            let head: EventsHead = serde_json::from_slice(lines.next().unwrap_or_default())
                .map_err(|e| BadFrame(format!("events head: {e}")))?;
            for line in lines.filter(|l| !l.is_empty()) {
                let l: Line =
                    serde_json::from_slice(line).map_err(|e| BadFrame(format!("event: {e}")))?;
                let at = at_ms(l.at);
                out.push(match l.k {
                    None => Event::Tick { seq: l.s, at },
                    Some(routing_key) => Event::Delivery {
                        seq: l.s,
                        at,
                        routing_key,
                        headers: l.h,
                        body: match (l.b, l.x) {
                            (Some(b), _) => b.into_bytes(),
                            (None, Some(x)) => x,
                            (None, None) => Vec::new(),
                        },
                    },
                });
            }
            Ok(Frame::Events(head.term, out))
        }
        Some(b'S') => {
            let end = body
                .iter()
                .position(|&c| c == b'\n')
                .ok_or_else(|| BadFrame("a snapshot part without its head".into()))?;
            let head: PartHead = serde_json::from_slice(&body[1..end])
                .map_err(|e| BadFrame(format!("snapshot head: {e}")))?;
            Ok(Frame::Part {
                id: head.id,
                part: head.part,
                parts: head.parts,
                seq: head.s,
                at: at_ms(head.at),
                term: head.term,
                ring: head.ring,
                bytes: body[end + 1..].to_vec(),
            })
        }
        _ => Err(BadFrame("neither events nor a snapshot".into())),
    }
}

/// Who wrote a snapshot, and where the group was: its id, the sequence number, the time, the
/// term and the last deliveries' fingerprints.
pub struct SnapshotHead {
    /// Its id (its parts carry it).
    pub id: u64,
    /// The sequence number it is at.
    pub seq: u64,
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// The writer's term.
    pub term: u64,
    /// The fingerprints of the last deliveries.
    pub ring: Vec<u64>,
}

/// A snapshot's frames: its bytes cut in parts of at most [`PART_BYTES`].
pub fn snapshot_frames(head: SnapshotHead, bytes: &[u8]) -> Vec<Vec<u8>> {
    let SnapshotHead {
        id,
        seq,
        at,
        term,
        mut ring,
    } = head;
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(PART_BYTES).collect()
    };
    let parts = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let head = PartHead {
                id,
                part: i as u32,
                parts,
                s: seq,
                at: at.timestamp_millis(),
                term,
                ring: if i == 0 {
                    std::mem::take(&mut ring)
                } else {
                    Vec::new()
                },
            };
            let mut out = b"S".to_vec();
            out.extend(serde_json::to_vec(&head).unwrap_or_default());
            out.push(b'\n');
            out.extend_from_slice(c);
            out
        })
        .collect()
}

/// What a standby does with what it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// Replace the state by this snapshot, taken at this time.
    Restore(Vec<u8>, DateTime<Utc>),
    /// Do this again.
    Event(Event),
    /// A new active took over at this time (its first snapshot, of the state this member
    /// has).
    NewTerm(DateTime<Utc>),
}

/// Counters of the state stream, in `health` and `stats` under `state_stream`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaCounters {
    /// The stream.
    pub stream: String,
    /// The group's sequence number this member is at.
    pub seq: u64,
    /// The term of the active it follows (or its own, writing).
    pub term: u64,
    /// A whole snapshot and every event since are applied (or this member wrote them).
    pub synced: bool,
    /// Events written (as the active).
    pub written: u64,
    /// Events applied (as a standby).
    pub applied: u64,
    /// Snapshots written.
    pub snapshots_written: u64,
    /// Snapshots restored.
    pub snapshots_restored: u64,
    /// Redelivered deliveries acknowledged without being counted again (the old active had).
    pub duplicates: u64,
    /// Gaps met (a standby then waits for the next snapshot).
    pub gaps: u64,
    /// Frames of an older term left out (an old active writing late).
    pub fenced: u64,
    /// Frames that could not be read.
    pub bad_frames: u64,
    /// The last takeover: how long reading the stream to its end took, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_seconds: Option<f64>,
}

/// A snapshot being read, part by part.
struct Gathering {
    id: u64,
    next: u32,
    seq: u64,
    at: DateTime<Utc>,
    term: u64,
    ring: Vec<u64>,
    bytes: Vec<u8>,
}

/// The pure part: the sequence, the events to write, the snapshot being gathered, the
/// fingerprints of the last deliveries applied.
pub struct Replica {
    /// Counters.
    pub counters: ReplicaCounters,
    out: Vec<u8>,
    gathering: Option<Gathering>,
    ring: VecDeque<u64>,
    seen: HashSet<u64>,
    ring_cap: usize,
    /// When the last snapshot was written (the active's clock).
    pub last_snapshot: Option<DateTime<Utc>>,
    /// When the last event was applied or written.
    pub last_event: Option<DateTime<Utc>>,
}

impl Replica {
    /// A member of the group whose stream is `stream`, remembering the fingerprints of the
    /// last `ring` deliveries.
    pub fn new(stream: &str, ring: usize) -> Replica {
        Replica {
            counters: ReplicaCounters {
                stream: stream.to_string(),
                ..ReplicaCounters::default()
            },
            out: Vec::new(),
            gathering: None,
            ring: VecDeque::with_capacity(ring),
            seen: HashSet::with_capacity(ring),
            ring_cap: ring.max(1),
            last_snapshot: None,
            last_event: None,
        }
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.counters.stream
    }

    fn remember(&mut self, fp: u64) {
        if self.ring.len() == self.ring_cap {
            if let Some(old) = self.ring.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.insert(fp) {
            self.ring.push_back(fp);
        }
    }

    /// Was a delivery with this fingerprint among the last ones applied or written?
    pub fn seen(&self, fp: u64) -> bool {
        self.seen.contains(&fp)
    }

    /// How many fingerprints it keeps.
    pub fn ring_len(&self) -> usize {
        self.ring_cap
    }

    /// The active handled `d` at `at`: note it to write.
    pub fn wrote_delivery(&mut self, d: &Delivery, at: DateTime<Utc>) {
        self.counters.seq += 1;
        let (b, x) = match std::str::from_utf8(&d.body) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(d.body.as_slice())),
        };
        let headers = portable(&d.headers);
        let line = LineOut {
            s: self.counters.seq,
            at: at.timestamp_millis(),
            k: Some(&d.routing_key),
            h: &headers,
            b,
            x,
        };
        self.push(&line);
        self.remember(fingerprint(&d.routing_key, &d.body));
        self.last_event = Some(at);
    }

    /// The active's clock ticked at `at`: note it to write.
    pub fn wrote_tick(&mut self, at: DateTime<Utc>) {
        self.counters.seq += 1;
        let empty = Headers::new();
        let line = LineOut {
            s: self.counters.seq,
            at: at.timestamp_millis(),
            k: None,
            h: &empty,
            b: None,
            x: None,
        };
        self.push(&line);
        self.last_event = Some(at);
    }

    fn push(&mut self, line: &LineOut<'_>) {
        if self.out.is_empty() {
            self.out.push(b'E');
            let head = EventsHead {
                term: self.counters.term,
            };
            self.out
                .extend(serde_json::to_vec(&head).unwrap_or_default());
        }
        self.out.push(b'\n');
        if serde_json::to_writer(&mut self.out, line).is_ok() {
            self.counters.written += 1;
        }
    }

    /// The events noted since the last call, as one frame (`None`: nothing to write).
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// A snapshot of the state at the current sequence number, as frames.
    pub fn snapshot(&mut self, at: DateTime<Utc>, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.counters.snapshots_written += 1;
        self.counters.synced = true;
        self.last_snapshot = Some(at);
        let id = (at.timestamp_millis() as u64) ^ (u64::from(std::process::id()) << 44);
        let head = SnapshotHead {
            id,
            seq: self.counters.seq,
            at,
            term: self.counters.term,
            ring: self.ring.iter().copied().collect(),
        };
        snapshot_frames(head, bytes)
    }

    /// This member becomes the active, in step: its term is one more than the last it read.
    /// With nothing whole in the stream (a first active), its own state (its state file's) is
    /// the group's from here.
    pub fn open_term(&mut self) {
        self.counters.synced = true;
        self.counters.term += 1;
    }

    /// Read a frame: what to do with it, in order.
    pub fn accept(&mut self, body: &[u8]) -> Vec<Apply> {
        let frame = match decode(body) {
            Ok(f) => f,
            Err(e) => {
                self.counters.bad_frames += 1;
                tracing::warn!(stream = %self.counters.stream, "{e}");
                return Vec::new();
            }
        };
        match frame {
            Frame::Part {
                id,
                part,
                parts,
                seq,
                at,
                term,
                ring,
                bytes,
            } => {
                if term < self.counters.term {
                    self.counters.fenced += 1;
                    return Vec::new();
                }
                if self.counters.synced && term > self.counters.term {
                    if seq == self.counters.seq {
                        // a new active's first snapshot, of the state this member has
                        self.counters.term = term;
                        self.gathering = None;
                        return vec![Apply::NewTerm(at)];
                    }
                    // this member went past what the new active read (an old active's late
                    // events): the new active's state it is
                    self.counters.synced = false;
                }
                self.part(
                    id,
                    part,
                    parts,
                    Gathering {
                        id,
                        next: 0,
                        seq,
                        at,
                        term,
                        ring,
                        bytes: Vec::new(),
                    },
                    bytes,
                )
            }
            Frame::Events(term, events) => {
                if term < self.counters.term {
                    self.counters.fenced += 1;
                    return Vec::new();
                }
                if term > self.counters.term && self.counters.synced {
                    // a new active whose first snapshot was not read
                    self.counters.gaps += 1;
                    self.counters.synced = false;
                    tracing::warn!(stream = %self.counters.stream, term, "a new term without its snapshot: waiting for the next snapshot");
                }
                let mut out = Vec::new();
                for e in events {
                    if !self.counters.synced || e.seq() <= self.counters.seq {
                        continue;
                    }
                    if e.seq() != self.counters.seq + 1 {
                        self.counters.gaps += 1;
                        self.counters.synced = false;
                        tracing::warn!(stream = %self.counters.stream, at = self.counters.seq, next = e.seq(), "a gap in the group's state: waiting for the next snapshot");
                        continue;
                    }
                    self.counters.seq = e.seq();
                    self.counters.applied += 1;
                    if let Event::Delivery {
                        routing_key,
                        body,
                        at,
                        ..
                    } = &e
                    {
                        self.remember(fingerprint(routing_key, body));
                        self.last_event = Some(*at);
                    } else if let Event::Tick { at, .. } = &e {
                        self.last_event = Some(*at);
                    }
                    out.push(Apply::Event(e));
                }
                out
            }
        }
    }

    fn part(
        &mut self,
        id: u64,
        part: u32,
        parts: u32,
        first: Gathering,
        bytes: Vec<u8>,
    ) -> Vec<Apply> {
        if self.counters.synced {
            // in step already (a snapshot of a state this member has)
            self.gathering = None;
            return Vec::new();
        }
        if part == 0 {
            self.gathering = Some(first);
        }
        let Some(g) = self.gathering.as_mut() else {
            return Vec::new();
        };
        if g.id != id || g.next != part {
            // a part of a snapshot whose start was not read (or a torn one): the next
            self.gathering = None;
            return Vec::new();
        }
        g.bytes.extend_from_slice(&bytes);
        g.next += 1;
        if g.next < parts {
            return Vec::new();
        }
        let Some(Gathering {
            seq,
            at,
            term,
            ring,
            bytes,
            ..
        }) = self.gathering.take()
        else {
            return Vec::new();
        };
        self.counters.seq = seq;
        self.counters.term = term;
        self.counters.synced = true;
        self.counters.snapshots_restored += 1;
        self.ring.clear();
        self.seen.clear();
        for fp in ring {
            self.remember(fp);
        }
        vec![Apply::Restore(bytes, at)]
    }

    /// This member's state is no longer the group's (it was active and lost the lock, or
    /// could not write): it reads the stream again from a whole snapshot.
    pub fn lose_step(&mut self) {
        self.gathering = None;
        self.out.clear();
        self.counters.synced = false;
    }
}

/// A service's snapshot: a first line of its counters (`head`), then the state as the tool
/// keeps it (`body`). dd_speedo and dd_watchdog both write theirs this way.
pub fn snapshot_with_head(head: &impl Serialize, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    body(&mut out);
    out
}

/// Read back a [`snapshot_with_head`]: the counters, and the state's bytes.
pub fn split_snapshot<T: serde::de::DeserializeOwned>(
    snapshot: &[u8],
) -> anyhow::Result<(T, &[u8])> {
    let cut = snapshot
        .iter()
        .position(|&c| c == b'\n')
        .ok_or_else(|| anyhow::anyhow!("a snapshot without its counters"))?;
    Ok((
        serde_json::from_slice(&snapshot[..cut])?,
        &snapshot[cut + 1..],
    ))
}

/// A frame as a message to the stream (mandatory: a stream that is gone is an error, not a
/// silent loss).
pub fn outgoing(stream: &str, frame: Vec<u8>) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: stream.to_string(),
        body: frame,
        mandatory: true,
        ..Outgoing::default()
    }
}

/// The member's side of the stream: its own connection, the reader a standby follows, and
/// whether this member writes (the active, once it read the stream to its end).
pub struct Replication {
    /// The pure part.
    pub replica: Replica,
    spec: StreamSpec,
    broker: BrokerConfig,
    link: Option<Link>,
    reader: Option<StreamReader>,
    /// This member is the active and in step: it writes.
    pub writing: bool,
    /// Deliveries still to check against the fingerprints since this member took over: what
    /// the old active had not acknowledged comes first, and a quorum queue whose leader moved
    /// does not always mark it `redelivered`.
    pub fresh: usize,
    /// The input's subscription (its generation) last seen.
    pub subscription: u64,
    /// No reader before this (a failed attempt waits).
    retry_at: Option<std::time::Instant>,
}

/// How long reading the stream may wait for a message before the broker is in doubt.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Replication {
    /// The group `tool`/`instance` on `broker`; `prefetch` sizes the fingerprints kept (a new
    /// active gets back at most what the old one had unacknowledged).
    pub fn new(broker: &BrokerConfig, tool: &str, instance: &str, prefetch: u16) -> Replication {
        let spec = stream_spec(tool, instance);
        let ring = (usize::from(prefetch) * 4).max(4096);
        Replication {
            replica: Replica::new(&spec.name, ring),
            spec,
            broker: broker.clone(),
            link: None,
            reader: None,
            writing: false,
            fresh: 0,
            subscription: 0,
            retry_at: None,
        }
    }

    /// The stream's declaration.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    async fn link(&mut self) -> Result<&Link, BrokerError> {
        if self.link.is_none() {
            let link = Link::open(&self.broker, "state").await?;
            link.declare_stream(&self.spec).await?;
            self.link = Some(link);
        }
        self.link
            .as_ref()
            .ok_or_else(|| BrokerError::unreachable("no connection"))
    }

    /// Where a reader starts: the oldest message when this member is not in step (to find a
    /// whole snapshot), else a minute before the last event it has (what follows is skipped
    /// by its number).
    fn offset(&self) -> StreamOffset {
        match (self.replica.counters.synced, self.replica.last_event) {
            (true, Some(t)) => StreamOffset::Since(t.timestamp().saturating_sub(60).max(0) as u64),
            _ => StreamOffset::First,
        }
    }

    async fn open_reader(&mut self) -> Result<(), BrokerError> {
        if self.reader.is_some() {
            return Ok(());
        }
        let offset = self.offset();
        let name = self.spec.name.clone();
        let reader = self.link().await?.read_stream(&name, offset, 512).await?;
        self.reader = Some(reader);
        Ok(())
    }

    /// A standby follows the stream: open the reader if it has none (a failed attempt is
    /// tried again a second later; bounded, so that the daemon's loop goes on).
    pub async fn follow(&mut self) {
        if self.reader.is_some() || self.writing {
            return;
        }
        if self.retry_at.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        let opened =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.open_reader()).await;
        match opened {
            Ok(Ok(())) => self.retry_at = None,
            Ok(Err(e)) => {
                tracing::warn!(stream = %self.spec.name, error = %e, "cannot read the group's state yet");
                self.reset().await;
            }
            Err(_) => {
                tracing::warn!(stream = %self.spec.name, "the group's state stream did not answer in 5 s");
                self.reset().await;
            }
        }
    }

    /// Drop the connection (it is made again, a second later at the soonest).
    pub async fn reset(&mut self) {
        if let Some(r) = self.reader.take() {
            r.close().await;
        }
        self.link = None;
        self.retry_at = Some(std::time::Instant::now() + std::time::Duration::from_secs(1));
    }

    /// The next message a standby reads (marks skipped); never while it has no reader.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, BrokerError>> {
        let Some(reader) = self.reader.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match reader.next().await? {
                Ok(m) if m.mark.is_some() => continue,
                Ok(m) => return Some(Ok(m.body)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Read the stream to its end (a mark of this member's own), handing each frame to
    /// `apply`, then stop reading: the member is about to write.
    pub async fn catch_up(
        &mut self,
        mut apply: impl FnMut(&mut Replica, &[u8]),
    ) -> Result<(), BrokerError> {
        self.open_reader().await?;
        let mark = format!("ddmon.mark.{:016x}", random_u64());
        let name = self.spec.name.clone();
        self.link().await?.mark_stream(&name, &mark).await?;
        let Some(reader) = self.reader.as_mut() else {
            return Err(BrokerError::unreachable("no reader"));
        };
        loop {
            let next = tokio::time::timeout(READ_WAIT, reader.next())
                .await
                .map_err(|_| BrokerError::unreachable("the state stream gave nothing for 30 s"))?;
            match next {
                Some(Ok(m)) => match m.mark {
                    Some(ours) if ours == mark => break,
                    Some(_) => {}
                    None => apply(&mut self.replica, &m.body),
                },
                Some(Err(e)) => return Err(e),
                None => return Err(BrokerError::unreachable("the state stream's reader closed")),
            }
        }
        if let Some(r) = self.reader.take() {
            r.close().await;
        }
        Ok(())
    }

    /// This member stands by again (it lost the lock): it stops writing and follows, from a
    /// whole snapshot (what it did since its last write is not the group's).
    pub async fn stand_by(&mut self) {
        if !self.writing {
            return;
        }
        self.writing = false;
        self.replica.lose_step();
        if let Some(r) = self.reader.take() {
            r.close().await;
        }
    }

    /// Close the connection (on the way out).
    pub async fn close(mut self) {
        if let Some(r) = self.reader.take() {
            r.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> DateTime<Utc> {
        at_ms(1_764_000_000_000 + ms)
    }

    /// A test event: its number, its time and, for a delivery, its key and body.
    type TestEvent<'a> = (u64, i64, Option<(&'a str, &'a [u8])>);

    fn snap_of(id: u64, seq: u64, at: DateTime<Utc>, term: u64, bytes: &[u8]) -> Vec<Vec<u8>> {
        let head = SnapshotHead {
            id,
            seq,
            at,
            term,
            ring: Vec::new(),
        };
        snapshot_frames(head, bytes)
    }

    fn events_frame(events: &[TestEvent<'_>]) -> Vec<u8> {
        events_frame_of(0, events)
    }

    fn events_frame_of(term: u64, events: &[TestEvent<'_>]) -> Vec<u8> {
        let mut out = format!("E{{\"term\":{term}}}").into_bytes();
        let empty = Headers::new();
        for (s, at, d) in events {
            let line = LineOut {
                s: *s,
                at: *at,
                k: d.map(|(k, _)| k),
                h: &empty,
                b: d.and_then(|(_, b)| std::str::from_utf8(b).ok()),
                x: d.and_then(|(_, b)| std::str::from_utf8(b).is_err().then_some(b)),
            };
            out.push(b'\n');
            out.extend(serde_json::to_vec(&line).unwrap_or_default());
        }
        out
    }

    #[test]
    fn a_snapshot_in_parts_then_events_in_order() {
        let mut r = Replica::new("s", 8);
        let snap: Vec<u8> = (0..(PART_BYTES * 2 + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        let frames = snap_of(7, 100, t(0), 0, &snap);
        assert_eq!(frames.len(), 3);
        // events before any snapshot are not applied
        assert!(r.accept(&events_frame(&[(99, 0, None)])).is_empty());
        let mut got = Vec::new();
        for f in &frames {
            got.extend(r.accept(f));
        }
        assert_eq!(got, vec![Apply::Restore(snap, t(0))]);
        assert!(r.counters.synced);
        assert_eq!(r.counters.seq, 100);
        // 100 is in the snapshot; 101 and 102 follow; 104 is a gap
        let got = r.accept(&events_frame(&[
            (100, 5, None),
            (101, 6, Some(("v02.log.a", b"x"))),
            (102, 7, None),
        ]));
        assert_eq!(got.len(), 2);
        assert!(r.seen(fingerprint("v02.log.a", b"x")));
        assert!(r.accept(&events_frame(&[(104, 8, None)])).is_empty());
        assert!(!r.counters.synced);
        assert_eq!(r.counters.gaps, 1);
        // the next whole snapshot puts it back in step
        let again = snap_of(8, 200, t(9), 0, b"state");
        assert_eq!(
            r.accept(&again[0]),
            vec![Apply::Restore(b"state".to_vec(), t(9))]
        );
        assert_eq!(r.counters.seq, 200);
    }

    #[test]
    fn a_snapshot_whose_start_was_not_read_is_skipped() {
        let mut r = Replica::new("s", 8);
        let snap = vec![1u8; PART_BYTES + 1];
        let frames = snap_of(1, 5, t(0), 0, &snap);
        assert!(r.accept(&frames[1]).is_empty());
        assert!(!r.counters.synced);
        // another snapshot's part 1 after this one's part 0 does not make a whole
        let other = snap_of(2, 6, t(0), 0, &snap);
        assert!(r.accept(&frames[0]).is_empty());
        assert!(r.accept(&other[1]).is_empty());
        assert!(!r.counters.synced);
    }

    #[test]
    fn the_writer_and_the_reader_agree() {
        let mut w = Replica::new("s", 8);
        w.open_term();
        let mut headers = Headers::new();
        headers.insert("filename".into(), HeaderValue::Bytes(b"a.txt".to_vec()));
        headers.insert("n".into(), HeaderValue::Int(3));
        let d = Delivery::replayed("v02.log.c", headers, vec![0xff, b'a']);
        w.wrote_delivery(&d, t(1));
        w.wrote_tick(t(2));
        let frame = w.take_frame().unwrap_or_default();
        assert!(w.take_frame().is_none());
        let Ok(Frame::Events(1, ev)) = decode(&frame) else {
            panic!("events")
        };
        assert_eq!(ev.len(), 2);
        let Event::Delivery { headers, body, .. } = &ev[0] else {
            panic!("a delivery")
        };
        assert_eq!(body, &vec![0xff, b'a']);
        assert_eq!(headers["filename"], HeaderValue::Str("a.txt".into()));
        assert_eq!(ev[1], Event::Tick { seq: 2, at: t(2) });
        // a follower in step at 0 applies them (term 1 opens with a snapshot at 0)
        let mut r = Replica::new("s", 8);
        r.accept(&snap_of(1, 0, t(0), 1, b"")[0]);
        assert_eq!(r.accept(&frame).len(), 2);
        assert!(r.seen(fingerprint("v02.log.c", &[0xff, b'a'])));
    }

    #[test]
    fn an_old_terms_late_frames_are_left_out() {
        let mut r = Replica::new("s", 8);
        r.accept(&snap_of(1, 10, t(0), 1, b"a")[0]);
        assert_eq!(r.accept(&events_frame_of(1, &[(11, 1, None)])).len(), 1);
        // the new active (term 2) read to 11 and opens its term with a snapshot at 11
        let mut ring_snap = SnapshotHead {
            id: 2,
            seq: 11,
            at: t(2),
            term: 2,
            ring: vec![42],
        };
        assert_eq!(
            r.accept(&snapshot_frames(ring_snap, b"b")[0]),
            vec![Apply::NewTerm(t(2))]
        );
        assert_eq!(r.counters.term, 2);
        // the old active, back from a stall, writes 12 late under term 1: left out
        assert!(r.accept(&events_frame_of(1, &[(12, 3, None)])).is_empty());
        assert_eq!(r.counters.fenced, 1);
        assert_eq!(r.accept(&events_frame_of(2, &[(12, 4, None)])).len(), 1);
        // a member that went past what a new active read restores its snapshot, and its ring
        let mut past = Replica::new("s", 8);
        past.accept(&snap_of(1, 10, t(0), 1, b"a")[0]);
        past.accept(&events_frame_of(1, &[(11, 1, None), (12, 2, None)]));
        ring_snap = SnapshotHead {
            id: 3,
            seq: 11,
            at: t(2),
            term: 2,
            ring: vec![42],
        };
        let got = past.accept(&snapshot_frames(ring_snap, b"b")[0]);
        assert_eq!(got, vec![Apply::Restore(b"b".to_vec(), t(2))]);
        assert_eq!(past.counters.seq, 11);
        assert!(past.seen(42));
    }

    #[test]
    fn the_ring_forgets_the_oldest() {
        let mut r = Replica::new("s", 2);
        r.open_term();
        for (i, b) in [b"a", b"b", b"c"].iter().enumerate() {
            let d = Delivery::replayed("k", Headers::new(), b.to_vec());
            r.wrote_delivery(&d, t(i as i64));
        }
        assert!(!r.seen(fingerprint("k", b"a")));
        assert!(r.seen(fingerprint("k", b"b")));
        assert!(r.seen(fingerprint("k", b"c")));
    }

    proptest! {
        /// Whatever runs of events and snapshots are read, in whatever cut, a follower applies
        /// each sequence number at most once and in increasing order, and never before a
        /// snapshot.
        #[test]
        fn each_number_once_and_in_order(
            cuts in proptest::collection::vec((0u64..40, 0u64..6, any::<bool>()), 1..40)
        ) {
            let mut r = Replica::new("s", 16);
            let mut last = None::<u64>;
            let mut restored = false;
            for (start, len, snap) in cuts {
                let got = if snap {
                    r.accept(&snap_of(start, start, t(0), 0, b"x")[0])
                } else {
                    let evs: Vec<TestEvent<'_>> =
                        (start..start + len).map(|s| (s, 0, None)).collect();
                    r.accept(&events_frame(&evs))
                };
                for a in got {
                    match a {
                        Apply::NewTerm(_) => {}
                        Apply::Restore(..) => { restored = true; last = Some(r.counters.seq); }
                        Apply::Event(e) => {
                            prop_assert!(restored);
                            if let Some(l) = last { prop_assert_eq!(e.seq(), l + 1); }
                            last = Some(e.seq());
                        }
                    }
                }
            }
        }
    }
}
