//! The state file: what a restarted speedo needs so that it neither restarts its counters and
//! learning nor raises false alarms. JSON, written atomically: a temporary file in the same
//! directory, fsync, rename over the old one, fsync of the directory.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::meter::{Counts, Entry, Speedo, Watch};
use super::thresholds::{Ewma, HOURS_OF_WEEK, Kind, Learned};

/// The file's format version.
pub const VERSION: u32 = 1;

/// A learned expectation, with only the hours that have samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedLearned {
    /// Every minute.
    pub overall: Ewma,
    /// `[hour of week, mean, variance, samples]`.
    pub hours: Vec<(u8, f32, f32, u8)>,
}

impl SavedLearned {
    fn of(l: &Learned) -> SavedLearned {
        SavedLearned {
            overall: l.overall,
            hours: (0..HOURS_OF_WEEK)
                .filter(|&h| l.n[h] > 0)
                .map(|h| (h as u8, l.mean[h], l.var[h], l.n[h]))
                .collect(),
        }
    }

    /// Back to the in-memory form (hours out of range are dropped).
    pub fn into_learned(self) -> Learned {
        let mut l = Learned {
            overall: self.overall,
            ..Learned::default()
        };
        for (h, mean, var, n) in self.hours {
            let h = usize::from(h);
            if h < HOURS_OF_WEEK {
                l.mean[h] = mean;
                l.var[h] = var;
                l.n[h] = n;
            }
        }
        l
    }
}

/// One name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedEntry {
    /// Cumulative counts.
    pub counts: Counts,
    /// First record (ms).
    pub first_seen_ms: i64,
    /// Last good delivery (ms).
    pub last_good_ms: Option<i64>,
    /// Threshold state.
    pub watch: Watch,
    /// Learned expectation.
    pub learned: Option<SavedLearned>,
}

impl SavedEntry {
    fn of(e: &Entry) -> SavedEntry {
        SavedEntry {
            counts: e.counts(),
            first_seen_ms: e.first_seen_ms,
            last_good_ms: e.last_good_ms,
            watch: e.watch.clone(),
            learned: e.learned.as_deref().map(SavedLearned::of),
        }
    }
}

/// The whole file, as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Format version.
    pub version: u32,
    /// When it was written.
    pub saved_at: DateTime<Utc>,
    /// Totals of every client.
    pub client_all: Counts,
    /// Totals of every source.
    pub sources_all: Counts,
    /// Per client.
    pub clients: BTreeMap<String, SavedEntry>,
    /// Per source.
    pub sources: BTreeMap<String, SavedEntry>,
    /// The last count-journal record this file covers (0: none).
    #[serde(default)]
    pub journal_seq: u64,
}

/// Serialises a speedo without copying it whole.
struct View<'a> {
    speedo: &'a Speedo,
    now: DateTime<Utc>,
    seq: u64,
}

struct Names<'a>(&'a Speedo, Kind);

impl Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .entries(self.1)
                .map(|(name, e)| (name, SavedEntry::of(e))),
        )
    }
}

impl Serialize for View<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (client_all, sources_all) = self.speedo.totals();
        let mut st = s.serialize_struct("Saved", 7)?;
        st.serialize_field("version", &VERSION)?;
        st.serialize_field("saved_at", &self.now)?;
        st.serialize_field("client_all", &client_all)?;
        st.serialize_field("sources_all", &sources_all)?;
        st.serialize_field("clients", &Names(self.speedo, Kind::Client))?;
        st.serialize_field("sources", &Names(self.speedo, Kind::Source))?;
        st.serialize_field("journal_seq", &self.seq)?;
        st.end()
    }
}

/// Write the state file atomically, covering the count journal up to `seq`. Returns the bytes
/// written.
pub fn save(path: &Path, speedo: &Speedo, now: DateTime<Utc>, seq: u64) -> std::io::Result<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dd_speedo.state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let outcome = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(&mut w, &View { speedo, now, seq })?;
        w.write_all(b"\n")?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        std::fs::rename(&tmp, path)?;
        // the rename itself is durable once the directory is synced
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(len)
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// The state file's JSON, in memory (a group's snapshot).
pub fn to_vec(speedo: &Speedo, now: DateTime<Utc>) -> Vec<u8> {
    serde_json::to_vec(&View {
        speedo,
        now,
        seq: 0,
    })
    .unwrap_or_default()
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    /// No file yet: a first start.
    Missing,
    /// The saved state.
    State(Box<Saved>),
    /// The file could not be read as a state file; it was moved aside to the path given.
    Unreadable(String, PathBuf),
}

/// Read the state file. An unreadable file is moved aside (`<path>.bad-<unix time>`) rather
/// than stopping the speedo: monitoring goes on, from zero, and the operator is told.
pub fn load(path: &Path, now: DateTime<Utc>) -> std::io::Result<Loaded> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    let why = match serde_json::from_slice::<Saved>(&text) {
        Ok(s) if s.version == VERSION => return Ok(Loaded::State(Box::new(s))),
        Ok(s) => format!("version {} (this dd_speedo reads {VERSION})", s.version),
        Err(e) => e.to_string(),
    };
    let aside = PathBuf::from(format!("{}.bad-{}", path.display(), now.timestamp()));
    std::fs::rename(path, &aside)?;
    Ok(Loaded::Unreadable(why, aside))
}
