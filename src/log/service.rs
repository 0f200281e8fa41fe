//! dd_log's service on the serve loop (parse, filter, render, write, then acknowledge), and its entry points (`main`, `run`).

use crate::clock::{Clock, SystemClock};
use crate::daemon::{Handled, ServeConfig, Service, Shutdown, serve};
use crate::record::{MalformedTally, Parsed, render_json, render_line};
use anyhow::Context as _;

use super::*;

/// What a run did, for the closing log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Lines printed (or written to files).
    pub printed: u64,
    /// Messages that did not pass the filter.
    pub filtered: u64,
    /// Ordinary posts (no report), skipped.
    pub not_reports: u64,
    /// Malformed messages, rejected.
    pub malformed: u64,
}

/// Entry point of the `dd_log` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || Ok(LogConfig::from_args(&args)?);
    crate::cli::main("dd_log", &args.common, 2, config, |cfg| {
        crate::cli::block_on(async move {
            let shutdown = Shutdown::install().context("cannot install signal handlers")?;
            run(&cfg, shutdown, &SystemClock).await?;
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// dd_log as a [`Service`]: parse, filter, write, then acknowledge.
struct LogService {
    format: Format,
    count: Option<u64>,
    filter: Filter,
    sink: Sink,
    totals: Totals,
    tally: MalformedTally,
}

impl Service for LogService {
    fn tool(&self) -> &'static str {
        "dd_log"
    }

    fn handle(
        &mut self,
        delivery: &crate::broker::Delivery,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Handled> {
        let parsed = match self.tally.parse(
            &delivery.routing_key,
            &delivery.headers,
            &delivery.body,
            now,
        ) {
            Ok(p) => p,
            Err(_) => {
                self.totals.malformed += 1;
                return Ok(Handled::reject());
            }
        };
        if parsed == Parsed::NotReport {
            self.totals.not_reports += 1;
            return Ok(Handled::ack());
        }
        let line = render_line(&delivery.routing_key, &parsed).unwrap_or_default();
        if !self.filter.accepts(&line) {
            self.totals.filtered += 1;
            return Ok(Handled::ack());
        }
        let out = match self.format {
            Format::Line => line,
            Format::Json => render_json(&delivery.routing_key, &parsed).unwrap_or_default(),
        };
        // Written by `flush`, before the delivery is acknowledged; on failure it is not
        // acknowledged, and a durable queue keeps it.
        self.sink
            .push_line(&out, now)
            .context("cannot write output")?;
        self.totals.printed += 1;
        Ok(Handled::ack())
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!({
            "printed": self.totals.printed,
            "filtered": self.totals.filtered,
            "not_reports": self.totals.not_reports,
            "malformed": self.totals.malformed,
            "malformed_by_kind": self.tally.by_kind(),
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.sink.flush().context("cannot write output")
    }

    fn finished(&self) -> bool {
        self.count.is_some_and(|n| self.totals.printed >= n)
    }
}

/// Consume, filter and print until `--count` lines were printed, a stop is asked for, or
/// stdout is closed (an `Err` whose cause is a broken pipe: the caller exits 0 quietly).
pub async fn run(cfg: &LogConfig, shutdown: Shutdown, clock: &dyn Clock) -> anyhow::Result<Totals> {
    let sink = match &cfg.output {
        Some(dir) => Sink::daily(
            DailyFiles::new(dir.clone())
                .with_context(|| format!("cannot create output directory {}", dir.display()))?,
        ),
        None => Sink::stdout(),
    };
    // a closed stdout ends the run even while no record comes (watched until the run ends)
    let _watch = cfg
        .output
        .is_none()
        .then(|| output::StdoutWatch::start(shutdown.clone()));
    let mut service = LogService {
        format: cfg.format,
        count: cfg.count,
        filter: Filter::new(&cfg.patterns, cfg.exclude.as_deref())?,
        sink,
        totals: Totals::default(),
        tally: MalformedTally::default(),
    };
    let serve_cfg = ServeConfig {
        broker: &cfg.broker,
        input: Some(cfg.subscription()),
        daemon: cfg.service.then_some(&cfg.daemon),
        publishes: false,
        remotes: Default::default(),
    };
    let outcome = serve(&mut service, serve_cfg, shutdown, clock).await;
    let t = &service.totals;
    tracing::info!(
        printed = t.printed,
        filtered = t.filtered,
        not_reports = t.not_reports,
        malformed = t.malformed,
        by_kind = ?service.tally.by_kind(),
        "dd_log done"
    );
    outcome.map(|()| service.totals)
}
