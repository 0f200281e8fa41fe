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

use std::borrow::Cow;
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

/// One line of the journal: the only place it is encoded ([`Line::encode`], by the table as
/// it changes and in a snapshot) and decoded ([`Line::decode`], when the journal is replayed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// `o`: a transfer opened (`source` and `flow` empty when the record had none).
    Open {
        /// The node.
        node: Cow<'a, str>,
        /// The client.
        client: Cow<'a, str>,
        /// srcpath + relpath.
        url: Cow<'a, str>,
        /// The source, or empty.
        source: Cow<'a, str>,
        /// The flow, or empty.
        flow: Cow<'a, str>,
        /// The `102`'s datestamp (ms).
        started_ms: i64,
        /// When it was opened (ms).
        opened_ms: i64,
        /// Bytes.
        bytes: u64,
    },
    /// `c`: closed by its final code (the key is `node\x1fclient\x1furl`).
    Close(Cow<'a, str>),
    /// `s`: reported stuck.
    Stuck(Cow<'a, str>),
    /// `f`: forgotten after `--forget-after`.
    Forget(Cow<'a, str>),
    /// `d`: a node down since (ms).
    Down(Cow<'a, str>, i64),
    /// `u`: a node up again, or up and watched (ms of its last word).
    Up(Cow<'a, str>, i64),
}

/// Escape a field (tab, newline, backslash).
fn esc(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
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
    Cow::Owned(out)
}

impl<'a> Line<'a> {
    /// Append the line, newline included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let fields = |out: &mut Vec<u8>, tag: &[u8], parts: &[&str]| {
            out.extend_from_slice(tag);
            for p in parts {
                out.push(b'\t');
                esc(out, p);
            }
        };
        match self {
            Line::Open {
                node,
                client,
                url,
                source,
                flow,
                started_ms,
                opened_ms,
                bytes,
            } => {
                fields(out, b"o", &[node, client, url, source, flow]);
                out.extend_from_slice(format!("\t{started_ms}\t{opened_ms}\t{bytes}").as_bytes());
            }
            Line::Close(key) => fields(out, b"c", &[key]),
            Line::Stuck(key) => fields(out, b"s", &[key]),
            Line::Forget(key) => fields(out, b"f", &[key]),
            Line::Down(node, ms) => {
                fields(out, b"d", &[node]);
                out.extend_from_slice(format!("\t{ms}").as_bytes());
            }
            Line::Up(node, ms) => {
                fields(out, b"u", &[node]);
                out.extend_from_slice(format!("\t{ms}").as_bytes());
            }
        }
        out.push(b'\n');
    }

    /// Read one line (without its newline); `None` when it is not a journal line.
    pub fn decode(line: &'a str) -> Option<Line<'a>> {
        let f: Vec<Cow<'a, str>> = line.split('\t').map(unescape).collect();
        let mut f = f.into_iter();
        let tag = f.next()?;
        let rest: Vec<Cow<'a, str>> = f.collect();
        let ms = |s: &str| s.parse::<i64>().ok();
        match (tag.as_ref(), rest.len()) {
            ("o", 8) => {
                let mut r = rest.into_iter();
                let mut next = || r.next().unwrap_or_default();
                let (node, client, url, source, flow) = (next(), next(), next(), next(), next());
                let (started, opened, bytes) = (next(), next(), next());
                Some(Line::Open {
                    node,
                    client,
                    url,
                    source,
                    flow,
                    started_ms: ms(&started)?,
                    opened_ms: ms(&opened)?,
                    bytes: bytes.parse().ok()?,
                })
            }
            ("c" | "s" | "f", 1) => {
                let key = rest.into_iter().next()?;
                Some(match tag.as_ref() {
                    "c" => Line::Close(key),
                    "s" => Line::Stuck(key),
                    _ => Line::Forget(key),
                })
            }
            ("d" | "u", 2) => {
                let mut r = rest.into_iter();
                let node = r.next()?;
                let at = ms(&r.next()?)?;
                Some(if tag == "d" {
                    Line::Down(node, at)
                } else {
                    Line::Up(node, at)
                })
            }
            _ => None,
        }
    }
}

/// Replay one journal line into the table.
fn apply(table: &mut Table, line: &str) -> bool {
    match Line::decode(line) {
        Some(Line::Open {
            node,
            client,
            url,
            source,
            flow,
            started_ms,
            opened_ms,
            bytes,
        }) => table.restore_open(
            [&node, &client, &url, &source, &flow].map(|c| c.as_ref()),
            started_ms,
            opened_ms,
            bytes,
        ),
        // closed, or forgotten
        Some(Line::Close(key) | Line::Forget(key)) => table.restore_close(&key),
        Some(Line::Stuck(key)) => table.restore_stuck(&key),
        Some(Line::Down(node, ms)) => table.restore_node(&node, Some(ms), ms),
        Some(Line::Up(node, ms)) => table.restore_node(&node, None, ms),
        None => return false,
    }
    true
}

/// Apply journal lines held in memory (a group's snapshot) to `table`.
pub fn apply_lines(table: &mut Table, bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    for l in bytes.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        match std::str::from_utf8(l) {
            Ok(l) if apply(table, l) => loaded.lines += 1,
            _ => loaded.bad += 1,
        }
    }
    loaded
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
