//! One server of a replica set (the primary or a replica): its pool, its
//! metric labels, the queries it has running, and, for a replica, the health
//! and replication state that the monitor measures.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::backend::Pool;

/// Counter of queries by database, node and operation: shows a hot shard at a glance.
pub const QUERIES: &str = "scalestack_store_queries_total";
/// Histogram of query durations by database, node and operation.
pub const QUERY_DURATION: &str = "scalestack_store_query_duration_seconds";
/// Counter of failed queries by database, node and operation.
pub const QUERY_ERRORS: &str = "scalestack_store_query_errors_total";

/// Lag value that means "not measured".
pub(crate) const LAG_UNKNOWN: u64 = u64::MAX;

/// A server of a replica set.
#[derive(Debug)]
pub(crate) struct Node {
    /// The database, e.g. `shard-1` (the `db` label).
    pub(crate) db: String,
    /// `primary` or `replica-N` (the `node` label).
    pub(crate) node: String,
    pub(crate) pool: Pool,
    /// Queries running now: the least-outstanding policy reads it.
    outstanding: AtomicUsize,
    /// Reads served so far (checks not included), for tests and reports.
    served: AtomicU64,
    /// Whether the last check (or read) succeeded. Primaries are always
    /// considered healthy: their failures surface to the caller.
    healthy: AtomicBool,
    /// Replication lag in milliseconds as last measured.
    lag_ms: AtomicU64,
    /// The WAL position this replica has replayed up to, as last measured.
    replay_lsn: AtomicU64,
}

impl Node {
    pub(crate) fn new(db: &str, node: String, pool: Pool, is_primary: bool) -> Self {
        Self {
            db: db.to_owned(),
            node,
            pool,
            outstanding: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            healthy: AtomicBool::new(is_primary),
            lag_ms: AtomicU64::new(if is_primary { 0 } else { LAG_UNKNOWN }),
            replay_lsn: AtomicU64::new(0),
        }
    }

    /// `db/node`, for errors and logs.
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.db, self.node)
    }

    /// Runs `f` and records its duration and outcome under `op`.
    pub(crate) async fn timed<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let start = Instant::now();
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        let result = f.await;
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        let labels = [
            ("db", self.db.clone()),
            ("node", self.node.clone()),
            ("op", op.to_owned()),
        ];
        metrics::histogram!(QUERY_DURATION, &labels).record(start.elapsed().as_secs_f64());
        metrics::counter!(QUERIES, &labels).increment(1);
        result.map_err(|source| {
            metrics::counter!(QUERY_ERRORS, &labels).increment(1);
            StoreError::Query {
                db: self.label(),
                op,
                source,
            }
        })
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a read this node served.
    pub(crate) fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records health; returns the previous value.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    pub(crate) fn lag(&self) -> Option<Duration> {
        match self.lag_ms.load(Ordering::Relaxed) {
            LAG_UNKNOWN => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub(crate) fn set_lag(&self, lag: Option<Duration>) {
        let ms = lag.map_or(LAG_UNKNOWN, |d| {
            u64::try_from(d.as_millis()).unwrap_or(LAG_UNKNOWN - 1)
        });
        self.lag_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn replay_lsn(&self) -> u64 {
        self.replay_lsn.load(Ordering::Relaxed)
    }

    pub(crate) fn set_replay_lsn(&self, lsn: u64) {
        self.replay_lsn.store(lsn, Ordering::Relaxed);
    }

    /// Whether the node may take reads: healthy and within the lag bound.
    pub(crate) fn within(&self, max_lag: Duration) -> bool {
        self.is_healthy() && self.lag().is_some_and(|lag| lag <= max_lag)
    }
}

/// Registers the store's metrics with their help texts.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(QUERIES, "Queries run, by database, node and operation.");
    metrics::describe_counter!(
        QUERY_ERRORS,
        "Queries that failed, by database, node and operation."
    );
    metrics::describe_histogram!(
        QUERY_DURATION,
        metrics::Unit::Seconds,
        "Query duration including the wait for a connection, by database, node and operation."
    );
    crate::replica::describe_metrics();
}
