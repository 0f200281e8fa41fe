//! dd_sim's pump model: sources, clients and nodes moving products, as a repeatable stream of
//! log records.
//!
//! Each transfer is two records: a `102` (started) from the node, then a final code after a
//! duration. Sizes are log-normal; relpaths fall in a few directory trees per source; a share
//! of transfers fail with a 4xx/5xx mix. The stream is a pure function of the seed and the
//! start time, so the same `--seed` and `--start` give the same messages.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::record::{Encoding, LogRecord};

/// The shape of the simulated pump.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PumpModel {
    /// Number of sources.
    pub sources: u32,
    /// Number of clients.
    pub clients: u32,
    /// Number of nodes.
    pub nodes: u32,
    /// Share of transfers that fail (0 to 1).
    pub error_rate: f64,
    /// Seed of the pseudo-random stream.
    pub seed: u64,
    /// Simulated transfers started per second (sets the datestamps' spacing).
    pub transfers_per_second: f64,
    /// Transfers last this many times longer than a 5 MB/s link takes (more in flight).
    pub duration_scale: f64,
}

impl Default for PumpModel {
    fn default() -> Self {
        PumpModel {
            sources: 3,
            clients: 5,
            nodes: 2,
            error_rate: 0.05,
            seed: 1,
            transfers_per_second: 50.0,
            duration_scale: 1.0,
        }
    }
}

/// splitmix64: small, fast, and good enough to make traffic look real.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        // Box-Muller
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

const TREES: [&str; 4] = ["radar", "satellite", "model/gem", "obs/surface"];
const ERRORS: [(u16, &str); 4] = [
    (404, "not found"),
    (499, "download failed"),
    (503, "service unavailable"),
    (550, "permission denied"),
];

/// A pump that emits records: transfers start at the model's rate and finish after their
/// duration, so several are in flight at once, interleaved as on a real pump.
#[derive(Debug, Clone)]
pub struct Pump {
    model: PumpModel,
    rng: Rng,
    start: DateTime<Utc>,
    started: u64,
    /// Final records of transfers in flight, by finish time (then start order).
    in_flight: BTreeMap<(DateTime<Utc>, u64), LogRecord>,
    dead_nodes: BTreeSet<String>,
}

impl Pump {
    /// A pump following `model`, its first transfer at `start`.
    pub fn new(model: PumpModel, start: DateTime<Utc>) -> Pump {
        Pump {
            rng: Rng(model.seed),
            model,
            start,
            started: 0,
            in_flight: BTreeMap::new(),
            dead_nodes: BTreeSet::new(),
        }
    }

    /// The name of node `i`.
    pub fn node_name(i: u32) -> String {
        format!("node{i:02}")
    }

    /// Seconds of the stream's own time: when the next transfer starts, after the first.
    pub fn elapsed_secs(&self) -> f64 {
        self.started as f64 / self.model.transfers_per_second.max(1e-3)
    }

    /// How many transfers are in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Stop a node as if it died: its transfers in flight never finish, and it takes no new
    /// ones. Returns how many transfers it had in flight.
    pub fn kill_node(&mut self, node: &str) -> usize {
        self.kill_node_lost(node).len()
    }

    /// [`Pump::kill_node`], returning the final records that will now never be sent (the
    /// truth a watchdog's down report must match), in start order.
    pub fn kill_node_lost(&mut self, node: &str) -> Vec<LogRecord> {
        self.dead_nodes.insert(node.to_string());
        let mut lost = Vec::new();
        self.in_flight.retain(|_, r| {
            if r.node == node {
                lost.push(r.clone());
                false
            } else {
                true
            }
        });
        lost.sort_by_key(|r| {
            r.time - Duration::milliseconds((r.duration.unwrap_or(0.0) * 1000.0).round() as i64)
        });
        lost
    }

    /// The next record: a transfer's `102`, or the final code of one in flight, in time
    /// order. `None` once every node is dead and nothing is in flight.
    pub fn next_record(&mut self) -> Option<LogRecord> {
        let next_start = self.start + Duration::microseconds((self.elapsed_secs() * 1e6) as i64);
        let alive: Vec<String> = (0..self.model.nodes.max(1))
            .map(Pump::node_name)
            .filter(|n| !self.dead_nodes.contains(n))
            .collect();
        let first_due = self.in_flight.keys().next().copied();
        match first_due {
            Some(key) if key.0 <= next_start || alive.is_empty() => self.in_flight.remove(&key),
            _ if alive.is_empty() => None,
            _ => Some(self.start_transfer(next_start, &alive)),
        }
    }

