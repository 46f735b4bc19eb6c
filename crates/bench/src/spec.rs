//! What a run does: the [`BenchSpec`]; the key range and distribution that
//! the `{id}` of its URL is drawn from; the load model ([`Load`]: closed, a
//! constant arrival rate, or stages of ramps and holds); the protocol.
//!
//! This module only describes and validates; it opens no sockets.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::scenario::Scenario;

/// Everything one run needs. The CLI maps its flags onto this one to one.
///
/// Without a [`scenario`](Self::scenario) every request is built from `url`,
/// `method`, `body`, `headers`, `keys` and `dist`. With one, the requests
/// come from the scenario's weighted mix and `url` gives only the origin
/// (and an optional path prefix).
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// URL template, e.g. `http://127.0.0.1:8080/users/{id}`. Every `{id}` in
    /// the path or query is replaced per request by a key from [`keys`](Self::keys)
    /// (the other placeholders of [`Scenario`] work too). Only `http://` is
    /// supported.
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
    /// A weighted mix of requests; replaces the single request above.
    pub scenario: Option<Scenario>,
    /// Closed model, constant arrival rate, or stages.
    pub load: Load,
    /// HTTP/1.1 or HTTP/2 (h2c with prior knowledge).
    pub protocol: Protocol,
    /// Concurrent keep-alive connections. Closed model over HTTP/1.1: each
    /// has one request in flight. Open model: the most requests in flight
    /// at once (a request due while every connection is busy waits, and its
    /// latency counts from when it was due). HTTP/2 multiplies this by
    /// the HTTP/2 `streams`.
    pub connections: usize,
    /// How long new requests are started for (with [`Load::Stages`], the
    /// stages' total replaces it). Requests in flight at the end are allowed
    /// to finish (within `timeout`) and are counted.
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
    /// Seed of the key and template random streams; `None` draws one, so
    /// that two runs do not hit the same keys in the same order.
    pub seed: Option<u64>,
}

