//! Counting while the load runs.
//!
//! Each load thread owns one [`ThreadStats`] and records into it without any
//! synchronisation (its lanes run on that thread only). Memory is fixed: per
//! request type, one or two HDR histograms of fixed bounds and a few
//! counters, however long the run. Once per second each thread hands its
//! [`Interval`] (figures since the last second) to the monitor, which merges
//! the threads' intervals into one [`TimelineRow`] per second — a few
//! numbers, not a histogram — for the progress line and the report's
//! charts. At the end the threads' statistics are merged into [`Totals`].

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// Latencies are recorded in microseconds from 1 µs to 60 s with 3
/// significant digits; slower responses are recorded as 60 s. Fixed bounds
/// make histograms of different threads (and runs) mergeable.
const LATENCY_LOW_US: u64 = 1;
const LATENCY_HIGH_US: u64 = 60_000_000;
const LATENCY_SIGFIG: u8 = 3;

/// An empty latency histogram with the crate's fixed bounds.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_LOW_US, LATENCY_HIGH_US, LATENCY_SIGFIG)
        .expect("constant bounds are valid")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us);
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("histograms share the same fixed bounds");
}

/// Transport errors by where they happened. Responses with unexpected
/// statuses are not here: they are in the status counts.
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

    pub(crate) fn add(&mut self, other: &Self) {
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

/// What one thread saw of one request type.
#[derive(Debug, Clone)]
pub(crate) struct KindStats {
    /// Open model: from the intended send time; closed: from the send.
    pub(crate) latency: Histogram<u64>,
    /// Open model only: from the actual send.
    pub(crate) uncorrected: Option<Histogram<u64>>,
    /// Status code → count. A target answers with a handful of distinct
    /// codes, so a linear scan of a short vector beats hashing.
    pub(crate) statuses: Vec<(u16, u64)>,
    /// Responses whose status the request type does not expect.
    pub(crate) unexpected: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) body_bytes: u64,
}

impl KindStats {
    fn new(open: bool) -> Self {
        Self {
            latency: latency_histogram(),
            uncorrected: open.then(latency_histogram),
            statuses: Vec::with_capacity(4),
            unexpected: 0,
            errors: ErrorCounts::default(),
            body_bytes: 0,
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        merge(&mut self.latency, &other.latency);
        if let (Some(a), Some(b)) = (&mut self.uncorrected, &other.uncorrected) {
            merge(a, b);
        }
        for &(status, n) in &other.statuses {
            self.count_status(status, n);
        }
        self.unexpected += other.unexpected;
        self.errors.add(&other.errors);
        self.body_bytes += other.body_bytes;
    }

    fn count_status(&mut self, status: u16, n: u64) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += n,
            None => self.statuses.push((status, n)),
        }
    }

    /// Complete responses, whatever their status.
    pub(crate) fn responses(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }

    pub(crate) fn status_map(&self) -> BTreeMap<u16, u64> {
        self.statuses.iter().copied().collect()
    }
}

/// Figures since the last tick, for one row of the timeline.
#[derive(Debug, Clone)]
pub(crate) struct Interval {
    pub(crate) latency: Histogram<u64>,
    pub(crate) responses: u64,
    /// Unexpected statuses plus transport errors.
    pub(crate) errors: u64,
    pub(crate) sent: u64,
}

impl Interval {
    pub(crate) fn new() -> Self {
        Self {
            latency: latency_histogram(),
            responses: 0,
            errors: 0,
            sent: 0,
        }
    }

    fn merge(&mut self, other: &Self) {
        merge(&mut self.latency, &other.latency);
        self.responses += other.responses;
        self.errors += other.errors;
        self.sent += other.sent;
    }
}

/// Everything one load thread records.
#[derive(Debug, Clone)]
pub(crate) struct ThreadStats {
    pub(crate) kinds: Vec<KindStats>,
    /// Open model: how long after its due time each request was sent.
    pub(crate) send_lag: Histogram<u64>,
    pub(crate) late: u64,
    pub(crate) sent: u64,
    /// Open model: due requests never sent (the run ended first).
    pub(crate) dropped: u64,
    pub(crate) reconnects: u64,
    pub(crate) interval: Interval,
}

