//! Threshold ranges in the Monitoring Plugins syntax
//! (<https://www.monitoring-plugins.org/doc/guidelines.html#THRESHOLDFORMAT>):
//!
//! | range | alert when the value is |
//! | --- | --- |
//! | `10` | < 0 or > 10 (outside 0..10) |
//! | `10:` | < 10 (outside 10..∞) |
//! | `~:10` | > 10 (outside -∞..10) |
//! | `10:20` | < 10 or > 20 (outside 10..20) |
//! | `@10:20` | ≥ 10 and ≤ 20 (inside 10..20) |
//!
//! The ends are inclusive: a value equal to an end is inside.

use std::fmt;
use std::str::FromStr;

/// A parsed range.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// Lower end (`None`: -∞).
    pub start: Option<f64>,
    /// Upper end (`None`: +∞).
    pub end: Option<f64>,
    /// `@`: alert inside instead of outside.
    pub inside: bool,
    text: String,
}

/// Why a range could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad range {text:?}: {why}")]
pub struct BadRange {
    text: String,
    why: &'static str,
}

impl Range {
    /// Does `value` raise the alert?
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start.is_none_or(|s| value >= s) && self.end.is_none_or(|e| value <= e);
        if self.inside { within } else { !within }
    }
}

impl FromStr for Range {
    type Err = BadRange;

    fn from_str(text: &str) -> Result<Range, BadRange> {
        let bad = |why| BadRange {
            text: text.to_string(),
            why,
        };
        let (inside, body) = match text.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if body.is_empty() {
            return Err(bad("empty"));
        }
        let num = |s: &str| -> Result<f64, BadRange> {
            let v: f64 = s.parse().map_err(|_| bad("not a number"))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(bad("not a finite number"))
            }
        };
        let (start, end) = match body.split_once(':') {
            None => (Some(0.0), Some(num(body)?)),
            Some((s, e)) => {
                let start = match s {
                    "~" => None,
                    "" => Some(0.0),
                    s => Some(num(s)?),
                };
                let end = if e.is_empty() { None } else { Some(num(e)?) };
                (start, end)
            }
        };
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Err(bad("start is above end"));
            }
        }
        Ok(Range {
            start,
            end,
            inside,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example of the guidelines' table, and the edges.
    #[test]
    fn the_guidelines_examples() {
        let cases: &[(&str, &[(f64, bool)])] = &[
            (
                "10",
                &[
                    (-1.0, true),
                    (0.0, false),
                    (5.0, false),
                    (10.0, false),
                    (10.5, true),
                ],
            ),
            (
                "10:",
                &[(9.9, true), (10.0, false), (1e9, false), (-5.0, true)],
            ),
            ("~:10", &[(-1e9, false), (10.0, false), (10.1, true)]),
            (
                "10:20",
                &[
                    (9.0, true),
                    (10.0, false),
                    (15.0, false),
                    (20.0, false),
                    (21.0, true),
                ],
            ),
            (
                "@10:20",
                &[
                    (9.0, false),
                    (10.0, true),
                    (15.0, true),
                    (20.0, true),
                    (21.0, false),
                ],
            ),
            (
                ":5",
                &[(-1.0, true), (0.0, false), (5.0, false), (6.0, true)],
            ),
            ("@~:0", &[(-1.0, true), (0.0, true), (0.5, false)]),
            ("0.5:1.5", &[(0.4, true), (0.5, false), (1.6, true)]),
            ("-10:-5", &[(-11.0, true), (-7.0, false), (-4.0, true)]),
        ];
        for (text, checks) in cases {
            let r: Range = text.parse().unwrap();
            assert_eq!(r.to_string(), *text);
            for (v, alert) in *checks {
                assert_eq!(r.alerts(*v), *alert, "{text} with {v}");
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        for text in ["", "@", "abc", "20:10", "1:x", "~", "nan", "inf:", "1:2:3"] {
            assert!(text.parse::<Range>().is_err(), "{text:?}");
        }
    }
}
