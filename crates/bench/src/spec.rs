//! What a run does: the [`BenchSpec`], and the key range and distribution
//! that the `{id}` of its URL is drawn from.
//!
//! This module only describes and validates; it opens no sockets.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::BenchError;

/// Everything one run needs. The CLI maps its flags onto this one to one.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// URL template, e.g. `http://127.0.0.1:8080/users/{id}`. Every `{id}` in
    /// the path or query is replaced per request by a key from [`keys`](Self::keys).
    /// Only `http://` is supported for now.
    pub url: String,
    /// Request method; `GET` by default.
    pub method: Method,
    /// Request body sent with every request, if any.
    pub body: Option<Bytes>,
    /// Extra request headers. A `Host` header here replaces the one derived
    /// from the URL.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The keys substituted for `{id}`.
    pub keys: KeyRange,
    /// How keys are drawn from [`keys`](Self::keys).
    pub dist: KeyDist,
    /// Concurrent keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// How long new requests are started for. Requests in flight at the
    /// end are allowed to finish (within `timeout`) and are counted.
    pub duration: Duration,
    /// Worker threads of the load generator's runtime; 0 = number of cores.
    pub threads: usize,
    /// Per-request limit (connect, send, and read the whole response).
    pub timeout: Duration,
    /// Processes whose CPU time, with that of all their descendants, is
    /// measured over the run (the server under test, e.g. `scalestack up`).
    pub cpu_pids: Vec<u32>,
    /// Print a live progress line on stderr once per second.
    pub progress: bool,
}