impl ThreadStats {
    pub(crate) fn new(kinds: usize, open: bool) -> Self {
        Self {
            kinds: (0..kinds).map(|_| KindStats::new(open)).collect(),
            send_lag: latency_histogram(),
            late: 0,
            sent: 0,
            dropped: 0,
            reconnects: 0,
            interval: Interval::new(),
        }
    }

    /// A request went out; `lag` is how late it was (open model).
    pub(crate) fn sent(&mut self, lag: Option<Duration>, late_after: Duration) {
        self.sent += 1;
        self.interval.sent += 1;
        if let Some(lag) = lag {
            record(&mut self.send_lag, lag);
            self.late += u64::from(lag > late_after);
        }
    }

    /// A complete response. `latency` is from the intended send time in the
    /// open model, `uncorrected` from the actual send.
    pub(crate) fn response(
        &mut self,
        kind: usize,
        status: u16,
        expected: bool,
        latency: Duration,
        uncorrected: Duration,
        body_bytes: u64,
    ) {
        let k = &mut self.kinds[kind];
        record(&mut k.latency, latency);
        if let Some(h) = &mut k.uncorrected {
            record(h, uncorrected);
        }
        k.count_status(status, 1);
        k.unexpected += u64::from(!expected);
        k.body_bytes += body_bytes;
        record(&mut self.interval.latency, latency);
        self.interval.responses += 1;
        self.interval.errors += u64::from(!expected);
    }

    /// A request or connection attempt that failed.
    pub(crate) fn error(&mut self, kind: usize, error: ErrorKind) {
        let e = &mut self.kinds[kind].errors;
        match error {
            ErrorKind::Connect => e.connect += 1,
            ErrorKind::Timeout => e.timeout += 1,
            ErrorKind::Io => e.io += 1,
        }
        self.interval.errors += 1;
    }

    /// Hands over the figures since the last tick.
    pub(crate) fn take_interval(&mut self) -> Interval {
        let mut fresh = Interval {
            latency: self.interval.latency.clone(),
            ..Interval::new()
        };
        fresh.latency.reset();
        std::mem::replace(&mut self.interval, fresh)
    }
}

/// All threads' statistics merged.
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    pub(crate) kinds: Vec<KindStats>,
    pub(crate) send_lag: Histogram<u64>,
    pub(crate) late: u64,
    pub(crate) sent: u64,
    pub(crate) dropped: u64,
    pub(crate) reconnects: u64,
}

impl Totals {
    pub(crate) fn new(kinds: usize, open: bool) -> Self {
        let t = ThreadStats::new(kinds, open);
        Self {
            kinds: t.kinds,
            send_lag: t.send_lag,
            late: 0,
            sent: 0,
            dropped: 0,
            reconnects: 0,
        }
    }

    pub(crate) fn merge(&mut self, thread: &ThreadStats) {
        for (into, from) in self.kinds.iter_mut().zip(&thread.kinds) {
            into.merge(from);
        }
        merge(&mut self.send_lag, &thread.send_lag);
        self.late += thread.late;
        self.sent += thread.sent;
        self.dropped += thread.dropped;
        self.reconnects += thread.reconnects;
    }

    /// Every request type merged into one.
    pub(crate) fn overall(&self) -> KindStats {
        let mut all = self.kinds[0].clone();
        for k in &self.kinds[1..] {
            all.merge(k);
        }
        all
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

/// One point of a percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// The percentile, e.g. 99.9.
    pub percentile: f64,
    /// Latency at that percentile, in microseconds.
    pub us: u64,
}

/// Percentiles from 0 to 99.9999 and the maximum, spaced evenly in
/// "number of nines", as HdrHistogram's percentile plots are.
pub(crate) fn spectrum(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    // 1 - q halves... in tenths of a nine: q = 1 - 10^(-i/10).
    for i in 0..=60 {
        let q = 1.0 - 10f64.powf(-f64::from(i) / 10.0);
        points.push(PercentilePoint {
            percentile: q * 100.0,
            us: h.value_at_quantile(q),
        });
        if (1.0 - q) * (h.len() as f64) < 1.0 {
            break;
        }
    }
    points.push(PercentilePoint {
        percentile: 100.0,
        us: h.max(),
    });
    points
}

// === Timeline ===

/// One second (or the last, partial second) of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// End of the interval, seconds from the start of the load.
    pub t_s: f64,
    /// Length of the interval, seconds.
    pub seconds: f64,
    /// Open model: requests per second the schedule asked for.
    pub target_rps: Option<f64>,
    /// Requests sent per second.
    pub sent_rps: f64,
    /// Complete responses per second.
    pub rps: f64,
    /// Unexpected statuses and transport errors in the interval.
    pub errors: u64,
    /// Latency percentiles of the interval's responses, microseconds (0
    /// when there were none). Open model: from the intended send time.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest response of the interval.
    pub max_us: u64,
}

