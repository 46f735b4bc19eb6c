//! Read/write splitting over one database: a primary and its replicas.
//!
//! Writes go to the primary. Reads go to a replica chosen by the configured
//! policy among those that are *usable*: answering their checks and no
//! further behind than `store.max_replica_lag`; when none is, the primary
//! serves the read. A read that fails on a replica because the replica cannot
//! serve (connection lost, shutting down) takes the replica out of the
//! rotation at once and is retried on the primary, so a replica that dies
//! costs clients nothing but latency.
//!
//! The monitor ([`ReplicaSet::check`], run by the store every
//! `store.replica_check_interval`) measures each replica's lag: zero when it
//! has replayed everything the primary had written when the check began,
//! otherwise the time since the last transaction it replayed. It also records
//! the replica's replay position, which read-your-writes tokens are compared
//! against (see [`Consistency`]).
//!
//! This module knows nothing of the domain's tables; it routes closures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use scalestack_config::{Backend, ReadPolicy};

use crate::backend::Pool;
use crate::error::node_unavailable;
use crate::node::Node;
use crate::{ConsistencyToken, DbId, StoreError, on_pool};

/// Gauge of each replica's replication lag, in seconds (NaN until measured).
pub const REPLICA_LAG: &str = "scalestack_store_replica_lag_seconds";
/// Gauge of each replica's distance behind its primary's WAL, in bytes.
pub const REPLICA_LAG_BYTES: &str = "scalestack_store_replica_lag_bytes";
/// Gauge: 1 while a replica receives reads, 0 while it is down or too far behind.
pub const REPLICA_USABLE: &str = "scalestack_store_replica_usable";
/// Counter of reads by database, the node kind that served them and why.
pub const READS: &str = "scalestack_store_reads_total";

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Any usable replica (within the lag bound), else the primary.
    #[default]
    Eventual,
    /// Read-your-writes: a replica that has replayed at least the write the
    /// token stands for, else the primary. A token of another database
    /// makes the read [`Eventual`](Consistency::Eventual).
    AtLeast(ConsistencyToken),
    /// The primary only.
    Primary,
}

/// Why a read went where it went (the `reason` label of [`READS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A usable replica.
    Replica,
    /// The database has no replicas.
    NoReplicas,
    /// The caller asked for the primary.
    PrimaryRequested,
    /// Every replica that answers is beyond the lag bound.
    Lagging,
    /// No replica answers its checks.
    Unhealthy,
    /// No usable replica has replayed the caller's write yet.
    Token,
    /// The chosen replica failed the read; the primary served it.
    ReplicaFailed,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Replica => "replica",
            Route::NoReplicas => "no_replicas",
            Route::PrimaryRequested => "primary_requested",
            Route::Lagging => "lagging",
            Route::Unhealthy => "unhealthy",
            Route::Token => "token",
            Route::ReplicaFailed => "replica_failed",
        }
    }
}

/// What a replica's state is, for operators and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// The database, e.g. `shard-0`.
    pub db: String,
    /// The replica, e.g. `replica-0`.
    pub node: String,
    /// Whether its last check (or read) succeeded.
    pub healthy: bool,
    /// Whether it receives reads now: healthy and within the lag bound.
    pub usable: bool,
    /// Its lag as last measured; `None` until measured or while down.
    pub lag: Option<Duration>,
    /// The WAL position it had replayed at the last check.
    pub replay_lsn: u64,
    /// Reads it has served.
    pub served: u64,
}

/// A database: its primary and replicas, and how reads are spread.
#[derive(Debug)]
pub(crate) struct ReplicaSet {
    pub(crate) id: DbId,
    pub(crate) primary: Node,
    pub(crate) replicas: Vec<Node>,
    policy: ReadPolicy,
    max_lag: Duration,
    check_timeout: Duration,
    next: AtomicUsize,
}

