//! Counting while the load runs.
//!
//! Each connection owns a [`ConnStats`] and records into it without any
//! synchronisation; they are merged into [`Totals`] once, at the end. Memory is
//! fixed per connection (one histogram of fixed bounds, a handful of
//! counters), however long the run.
//!
//! The live progress line needs figures *during* the run; for that, when it is
//! on, connections also record into one of a few [`Live`] shards behind a
//! mutex. The shard is picked by connection so that the locks are almost never
//! contended, and the progress ticker drains the shards once per second.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds from 1 µs to 60 s with 3
/// significant digits; slower responses are recorded as 60 s. Fixed bounds
/// make histograms of different connections (and runs) mergeable.
const LATENCY_LOW_US: u64 = 1;
const LATENCY_HIGH_US: u64 = 60_000_000;
const LATENCY_SIGFIG: u8 = 3;

/// An empty latency histogram with the crate's fixed bounds.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_LOW_US, LATENCY_HIGH_US, LATENCY_SIGFIG)
        .expect("constant bounds are valid")
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us);
}

/// Whether a response counts as an error on the progress line: anything but
/// 2xx and 3xx.
pub(crate) fn is_error_status(status: u16) -> bool {
    !(200..400).contains(&status)
}

/// Transport errors by where they happened. Responses with error statuses are
/// not here: they are in the status counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Opening a connection failed or timed out.
    pub connect: u64,
    /// A request got no complete response within the timeout.
    pub timeout: u64,
    /// I/O or protocol error on an open connection: reset, closed before the
    /// response was complete, malformed response.
    pub io: u64,
}

impl ErrorCounts {
    /// All transport errors.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io
    }

    fn add(&mut self, other: &Self) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
    }
}

/// The kinds of [`ErrorCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    Io,
}

/// What one connection saw.
#[derive(Debug)]
pub(crate) struct ConnStats {
    latency: Histogram<u64>,
    /// Status code → count. A target answers with a handful of distinct
    /// codes, so a linear scan of a short vector beats hashing.
    statuses: Vec<(u16, u64)>,
    errors: ErrorCounts,
    body_bytes: u64,
    pub(crate) reconnects: u64,
    live: Option<LiveSlot>,
}

impl ConnStats {
    pub(crate) fn new(live: Option<LiveSlot>) -> Self {
        Self {
            latency: latency_histogram(),
            statuses: Vec::with_capacity(4),
            errors: ErrorCounts::default(),
            body_bytes: 0,
            reconnects: 0,
            live,
        }
    }

    /// A complete response.
    pub(crate) fn response(&mut self, status: u16, latency: Duration, body_bytes: u64) {
        record_latency(&mut self.latency, latency);
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((status, 1)),
        }
        self.body_bytes += body_bytes;
        if let Some(live) = &self.live {
            live.response(status, latency);
        }
    }

    /// A request or connection attempt that failed.
    pub(crate) fn error(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.errors.connect += 1,
            ErrorKind::Timeout => self.errors.timeout += 1,
            ErrorKind::Io => self.errors.io += 1,
        }
        if let Some(live) = &self.live {
            live.error();
        }
    }
}

/// All connections' [`ConnStats`] merged.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) latency: Histogram<u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) errors: ErrorCounts,
    pub(crate) body_bytes: u64,
    pub(crate) reconnects: u64,
}

impl Totals {
    pub(crate) fn new() -> Self {
        Self {
            latency: latency_histogram(),
            statuses: BTreeMap::new(),
            errors: ErrorCounts::default(),
            body_bytes: 0,
            reconnects: 0,
        }
    }

    pub(crate) fn merge(&mut self, conn: &ConnStats) {
        self.latency
            .add(&conn.latency)
            .expect("histograms share the same fixed bounds");
        for &(status, n) in &conn.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors.add(&conn.errors);
        self.body_bytes += conn.body_bytes;
        self.reconnects += conn.reconnects;
    }

    /// Complete responses, whatever their status.
    pub(crate) fn requests(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// Latency of complete responses, in microseconds. Requests that failed are
/// not included (they are counted in [`ErrorCounts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Responses measured.
    pub count: u64,
    /// Fastest response.
    pub min_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Standard deviation.
    pub stdev_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest response.
    pub max_us: u64,
}

impl LatencySummary {
    /// Reads the summary off a histogram. Percentiles are the highest value
    /// equivalent to the recorded ones at 3 significant digits, so they are
    /// never understated (and overstated by at most 0.1%).
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            stdev_us: h.stdev(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

// === Live figures for the progress line ===

/// Figures since the last drain.
#[derive(Debug)]
pub(crate) struct Interval {
    pub(crate) latency: Histogram<u64>,
    pub(crate) responses: u64,
    /// Error statuses plus transport errors.
    pub(crate) errors: u64,
}

impl Interval {
    pub(crate) fn new() -> Self {
        Self {
            latency: latency_histogram(),
            responses: 0,
            errors: 0,
        }
    }

    fn drain_into(&mut self, into: &mut Self) {
        into.latency
            .add(&self.latency)
            .expect("histograms share the same fixed bounds");
        into.responses += self.responses;
        into.errors += self.errors;
        self.latency.reset();
        self.responses = 0;
        self.errors = 0;
    }
}

/// Sharded interval figures shared by the connections and the progress ticker.
#[derive(Debug)]
pub(crate) struct Live {
    shards: Box<[Mutex<Interval>]>,
}

impl Live {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Interval::new()))
                .collect(),
        }
    }

    /// The shard connection `conn` records into.
    pub(crate) fn slot(self: &std::sync::Arc<Self>, conn: usize) -> LiveSlot {
        LiveSlot {
            live: self.clone(),
            shard: conn % self.shards.len(),
        }
    }

    /// Moves everything recorded since the last drain into `into`.
    pub(crate) fn drain_into(&self, into: &mut Interval) {
        for shard in &*self.shards {
            // A poisoned shard only means a connection task panicked; its
            // figures are still counts and still worth showing.
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain_into(into);
        }
    }
}