impl BenchSpec {
    /// A spec for `url` with the defaults: `GET`, no body or extra headers,
    /// the single key 1 drawn uniformly, the closed model over HTTP/1.1 with
    /// 16 connections for 10 s on all cores, a 10 s timeout, no CPU
    /// accounting of other processes and no progress line.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: Method::GET,
            body: None,
            headers: Vec::new(),
            keys: KeyRange { first: 1, last: 1 },
            dist: KeyDist::Uniform,
            scenario: None,
            load: Load::Closed,
            protocol: Protocol::Http1,
            connections: 16,
            duration: Duration::from_secs(10),
            threads: 0,
            timeout: Duration::from_secs(10),
            cpu_pids: Vec::new(),
            progress: false,
            seed: None,
        }
    }

    /// How long the run starts new requests: the stages' total with
    /// [`Load::Stages`], else [`duration`](Self::duration).
    pub fn total_duration(&self) -> Duration {
        match &self.load {
            Load::Stages(stages) => stages.iter().map(|s| s.duration).sum(),
            _ => self.duration,
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
        self.load.validate()?;
        if self.total_duration().is_zero() {
            return Err(invalid("duration", "must be greater than 0".into()));
        }
        if let Protocol::Http2 { streams: 0 } = self.protocol {
            return Err(invalid(
                "protocol",
                "HTTP/2 needs at least 1 stream per connection, got 0".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than 0".into()));
        }
        // Deadlines are `Instant::now() + d`; refuse what would overflow
        // rather than panic in the middle of a run.
        let now = std::time::Instant::now();
        for (field, d) in [
            ("duration", self.total_duration()),
            ("timeout", self.timeout),
        ] {
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
        self.dist
            .check()
            .map_err(|reason| invalid("dist", reason))?;
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

/// How keys are drawn from the [`KeyRange`]: `uniform`, `zipf:EXPONENT` or
/// `hotspot:TRAFFIC/KEYS`.
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
    /// The celebrity case: `traffic_pct` percent of the requests go to the
    /// first `keys_pct` percent of the range (uniformly among them), the rest
    /// uniformly to the other keys. `hotspot:90/1` sends 90% of the traffic
    /// to 1% of the keys.
    Hotspot {
        /// Share of the requests that hit the hot keys, in percent (0 to 100).
        traffic_pct: f64,
        /// Share of the keys that are hot, in percent (greater than 0, at
        /// most 100); at least one key is hot.
        keys_pct: f64,
    },
}

impl KeyDist {
    /// The rules the types do not enforce, shared by parsing and validation.
    pub(crate) fn check(&self) -> Result<(), String> {
        match *self {
            Self::Uniform => Ok(()),
            Self::Zipf { exponent } => check_exponent(exponent),
            Self::Hotspot {
                traffic_pct,
                keys_pct,
            } => {
                if !(0.0..=100.0).contains(&traffic_pct) {
                    return Err(format!(
                        "the hot traffic share must be a percentage from 0 to 100, got {traffic_pct}"
                    ));
                }
                if !(keys_pct > 0.0 && keys_pct <= 100.0) {
                    return Err(format!(
                        "the hot key share must be a percentage above 0 and at most 100, got {keys_pct}"
                    ));
                }
                Ok(())
            }
        }
    }
}

impl FromStr for KeyDist {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected `uniform`, `zipf:EXPONENT` (e.g. `zipf:1.1`) or \
                                `hotspot:TRAFFIC%/KEYS%` (e.g. `hotspot:90/1`)";
        let err = |reason: String| ParseError::new("key distribution", s, reason);
        let text = s.trim();
        if text.eq_ignore_ascii_case("uniform") {
            return Ok(Self::Uniform);
        }
        let (name, arg) = text.split_once(':').unwrap_or((text, ""));
        let (name, arg) = (name.trim(), arg.trim());
        let number = |part: &str, what: &str| -> Result<f64, ParseError> {
            let part = part.trim().trim_end_matches('%').trim();
            if part.is_empty() {
                return Err(err(format!("the {what} is missing; {EXPECTED}")));
            }
            part.parse::<f64>()
                .map_err(|_| err(format!("`{part}` is not a number; {EXPECTED}")))
        };
        let dist = if name.eq_ignore_ascii_case("zipf") {
            Self::Zipf {
                exponent: number(arg, "zipf exponent")?,
            }
        } else if name.eq_ignore_ascii_case("hotspot") {
            let Some((traffic, keys)) = arg.split_once('/') else {
                return Err(err(format!(
                    "a hotspot needs two percentages, TRAFFIC/KEYS; {EXPECTED}"
                )));
            };
            Self::Hotspot {
                traffic_pct: number(traffic, "hot traffic share")?,
                keys_pct: number(keys, "hot key share")?,
            }
        } else {
            return Err(err(EXPECTED.into()));
        };
        dist.check().map_err(err)?;
        Ok(dist)
    }
}

/// The one rule for zipf exponents.
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
            Self::Hotspot {
                traffic_pct,
                keys_pct,
            } => write!(f, "hotspot:{traffic_pct}/{keys_pct}"),
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

// === impl Load ===

/// The highest arrival rate accepted, in requests per second. Far above what
/// one machine can send; a rate beyond it is a typo (`--rate 1e12`), and the
/// schedule's nanosecond arithmetic stays exact below it.
pub const MAX_RATE: f64 = 10_000_000.0;

/// The load model of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Load {
    /// Closed model: every connection (or HTTP/2 stream) sends its next
    /// request as soon as the previous response is complete. Measures
    /// capacity; latency is from each request's actual send.
    #[default]
    Closed,
    /// Open model at a constant arrival rate (requests per second) for
    /// [`BenchSpec::duration`]: requests are due on a fixed schedule whether
    /// or not earlier ones have been answered, and latency is measured from
    /// when each was due, so a stalled target cannot hide its stall by
    /// slowing the generator down (no coordinated omission).
    Rate(f64),
    /// Open model whose rate follows stages, one after the other.
    Stages(Vec<Stage>),
}

impl Load {
    /// The stages this load runs, `duration` long for [`Load::Rate`]; empty
    /// for the closed model.
    pub fn stages(&self, duration: Duration) -> Vec<Stage> {
        match self {
            Self::Closed => Vec::new(),
            Self::Rate(rate) => vec![Stage::hold(*rate, duration)],
            Self::Stages(stages) => stages.clone(),
        }
    }

    /// Whether this is an open model.
    pub fn is_open(&self) -> bool {
        !matches!(self, Self::Closed)
    }

    fn validate(&self) -> Result<(), BenchError> {
        let invalid = |reason: String| BenchError::InvalidSpec {
            field: "load",
            reason,
        };
        let check_rate = |rate: f64, what: &str| {
            if !rate.is_finite() || rate < 0.0 {
                return Err(invalid(format!(
                    "{what} must be a finite number of requests per second, 0 or more, got {rate}"
                )));
            }
            if rate > MAX_RATE {
                return Err(invalid(format!(
                    "{what} {rate} req/s is impossible for one load generator (at most {MAX_RATE})"
                )));
            }
            Ok(())
        };
        match self {
            Self::Closed => Ok(()),
            Self::Rate(rate) => {
                check_rate(*rate, "the rate")?;
                if *rate <= 0.0 {
                    return Err(invalid(format!(
                        "the rate must be greater than 0 requests per second, got {rate}"
                    )));
                }
                Ok(())
            }
            Self::Stages(stages) => {
                if stages.is_empty() {
                    return Err(invalid("at least one stage is needed".into()));
                }
                for (i, stage) in stages.iter().enumerate() {
                    let what = format!("stage {} (`{stage}`)", i + 1);
                    check_rate(stage.start_rate, &format!("the start rate of {what}"))?;
                    check_rate(stage.end_rate, &format!("the end rate of {what}"))?;
                    if stage.duration.is_zero() {
                        return Err(invalid(format!("{what} must last longer than 0 s")));
                    }
                }
                if stages
                    .iter()
                    .all(|s| s.start_rate == 0.0 && s.end_rate == 0.0)
                {
                    return Err(invalid(
                        "every stage has a rate of 0: nothing would be sent".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// One stage of an open-model run: the rate goes linearly from `start_rate`
/// to `end_rate` over `duration` (a hold when they are equal).
///
/// Written `START..END/DURATION` for a ramp and `RATE/DURATION` for a hold,
/// e.g. `0..5000/30s`, `5000/60s`; a hold at a new rate is a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Stage {
    /// Rate at the start of the stage, requests per second.
    pub start_rate: f64,
    /// Rate at the end of the stage, requests per second.
    pub end_rate: f64,
    /// How long the stage lasts.
    pub duration: Duration,
}

impl Stage {
    /// A constant rate for `duration`.
    pub fn hold(rate: f64, duration: Duration) -> Self {
        Self {
            start_rate: rate,
            end_rate: rate,
            duration,
        }
    }

    /// A linear ramp from `from` to `to` over `duration`.
    pub fn ramp(from: f64, to: f64, duration: Duration) -> Self {
        Self {
            start_rate: from,
            end_rate: to,
            duration,
        }
    }

    /// Parses a comma-separated list of stages, e.g.
    /// `0..5000/30s, 5000/60s, 10000/60s`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, ParseError> {
        let stages: Vec<Self> = text
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if stages.is_empty() {
            return Err(ParseError::new(
                "stages",
                text,
                "no stage given; expected e.g. `0..5000/30s, 5000/60s`",
            ));
        }
        Ok(stages)
    }
}

impl FromStr for Stage {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected `START..END/DURATION` (a ramp) or `RATE/DURATION` (a hold), e.g. `0..5000/30s`";
        let err = |reason: String| ParseError::new("stage", s, reason);
        let text = s.trim();
        let Some((rates, duration)) = text.split_once('/') else {
            return Err(err(EXPECTED.into()));
        };
        let duration = humantime::parse_duration(duration.trim()).map_err(|e| {
            err(format!(
                "bad duration `{}`: {e}; {EXPECTED}",
                duration.trim()
            ))
        })?;
        let rate = |part: &str| -> Result<f64, ParseError> {
            let part = part.trim();
            part.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or_else(|| {
                    err(format!(
                        "`{part}` is not a rate (requests per second, 0 or more); {EXPECTED}"
                    ))
                })
        };
        let (start_rate, end_rate) = match rates.split_once("..") {
            Some((a, b)) => (rate(a)?, rate(b)?),
            None => {
                let r = rate(rates)?;
                (r, r)
            }
        };
        if duration.is_zero() {
            return Err(err(format!(
                "a stage must last longer than 0 s; {EXPECTED}"
            )));
        }
        Ok(Self {
            start_rate,
            end_rate,
            duration,
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = humantime::format_duration(self.duration);
        if self.start_rate == self.end_rate {
            write!(f, "{}/{d}", self.start_rate)
        } else {
            write!(f, "{}..{}/{d}", self.start_rate, self.end_rate)
        }
    }
}

impl TryFrom<String> for Stage {
    type Error = ParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Stage> for String {
    fn from(stage: Stage) -> Self {
        stage.to_string()
    }
}

// === impl Protocol ===

/// The HTTP version spoken to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request in flight per connection.
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (h2c, as `h2load`
    /// speaks it), `streams` requests in flight per connection.
    Http2 {
        /// Concurrent streams per connection.
        streams: usize,
    },
}

impl Protocol {
    /// Requests in flight per connection.
    pub fn streams(&self) -> usize {
        match self {
            Self::Http1 => 1,
            Self::Http2 { streams } => *streams,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http1 => f.write_str("HTTP/1.1"),
            Self::Http2 { streams } => write!(f, "HTTP/2 (h2c, {streams} streams per connection)"),
        }
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
            assert!(msg.contains("zipf:1.1") || msg.contains("number"), "{msg}");
        }
        for bad in ["zipf:0", "zipf:-1", "zipf:NaN", "zipf:inf"] {
            let msg = bad.parse::<KeyDist>().unwrap_err().to_string();
            assert!(msg.contains("greater than 0"), "{msg}");
        }
        for bad in [
            "hotspot",
            "hotspot:90",
            "hotspot:x/1",
            "hotspot:101/1",
            "hotspot:90/0",
        ] {
            let msg = bad.parse::<KeyDist>().unwrap_err().to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
        }
    }

    #[test]
    fn hotspots_parse_with_or_without_percent_signs() {
        let want = KeyDist::Hotspot {
            traffic_pct: 90.0,
            keys_pct: 1.0,
        };
        assert_eq!("hotspot:90/1".parse::<KeyDist>().unwrap(), want);
        assert_eq!("HOTSPOT: 90% / 1%".parse::<KeyDist>().unwrap(), want);
        assert_eq!(want.to_string(), "hotspot:90/1");
    }

    #[test]
    fn stages_parse_ramps_holds_and_steps() {
        let stages = Stage::parse_list("0..5000/30s, 5000/60s, 10000/1m").unwrap();
        assert_eq!(
            stages,
            vec![
                Stage::ramp(0.0, 5000.0, Duration::from_secs(30)),
                Stage::hold(5000.0, Duration::from_secs(60)),
                Stage::hold(10000.0, Duration::from_secs(60)),
            ]
        );
        assert_eq!(stages[0].to_string(), "0..5000/30s");
        assert_eq!(stages[2].to_string(), "10000/1m");
        for bad in ["", "5000", "a..5/1s", "5/0s", "5/x", "-1/1s", "1..inf/1s"] {
            let err = Stage::parse_list(bad).unwrap_err();
            assert_eq!(err.input().trim(), bad.trim(), "{err}");
        }
    }

    #[test]
    fn impossible_loads_are_refused() {
        let spec = |load: Load| BenchSpec {
            load,
            ..BenchSpec::new("http://127.0.0.1:1/")
        };
        let reason = |load: Load| match spec(load).validate() {
            Err(BenchError::InvalidSpec {
                field: "load",
                reason,
            }) => reason,
            other => panic!("expected an invalid load, got {other:?}"),
        };
        assert!(reason(Load::Rate(0.0)).contains("greater than 0"));
        assert!(reason(Load::Rate(-3.0)).contains("-3"));
        assert!(reason(Load::Rate(f64::NAN)).contains("finite"));
        assert!(reason(Load::Rate(1e12)).contains("impossible"));
        assert!(reason(Load::Stages(vec![])).contains("at least one stage"));
        assert!(
            reason(Load::Stages(vec![Stage::hold(0.0, Duration::from_secs(1))]))
                .contains("nothing would be sent")
        );
        spec(Load::Rate(1000.0)).validate().unwrap();
        let staged = spec(Load::Stages(vec![
            Stage::ramp(0.0, 10.0, Duration::from_secs(2)),
            Stage::hold(10.0, Duration::from_secs(3)),
        ]));
        staged.validate().unwrap();
        assert_eq!(staged.total_duration(), Duration::from_secs(5));
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
            KeyDist::Hotspot {
                traffic_pct: 99.5,
                keys_pct: 0.1,
            },
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