    fn start_transfer(&mut self, at: DateTime<Utc>, alive: &[String]) -> LogRecord {
        let m = &self.model;
        let n = self.started;
        self.started += 1;
        let source = format!("source{:02}", self.rng.below(m.sources));
        let client = format!("client{:02}", self.rng.below(m.clients));
        let node = alive[self.rng.below(alive.len() as u32) as usize].clone();
        let tree = TREES[self.rng.below(TREES.len() as u32) as usize];
        let relpath = format!(
            "{source}/{tree}/{}/{:02}/product_{n:08}.dat",
            at.format("%Y%m%d"),
            self.rng.below(24)
        );
        // log-normal: median ~ 60 kB, long tail
        let bytes = (11.0 + 1.5 * self.rng.normal()).exp().round().max(1.0) as u64;
        let duration =
            ((bytes as f64 / 5e6 + self.rng.unit() * 0.2) * self.model.duration_scale).max(0.001);
        let fails = self.rng.unit() < m.error_rate;
        let (status, message) = if fails {
            ERRORS[self.rng.below(ERRORS.len() as u32) as usize]
        } else {
            (201, "Downloaded")
        };
        let started = LogRecord {
            encoding: Encoding::V02,
            time: at,
            srcpath: format!("https://{source}.data.example/"),
            relpath,
            status: 102,
            node,
            client,
            duration: Some(0.0),
            source: Some(source),
            from_cluster: Some("pump.example".to_string()),
            to_clusters: Some("ALL".to_string()),
            flow: Some(format!("flow_{tree}").replace('/', "_")),
            message: Some("Transfer started".to_string()),
            sum: None,
            bytes: Some(bytes),
        };
        let millis = (duration * 1000.0).round() as i64;
        let finish = at + Duration::milliseconds(millis);
        let fin = LogRecord {
            time: finish,
            status,
            duration: Some(millis as f64 / 1000.0),
            message: Some(message.to_string()),
            ..started.clone()
        };
        self.in_flight.insert((finish, n), fin);
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_790_000, 0).unwrap_or_default()
    }

    fn take(p: &mut Pump, n: usize) -> Vec<LogRecord> {
        (0..n).map_while(|_| p.next_record()).collect()
    }

    #[test]
    fn same_seed_same_stream() {
        let a = take(&mut Pump::new(PumpModel::default(), start()), 500);
        let b = take(&mut Pump::new(PumpModel::default(), start()), 500);
        assert_eq!(a, b);
        let c = take(
            &mut Pump::new(
                PumpModel {
                    seed: 2,
                    ..PumpModel::default()
                },
                start(),
            ),
            500,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn every_transfer_starts_then_finishes_in_time_order() {
        let model = PumpModel {
            error_rate: 0.2,
            transfers_per_second: 200.0,
            ..PumpModel::default()
        };
        let mut p = Pump::new(model, start());
        let records = take(&mut p, 20_000);
        let mut open = std::collections::HashMap::new();
        let (mut finals, mut errors, mut max_in_flight) = (0, 0, 0);
        for w in records.windows(2) {
            assert!(w[0].time <= w[1].time, "time order");
        }
        for r in &records {
            let key = (r.node.clone(), r.client.clone(), r.url());
            if r.status == 102 {
                assert!(open.insert(key, r.time).is_none());
                max_in_flight = max_in_flight.max(open.len());
            } else {
                let started = open
                    .remove(&key)
                    .expect("a final closes a started transfer");
                assert!(r.time >= started);
                finals += 1;
                if r.status >= 400 {
                    errors += 1;
                }
            }
        }
        assert!(max_in_flight > 5, "transfers overlap: {max_in_flight}");
        let share = f64::from(errors) / f64::from(finals);
        assert!((0.17..0.23).contains(&share), "{share}");
    }

    #[test]
    fn a_killed_node_never_finishes_its_transfers() {
        let model = PumpModel {
            nodes: 3,
            transfers_per_second: 500.0,
            ..PumpModel::default()
        };
        let mut p = Pump::new(model, start());
        let before = take(&mut p, 3000);
        let open_on_node1: usize = {
            let mut open = std::collections::HashSet::new();
            for r in before.iter().filter(|r| r.node == "node01") {
                let key = (r.client.clone(), r.url());
                if r.status == 102 {
                    open.insert(key);
                } else {
                    open.remove(&key);
                }
            }
            open.len()
        };
        assert_eq!(p.kill_node("node01"), open_on_node1);
        assert!(open_on_node1 > 0);
        let after = take(&mut p, 3000);
        assert!(after.iter().all(|r| r.node != "node01"));
        assert_eq!(after.len(), 3000);
        // every node dead: nothing in flight, the stream ends
        p.kill_node("node00");
        p.kill_node("node02");
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.next_record(), None);
    }
}

