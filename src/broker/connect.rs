//! Reaching the broker: one connection named after its tool, the nodes of a cluster tried in
//! turn, and retries with capped exponential backoff and jitter while it cannot be reached.
//! A refusal no retry can fix (a login, a certificate) ends the attempt at once.
//!
//! [`Link`] is a connection for the short jobs of a command (a question, a set-up, a signed-in
//! user's tails); the long-lived consumers and publishers hold their own.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use super::error::{BrokerError, CONNECT_TIMEOUT, classify};
use super::settings::{BrokerConfig, mask_url};
use crate::shutdown::Shutdown;

/// A pseudo-random number from the process's hasher keys: enough for jitter and unique names
/// without another dependency.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Capped exponential backoff with full jitter (each wait is random in [d/2, d]).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from the broker settings.
    pub fn new(cfg: &BrokerConfig) -> Self {
        let min = Duration::from_millis(cfg.reconnect_min_ms);
        Backoff {
            min,
            max: Duration::from_millis(cfg.reconnect_max_ms),
            next: min,
        }
    }

    /// The next wait, doubling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random_u64() % jitter_ms)
    }

    /// Sleep the next wait (logged at debug); `false` if a stop was asked for meanwhile.
    pub async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let wait = self.next_delay();
        tracing::debug!(retry_in_ms = wait.as_millis() as u64, "backing off");
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.requested() => false,
        }
    }

    /// Back to the shortest wait (after a successful connection).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Close a connection without waiting long for a broker that may be gone.
pub(crate) async fn close_quietly(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, why.into())).await;
}

/// Open one connection, named after the tool so the broker's view shows who is connected.
/// With several URLs (the nodes of a cluster) each is tried in turn: a node that cannot be
/// reached passes to the next; a refusal (login, certificate) is final.
pub async fn connect(cfg: &BrokerConfig, name: &str) -> Result<Connection, BrokerError> {
    let urls = cfg.urls();
    let mut last = BrokerError::setup("no broker URL");
    for (i, url) in urls.iter().enumerate() {
        match connect_one(cfg, url, name).await {
            Ok(c) => {
                if i > 0 {
                    tracing::info!(node = %mask_url(url), "connected to another node of the cluster");
                }
                return Ok(c);
            }
            Err(e) if e.is_transient() => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

async fn connect_one(cfg: &BrokerConfig, url: &str, name: &str) -> Result<Connection, BrokerError> {
    let tls = match &cfg.tls_ca {
        None => lapin::tcp::OwnedTLSConfig::default(),
        Some(path) => lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|e| {
                BrokerError::setup(format!("cannot read CA file {}: {e}", path.display()))
            })?),
        },
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| BrokerError::setup(e.to_string()))?;
    // A broker that accepts the TCP connection but never answers (booting, wedged) must not
    // hang the tool: the attempt fails and the backoff retries.
    let attempt = Connection::connect_with_config(url, props, tls, runtime);
    // lapin reports a login refused by the broker as a closed socket on some paths; name the
    // URL (masked) so the operator knows which broker said no.
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| BrokerError::timeout(format!("no answer within {CONNECT_TIMEOUT:?}")))
        .and_then(|r| r.map_err(classify))
        .map_err(|e| e.at(&mask_url(url)))
        .map_err(|e| {
            // a refused login reads as a wrong password: say which password was used
            if e.denies_access() {
                e.noting(&cfg.password_said())
            } else {
                e
            }
        })
}

/// After this many failed attempts, a retrying connection says it keeps trying (the warning
/// of each attempt alone reads as a loop that may never end).
const SAY_KEEPS_TRYING_AFTER: u32 = 3;

/// Connect, retrying transient failures with backoff until `shutdown` fires (then `None`).
pub(crate) async fn connect_with_retry(
    cfg: &BrokerConfig,
    name: &str,
    backoff: &mut Backoff,
    shutdown: &mut Shutdown,
) -> Result<Option<Connection>, BrokerError> {
    let mut failures = 0u32;
    loop {
        if shutdown.is_requested() {
            return Ok(None);
        }
        match connect(cfg, name).await {
            Ok(c) => {
                backoff.reset();
                return Ok(Some(c));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot reach broker, retrying");
                failures += 1;
                if failures == SAY_KEEPS_TRYING_AFTER {
                    tracing::warn!(
                        "{} keeps trying to reach {} (waits up to {} s between \
                         attempts) until it answers or is stopped (Ctrl-C)",
                        name.split_whitespace().next().unwrap_or(name),
                        mask_url(&cfg.url),
                        cfg.reconnect_max_ms / 1000
                    );
                }
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connection for a command's short jobs: ask a question, set up topology, hold a
/// signed-in user's tails. Closed with [`Link::close`] (bounded: a broker that is gone does
/// not hold the command up).
pub struct Link {
    pub(crate) conn: Connection,
}

impl Link {
    /// Connect once (each node of a cluster in turn), named `name` in the broker's view.
    pub async fn open(cfg: &BrokerConfig, name: &str) -> Result<Link, BrokerError> {
        Ok(Link {
            conn: connect(cfg, name).await?,
        })
    }

    /// Connect, retrying transient failures with backoff until `shutdown` fires (then
    /// `None`); a refusal is returned at once.
    pub async fn open_with_retry(
        cfg: &BrokerConfig,
        name: &str,
        backoff: &mut Backoff,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Link>, BrokerError> {
        Ok(connect_with_retry(cfg, name, backoff, shutdown)
            .await?
            .map(|conn| Link { conn }))
    }

    /// Is the connection still open?
    pub fn is_open(&self) -> bool {
        self.conn.status().connected()
    }

    /// Close it, saying `why` to the broker, waiting at most two seconds.
    pub async fn close(&self, why: &str) {
        close_quietly(&self.conn, why).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let cfg = BrokerConfig {
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            ..BrokerConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        let waits: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert!((50..=100).contains(&waits[0]), "{waits:?}");
        assert!((100..=200).contains(&waits[1]), "{waits:?}");
        assert!(
            waits[5..].iter().all(|w| (500..=1000).contains(w)),
            "{waits:?}"
        );
        b.reset();
        assert!(b.next_delay().as_millis() <= 100);
    }
}