/// One connection's handle on its [`Live`] shard.
#[derive(Debug)]
pub(crate) struct LiveSlot {
    live: std::sync::Arc<Live>,
    shard: usize,
}

impl LiveSlot {
    fn with<R>(&self, f: impl FnOnce(&mut Interval) -> R) -> R {
        f(&mut self.live.shards[self.shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    fn response(&self, status: u16, latency: Duration) {
        self.with(|i| {
            record_latency(&mut i.latency, latency);
            i.responses += 1;
            i.errors += u64::from(is_error_status(status));
        });
    }

    fn error(&self) {
        self.with(|i| i.errors += 1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn percentiles_are_read_off_the_histogram() {
        let mut conn = ConnStats::new(None);
        for us in 1..=10_000u64 {
            conn.response(200, Duration::from_micros(us), 10);
        }
        let mut totals = Totals::new();
        totals.merge(&conn);
        let s = LatencySummary::from_histogram(&totals.latency);
        let close = |got: u64, want: u64| got >= want && got as f64 <= want as f64 * 1.001;
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min_us, 1);
        assert!(close(s.p50_us, 5_000), "{s:?}");
        assert!(close(s.p90_us, 9_000), "{s:?}");
        assert!(close(s.p99_us, 9_900), "{s:?}");
        assert!(close(s.p999_us, 9_990), "{s:?}");
        assert!(close(s.max_us, 10_000), "{s:?}");
        assert!((s.mean_us - 5_000.5).abs() < 5.0, "{s:?}");
        assert_eq!(totals.body_bytes, 100_000);
    }

    #[test]
    fn extreme_latencies_saturate_instead_of_failing() {
        let mut conn = ConnStats::new(None);
        conn.response(200, Duration::ZERO, 0);
        conn.response(200, Duration::from_secs(3600), 0);
        let s = LatencySummary::from_histogram(&conn.latency);
        assert_eq!(s.count, 2);
        assert!(
            s.max_us >= LATENCY_HIGH_US && s.max_us <= LATENCY_HIGH_US + LATENCY_HIGH_US / 1000
        );
    }

    #[test]
    fn empty_histogram_summarises_to_zeros() {
        assert_eq!(
            LatencySummary::from_histogram(&latency_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn merging_sums_statuses_errors_and_reconnects() {
        let mut a = ConnStats::new(None);
        a.response(200, Duration::from_millis(1), 5);
        a.response(404, Duration::from_millis(1), 0);
        a.error(ErrorKind::Timeout);
        a.reconnects = 2;
        let mut b = ConnStats::new(None);
        b.response(200, Duration::from_millis(2), 5);
        b.error(ErrorKind::Connect);
        b.error(ErrorKind::Io);
        let mut totals = Totals::new();
        totals.merge(&a);
        totals.merge(&b);
        assert_eq!(totals.statuses, BTreeMap::from([(200, 2), (404, 1)]));
        assert_eq!(totals.requests(), 3);
        assert_eq!(
            totals.errors,
            ErrorCounts {
                connect: 1,
                timeout: 1,
                io: 1
            }
        );
        assert_eq!(totals.errors.total(), 3);
        assert_eq!(totals.reconnects, 2);
        assert_eq!(totals.latency.len(), 3);
    }

    #[test]
    fn live_shards_drain_once() {
        let live = Arc::new(Live::new(2));
        let mut a = ConnStats::new(Some(live.slot(0)));
        let mut b = ConnStats::new(Some(live.slot(1)));
        a.response(200, Duration::from_millis(1), 0);
        b.response(500, Duration::from_millis(3), 0);
        b.error(ErrorKind::Io);
        let mut interval = Interval::new();
        live.drain_into(&mut interval);
        assert_eq!(
            (interval.responses, interval.errors, interval.latency.len()),
            (2, 2, 2)
        );
        let mut again = Interval::new();
        live.drain_into(&mut again);
        assert_eq!(
            (again.responses, again.errors, again.latency.len()),
            (0, 0, 0)
        );
    }
}
