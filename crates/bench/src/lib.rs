//! The HTTP load generator behind `scalestack bench`.
//!
//! This crate owns driving load at an HTTP target and measuring what it
//! sees: a closed model (fixed connections, each sending its next request
//! when the previous response is complete) and an open model (a constant or
//! staged arrival rate, latency measured from each request's due time so
//! that a stalled target cannot hide its stall: no coordinated omission),
//! over HTTP/1.1 keep-alive or HTTP/2 (h2c); a single URL template or a
//! TOML [`Scenario`] of weighted request types with templated paths,
//! headers and bodies; keys drawn uniformly, by Zipf's law or from a hot
//! spot; HDR latency histograms per request type; a per-second timeline;
//! CPU time per request of this process and of the processes under test;
//! and the reports: a terminal table, JSON, a self-contained HTML page with
//! charts, and the comparison of two JSON reports.
//!
//! It speaks HTTP only and must not depend on any server crate (gateway, app,
//! store, cache, supervisor): whatever it measures, it measures from the
//! outside, exactly as any client would. Argument parsing belongs to the CLI,
//! which maps its flags onto [`BenchSpec`].
//!
//! ```no_run
//! use std::time::Duration;
//! use scalestack_bench::{BenchSpec, Load, run};
//!
//! let mut spec = BenchSpec::new("http://127.0.0.1:8080/users/{id}");
//! spec.keys = "1..100000".parse()?;
//! spec.dist = "zipf:1.1".parse()?;
//! spec.connections = 64;
//! spec.duration = Duration::from_secs(20);
//! spec.load = Load::Rate(5_000.0); // or Load::Closed (the default)
//! let report = run(&spec)?;
//! print!("{}", report.render_table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map: `spec` describes a run ([`BenchSpec`], [`Load`], [`Stage`]);
//! `scenario` reads request mixes; `template` renders placeholders; `target`
//! compiles request types into wire bytes; `keys` draws keys; `schedule` is
//! the open model's clock; `h1` and `h2` talk to the target; `engine` runs
//! the threads and lanes; `stats` counts; `progress` draws the live line;
//! `cpu` reads `/proc`; `report`, `html` and `compare` present the results.

mod compare;
mod cpu;
mod engine;
mod error;
mod h1;
mod h2;
mod html;
mod keys;
mod progress;
mod report;
mod scenario;
mod schedule;
mod spec;
mod stats;
mod target;
mod template;

pub use compare::compare;
pub use cpu::CpuUsage;
pub use error::BenchError;
pub use html::render_html;
pub use keys::KeySampler;
pub use report::{BenchReport, BenchSettings, KindReport, OpenModelReport};
pub use scenario::{RequestSpec, Scenario, ScenarioError};
pub use spec::{BenchSpec, KeyDist, KeyRange, Load, MAX_RATE, ParseError, Protocol, Stage};
pub use stats::{ErrorCounts, LatencySummary, PercentilePoint, TimelineRow};

/// Runs `spec` and returns what it measured.
///
/// Blocks the calling thread: it starts `spec.threads` load threads (all
/// cores for 0, never more than connections), each with its own
/// single-threaded tokio runtime, and monitors them from the calling thread,
/// so it must be called outside of any async context. Before sending load
/// it validates the spec (URL, templates, rates) and sends one probe request
/// of the first request type; if that gets no response the run fails with
/// [`BenchError::Unreachable`] and no load is sent.
///
/// If the process's soft limit on open files is below what `connections`
/// need, it is raised towards the hard limit (a process-wide side effect);
/// if the hard limit is too low the run is refused.
///
/// Memory: each thread keeps one or two latency histograms per request type
/// (about 140 KiB each) and the timeline keeps a few numbers per second, so
/// memory does not grow with the request count.
pub fn run(spec: &BenchSpec) -> Result<BenchReport, BenchError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(BenchError::InsideRuntime);
    }
    let threads = match spec.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    // Validate before starting threads: a bad spec should not cost any.
    let plan = engine::Plan::new(spec, threads)?;
    engine::ensure_fd_limit(spec.connections)?;
    engine::execute(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_fail_before_any_network() {
        let refused = |spec: &BenchSpec| run(spec).unwrap_err().to_string();
        let mut spec = BenchSpec::new("https://127.0.0.1:1/users/{id}");
        assert!(
            refused(&spec).contains("https is not supported"),
            "{}",
            refused(&spec)
        );
        spec.url = "http://127.0.0.1:1/".into();
        spec.connections = 0;
        assert_eq!(
            refused(&spec),
            "invalid `connections`: must be at least 1, got 0"
        );
        spec.connections = 1;
        spec.dist = KeyDist::Zipf { exponent: 0.0 };
        assert!(
            refused(&spec).starts_with("invalid `dist`"),
            "{}",
            refused(&spec)
        );
    }

    #[tokio::test]
    async fn refuses_to_nest_runtimes() {
        let spec = BenchSpec::new("http://127.0.0.1:1/");
        assert!(matches!(run(&spec), Err(BenchError::InsideRuntime)));
    }
}
