//! The count journal: every record dd_speedo counts since its last state file, one JSON line
//! each (`{"s": seq, "at": arrival, "r": record}`), written before the record is
//! acknowledged. The state file says up to which `seq` it covers; at start, the lines after it
//! are counted again, so a kill -9 loses no count (a machine crash loses at most what the
//! page cache had not written). Each state write empties the journal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::LogRecord;

#[derive(Serialize)]
struct LineOut<'a> {
    s: u64,
    at: DateTime<Utc>,
    r: &'a LogRecord,
}

#[derive(Deserialize)]
struct LineIn {
    s: u64,
    at: DateTime<Utc>,
    r: LogRecord,
}

/// The journal beside a state file (`<state file>.journal`).
pub struct CountJournal {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    buffered: u64,
    seq: u64,
    /// Lines written since start.
    pub written: u64,
}

impl CountJournal {
    /// The journal's path for a state file.
    pub fn path_for(state: &Path) -> PathBuf {
        let mut p = state.as_os_str().to_owned();
        p.push(".journal");
        PathBuf::from(p)
    }

    /// Open (create) the journal for appending, numbering from `seq`.
    pub fn open(path: &Path, seq: u64) -> std::io::Result<CountJournal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CountJournal {
            path: path.to_path_buf(),
            file,
            buf: Vec::with_capacity(1 << 16),
            buffered: 0,
            seq,
            written: 0,
        })
    }

    /// The records in `path` after `after` (a torn last line, from a kill in mid-write, ends
    /// the replay), in order.
    pub fn replay(
        path: &Path,
        after: u64,
    ) -> std::io::Result<Vec<(u64, DateTime<Utc>, LogRecord)>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<LineIn>(&line) {
                Ok(l) if l.s > after => out.push((l.s, l.at, l.r)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Note a counted record (buffered until [`CountJournal::flush`]).
    pub fn record(&mut self, r: &LogRecord, at: DateTime<Utc>) {
        self.seq += 1;
        let line = LineOut { s: self.seq, at, r };
        if serde_json::to_writer(&mut self.buf, &line).is_ok() {
            self.buf.push(b'\n');
            self.buffered += 1;
        }
    }

    /// The number of the last record noted.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Write what is buffered (before the records are acknowledged).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.written += self.buffered;
        self.buffered = 0;
        self.buf.clear();
        Ok(())
    }

    /// A state file now covers every record noted: start the journal afresh.
    pub fn truncate(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        self.buffered = 0;
        self.file.set_len(0)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<LogRecord> {
        let start = DateTime::from_timestamp(1_763_790_000, 0).unwrap_or_default();
        let mut pump = crate::sim::Pump::new(crate::sim::PumpModel::default(), start);
        (0..n).map_while(|_| pump.next_record()).collect()
    }

    #[test]
    fn lines_after_the_state_files_seq_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = CountJournal::path_for(&dir.path().join("s.json"));
        let rs = records(10);
        let at = Utc::now();
        let mut j = CountJournal::open(&path, 0).unwrap_or_else(|e| panic!("{e}"));
        for r in &rs[..4] {
            j.record(r, at);
        }
        // nothing on disk before the flush
        assert!(
            CountJournal::replay(&path, 0)
                .unwrap_or_default()
                .is_empty()
        );
        j.flush().unwrap_or_else(|e| panic!("{e}"));
        // a state file covering 4, then 6 more, the last torn by a kill
        j.truncate().unwrap_or_else(|e| panic!("{e}"));
        for r in &rs[4..] {
            j.record(r, at);
        }
        j.flush().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.seq(), 10);
        let back = CountJournal::replay(&path, 4).unwrap_or_default();
        assert_eq!(back.len(), 6);
        assert_eq!(back[0].0, 5);
        assert_eq!(back[5].2, rs[9]);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"{\"s\": 11, \"at\": \"2026")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(CountJournal::replay(&path, 7).unwrap_or_default().len(), 3);
        // a state file that covers everything: nothing to count again
        assert!(
            CountJournal::replay(&path, 10)
                .unwrap_or_default()
                .is_empty()
        );
    }
}
