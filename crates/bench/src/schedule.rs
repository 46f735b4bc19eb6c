//! The open model's clock: when each request is due, and a timer precise
//! enough to send it then.
//!
//! [`Schedule`] turns stages of ramps and holds into due times. The rate
//! r(t) is piecewise linear, so the expected number of requests by time t,
//! N(t), is piecewise quadratic; request k (counting from 0) is due when
//! N(t) = k + ½, which puts requests of a constant rate r at (k + ½)/r and
//! follows a ramp exactly. Due times are computed from k alone, so a backlog
//! of requests that are due but not yet sent is just two counters: memory
//! stays fixed however far behind a slow target pushes the generator.
//!
//! [`Pacer`] sleeps until a due time. tokio's timer rounds every sleep up to
//! the next millisecond, which would send requests in 1 ms bursts and add up
//! to 1 ms to every measured latency; the pacer arms a Linux `timerfd`
//! instead (through rustix, no unsafe code), whose wake-ups are within tens
//! of microseconds, and falls back to tokio's timer where that fails.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

use crate::Stage;

/// Stages prepared for inverting N(t).
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    stages: Vec<Prepared>,
    /// N at the end of the last stage.
    total: f64,
}

#[derive(Debug, Clone, Copy)]
struct Prepared {
    /// Seconds from the start of the run to the start of this stage.
    offset: f64,
    seconds: f64,
    start_rate: f64,
    /// Rate change per second.
    slope: f64,
    /// N at the start of this stage.
    before: f64,
    /// N at the end of this stage.
    after: f64,
}

impl Schedule {
    pub(crate) fn new(stages: &[Stage]) -> Self {
        let mut offset = 0.0;
        let mut before = 0.0;
        let stages = stages
            .iter()
            .map(|s| {
                let seconds = s.duration.as_secs_f64();
                let p = Prepared {
                    offset,
                    seconds,
                    start_rate: s.start_rate,
                    slope: (s.end_rate - s.start_rate) / seconds,
                    before,
                    after: before,
                };
                offset += seconds;
                before += seconds * (s.start_rate + s.end_rate) / 2.0;
                Prepared { after: before, ..p }
            })
            .collect();
        Self {
            stages,
            total: before,
        }
    }

    /// Requests the schedule holds: those due before its end.
    pub(crate) fn requests(&self) -> u64 {
        if self.total < 0.5 {
            0
        } else {
            (self.total - 0.5).floor() as u64 + 1
        }
    }

    /// Expected requests due in the first `t` seconds.
    pub(crate) fn expected_by(&self, t: f64) -> f64 {
        let mut n = 0.0;
        for s in &self.stages {
            if t <= s.offset {
                break;
            }
            let tau = (t - s.offset).min(s.seconds);
            n = s.before + s.start_rate * tau + s.slope * tau * tau / 2.0;
        }
        n.min(self.total)
    }

    /// Seconds from the start at which request `k` is due; `None` past the
    /// end of the schedule.
    pub(crate) fn due(&self, k: u64) -> Option<f64> {
        let n = k as f64 + 0.5;
        if n > self.total {
            return None;
        }
        // Stages are few; a linear scan finds the one that holds the n-th
        // request (idle stages hold none and are passed over).
        let s = self.stages.iter().find(|s| n > s.before && n <= s.after)?;
        let m = n - s.before;
        // Solve start_rate·τ + slope·τ²/2 = m for τ in the form that stays
        // stable when the slope is 0 or negative: τ = 2m / (a + √(a² + 2bm)).
        let a = s.start_rate;
        let disc = (a * a + 2.0 * s.slope * m).max(0.0);
        let denom = a + disc.sqrt();
        if denom <= 0.0 {
            return None;
        }
        Some(s.offset + (2.0 * m / denom).min(s.seconds))
    }
}

/// Sleeps until due times with sub-millisecond precision.
#[derive(Debug)]
pub(crate) struct Pacer {
    timer: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    /// A pacer for the current thread's runtime; uses tokio's timer if a
    /// `timerfd` cannot be had.
    pub(crate) fn new() -> Self {
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()
        .and_then(|fd| {
            // tokio deprecated the safe constructor because a borrowed
            // descriptor could be closed while registered. An `OwnedFd`
            // moved into the `AsyncFd` stays open and the same until the
            // `AsyncFd` deregisters and drops it, which is exactly the
            // contract of the unsafe replacement, and this crate forbids
            // unsafe code.
            #[allow(deprecated)]
            AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
        });
        Self { timer }
    }