/// dd_sim's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dd_sim",
    version,
    about = "Play a data pump: publish log records to the log exchange",
    after_help = "Without --count or --duration, dd_sim runs until stopped (Ctrl-C), at --rate a second.\n\n\
                  Examples:\n  \
                  dd_sim --count 1000                          # 1000 records at 100/s, then exit\n  \
                  dd_sim --duration 60 --rate 0                # one minute as fast as the broker confirms\n  \
                  dd_sim --format v03 --exchange xs_test --count 10   # Sarracenia 3 reports\n  \
                  dd_sim --kill-node node01 --at 30 --truth lost.jsonl   # a node dies half-way\n\n\
                  Exit codes: 0 done (also on SIGINT/SIGTERM once connected), 1 failure (also a stop before the broker was reached), 2 usage or config error."
)]
pub struct Args {
    /// Stop after publishing this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Messages per second (0: as fast as the broker confirms).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seed of the stream (same seed and --start: same messages).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of sources.
    #[arg(long, default_value_t = 3)]
    pub sources: u32,
    /// Number of clients.
    #[arg(long, default_value_t = 5)]
    pub clients: u32,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Share of transfers that fail (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    pub error_rate: f64,
    /// Wire format of the records.
    #[arg(long, value_enum, default_value_t = WireFormat::V02)]
    pub format: WireFormat,
    /// Exchange to publish to.
    #[arg(long, env = "DD_EXCHANGE", default_value = "log")]
    pub exchange: String,
    /// Datestamp of the first transfer (RFC 3339) [default: now].
    #[arg(long, value_name = "TIME")]
    pub start: Option<DateTime<Utc>>,
    /// Make transfers last this many times longer (more in flight at once).
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub duration_scale: f64,
    /// Stop this node mid-transfers (its transfers in flight never finish), e.g. node01.
    #[arg(long, value_name = "NODE", requires = "at")]
    pub kill_node: Option<String>,
    /// When to stop --kill-node: seconds of the stream's own time (its datestamps) after the
    /// first transfer; at --rate R that is also wall-clock seconds.
    #[arg(long, value_name = "SECONDS", requires = "kill_node")]
    pub at: Option<f64>,
    /// With --kill-node: write the transfers the node leaves in flight (that will never
    /// finish) to this file, one JSON object per line (node, client, source, url, flow,
    /// started, bytes).
    #[arg(long, value_name = "FILE", requires = "kill_node")]
    pub truth: Option<std::path::PathBuf>,
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: crate::cli::CommonOpts,
}

impl Args {
    /// The figures that make no pump: a share outside 0..1, a negative rate or duration.
    pub fn check(&self) -> Result<(), crate::config::ConfigError> {
        let bad = |field: &'static str, message: String| {
            Err(crate::config::ConfigError::Invalid { field, message })
        };
        if !(0.0..=1.0).contains(&self.error_rate) {
            return bad(
                "--error-rate",
                format!("{} is not a share between 0 and 1", self.error_rate),
            );
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return bad(
                "--rate",
                format!("{} is not a rate (0 or more a second)", self.rate),
            );
        }
        if self.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            return bad("--duration", "must be more than 0 seconds".to_string());
        }
        if !(self.duration_scale.is_finite() && self.duration_scale > 0.0) {
            return bad("--duration-scale", "must be more than 0".to_string());
        }
        if self.sources == 0 || self.clients == 0 || self.nodes == 0 {
            return bad(
                "--sources/--clients/--nodes",
                "each must be at least 1".to_string(),
            );
        }
        Ok(())
    }
}

/// The encodings dd_sim can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// Native v02 log lines.
    V02,
    /// Sarracenia 3 JSON reports.
    V03,
}