impl BenchSpec {
    /// A spec for `url` with the defaults: `GET`, no body or extra headers,
    /// the single key 1 drawn uniformly, 16 connections for 10 s on all
    /// cores, a 10 s timeout, no CPU accounting of other processes and no
    /// progress line.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: Method::GET,
            body: None,
            headers: Vec::new(),
            keys: KeyRange { first: 1, last: 1 },
            dist: KeyDist::Uniform,
            connections: 16,
            duration: Duration::from_secs(10),
            threads: 0,
            timeout: Duration::from_secs(10),
            cpu_pids: Vec::new(),
            progress: false,
        }
    }

    /// Checks the fields that the types alone do not guarantee. The URL is
    /// checked separately, when it is parsed into a target.
    pub(crate) fn validate(&self) -> Result<(), BenchError> {
        let invalid =
            |field: &'static str, reason: String| BenchError::InvalidSpec { field, reason };
        if self.connections == 0 {
            return Err(invalid("connections", "must be at least 1, got 0".into()));
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be greater than 0".into()));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than 0".into()));
        }
        // Deadlines are `Instant::now() + d`; refuse what would overflow
        // rather than panic in the middle of a run.
        let now = std::time::Instant::now();
        for (field, d) in [("duration", self.duration), ("timeout", self.timeout)] {
            if now.checked_add(d).and_then(|t| t.checked_add(d)).is_none() {
                return Err(invalid(field, format!("{d:?} is too long")));
            }
        }
        if self.keys.first > self.keys.last {
            return Err(invalid(
                "keys",
                format!(
                    "the range is empty: first key {} is greater than last key {}",
                    self.keys.first, self.keys.last
                ),
            ));
        }
        if let KeyDist::Zipf { exponent } = self.dist {
            check_exponent(exponent).map_err(|reason| invalid("dist", reason))?;
        }
        for &pid in &self.cpu_pids {
            if let Err(e) = scalestack_telemetry::procfs::stat(pid) {
                return Err(invalid(
                    "cpu_pids",
                    format!("process {pid} cannot be measured: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// A value given as text that does not parse; says what it was and what is
/// expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{input}`: {reason}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    reason: String,
}

impl ParseError {
    fn new(what: &'static str, input: &str, reason: impl Into<String>) -> Self {
        Self {
            what,
            input: input.to_owned(),
            reason: reason.into(),
        }
    }

    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

// === impl KeyRange ===

/// An inclusive, non-empty range of keys, written `FIRST..LAST` or
/// `FIRST..=LAST`.
///
/// Both forms include `LAST`, unlike Rust's `..`: on a command line
/// `--keys 1..100000` means "the users 1 to 100000".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyRange {
    first: u64,
    last: u64,
}

impl KeyRange {
    /// The range `first..=last`; fails if it would be empty.
    pub fn new(first: u64, last: u64) -> Result<Self, ParseError> {
        if first > last {
            return Err(ParseError::new(
                "key range",
                &format!("{first}..={last}"),
                format!("the first key {first} is greater than the last key {last}"),
            ));
        }
        Ok(Self { first, last })
    }

    /// The smallest key.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The largest key (included).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// How many keys the range holds, saturating at `u64::MAX` for the full
    /// `0..=u64::MAX`.
    pub fn count(&self) -> u64 {
        (self.last - self.first).saturating_add(1)
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: u64) -> bool {
        (self.first..=self.last).contains(&key)
    }
}

impl FromStr for KeyRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected `FIRST..LAST` or `FIRST..=LAST` with unsigned integers \
                                (both ends included), e.g. `1..100000`";
        let err = |reason: String| ParseError::new("key range", s, reason);
        let text = s.trim();
        let Some((first, last)) = text.split_once("..") else {
            return Err(err(EXPECTED.into()));
        };
        let last = last.strip_prefix('=').unwrap_or(last);
        let number = |part: &str| -> Result<u64, ParseError> {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(EXPECTED.into()));
            }
            part.parse::<u64>()
                .map_err(|_| err(format!("`{part}` is not an unsigned integer; {EXPECTED}")))
        };
        let (first, last) = (number(first)?, number(last)?);
        if first > last {
            return Err(err(format!(
                "the range is empty: the first key {first} is greater than the last key {last}"
            )));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

impl TryFrom<String> for KeyRange {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyRange> for String {
    fn from(range: KeyRange) -> Self {
        range.to_string()
    }
}

// === impl KeyDist ===

/// How keys are drawn from the [`KeyRange`]: `uniform` or `zipf:EXPONENT`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeyDist {
    /// Every key equally likely.
    #[default]
    Uniform,
    /// Zipf's law: the key of rank `r` (rank 1 = the first key of the range)
    /// is drawn with probability proportional to `r^-exponent`. Real traffic
    /// is often near `zipf:1.1`: a few hot keys and a long tail.
    Zipf {
        /// Skew; must be finite and greater than 0. Larger is more skewed.
        exponent: f64,
    },
}

impl FromStr for KeyDist {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected `uniform` or `zipf:EXPONENT`, e.g. `zipf:1.1`";
        let err = |reason: String| ParseError::new("key distribution", s, reason);
        let text = s.trim();
        if text.eq_ignore_ascii_case("uniform") {
            return Ok(Self::Uniform);
        }
        let (name, exponent) = text.split_once(':').unwrap_or((text, ""));
        if !name.trim().eq_ignore_ascii_case("zipf") {
            return Err(err(EXPECTED.into()));
        }
        let exponent = exponent.trim();
        if exponent.is_empty() {
            return Err(err(format!("the zipf exponent is missing; {EXPECTED}")));
        }
        let exponent: f64 = exponent
            .parse()
            .map_err(|_| err(format!("`{exponent}` is not a number; {EXPECTED}")))?;
        check_exponent(exponent).map_err(err)?;
        Ok(Self::Zipf { exponent })
    }
}

/// The one rule for zipf exponents, shared by parsing and validation.
fn check_exponent(exponent: f64) -> Result<(), String> {
    if exponent.is_finite() && exponent > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "the zipf exponent must be a finite number greater than 0, got {exponent}"
        ))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

impl TryFrom<String> for KeyDist {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyDist> for String {
    fn from(dist: KeyDist) -> Self {
        dist.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_parse_in_both_notations_and_include_the_end() {
        let r: KeyRange = "1..100000".parse().unwrap();
        assert_eq!((r.first(), r.last(), r.count()), (1, 100_000, 100_000));
        assert_eq!("1..=100000".parse::<KeyRange>().unwrap(), r);
        assert_eq!(" 7..7 ".parse::<KeyRange>().unwrap().count(), 1);
        let full: KeyRange = "0..18446744073709551615".parse().unwrap();
        assert_eq!(full.count(), u64::MAX);
        assert!(r.contains(1) && r.contains(100_000) && !r.contains(0) && !r.contains(100_001));
    }

    #[test]
    fn bad_key_ranges_name_the_input_and_the_expected_form() {
        for bad in [
            "",
            "100",
            "1-100",
            "1..",
            "..5",
            "a..5",
            "-1..5",
            "1...5",
            "1..=x",
            "1..99999999999999999999",
        ] {
            let err = bad.parse::<KeyRange>().unwrap_err();
            assert_eq!(err.input(), bad);
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("FIRST..LAST"), "{msg}");
        }
        let msg = "5..1".parse::<KeyRange>().unwrap_err().to_string();
        assert!(msg.contains("`5..1`") && msg.contains("empty"), "{msg}");
        assert!(KeyRange::new(5, 1).is_err());
    }

    #[test]
    fn key_distributions_parse() {
        assert_eq!("uniform".parse::<KeyDist>().unwrap(), KeyDist::Uniform);
        assert_eq!("Uniform".parse::<KeyDist>().unwrap(), KeyDist::Uniform);
        assert_eq!(
            "zipf:1.1".parse::<KeyDist>().unwrap(),
            KeyDist::Zipf { exponent: 1.1 }
        );
        assert_eq!(
            "ZIPF: 0.5".parse::<KeyDist>().unwrap(),
            KeyDist::Zipf { exponent: 0.5 }
        );
    }

    #[test]
    fn bad_key_distributions_name_the_input_and_the_expected_form() {
        for bad in ["", "normal", "zipf", "zipf:", "zipf:abc", "zipfian:1.1"] {
            let msg = bad.parse::<KeyDist>().unwrap_err().to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("zipf:1.1"), "{msg}");
        }
        for bad in ["zipf:0", "zipf:-1", "zipf:NaN", "zipf:inf"] {
            let msg = bad.parse::<KeyDist>().unwrap_err().to_string();
            assert!(msg.contains("greater than 0"), "{msg}");
        }
    }

    #[test]
    fn display_round_trips_through_from_str_and_serde() {
        for text in ["1..=100000", "0..=0"] {
            let r: KeyRange = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<KeyRange>(&json).unwrap(), r);
        }
        for dist in [
            KeyDist::Uniform,
            KeyDist::Zipf { exponent: 1.1 },
            KeyDist::Zipf { exponent: 2.0 },
        ] {
            assert_eq!(dist.to_string().parse::<KeyDist>().unwrap(), dist);
            let json = serde_json::to_string(&dist).unwrap();
            assert_eq!(serde_json::from_str::<KeyDist>(&json).unwrap(), dist);
        }
        assert!(serde_json::from_str::<KeyRange>("\"9..1\"").is_err());
    }

    #[test]
    fn validation_rejects_specs_the_types_allow() {
        let ok = BenchSpec::new("http://127.0.0.1:1/");
        ok.validate().unwrap();
        let field = |spec: BenchSpec| match spec.validate() {
            Err(BenchError::InvalidSpec { field, .. }) => field,
            other => panic!("expected an invalid spec, got {other:?}"),
        };
        assert_eq!(
            field(BenchSpec {
                connections: 0,
                ..ok.clone()
            }),
            "connections"
        );
        assert_eq!(
            field(BenchSpec {
                duration: Duration::ZERO,
                ..ok.clone()
            }),
            "duration"
        );
        assert_eq!(
            field(BenchSpec {
                duration: Duration::MAX,
                ..ok.clone()
            }),
            "duration"
        );
        assert_eq!(
            field(BenchSpec {
                timeout: Duration::ZERO,
                ..ok.clone()
            }),
            "timeout"
        );
        assert_eq!(
            field(BenchSpec {
                keys: KeyRange { first: 2, last: 1 },
                ..ok.clone()
            }),
            "keys"
        );
        for exponent in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                field(BenchSpec {
                    dist: KeyDist::Zipf { exponent },
                    ..ok.clone()
                }),
                "dist"
            );
        }
        assert_eq!(
            field(BenchSpec {
                cpu_pids: vec![u32::MAX],
                ..ok
            }),
            "cpu_pids"
        );
    }
}