    /// Whether the precise timer is in use.
    #[cfg(test)]
    pub(crate) fn is_precise(&self) -> bool {
        self.timer.is_some()
    }

    /// Returns at or after `at`.
    pub(crate) async fn sleep_until(&mut self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        let wait = at - now;
        if let Some(timer) = &self.timer {
            if arm(timer, wait).is_ok() && wait_fired(timer).await.is_ok() {
                return;
            }
            // A failing timerfd is not worth failing a run for.
            self.timer = None;
        }
        tokio::time::sleep_until(at.into()).await;
    }
}

fn arm(timer: &AsyncFd<OwnedFd>, wait: Duration) -> std::io::Result<()> {
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: wait.as_secs().try_into().unwrap_or(i64::MAX),
            // A zero value would disarm the timer; the wait is positive.
            tv_nsec: i64::from(wait.subsec_nanos()).max(i64::from(wait.as_secs() == 0)),
        },
    };
    rustix::time::timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

async fn wait_fired(timer: &AsyncFd<OwnedFd>) -> std::io::Result<()> {
    loop {
        let mut guard = timer.readable().await?;
        let mut expirations = [0u8; 8];
        match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations[..])?)) {
            Ok(result) => return result.map(drop),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_constant_rate_is_evenly_spaced() {
        let s = Schedule::new(&[Stage::hold(1000.0, secs(10))]);
        assert_eq!(s.requests(), 10_000);
        assert!((s.due(0).unwrap() - 0.0005).abs() < 1e-12);
        assert!((s.due(1).unwrap() - 0.0015).abs() < 1e-12);
        assert!((s.due(9_999).unwrap() - 9.9995).abs() < 1e-9);
        assert_eq!(s.due(10_000), None);
        assert!((s.expected_by(2.5) - 2500.0).abs() < 1e-9);
    }

    #[test]
    fn ramps_and_steps_follow_the_stages() {
        // 0 → 1000 over 10 s (5,000 requests), hold 1000 for 5 s (5,000),
        // step to 2000 for 5 s (10,000).
        let s = Schedule::new(&[
            Stage::ramp(0.0, 1000.0, secs(10)),
            Stage::hold(1000.0, secs(5)),
            Stage::hold(2000.0, secs(5)),
        ]);
        assert_eq!(s.requests(), 20_000);
        // N(t) = 50 t² on the ramp: request k is due at √((k + ½)/50).
        for k in [0u64, 10, 1_000, 4_999] {
            let want = ((k as f64 + 0.5) / 50.0).sqrt();
            assert!((s.due(k).unwrap() - want).abs() < 1e-9, "k={k}");
        }
        assert!((s.due(5_000).unwrap() - 10.0005).abs() < 1e-9);
        assert!((s.due(10_000).unwrap() - 15.00025).abs() < 1e-9);
        assert!((s.expected_by(12.0) - 7_000.0).abs() < 1e-6);
        assert!((s.expected_by(100.0) - 20_000.0).abs() < 1e-6);
        // Due times never go backwards.
        let mut last = 0.0;
        for k in 0..20_000 {
            let t = s.due(k).unwrap();
            assert!(t >= last, "k={k}: {t} < {last}");
            last = t;
        }
    }

    #[test]
    fn ramps_down_and_idle_stages_work() {
        let s = Schedule::new(&[
            Stage::ramp(100.0, 0.0, secs(10)),
            Stage::hold(0.0, secs(5)),
            Stage::hold(10.0, secs(1)),
        ]);
        assert_eq!(s.requests(), 510);
        let trailing = Schedule::new(&[Stage::hold(10.0, secs(1)), Stage::hold(0.0, secs(5))]);
        assert_eq!(trailing.requests(), 10);
        assert!(trailing.due(9).unwrap() < 1.0);
        assert_eq!(trailing.due(10), None);
        assert!(s.due(499).unwrap() < 10.0);
        // The next request waits out the idle stage.
        let t = s.due(500).unwrap();
        assert!((15.0..16.0).contains(&t), "{t}");
    }

    #[tokio::test]
    async fn the_pacer_never_wakes_early() {
        let mut pacer = Pacer::new();
        assert!(pacer.is_precise(), "timerfd is available on Linux");
        for micros in [0u64, 150, 900, 2_500] {
            let at = Instant::now() + Duration::from_micros(micros);
            pacer.sleep_until(at).await;
            assert!(Instant::now() >= at);
        }
    }
}
