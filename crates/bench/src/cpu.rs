//! CPU time of the processes under test over a run, from `/proc`.
//!
//! The figure we want is "CPU microseconds per request summed over all
//! processes of the stack". The stack is a process tree (`scalestack up` and
//! the servers it starts), and its members may come and go during a run (a
//! restart, the autoscaler), so the tree is re-read on every sample:
//!
//! * a process seen at the start counts from its CPU time at the start;
//! * a process that appears later was started during the run and counts
//!   from zero;
//! * a process that exits counts up to its last sample, so at most one
//!   sampling interval of its CPU time is lost.

use std::collections::HashMap;
use std::time::Duration;

use scalestack_telemetry::procfs;
use serde::{Deserialize, Serialize};

/// CPU time spent by a set of processes over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// The processes asked for (roots of the measured trees).
    pub pids: Vec<u32>,
    /// Distinct processes measured, the roots and all their descendants.
    pub processes: usize,
    /// User plus system CPU time, in microseconds. `/proc` counts in clock
    /// ticks (usually 10 ms), which bounds the resolution.
    pub cpu_us: u64,
    /// `cpu_us` divided by the completed requests; `None` without requests.
    pub us_per_request: Option<f64>,
}

impl CpuUsage {
    pub(crate) fn new(pids: Vec<u32>, processes: usize, cpu: Duration, requests: u64) -> Self {
        let cpu_us = u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX);
        let us_per_request = (requests > 0).then(|| cpu_us as f64 / requests as f64);
        Self {
            pids,
            processes,
            cpu_us,
            us_per_request,
        }
    }
}

/// Samples the CPU time of process trees.
#[derive(Debug)]
pub(crate) struct CpuTracker {
    roots: Vec<u32>,
    /// pid → (CPU time at the start or 0 if started later, CPU time at the last sample).
    seen: HashMap<u32, (Duration, Duration)>,
}

impl CpuTracker {
    /// Takes the baseline of the trees under `roots`.
    pub(crate) fn start(roots: &[u32]) -> Self {
        // Keep the order given, without repeats.
        let mut unique: Vec<u32> = Vec::with_capacity(roots.len());
        for &pid in roots {
            if !unique.contains(&pid) {
                unique.push(pid);
            }
        }
        let mut tracker = Self {
            roots: unique,
            seen: HashMap::new(),
        };
        tracker.visit(|cpu| (cpu, cpu));
        tracker
    }

    /// Re-reads the trees, so that new processes are found and exiting ones
    /// are counted up to now.
    pub(crate) fn sample(&mut self) {
        self.visit(|cpu| (Duration::ZERO, cpu));
    }

    fn visit(&mut self, first_seen: impl Fn(Duration) -> (Duration, Duration)) {
        if self.roots.is_empty() {
            return;
        }
        for &root in &self.roots {
            for pid in procfs::process_tree(root) {
                // A process may exit between listing and reading; it keeps
                // its last sample.
                let Ok(stat) = procfs::stat(pid) else {
                    continue;
                };
                self.seen
                    .entry(pid)
                    .and_modify(|(_, last)| *last = stat.cpu.max(*last))
                    .or_insert_with(|| first_seen(stat.cpu));
            }
        }
    }

    /// Takes a last sample and sums up; `None` if no processes were asked for.
    pub(crate) fn finish(mut self, requests: u64) -> Option<CpuUsage> {
        if self.roots.is_empty() {
            return None;
        }
        self.sample();
        let cpu = self
            .seen
            .values()
            .map(|&(start, last)| last.saturating_sub(start))
            .sum();
        Some(CpuUsage::new(self.roots, self.seen.len(), cpu, requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_own_process_tree() {
        let me = std::process::id();
        let tracker = CpuTracker::start(&[me, me]);
        // Burn a little CPU so there is something to see (not asserted: the
        // tick resolution is coarse and the machine is shared).
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let usage = tracker.finish(10).unwrap();
        assert_eq!(usage.pids, vec![me]);
        assert!(usage.processes >= 1);
        assert_eq!(usage.us_per_request, Some(usage.cpu_us as f64 / 10.0));
    }

    #[test]
    fn nothing_to_measure_gives_none() {
        assert_eq!(CpuTracker::start(&[]).finish(5), None);
    }

    #[test]
    fn no_requests_gives_no_per_request_figure() {
        assert_eq!(
            CpuUsage::new(vec![1], 1, Duration::from_millis(3), 0).us_per_request,
            None
        );
        assert_eq!(
            CpuUsage::new(vec![1], 1, Duration::from_millis(3), 3).us_per_request,
            Some(1000.0)
        );
    }
}
