//! The live progress line on stderr.
//!
//! Once per second the line is rewritten in place (`\r`) with the elapsed
//! time, the request rate and p99 over the last second, and the errors so
//! far. It reads the [`Live`] shards, never the connections' own statistics,
//! so it adds nothing to the hot path when it is off.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::stats::{Interval, Live};

/// State of the progress line between ticks; draws on `W` (stderr outside
/// of tests).
#[derive(Debug)]
pub(crate) struct Progress<W: Write = std::io::Stderr> {
    out: W,
    start: Instant,
    total: Duration,
    last_tick: Instant,
    interval: Interval,
    requests: u64,
    errors: u64,
    /// Width of the line on screen, so a shorter line can blank it out.
    shown: usize,
}

impl Progress {
    pub(crate) fn new(start: Instant, total: Duration) -> Self {
        Self::with_output(start, total, std::io::stderr())
    }
}

impl<W: Write> Progress<W> {
    fn with_output(start: Instant, total: Duration, out: W) -> Self {
        Self {
            out,
            start,
            total,
            last_tick: start,
            interval: Interval::new(),
            requests: 0,
            errors: 0,
            shown: 0,
        }
    }

    /// Drains the live figures and redraws the line.
    pub(crate) fn tick(&mut self, live: &Live) {
        let now = Instant::now();
        live.drain_into(&mut self.interval);
        let since = now.duration_since(self.last_tick).as_secs_f64();
        let rps = if since > 0.0 {
            self.interval.responses as f64 / since
        } else {
            0.0
        };
        self.requests += self.interval.responses;
        self.errors += self.interval.errors;
        let p99 = (!self.interval.latency.is_empty())
            .then(|| self.interval.latency.value_at_quantile(0.99));
        let line = format_line(
            now - self.start,
            self.total,
            rps,
            p99,
            self.errors,
            self.requests,
        );
        self.draw(&line);
        self.interval.latency.reset();
        self.interval.responses = 0;
        self.interval.errors = 0;
        self.last_tick = now;
    }

    /// Blanks the line, leaving the cursor where the line began, so that
    /// the report prints on a clean line.
    pub(crate) fn clear(&mut self) {
        if self.shown > 0 {
            let blank = " ".repeat(self.shown);
            // The progress line is a courtesy: a closed stderr must not fail the run.
            let _ = write!(self.out, "\r{blank}\r");
            let _ = self.out.flush();
            self.shown = 0;
        }
    }

    fn draw(&mut self, line: &str) {
        let width = line.chars().count();
        let pad = " ".repeat(self.shown.saturating_sub(width));
        let _ = write!(self.out, "\r{line}{pad}");
        let _ = self.out.flush();
        self.shown = width;
    }
}

/// One progress line, e.g.
/// `[ 3s/20s] 61234 req/s  p99 1.234 ms  errors 0  requests 183702`.
pub(crate) fn format_line(
    elapsed: Duration,
    total: Duration,
    rps: f64,
    p99_us: Option<u64>,
    errors: u64,
    requests: u64,
) -> String {
    let total_s = total.as_secs_f64();
    let width = format!("{total_s:.0}").len();
    let p99 = match p99_us {
        Some(us) => format!("{:.3} ms", us as f64 / 1000.0),
        None => "-".to_owned(),
    };
    format!(
        "[{elapsed:>width$.0}s/{total_s:.0}s] {rps:>8.0} req/s  p99 {p99}  errors {errors}  requests {requests}",
        elapsed = elapsed.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rate_p99_errors_and_totals() {
        let line = format_line(
            Duration::from_millis(3_020),
            Duration::from_secs(20),
            61_234.4,
            Some(1_234),
            2,
            183_702,
        );
        assert_eq!(
            line,
            "[ 3s/20s]    61234 req/s  p99 1.234 ms  errors 2  requests 183702"
        );
        let idle = format_line(
            Duration::from_secs(1),
            Duration::from_secs(5),
            0.0,
            None,
            0,
            0,
        );
        assert_eq!(idle, "[1s/5s]        0 req/s  p99 -  errors 0  requests 0");
    }

    #[test]
    fn tick_drains_the_live_figures() {
        let live = std::sync::Arc::new(Live::new(1));
        let mut conn = crate::stats::ConnStats::new(Some(live.slot(0)));
        conn.response(503, Duration::from_millis(2), 0);
        let mut progress =
            Progress::with_output(Instant::now(), Duration::from_secs(1), Vec::new());
        progress.tick(&live);
        assert_eq!((progress.requests, progress.errors), (1, 1));
        progress.tick(&live);
        assert_eq!((progress.requests, progress.errors), (1, 1));
        progress.clear();
        let screen = String::from_utf8(progress.out).unwrap();
        // Two lines drawn over each other, then blanked.
        let frames: Vec<&str> = screen.split('\r').collect();
        assert_eq!(frames.len(), 5, "{screen:?}");
        assert!(
            frames[1].contains("p99 2.000 ms  errors 1  requests 1"),
            "{screen:?}"
        );
        assert!(
            frames[2].contains("p99 -  errors 1  requests 1"),
            "{screen:?}"
        );
        assert_eq!(
            frames[2].len(),
            frames[1].len(),
            "a shorter line pads out the longer one"
        );
        assert!(
            frames[3].trim().is_empty() && frames[4].is_empty(),
            "{screen:?}"
        );
    }
}
