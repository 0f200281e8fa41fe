//! Thresholds per client and per source, and the states they lead to.
//!
//! Four conditions, judged per name:
//! - *late*: no good delivery for `td` seconds (counted from the name's last good delivery,
//!   or from when it was first seen, and never from before this speedo started);
//! - *failing*: in the last whole minute, errors / (good + errors) above `max_error_ratio`
//!   (with at least `min_attempts` attempts in that minute);
//! - *slow*: fewer than `tminr` good files in the last whole minute;
//! - *abnormal*: the good files per minute stayed more than `k` spreads away from the learned
//!   expectation for at least `abnormal_after` seconds.
//!
//! Minutes outside the expectation are not learned from until they have lasted
//! `adapt_after` (then the new rate is learned as the new normal).
//!
//! The state is the first condition that holds, in that order, else `ok`; the reason lists
//! every condition that holds.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Client or source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A client (the consuming user).
    Client,
    /// A source (the product's owner).
    Source,
}

impl Kind {
    /// `client` or `source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Source => "source",
        }
    }
}

/// The threshold state of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Within every threshold.
    #[default]
    Ok,
    /// No good delivery for `td` seconds.
    Late,
    /// Too many errors.
    Failing,
    /// Fewer than `tminr` good files per minute.
    Slow,
    /// Far from the learned expectation for too long.
    Abnormal,
    /// Its broker queue: a consumer holds messages and acknowledges nothing (the
    /// client-health issue; `queues`).
    Stalled,
    /// Its broker queue: messages wait and no consumer is connected.
    Stopped,
}

impl Health {
    /// Every state, in order of the enum.
    pub const ALL: [Health; 7] = [
        Health::Ok,
        Health::Late,
        Health::Failing,
        Health::Slow,
        Health::Abnormal,
        Health::Stalled,
        Health::Stopped,
    ];

    /// The state of a name (`late`...), if it is one.
    pub fn parse(name: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == name)
    }

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Late => "late",
            Health::Failing => "failing",
            Health::Slow => "slow",
            Health::Abnormal => "abnormal",
            Health::Stalled => "stalled",
            Health::Stopped => "stopped",
        }
    }
}

/// The limits that apply to one name. A value of 0 turns a check off (`td`, `tminr`, `k`);
/// a `max_error_ratio` of 1 or more does too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Seconds without a good delivery before *late* (0: never late).
    pub td: f64,
    /// Minimum good files per minute (0: never slow).
    pub tminr: f64,
    /// Largest share of errors in a minute before *failing* (1: never failing).
    pub max_error_ratio: f64,
    /// Attempts (good + errors) a minute needs before its error ratio is judged.
    pub min_attempts: u32,
    /// Spreads away from the expectation that count as outside (0: never abnormal).
    pub k: f64,
    /// Seconds a rate must stay outside before *abnormal*.
    pub abnormal_after: f64,
    /// Smallest spread used (files per minute), so that a perfectly steady client does not
    /// turn abnormal on its first different minute.
    pub min_spread: f64,
    /// Minutes outside the expectation are not learned from (so that an anomaly does not
    /// teach itself away), until they have lasted this many seconds: then the rate is taken
    /// as the new normal and learned again.
    pub adapt_after: f64,
    /// Weight of each new minute in the exponentially weighted mean and spread.
    pub alpha: f64,
    /// Minutes of history before the overall expectation is used.
    pub min_history: u32,
    /// Minutes of history in an hour-of-week before that hour's own expectation is used.
    pub min_hour_history: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            td: 3600.0,
            tminr: 0.0,
            max_error_ratio: 0.5,
            min_attempts: 5,
            k: 4.0,
            abnormal_after: 900.0,
            min_spread: 1.0,
            adapt_after: 86400.0,
            alpha: 0.05,
            min_history: 60,
            min_hour_history: 30,
        }
    }
}

/// Limits for the names an override matches; unset fields keep the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// `client` or `source`; unset: both.
    pub kind: Option<Kind>,
    /// Exactly this name.
    pub name: Option<String>,
    /// Names matching this regex.
    pub regex: Option<String>,
    /// See [`Limits::td`].
    pub td: Option<f64>,
    /// See [`Limits::tminr`].
    pub tminr: Option<f64>,
    /// See [`Limits::max_error_ratio`].
    pub max_error_ratio: Option<f64>,
    /// See [`Limits::min_attempts`].
    pub min_attempts: Option<u32>,
    /// See [`Limits::k`].
    pub k: Option<f64>,
    /// See [`Limits::abnormal_after`].
    pub abnormal_after: Option<f64>,
    /// See [`Limits::min_spread`].
    pub min_spread: Option<f64>,
}