/// A thread's figures for one tick.
#[derive(Debug)]
pub(crate) struct Tick {
    /// 0 for the first second; the last tick of a thread may be partial.
    pub(crate) index: u32,
    /// Seconds since the start when the tick was taken.
    pub(crate) at_s: f64,
    pub(crate) interval: Interval,
}

/// Merges the threads' ticks into rows once every thread has reported.
#[derive(Debug)]
pub(crate) struct Timeline {
    threads: usize,
    pending: BTreeMap<u32, (usize, f64, Interval)>,
    rows: Vec<TimelineRow>,
    /// The open model's schedule, for the target rate of each row.
    schedule: Option<Schedule>,
}

impl Timeline {
    pub(crate) fn new(threads: usize, schedule: Option<Schedule>) -> Self {
        Self {
            threads,
            pending: BTreeMap::new(),
            rows: Vec::new(),
            schedule,
        }
    }

    /// Adds one thread's tick; returns the row if it completed one.
    pub(crate) fn add(&mut self, tick: &Tick) -> Option<TimelineRow> {
        let entry = self
            .pending
            .entry(tick.index)
            .or_insert_with(|| (0, 0.0, Interval::new()));
        entry.0 += 1;
        entry.1 = f64::max(entry.1, tick.at_s);
        entry.2.merge(&tick.interval);
        if entry.0 < self.threads {
            return None;
        }
        let (_, at_s, interval) = self.pending.remove(&tick.index)?;
        Some(self.push(at_s, &interval))
    }

    fn push(&mut self, at_s: f64, interval: &Interval) -> TimelineRow {
        let from = self.rows.last().map_or(0.0, |r| r.t_s);
        let seconds = (at_s - from).max(1e-9);
        let h = &interval.latency;
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        let row = TimelineRow {
            t_s: at_s,
            seconds,
            target_rps: self
                .schedule
                .as_ref()
                .map(|s| (s.expected_by(at_s) - s.expected_by(from)) / seconds),
            sent_rps: interval.sent as f64 / seconds,
            rps: interval.responses as f64 / seconds,
            errors: interval.errors,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: if h.is_empty() { 0 } else { h.max() },
        };
        self.rows.push(row);
        row
    }

    /// Rows of the ticks still incomplete (threads that ended early), then
    /// all rows in order.
    pub(crate) fn finish(mut self) -> Vec<TimelineRow> {
        let pending = std::mem::take(&mut self.pending);
        for (_, (_, at_s, interval)) in pending {
            self.push(at_s, &interval);
        }
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_read_off_the_histogram() {
        let mut t = ThreadStats::new(1, false);
        for us in 1..=10_000u64 {
            t.response(0, 200, true, Duration::from_micros(us), Duration::ZERO, 10);
        }
        let mut totals = Totals::new(1, false);
        totals.merge(&t);
        let all = totals.overall();
        let s = LatencySummary::from_histogram(&all.latency);
        let close = |got: u64, want: u64| got >= want && got as f64 <= want as f64 * 1.001;
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min_us, 1);
        assert!(close(s.p50_us, 5_000), "{s:?}");
        assert!(close(s.p90_us, 9_000), "{s:?}");
        assert!(close(s.p99_us, 9_900), "{s:?}");
        assert!(close(s.p999_us, 9_990), "{s:?}");
        assert!(close(s.max_us, 10_000), "{s:?}");
        assert!((s.mean_us - 5_000.5).abs() < 5.0, "{s:?}");
        assert_eq!(all.body_bytes, 100_000);
        let spectrum = spectrum(&all.latency);
        assert_eq!(spectrum.first().unwrap().percentile, 0.0);
        assert_eq!(spectrum.last().unwrap().percentile, 100.0);
        assert!(
            spectrum
                .windows(2)
                .all(|w| w[0].us <= w[1].us && w[0].percentile < w[1].percentile)
        );
    }

