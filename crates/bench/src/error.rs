//! Why a run could not start.
//!
//! Failures *during* a run (refused connections, timeouts, resets) are not
//! errors of the run: they are counted in the report, because a target that
//! fails under load is a measurement, not a reason to stop measuring.

/// Why [`run`](crate::run) returned no report. Every variant is detected
/// before any load is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The URL template is malformed or uses an unsupported scheme.
    #[error("invalid URL `{url}`: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// The probe request (one connection, one request, sent before the load)
    /// got no response.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL the probe requested (the template with the first key).
        url: String,
        /// Why, e.g. `connection refused`.
        reason: String,
    },
    /// A field of the spec is out of range.
    #[error("invalid `{field}`: {reason}")]
    InvalidSpec {
        /// The [`BenchSpec`](crate::BenchSpec) field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`run`](crate::run) was called on a thread that already runs a tokio
    /// runtime; it blocks and builds its own.
    #[error(
        "the load generator blocks and runs its own runtime; call it outside of an async \
         context (e.g. from tokio::task::spawn_blocking)"
    )]
    InsideRuntime,
    /// The load generator's runtime could not be built.
    #[error("cannot start the load generator's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