impl Override {
    fn apply(&self, l: &mut Limits) {
        let set = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut l.td, self.td);
        set(&mut l.tminr, self.tminr);
        set(&mut l.max_error_ratio, self.max_error_ratio);
        set(&mut l.k, self.k);
        set(&mut l.abnormal_after, self.abnormal_after);
        set(&mut l.min_spread, self.min_spread);
        if let Some(v) = self.min_attempts {
            l.min_attempts = v;
        }
    }
}

/// The `[thresholds]` section: defaults for every name, then overrides in order (a later
/// match wins field by field).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdsConfig {
    /// Defaults for every client and source.
    pub defaults: Limits,
    /// Per-name overrides (`[[thresholds.override]]`).
    #[serde(rename = "override")]
    pub overrides: Vec<Override>,
}

enum Matcher {
    Any,
    Exact(String),
    Pattern(Regex),
}

/// Thresholds ready to resolve names: regexes compiled, resolved limit sets shared.
pub struct Thresholds {
    defaults: Limits,
    overrides: Vec<(Option<Kind>, Matcher, Override)>,
    resolved: Vec<Limits>,
}

impl Thresholds {
    /// Check and compile the configuration.
    pub fn new(cfg: &ThresholdsConfig) -> Result<Thresholds, ConfigError> {
        check(&cfg.defaults)?;
        let mut overrides = Vec::new();
        for o in &cfg.overrides {
            let matcher = match (&o.name, &o.regex) {
                (Some(_), Some(_)) => {
                    return Err(invalid("an override has both name and regex".into()));
                }
                (Some(n), None) => Matcher::Exact(n.clone()),
                (None, Some(r)) => Matcher::Pattern(
                    Regex::new(r).map_err(|e| invalid(format!("override regex {r:?}: {e}")))?,
                ),
                (None, None) => Matcher::Any,
            };
            let mut probe = cfg.defaults.clone();
            o.apply(&mut probe);
            check(&probe)?;
            overrides.push((o.kind, matcher, o.clone()));
        }
        Ok(Thresholds {
            defaults: cfg.defaults.clone(),
            overrides,
            resolved: vec![cfg.defaults.clone()],
        })
    }

    /// The index of the limits for `name` (resolve once per name, then [`Thresholds::get`]).
    pub fn resolve(&mut self, kind: Kind, name: &str) -> u32 {
        let mut limits = self.defaults.clone();
        for (k, m, o) in &self.overrides {
            if k.is_some_and(|k| k != kind) {
                continue;
            }
            let hit = match m {
                Matcher::Any => true,
                Matcher::Exact(n) => n == name,
                Matcher::Pattern(r) => r.is_match(name),
            };
            if hit {
                o.apply(&mut limits);
            }
        }
        match self.resolved.iter().position(|l| *l == limits) {
            Some(i) => i as u32,
            None => {
                self.resolved.push(limits);
                self.resolved.len() as u32 - 1
            }
        }
    }

    /// Limits by index.
    pub fn get(&self, index: u32) -> &Limits {
        self.resolved.get(index as usize).unwrap_or(&self.defaults)
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid {
        field: "thresholds",
        message,
    }
}

fn check(l: &Limits) -> Result<(), ConfigError> {
    let finite_nonneg = [
        ("td", l.td),
        ("tminr", l.tminr),
        ("max_error_ratio", l.max_error_ratio),
        ("k", l.k),
        ("abnormal_after", l.abnormal_after),
        ("min_spread", l.min_spread),
        ("adapt_after", l.adapt_after),
    ];
    for (name, v) in finite_nonneg {
        if !v.is_finite() || v < 0.0 {
            return Err(invalid(format!("{name} must be a number >= 0, not {v}")));
        }
    }
    if !(l.alpha > 0.0 && l.alpha <= 1.0) {
        return Err(invalid(format!("alpha must be in (0, 1], not {}", l.alpha)));
    }
    Ok(())
}

/// An exponentially weighted mean and variance of files per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    /// Mean.
    pub mean: f32,
    /// Variance.
    pub var: f32,
    /// Samples seen (saturating).
    pub n: u16,
}

