//! dd_log's filters and output sinks: which lines to print, and where (stdout, flushed per
//! line, or daily files `DIR/YYYYMMDD.log` opened in append mode).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use regex::{Regex, RegexSet};

/// The line filter: printed when any pattern matches (or there is none), unless the exclude
/// pattern matches. Patterns are matched against the line format, whatever the output format.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<RegexSet>,
    exclude: Option<Regex>,
}

impl Filter {
    /// Compile the patterns; an invalid regex is an error naming it.
    pub fn new(patterns: &[String], exclude: Option<&str>) -> Result<Filter, regex::Error> {
        let include = if patterns.is_empty() {
            None
        } else {
            Some(RegexSet::new(patterns)?)
        };
        let exclude = exclude.map(Regex::new).transpose()?;
        Ok(Filter { include, exclude })
    }

    /// Does the filter let through nothing but everything (so the line needs no rendering)?
    pub fn is_open(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Should this line be printed?
    pub fn accepts(&self, line: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(line))
            && !self.exclude.as_ref().is_some_and(|re| re.is_match(line))
    }
}

/// Where printed lines go. Lines are given with [`Sink::push_line`]; [`Sink::flush`], which
/// the loop calls before acknowledging them, writes them: a line is never acknowledged before
/// it is in the OS, and never waits for a later message. The lines of deliveries already in
/// hand (a burst, at most a batch) go out in one `write`.
pub struct Sink {
    target: Target,
    pending: Vec<u8>,
    pending_day: Option<NaiveDate>,
}

enum Target {
    Stdout(std::io::Stdout),
    Daily(DailyFiles),
}

impl Sink {
    /// Standard output.
    pub fn stdout() -> Sink {
        Sink::new(Target::Stdout(std::io::stdout()))
    }

    /// Daily files in a directory, chosen by the UTC date at which each line is written.
    pub fn daily(files: DailyFiles) -> Sink {
        Sink::new(Target::Daily(files))
    }

    fn new(target: Target) -> Sink {
        Sink {
            target,
            pending: Vec::with_capacity(64 * 1024),
            pending_day: None,
        }
    }

    /// Add one line (a newline is added). A line of another day first flushes the previous
    /// day's lines to their file.
    pub fn push_line(&mut self, line: &str, now: DateTime<Utc>) -> std::io::Result<()> {
        let day = now.date_naive();
        if matches!(self.target, Target::Daily(_)) && self.pending_day.is_some_and(|d| d != day) {
            self.flush()?;
        }
        self.pending_day = Some(day);
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        Ok(())
    }

    /// Write what was pushed, so that it is in the OS before this returns.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.target {
            Target::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(&self.pending)?;
                lock.flush()?;
            }
            Target::Daily(d) => {
                let day = self.pending_day.unwrap_or_else(|| Utc::now().date_naive());
                d.append(day, &self.pending)?;
            }
        }
        self.pending.clear();
        Ok(())
    }
}

/// Append-only daily files `DIR/YYYYMMDD.log`: a new file at each UTC midnight, an existing
/// file appended to, whole lines written in one `write` so that concurrent readers
/// (`tail -f`) never see half a line.
pub struct DailyFiles {
    dir: PathBuf,
    open: Option<(NaiveDate, File)>,
}

impl DailyFiles {
    /// Use `dir` (created if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<DailyFiles> {
        std::fs::create_dir_all(&dir)?;
        Ok(DailyFiles { dir, open: None })
    }

    /// The file for a day.
    pub fn path_for(&self, day: NaiveDate) -> PathBuf {
        self.dir.join(format!("{}.log", day.format("%Y%m%d")))
    }

    fn append(&mut self, day: NaiveDate, bytes: &[u8]) -> std::io::Result<()> {
        if self.open.as_ref().is_none_or(|(d, _)| *d != day) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path_for(day))?;
            self.open = Some((day, f));
        }
        match &mut self.open {
            Some((_, f)) => f.write_all(bytes),
            None => Ok(()),
        }
    }
}

/// Watches standard output while nothing is written to it: when its reader goes away (`| head
/// -1` exits), it asks the tool to stop, as GNU `tail -f` does. A write would learn it too, but
/// only at the next record, which may never come. `poll(2)` reports a pipe whose reader is
/// gone as `POLLERR` (a terminal hung up as `POLLHUP`); a file or `/dev/null` never is, and a
/// closed descriptor (`POLLNVAL`) is not watched. The watch ends when this is dropped.
pub struct StdoutWatch {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StdoutWatch {
    /// Start watching; `shutdown` is asked to stop when stdout's reader goes away.
    pub fn start(shutdown: crate::shutdown::Shutdown) -> StdoutWatch {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let over = done.clone();
        std::thread::spawn(move || {
            let stdout = std::io::stdout();
            let every = Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            while !shutdown.is_requested() && !over.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
                match poll(&mut fds, Some(&every)) {
                    Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return,
                    Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                        tracing::info!("stdout was closed: stopping");
                        shutdown.stop();
                        return;
                    }
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    // not a descriptor poll can watch: a write will tell
                    Err(_) => return,
                }
            }
        });
        StdoutWatch { done }
    }
}

impl Drop for StdoutWatch {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_pattern_matches_and_exclude_wins() {
        let f = Filter::new(&["ec_cmc".into(), " 4\\d\\d ".into()], Some("ignore")).unwrap();
        assert!(f.accepts("v02.log.x t 201 ec_cmc c n"));
        assert!(f.accepts("v02.log.x t 404 other c n"));
        assert!(!f.accepts("v02.log.x t 201 other c n"));
        assert!(!f.accepts("v02.log.x t 201 ec_cmc ignore"));
        assert!(Filter::new(&[], None).unwrap().accepts("anything"));
        assert!(Filter::new(&["(".into()], None).is_err());
    }

    #[test]
    fn daily_files_append_and_roll_at_midnight() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Sink::daily(DailyFiles::new(dir.path().join("capture")).unwrap());
        let day1 = DateTime::parse_from_rfc3339("2026-11-21T23:59:59Z")
            .unwrap()
            .to_utc();
        let day2 = DateTime::parse_from_rfc3339("2026-11-22T00:00:01Z")
            .unwrap()
            .to_utc();
        d.push_line("a", day1).unwrap();
        d.push_line("b", day2).unwrap();
        d.flush().unwrap();
        // a second writer (a restarted dd_log) appends
        let mut again = Sink::daily(DailyFiles::new(dir.path().join("capture")).unwrap());
        again.push_line("c", day2).unwrap();
        again.flush().unwrap();
        let read =
            |name: &str| std::fs::read_to_string(dir.path().join("capture").join(name)).unwrap();
        assert_eq!(read("20261121.log"), "a\n");
        assert_eq!(read("20261122.log"), "b\nc\n");
    }
}