impl ReplicaSet {
    pub(crate) fn new(
        id: DbId,
        primary: Node,
        replicas: Vec<Node>,
        policy: ReadPolicy,
        max_lag: Duration,
        check_timeout: Duration,
    ) -> Self {
        Self {
            id,
            primary,
            replicas,
            policy,
            max_lag,
            check_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// The database's name: `catalog` or `shard-N`.
    pub(crate) fn name(&self) -> &str {
        &self.primary.db
    }

    pub(crate) fn backend(&self) -> Backend {
        self.primary.pool.backend()
    }

    /// Picks the replica for a read, or says why the primary must serve it.
    fn pick(&self, consistency: Consistency) -> Result<&Node, Route> {
        if self.replicas.is_empty() {
            return Err(Route::NoReplicas);
        }
        let min_lsn = match consistency {
            Consistency::Primary => return Err(Route::PrimaryRequested),
            Consistency::AtLeast(token) if token.db == self.id => token.lsn,
            Consistency::AtLeast(_) | Consistency::Eventual => 0,
        };
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut candidates = (0..n)
            .map(|k| &self.replicas[(start + k) % n])
            .filter(|r| r.within(self.max_lag) && r.replay_lsn() >= min_lsn);
        let chosen = match self.policy {
            ReadPolicy::RoundRobin => candidates.next(),
            // Ties go to the round-robin order, so that an idle set still
            // spreads its reads.
            ReadPolicy::LeastOutstanding => candidates.min_by_key(|r| r.outstanding()),
        };
        chosen.ok_or_else(|| {
            if self.replicas.iter().any(|r| r.within(self.max_lag)) {
                Route::Token
            } else if self.replicas.iter().any(Node::is_healthy) {
                Route::Lagging
            } else {
                Route::Unhealthy
            }
        })
    }

    fn count_read(&self, target: &'static str, route: Route) {
        metrics::counter!(
            READS,
            "db" => self.name().to_owned(),
            "target" => target,
            "reason" => route.label()
        )
        .increment(1);
    }

    /// Runs a read: on a replica when `consistency` and the replicas' state
    /// allow, else (or when the replica cannot serve) on the primary.
    pub(crate) async fn read<T, F, Fut>(
        &self,
        op: &'static str,
        consistency: Consistency,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Pool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let route = match self.pick(consistency) {
            Ok(replica) => match replica.timed(op, f(replica.pool.clone())).await {
                Ok(value) => {
                    replica.count_served();
                    self.count_read("replica", Route::Replica);
                    return Ok(value);
                }
                Err(StoreError::Query { source, .. }) if behind_on_schema(&source) => {
                    // Right after a migration a replica may not have replayed
                    // the new tables yet; the primary has them.
                    Route::ReplicaFailed
                }
                Err(StoreError::Query { source, .. }) if node_unavailable(&source) => {
                    if replica.set_healthy(false) {
                        tracing::warn!(
                            db = %replica.db,
                            node = %replica.node,
                            error = %source,
                            "replica failed a read; it receives no reads until it answers its checks"
                        );
                    }
                    metrics::gauge!(REPLICA_USABLE, "db" => replica.db.clone(), "node" => replica.node.clone())
                        .set(0.0);
                    Route::ReplicaFailed
                }
                Err(other) => return Err(other),
            },
            Err(route) => route,
        };
        self.count_read("primary", route);
        self.primary.count_served();
        self.primary.timed(op, f(self.primary.pool.clone())).await
    }

    /// Runs a write (or a read that must see the latest data) on the primary.
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        self.primary.timed(op, f).await
    }

    /// Whether writes to this database get consistency tokens: only when
    /// there are replicas to compare them with.
    pub(crate) fn hands_out_tokens(&self) -> bool {
        !self.replicas.is_empty() && self.backend() == Backend::Postgres
    }

    /// The token of a write whose commit left the primary's WAL at `lsn`.
    pub(crate) fn token(&self, lsn: u64) -> ConsistencyToken {
        ConsistencyToken { db: self.id, lsn }
    }

    /// The token of a write that has just committed on the primary: its WAL
    /// position, when the database has replicas to compare it with.
    ///
    /// Reading the position can fail after the write has committed; the
    /// write must not be reported as failed then (a client would retry it),
    /// so the token says "primary only" instead.
    pub(crate) async fn token_after_commit(&self) -> Option<ConsistencyToken> {
        if !self.hands_out_tokens() {
            return None;
        }
        let lsn = self
            .primary
            .timed("wal_position", current_lsn(&self.primary.pool))
            .await;
        Some(ConsistencyToken {
            db: self.id,
            lsn: lsn.unwrap_or_else(|error| {
                tracing::warn!(db = %self.name(), %error, "cannot read the WAL position after a write; the writer's reads go to the primary");
                u64::MAX
            }),
        })
    }

    /// Measures every replica: health, replay position and lag. Run by the
    /// store's monitor.
    pub(crate) async fn check(&self) {
        if self.replicas.is_empty() {
            return;
        }
        let primary_lsn = tokio::time::timeout(
            self.check_timeout,
            self.primary
                .timed("replica_check", current_lsn(&self.primary.pool)),
        )
        .await
        .ok()
        .and_then(Result::ok);
        futures::future::join_all(
            self.replicas
                .iter()
                .map(|replica| self.check_replica(replica, primary_lsn)),
        )
        .await;
    }

    async fn check_replica(&self, replica: &Node, primary_lsn: Option<u64>) {
        let probe = replica.timed("replica_check", replay_state(&replica.pool));
        let state = match tokio::time::timeout(self.check_timeout, probe).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.check_timeout)),
        };
        let was_usable = replica.within(self.max_lag);
        let labels = [("db", replica.db.clone()), ("node", replica.node.clone())];
        match state {
            Ok(state) if !state.in_recovery => {
                replica.set_healthy(false);
                replica.set_lag(None);
                if was_usable {
                    tracing::error!(db = %replica.db, node = %replica.node, "replica is not in recovery (promoted?); it receives no reads");
                }
            }
            Ok(state) => {
                replica.set_healthy(true);
                replica.set_replay_lsn(state.replay_lsn);
                let caught_up = primary_lsn.is_some_and(|p| state.replay_lsn >= p);
                // Behind, and no transaction replayed since the replica
                // started: the lag cannot be told, so it is not trusted.
                let lag = if caught_up {
                    Some(Duration::ZERO)
                } else {
                    state
                        .since_last_replay
                        .map(|s| Duration::from_secs_f64(s.max(0.0)))
                };
                replica.set_lag(lag);
                metrics::gauge!(REPLICA_LAG, &labels)
                    .set(lag.map_or(f64::NAN, |l| l.as_secs_f64()));
                if let Some(p) = primary_lsn {
                    metrics::gauge!(REPLICA_LAG_BYTES, &labels)
                        .set(p.saturating_sub(state.replay_lsn) as f64);
                }
            }
            Err(error) => {
                replica.set_healthy(false);
                replica.set_lag(None);
                if was_usable {
                    tracing::warn!(db = %replica.db, node = %replica.node, %error, "replica failed its check; it receives no reads");
                }
            }
        }
        let usable = replica.within(self.max_lag);
        metrics::gauge!(REPLICA_USABLE, &labels).set(if usable { 1.0 } else { 0.0 });
        if usable && !was_usable {
            tracing::info!(db = %replica.db, node = %replica.node, "replica receives reads");
        } else if !usable && was_usable && replica.is_healthy() {
            tracing::warn!(
                db = %replica.db,
                node = %replica.node,
                lag_ms = replica.lag().map_or(u128::MAX, |l| l.as_millis()),
                max_lag_ms = self.max_lag.as_millis(),
                "replica is too far behind; it receives no reads until it catches up"
            );
        }
    }

    pub(crate) fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|r| ReplicaStatus {
                db: r.db.clone(),
                node: r.node.clone(),
                healthy: r.is_healthy(),
                usable: r.within(self.max_lag),
                lag: r.lag(),
                replay_lsn: r.replay_lsn(),
                served: r.served(),
            })
            .collect()
    }

    pub(crate) async fn close(&self) {
        self.primary.pool.close().await;
        for replica in &self.replicas {
            replica.pool.close().await;
        }
    }
}