    #[test]
    fn extreme_latencies_saturate_instead_of_failing() {
        let mut t = ThreadStats::new(1, false);
        t.response(0, 200, true, Duration::ZERO, Duration::ZERO, 0);
        t.response(0, 200, true, Duration::from_secs(3600), Duration::ZERO, 0);
        let s = LatencySummary::from_histogram(&t.kinds[0].latency);
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
        assert!(spectrum(&latency_histogram()).is_empty());
    }

    #[test]
    fn merging_sums_statuses_errors_and_kinds() {
        let mut a = ThreadStats::new(2, true);
        a.response(0, 200, true, ms(1), ms(1), 5);
        a.response(1, 404, false, ms(3), ms(1), 0);
        a.error(0, ErrorKind::Timeout);
        a.reconnects = 2;
        a.sent(Some(ms(2)), ms(1));
        a.sent(Some(Duration::from_micros(10)), ms(1));
        let mut b = ThreadStats::new(2, true);
        b.response(0, 200, true, ms(2), ms(2), 5);
        b.error(1, ErrorKind::Connect);
        b.error(1, ErrorKind::Io);
        b.dropped = 4;
        let mut totals = Totals::new(2, true);
        totals.merge(&a);
        totals.merge(&b);
        assert_eq!(totals.kinds[0].status_map(), BTreeMap::from([(200, 2)]));
        assert_eq!(totals.kinds[1].status_map(), BTreeMap::from([(404, 1)]));
        assert_eq!(totals.kinds[1].unexpected, 1);
        let all = totals.overall();
        assert_eq!(all.responses(), 3);
        assert_eq!(
            all.errors,
            ErrorCounts {
                connect: 1,
                timeout: 1,
                io: 1
            }
        );
        assert_eq!(all.latency.len(), 3);
        assert_eq!(all.uncorrected.as_ref().unwrap().len(), 3);
        assert_eq!(
            (totals.sent, totals.late, totals.dropped, totals.reconnects),
            (2, 1, 4, 2)
        );
        assert_eq!(totals.send_lag.len(), 2);
    }

    #[test]
    fn the_timeline_waits_for_every_thread_and_takes_intervals_once() {
        let mut a = ThreadStats::new(1, true);
        let mut b = ThreadStats::new(1, true);
        a.sent(None, ms(1));
        a.response(0, 200, true, ms(2), ms(1), 0);
        b.sent(None, ms(1));
        b.error(0, ErrorKind::Io);
        let schedule = Schedule::new(&[crate::Stage::hold(100.0, Duration::from_secs(10))]);
        let mut timeline = Timeline::new(2, Some(schedule));
        let tick = |index, at_s, s: &mut ThreadStats| Tick {
            index,
            at_s,
            interval: s.take_interval(),
        };
        assert!(timeline.add(&tick(0, 1.0, &mut a)).is_none());
        let row = timeline.add(&tick(0, 1.001, &mut b)).unwrap();
        assert_eq!(row.errors, 1);
        assert!((row.rps - 1.0 / 1.001).abs() < 1e-9);
        assert!((row.sent_rps - 2.0 / 1.001).abs() < 1e-9);
        assert!((row.target_rps.unwrap() - 100.0).abs() < 1e-9);
        assert!(row.p50_us >= 2_000);
        // The next tick starts empty; one thread ends early with a partial row.
        assert!(timeline.add(&tick(1, 1.5, &mut a)).is_none());
        let rows = timeline.finish();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].errors, rows[1].p99_us), (0, 0));
        assert!((rows[1].seconds - 0.499).abs() < 1e-9);
    }
}
