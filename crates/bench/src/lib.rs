//! The HTTP load generator behind `scalestack bench`.
//!
//! This crate owns driving load at an HTTP/1.1 target and measuring what it
//! sees: a closed model (each connection sends its next request when the
//! previous response is complete, on keep-alive connections), keys drawn
//! uniformly or by Zipf's law into a URL template, latency in an HDR
//! histogram of fixed bounds, status and error counts, and CPU time per
//! request of this process and of the processes under test (from `/proc`).
//!
//! It speaks HTTP only and must not depend on any server crate (gateway, app,
//! store, cache, supervisor): whatever it measures, it measures from the
//! outside, exactly as any client would. Argument parsing belongs to the CLI,
//! which maps its flags onto [`BenchSpec`].
//!
//! ```no_run
//! use std::time::Duration;
//! use scalestack_bench::{BenchSpec, run};
//!
//! let mut spec = BenchSpec::new("http://127.0.0.1:8080/users/{id}");
//! spec.keys = "1..100000".parse()?;
//! spec.dist = "zipf:1.1".parse()?;
//! spec.connections = 64;
//! spec.duration = Duration::from_secs(20);
//! let report = run(&spec)?;
//! print!("{}", report.render_table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map: `spec` describes a run ([`BenchSpec`]); `target` pre-splits the
//! URL template; `keys` draws keys; `engine` runs the connections; `stats`
//! counts; `progress` draws the live line; `cpu` reads `/proc`; `report`
//! assembles and renders [`BenchReport`].

mod cpu;
mod engine;
mod error;
mod keys;
mod progress;
mod report;
mod spec;
mod stats;
mod target;

pub use cpu::CpuUsage;
pub use error::BenchError;
pub use report::{BenchReport, BenchSettings};
pub use spec::{BenchSpec, KeyDist, KeyRange, ParseError};
pub use stats::{ErrorCounts, LatencySummary};

/// Runs `spec` and returns what it measured.
///
/// Blocks the calling thread: it builds its own multi-thread tokio runtime
/// with `spec.threads` workers (all cores for 0), so it must be called
/// outside of any async context. Before sending load it validates the spec
/// and sends one probe request; if that gets no response the run fails with
/// [`BenchError::Unreachable`] and no load is sent.
///
/// If the process's soft limit on open files is below what `connections`
/// need, it is raised towards the hard limit (a process-wide side effect);
/// if the hard limit is too low the run is refused.
///
/// Memory: each connection keeps its own latency histogram (about 140 KiB),
/// so a run holds about `connections × 140 KiB` however long it lasts.
pub fn run(spec: &BenchSpec) -> Result<BenchReport, BenchError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(BenchError::InsideRuntime);
    }
    let threads = match spec.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    // Validate before building the runtime: a bad spec should not cost
    // threads.
    let plan = engine::Plan::new(spec, threads)?;
    engine::ensure_fd_limit(spec.connections)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("bench-worker")
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    runtime.block_on(engine::execute(plan))
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