impl Ewma {
    /// Take one sample.
    pub fn update(&mut self, x: f64, alpha: f64) {
        if self.n == 0 {
            self.mean = x as f32;
            self.var = 0.0;
        } else {
            let mean = f64::from(self.mean);
            let d = x - mean;
            self.mean = (mean + alpha * d) as f32;
            self.var = ((1.0 - alpha) * (f64::from(self.var) + alpha * d * d)) as f32;
        }
        self.n = self.n.saturating_add(1);
    }

    /// The spread (standard deviation).
    pub fn spread(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }
}

/// Hours in a week: the learned expectation's buckets.
pub const HOURS_OF_WEEK: usize = 168;

/// A learned expectation: over all minutes, and per hour of the week (UTC, Monday 00h = 0).
/// Stored as parallel arrays (about 1.5 KiB per name).
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// Every minute.
    pub overall: Ewma,
    /// Per hour-of-week mean.
    pub mean: [f32; HOURS_OF_WEEK],
    /// Per hour-of-week variance.
    pub var: [f32; HOURS_OF_WEEK],
    /// Per hour-of-week samples (saturating at 255).
    pub n: [u8; HOURS_OF_WEEK],
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            overall: Ewma::default(),
            mean: [0.0; HOURS_OF_WEEK],
            var: [0.0; HOURS_OF_WEEK],
            n: [0; HOURS_OF_WEEK],
        }
    }
}

impl Learned {
    /// One hour-of-week bucket.
    pub fn hour(&self, h: usize) -> Ewma {
        Ewma {
            mean: self.mean[h],
            var: self.var[h],
            n: u16::from(self.n[h]),
        }
    }

    /// Take one minute's figure, in hour-of-week `h`.
    pub fn update(&mut self, h: usize, x: f64, alpha: f64) {
        self.overall.update(x, alpha);
        let mut e = self.hour(h);
        e.update(x, alpha);
        self.mean[h] = e.mean;
        self.var[h] = e.var;
        self.n[h] = self.n[h].saturating_add(1);
    }

    /// The expectation to judge hour-of-week `h` by: that hour's once it has enough history,
    /// else the overall one once it has, else none.
    pub fn expectation(&self, h: usize, limits: &Limits) -> Option<(Ewma, &'static str)> {
        let hour = self.hour(h);
        if u32::from(hour.n) >= limits.min_hour_history {
            Some((hour, "hour of week"))
        } else if u32::from(self.overall.n) >= limits.min_history {
            Some((self.overall, "overall"))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_in_order_by_kind_name_and_regex() {
        let cfg: ThresholdsConfig = toml::from_str(
            r#"
            [defaults]
            td = 600
            [[override]]
            kind = "client"
            regex = "^wxo_"
            td = 60
            tminr = 5
            [[override]]
            name = "wxo_b"
            td = 0
            "#,
        )
        .unwrap();
        let mut t = Thresholds::new(&cfg).unwrap();
        let a = t.resolve(Kind::Client, "wxo_a");
        assert_eq!(t.get(a).td, 60.0);
        assert_eq!(t.get(a).tminr, 5.0);
        let b = t.resolve(Kind::Client, "wxo_b");
        assert_eq!(t.get(b).td, 0.0);
        assert_eq!(t.get(b).tminr, 5.0);
        let s = t.resolve(Kind::Source, "wxo_a");
        assert_eq!(t.get(s).td, 600.0);
        let other = t.resolve(Kind::Client, "metro");
        assert_eq!(other, s, "same limits share one entry");
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let bad = |text: &str| {
            let cfg: ThresholdsConfig = toml::from_str(text).unwrap();
            Thresholds::new(&cfg).is_err()
        };
        assert!(bad("[defaults]\ntd = -1"));
        assert!(bad("[defaults]\nalpha = 0"));
        assert!(bad("[[override]]\nregex = \"(\"\n"));
        assert!(bad("[[override]]\nname = \"a\"\nregex = \"a\"\n"));
        assert!(toml::from_str::<ThresholdsConfig>("[defaults]\ntdd = 1").is_err());
    }

    #[test]
    fn ewma_converges_and_spreads() {
        let mut e = Ewma::default();
        for i in 0..1000 {
            e.update(if i % 2 == 0 { 10.0 } else { 20.0 }, 0.05);
        }
        assert!((f64::from(e.mean) - 15.0).abs() < 0.5, "{e:?}");
        assert!((e.spread() - 5.0).abs() < 0.5, "{e:?}");
    }
}
