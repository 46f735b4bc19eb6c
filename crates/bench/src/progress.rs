//! The live progress line on stderr.
//!
//! Once per second the line is rewritten in place (`\r`) from the newest
//! timeline row: elapsed time, the response rate (and the target rate in the
//! open model), p99 over the last second, and the errors and requests so
//! far. It reads only the rows the monitor builds anyway, so it adds nothing
//! to the load threads' work; quiet runs (CI) simply do not draw it.

use std::io::Write;
use std::time::Duration;

use crate::stats::TimelineRow;

/// State of the progress line between rows; draws on `W` (stderr outside
/// of tests).
#[derive(Debug)]
pub(crate) struct Progress<W: Write = std::io::Stderr> {
    out: W,
    total: Duration,
    open: bool,
    requests: f64,
    errors: u64,
    /// Width of the line on screen, so a shorter line can blank it out.
    shown: usize,
}

impl Progress {
    pub(crate) fn new(total: Duration, open: bool) -> Self {
        Self::with_output(total, open, std::io::stderr())
    }
}

impl<W: Write> Progress<W> {
    fn with_output(total: Duration, open: bool, out: W) -> Self {
        Self {
            out,
            total,
            open,
            requests: 0.0,
            errors: 0,
            shown: 0,
        }
    }

    /// Redraws the line with a new row.
    pub(crate) fn row(&mut self, row: &TimelineRow) {
        self.requests += row.rps * row.seconds;
        self.errors += row.errors;
        let line = format_line(
            row,
            self.total,
            self.open,
            self.errors,
            self.requests.round() as u64,
        );
        self.draw(&line);
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
/// `[ 3s/20s]    61234 req/s  p99 1.234 ms  errors 0  requests 183702`.
pub(crate) fn format_line(
    row: &TimelineRow,
    total: Duration,
    open: bool,
    errors: u64,
    requests: u64,
) -> String {
    let total_s = total.as_secs_f64();
    let width = format!("{total_s:.0}").len();
    let p99 = if row.rps > 0.0 {
        format!("{:.3} ms", row.p99_us as f64 / 1000.0)
    } else {
        "-".to_owned()
    };
    let target = match (open, row.target_rps) {
        (true, Some(t)) => format!(" (target {t:.0})"),
        _ => String::new(),
    };
    format!(
        "[{elapsed:>width$.0}s/{total_s:.0}s] {rps:>8.0} req/s{target}  p99 {p99}  errors {errors}  requests {requests}",
        elapsed = row.t_s,
        rps = row.rps,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t_s: f64, rps: f64, p99_us: u64, errors: u64) -> TimelineRow {
        TimelineRow {
            t_s,
            seconds: 1.0,
            target_rps: Some(5000.0),
            sent_rps: rps,
            rps,
            errors,
            p50_us: 0,
            p90_us: 0,
            p99_us,
            max_us: 0,
        }
    }

    #[test]
    fn formats_rate_p99_errors_and_totals() {
        let line = format_line(
            &row(3.02, 61_234.4, 1_234, 2),
            Duration::from_secs(20),
            false,
            2,
            183_702,
        );
        assert_eq!(
            line,
            "[ 3s/20s]    61234 req/s  p99 1.234 ms  errors 2  requests 183702"
        );
        let idle = format_line(&row(1.0, 0.0, 0, 0), Duration::from_secs(5), true, 0, 0);
        assert_eq!(
            idle,
            "[1s/5s]        0 req/s (target 5000)  p99 -  errors 0  requests 0"
        );
    }

    #[test]
    fn rows_accumulate_and_the_line_is_blanked_at_the_end() {
        let mut progress = Progress::with_output(Duration::from_secs(2), false, Vec::new());
        progress.row(&row(1.0, 100.0, 2_000, 1));
        progress.row(&row(2.0, 0.0, 0, 0));
        assert_eq!((progress.requests, progress.errors), (100.0, 1));
        progress.clear();
        let screen = String::from_utf8(progress.out).unwrap();
        // Two lines drawn over each other, then blanked.
        let frames: Vec<&str> = screen.split('\r').collect();
        assert_eq!(frames.len(), 5, "{screen:?}");
        assert!(
            frames[1].contains("p99 2.000 ms  errors 1  requests 100"),
            "{screen:?}"
        );
        assert!(
            frames[2].contains("p99 -  errors 1  requests 100"),
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