/// One record as the message to publish.
pub fn outgoing(r: &LogRecord, format: WireFormat, exchange: &str) -> crate::broker::Outgoing {
    match format {
        WireFormat::V02 => {
            let (key, headers, body) = crate::record::encode_v02(r);
            crate::broker::Outgoing {
                exchange: exchange.to_string(),
                routing_key: key,
                headers,
                body: body.into_bytes(),
                content_type: Some("text/plain".to_string()),
                ..Default::default()
            }
        }
        WireFormat::V03 => {
            let (key, body) = crate::record::encode_v03(r);
            crate::broker::Outgoing {
                exchange: exchange.to_string(),
                routing_key: key,
                headers: Default::default(),
                body: body.into_bytes(),
                content_type: Some("application/json".to_string()),
                ..Default::default()
            }
        }
    }
}

/// The transfers a killed node leaves in flight, one JSON object per line.
fn write_truth(path: &std::path::Path, lost: &[LogRecord]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut text = String::new();
    for r in lost {
        let millis = (r.duration.unwrap_or(0.0) * 1000.0).round() as i64;
        let v = serde_json::json!({
            "node": r.node, "client": r.client, "source": r.source, "url": r.url(),
            "flow": r.flow, "started": r.time - Duration::milliseconds(millis), "bytes": r.bytes,
        });
        text.push_str(&v.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Entry point of the `dd_sim` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    let config = || {
        crate::config::check_name("exchange", &args.exchange)?;
        args.check()?;
        Ok(args.common.broker_config()?)
    };
    crate::cli::main("dd_sim", &args.common, 3, config, |cfg| {
        let broker = cfg.broker;
        crate::cli::block_on(async {
            let shutdown = crate::daemon::Shutdown::install()?;
            let n = run(&args, &broker, shutdown).await?;
            tracing::info!(published = n, "dd_sim done");
            Ok(std::process::ExitCode::SUCCESS)
        })
    })
}

/// Publish the stream, paced at `--rate`, every message confirmed; returns how many.
pub async fn run(
    args: &Args,
    broker: &crate::config::BrokerConfig,
    shutdown: crate::daemon::Shutdown,
) -> anyhow::Result<u64> {
    let model = PumpModel {
        sources: args.sources,
        clients: args.clients,
        nodes: args.nodes,
        error_rate: args.error_rate,
        seed: args.seed,
        duration_scale: args.duration_scale.max(0.0),
        transfers_per_second: if args.rate > 0.0 {
            args.rate / 2.0
        } else {
            1000.0
        },
    };
    let mut pump = Pump::new(model, args.start.unwrap_or_else(Utc::now));
    let mut publisher =
        crate::broker::Publisher::connect(broker, "dd_sim", shutdown.clone()).await?;
    publisher.declare_exchange(&args.exchange).await?;
    let began = std::time::Instant::now();
    let batch = if args.rate > 0.0 {
        (args.rate / 20.0).clamp(1.0, 500.0) as u64
    } else {
        500
    };
    let mut kill = args.kill_node.clone().zip(args.at);
    let mut sent: u64 = 0;
    'stream: loop {
        let elapsed = began.elapsed().as_secs_f64();
        if shutdown.is_requested() || args.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let left = args
            .count
            .map_or(batch, |c| c.saturating_sub(sent).min(batch));
        if left == 0 {
            break;
        }
        let mut msgs = Vec::with_capacity(left as usize);
        for _ in 0..left {
            // The node dies when the stream's own time (its datestamps) reaches --at.
            if let Some((node, at)) = &kill {
                if pump.elapsed_secs() >= *at {
                    let lost = pump.kill_node_lost(node);
                    tracing::info!(node = %node, in_flight = lost.len(), "killed node: its transfers never finish");
                    if let Some(path) = &args.truth {
                        write_truth(path, &lost)?;
                    }
                    kill = None;
                }
            }
            match pump.next_record() {
                Some(r) => msgs.push(outgoing(&r, args.format, &args.exchange)),
                None => break,
            }
        }
        if msgs.is_empty() {
            break 'stream;
        }
        publisher.publish_all(&msgs).await?;
        sent += msgs.len() as u64;
        if args.rate > 0.0 {
            let due = sent as f64 / args.rate;
            let ahead = due - began.elapsed().as_secs_f64();
            if ahead > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(ahead)).await;
            }
        }
    }
    publisher.close().await;
    Ok(sent)
}
