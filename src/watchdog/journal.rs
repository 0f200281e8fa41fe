//! The watchdog's journal: what makes the in-flight table survive a `kill -9`.
//!
//! An append-only file of lines, tab-separated, fields escaped (`\t`, `\n`, `\\`):
//!
//! ```text
//! o <node> <client> <url> <source> <flow> <started ms> <opened ms> <bytes>   a transfer opened
//! c <node>\x1f<client>\x1f<url>                                               closed
//! s <node>\x1f<client>\x1f<url>                                               reported stuck
//! f <node>\x1f<client>\x1f<url>                                               forgotten
//! d <node> <ms>                                                                node down
//! u <node> <ms>                                                                node up again
//! ```
//!
//! The lines of a batch are written (one `write`) before the batch's deliveries are
//! acknowledged; with `fsync` each write is also synced to disk. When the file holds more
//! than four lines per open transfer (and at least 100,000), it is compacted: a snapshot of the
//! table is written to a temporary file, synced, and renamed over it. A last line cut short by
//! a crash is ignored.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::table::Table;

/// The open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    fsync: bool,
    lines: u64,
    /// A write failed: the file may end in a torn line.
    torn: bool,
    /// Bytes written since it was opened.
    pub written: u64,
    /// Compactions done.
    pub compactions: u64,
}

/// What loading found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Lines replayed.
    pub lines: u64,
    /// Lines that could not be read (skipped).
    pub bad: u64,
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Replay one journal line into the table.
fn apply(table: &mut Table, line: &str) -> bool {
    let fields: Vec<String> = line.split('\t').map(unescape).collect();
    let f: Vec<&str> = fields.iter().map(String::as_str).collect();
    match f.first().copied() {
        Some("o") => table.restore_open(&f[1..]),
        // closed, or forgotten
        Some("c" | "f") if f.len() == 2 => {
            table.restore_close(f[1]);
            true
        }
        Some("s") if f.len() == 2 => {
            table.restore_stuck(f[1]);
            true
        }
        Some(kind @ ("d" | "u")) if f.len() == 3 => match f[2].parse::<i64>() {
            Ok(ms) => {
                table.restore_node(f[1], (kind == "d").then_some(ms), ms);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}

impl Journal {
    /// Open (creating) the journal at `path` and replay it into `table`.
    pub fn open(path: &Path, table: &mut Table, fsync: bool) -> std::io::Result<(Journal, Loaded)> {
        let mut loaded = Loaded::default();
        match File::open(path) {
            Ok(f) => {
                let mut r = BufReader::with_capacity(1 << 16, f);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    // a last line without its newline was cut by a crash: not applied
                    let Some(l) = line.strip_suffix(b"\n") else {
                        break;
                    };
                    // (bytes, not a String: a crash may cut inside a multi-byte character)
                    match std::str::from_utf8(l) {
                        Ok(l) if apply(table, l) => loaded.lines += 1,
                        _ => loaded.bad += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            fsync,
            torn: false,
            lines: loaded.lines,
            written: 0,
            compactions: 0,
        };
        // start from a compact file (drops what was closed, and any cut line)
        j.compact(table)?;
        Ok((j, loaded))
    }

    /// Append a batch of lines (made by the table). After a failed write (a full disk: the
    /// file may end in a torn line) the next successful call starts with a compaction.
    pub fn write(&mut self, buf: &[u8], table: &Table) -> std::io::Result<()> {
        if self.torn {
            self.compact(table)?;
            self.torn = false;
            // the snapshot already holds what `buf` says
            return Ok(());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.torn = true;
            return Err(e);
        }
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Compact when the file has grown well past the table.
    pub fn maybe_compact(&mut self, table: &Table) -> std::io::Result<bool> {
        if self.lines > (4 * table.len() as u64).max(100_000) {
            self.compact(table)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Write the table as a new journal, atomically.
    pub fn compact(&mut self, table: &Table) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(table.len() * 160);
        table.snapshot(&mut buf);
        let tmp = self.path.with_extension("compacting");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // the new file at once: never append to the old inode after the rename
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.compactions += 1;
        Ok(())
    }
}