/// Whether a replica failed because it lacks a table or column that the
/// primary has (SQLSTATE 42P01 or 42703): it has not replayed a migration yet.
fn behind_on_schema(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("42P01" | "42703")))
}

/// Reads the primary's current WAL insert position as a byte offset.
pub(crate) const CURRENT_LSN: &str =
    "SELECT CAST(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') AS BIGINT)";

/// The primary's current WAL insert position, as a byte offset.
///
/// The insert position, not the write or flush position: with
/// `synchronous_commit = off` a commit returns before its record is written,
/// and a token must still cover it.
async fn current_lsn(pool: &Pool) -> Result<u64, sqlx::Error> {
    let lsn: i64 = on_pool!(pool, p => sqlx::query_scalar(CURRENT_LSN)
    .fetch_one(p)
    .await)?;
    Ok(lsn.max(0) as u64)
}

#[derive(Debug, sqlx::FromRow)]
struct ReplayState {
    in_recovery: bool,
    replay_lsn: i64,
    since_last_replay: Option<f64>,
}

struct Replay {
    in_recovery: bool,
    replay_lsn: u64,
    /// Seconds since the last replayed transaction; `None` when none has
    /// been replayed since the replica started.
    since_last_replay: Option<f64>,
}

/// A replica's recovery state: whether it still replays, how far it has
/// replayed, and the seconds since the last transaction it replayed.
async fn replay_state(pool: &Pool) -> Result<Replay, sqlx::Error> {
    let row: ReplayState = on_pool!(pool, p => sqlx::query_as(
        "SELECT pg_is_in_recovery() AS in_recovery, \
         CAST(COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0'), 0) AS BIGINT) AS replay_lsn, \
         CAST(EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp())) AS DOUBLE PRECISION) \
         AS since_last_replay"
    )
    .fetch_one(p)
    .await)?;
    Ok(Replay {
        in_recovery: row.in_recovery,
        replay_lsn: row.replay_lsn.max(0) as u64,
        since_last_replay: row.since_last_replay,
    })
}

/// Registers the replica metrics with their help texts.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        REPLICA_LAG,
        metrics::Unit::Seconds,
        "Replication lag of each replica as last measured."
    );
    metrics::describe_gauge!(
        REPLICA_LAG_BYTES,
        metrics::Unit::Bytes,
        "Bytes of WAL each replica has yet to replay."
    );
    metrics::describe_gauge!(
        REPLICA_USABLE,
        "1 while a replica receives reads; 0 while it is down or beyond the lag bound."
    );
    metrics::describe_counter!(
        READS,
        "Reads by database, the node kind that served them (replica or primary) and why."
    );
}
