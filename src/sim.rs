//! dd_sim's pump model: sources, clients and nodes moving products, as a repeatable stream of
//! log records.
//!
//! Each transfer is two records: a `102` (started) from the node, then a final code after a
//! duration. Sizes are log-normal; relpaths fall in a few directory trees per source; a share
//! of transfers fail with a 4xx/5xx mix. The stream is a pure function of the seed and the
//! start time, so the same `--seed` and `--start` give the same messages.

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

/// A pump that emits records, pair by pair.
#[derive(Debug, Clone)]
pub struct Pump {
    model: PumpModel,
    rng: Rng,
    start: DateTime<Utc>,
    started: u64,
    pending_final: Option<LogRecord>,
}

impl Pump {
    /// A pump following `model`, its first transfer at `start`.
    pub fn new(model: PumpModel, start: DateTime<Utc>) -> Pump {
        Pump {
            rng: Rng(model.seed),
            model,
            start,
            started: 0,
            pending_final: None,
        }
    }

    /// The next record: a transfer's `102`, then its final code.
    pub fn next_record(&mut self) -> LogRecord {
        if let Some(fin) = self.pending_final.take() {
            return fin;
        }
        let m = &self.model;
        let n = self.started;
        self.started += 1;
        let at = self.start
            + Duration::microseconds((n as f64 * 1e6 / m.transfers_per_second.max(1e-3)) as i64);
        let source = format!("source{:02}", self.rng.below(m.sources));
        let client = format!("client{:02}", self.rng.below(m.clients));
        let node = format!("node{:02}.pump.example", self.rng.below(m.nodes));
        let tree = TREES[self.rng.below(TREES.len() as u32) as usize];
        let relpath = format!(
            "{source}/{tree}/{}/{:02}/product_{n:08}.dat",
            at.format("%Y%m%d"),
            self.rng.below(24)
        );
        // log-normal: median ~ 60 kB, long tail
        let bytes = (11.0 + 1.5 * self.rng.normal()).exp().round().max(1.0) as u64;
        let duration = (bytes as f64 / 5e6 + self.rng.unit() * 0.2).max(0.001);
        let fails = self.rng.unit() < m.error_rate;
        let (status, message) = if fails {
            ERRORS[self.rng.below(ERRORS.len() as u32) as usize]
        } else {
            (201, "Downloaded")
        };
        let base = LogRecord {
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
        self.pending_final = Some(LogRecord {
            time: at + Duration::milliseconds(millis),
            status,
            duration: Some(millis as f64 / 1000.0),
            message: Some(message.to_string()),
            ..base.clone()
        });
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_790_000, 0).unwrap_or_default()
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = Pump::new(PumpModel::default(), start());
        let mut b = Pump::new(PumpModel::default(), start());
        for _ in 0..500 {
            assert_eq!(a.next_record(), b.next_record());
        }
        let mut c = Pump::new(
            PumpModel {
                seed: 2,
                ..PumpModel::default()
            },
            start(),
        );
        let mut a = Pump::new(PumpModel::default(), start());
        assert!((0..20).any(|_| a.next_record() != c.next_record()));
    }

    #[test]
    fn transfers_start_then_finish_with_the_configured_error_share() {
        let mut p = Pump::new(
            PumpModel {
                error_rate: 0.2,
                ..PumpModel::default()
            },
            start(),
        );
        let (mut errors, n) = (0, 5000);
        for _ in 0..n {
            let s = p.next_record();
            let f = p.next_record();
            assert_eq!(s.status, 102);
            assert_eq!((&s.node, &s.client, s.url()), (&f.node, &f.client, f.url()));
            assert!(f.time >= s.time);
            if f.status >= 400 {
                errors += 1;
            }
        }
        let share = f64::from(errors) / f64::from(n);
        assert!((0.17..0.23).contains(&share), "{share}");
    }
}

/// dd_sim's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "dd_sim",
    version,
    about = "Play a data pump: publish log records to the log exchange"
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
    /// Flags shared by every command.
    #[command(flatten)]
    pub common: crate::cli::CommonOpts,
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
                correlation_id: None,
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
                correlation_id: None,
            }
        }
    }
}

/// Entry point of the `dd_sim` binary.
pub fn main(args: Args) -> std::process::ExitCode {
    crate::cli::init_tracing(&args.common, 3);
    let outcome = (|| {
        let mut broker: crate::config::BrokerConfig =
            crate::config::load_file(args.common.config.as_deref())?;
        args.common.apply_broker(&mut broker);
        broker.validate()?;
        if args.common.print_config {
            print!("{}", crate::config::to_toml(&broker));
            return Ok(());
        }
        crate::cli::block_on(async move {
            let shutdown = crate::daemon::Shutdown::install()?;
            let n = run(&args, &broker, shutdown).await?;
            tracing::info!(published = n, "dd_sim done");
            Ok(())
        })
    })();
    crate::cli::exit_code("dd_sim", outcome)
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
    let mut sent: u64 = 0;
    loop {
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
        let msgs: Vec<_> = (0..left)
            .map(|_| outgoing(&pump.next_record(), args.format, &args.exchange))
            .collect();
        publisher.publish_all(&msgs).await?;
        sent += left;
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
