//! The outbox relay: publishes every database's outbox rows (orders on the
//! shards, jobs in the catalog) to their topics and marks them sent.
//!
//! One loop per database reads the oldest unsent rows, publishes them (each
//! message's id is its row's, `shard-3-17`, so every publish of a row carries
//! the same id), waits for the queue's acknowledgement, and only then marks
//! the rows sent. A crash between the two leaves the rows unsent: the next
//! relay publishes them again under the same ids, which the consumers' dedupe
//! records catch (and which JetStream drops first within its window when
//! `queue.nats.dedupe_on_publish` is on). No row is ever marked sent before it is durable in the queue, so none
//! is published zero times. Rows of one database are published in id order.
//!
//! Several relays (several worker processes) may run at once; they then
//! publish some rows twice, which is safe for the same reason, and costs
//! only throughput.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use scalestack_config::RelayConfig;
use scalestack_queue::{Backend, Message, QueueError};
use scalestack_resilience::Backoff;
use scalestack_store::{DbId, RelayRow, Store, StoreError, now_ms};
use tokio::sync::watch;

use super::failpoint;

/// Counter of outbox rows published, by `db` and `topic`.
pub const RELAY_PUBLISHED: &str = "scalestack_relay_published_total";
/// Gauge of the age of the oldest unsent outbox row, by `db` (0 when none).
pub const RELAY_LAG: &str = "scalestack_relay_lag_seconds";
/// Gauge of outbox rows not yet published, by database (label `shard`,
/// whose values are database names: `catalog`, `shard-0`, ...).
pub const OUTBOX_BACKLOG: &str = "scalestack_outbox_backlog";
/// Histogram of one relay round (read, publish, mark sent), by `db`.
pub const RELAY_ROUND: &str = "scalestack_relay_round_seconds";
/// Counter of relay failures, by `db` and `op` (`read`, `publish`, `mark`).
pub const RELAY_ERRORS: &str = "scalestack_relay_errors_total";

/// How often sent rows past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Registers the descriptions of the relay's series.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RELAY_PUBLISHED,
        "Outbox rows published, by database and topic."
    );
    describe_gauge!(
        RELAY_LAG,
        Unit::Seconds,
        "Age of the oldest outbox row not yet published, by database."
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows not yet published, by database (label shard)."
    );
    describe_histogram!(
        RELAY_ROUND,
        Unit::Seconds,
        "One relay round of a database: read, publish, mark sent."
    );
    describe_counter!(
        RELAY_ERRORS,
        "Relay failures, by database and operation (read, publish, mark)."
    );
}

/// The message an outbox row is published as: every publish of the row
/// carries the row's identity as its id, and the row's key and payload.
pub fn message_of(row: &RelayRow) -> Message {
    Message::new(
        row.message_id(),
        row.key.clone(),
        row.payload.clone().into_bytes(),
    )
    .with_header("content-type", "application/json")
}

/// Why a relay round failed; the rows stay unsent and are tried again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking the outbox failed.
    #[error("outbox of {db}: {source}")]
    Store {
        /// The database.
        db: DbId,
        /// What the store said.
        source: StoreError,
    },
    /// Publishing failed.
    #[error("publishing {db}'s outbox to {topic}: {source}")]
    Queue {
        /// The database.
        db: DbId,
        /// The topic.
        topic: String,
        /// What the queue said.
        source: QueueError,
    },
}

/// The relay of every outbox of a store to a queue.
#[derive(Debug)]
pub struct Relay<B: Backend> {
    store: Store,
    queue: Arc<B>,
    config: RelayConfig,
    /// Consecutive failed rounds per database, for the health check.
    failures: BTreeMap<DbId, AtomicU32>,
}

impl<B: Backend> Relay<B> {
    /// A relay from `store`'s outboxes to `queue`.
    pub fn new(store: Store, queue: Arc<B>, config: &RelayConfig) -> Self {
        let failures = store
            .outbox_databases()
            .into_iter()
            .map(|db| (db, AtomicU32::new(0)))
            .collect();
        Self {
            store,
            queue,
            config: config.clone(),
            failures,
        }
    }

    /// Databases whose last three rounds or more failed.
    pub fn failing(&self) -> Vec<DbId> {
        self.failures
            .iter()
            .filter(|(_, n)| n.load(Ordering::Relaxed) >= 3)
            .map(|(db, _)| *db)
            .collect()
    }

    /// One round for `db`: publishes up to `batch_size` unsent rows and marks
    /// them sent. Returns how many rows it relayed.
    pub async fn pump(&self, db: DbId) -> Result<usize, RelayError> {
        let started = Instant::now();
        let labels = [("db", db.to_string())];
        let rows = self
            .store
            .outbox_pending(
                db,
                u32::try_from(self.config.batch_size).unwrap_or(u32::MAX),
            )
            .await
            .map_err(|source| self.failed(db, "read", RelayError::Store { db, source }))?;
        if rows.is_empty() {
            metrics::gauge!(RELAY_LAG, &labels).set(0.0);
            return Ok(0);
        }
        let oldest = rows.iter().map(|r| r.created_at).min().unwrap_or_default();
        metrics::gauge!(RELAY_LAG, &labels).set((now_ms() - oldest).max(0) as f64 / 1e3);
        // Rows of one topic keep their order; topics are published one after
        // the other.
        let mut by_topic: BTreeMap<&str, Vec<&RelayRow>> = BTreeMap::new();
        for row in &rows {
            by_topic.entry(row.topic.as_str()).or_default().push(row);
        }
        for (topic, rows) in &by_topic {
            let messages: Vec<Message> = rows.iter().map(|r| message_of(r)).collect();
            self.queue
                .publish(topic, &messages)
                .await
                .map_err(|source| {
                    self.failed(
                        db,
                        "publish",
                        RelayError::Queue {
                            db,
                            topic: (*topic).to_owned(),
                            source,
                        },
                    )
                })?;
            metrics::counter!(RELAY_PUBLISHED, "db" => db.to_string(), "topic" => (*topic).to_owned())
                .increment(messages.len() as u64);
        }
        // The crash this module is built to survive: published, not marked.
        failpoint::hit(failpoint::RELAY_AFTER_PUBLISH);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        self.store
            .mark_outbox_sent(db, &ids, now_ms())
            .await
            .map_err(|source| self.failed(db, "mark", RelayError::Store { db, source }))?;
        if let Some(n) = self.failures.get(&db) {
            n.store(0, Ordering::Relaxed);
        }
        metrics::histogram!(RELAY_ROUND, &labels).record(started.elapsed().as_secs_f64());
        tracing::trace!(%db, rows = rows.len(), "outbox rows relayed");
        Ok(rows.len())
    }

    fn failed(&self, db: DbId, op: &'static str, error: RelayError) -> RelayError {
        metrics::counter!(RELAY_ERRORS, "db" => db.to_string(), "op" => op).increment(1);
        if let Some(n) = self.failures.get(&db) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        error
    }

    /// Relays until every database's outbox is empty (for tests and tools);
    /// returns how many rows were relayed.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let mut round = 0;
            for db in self.store.outbox_databases() {
                round += self.pump(db).await?;
            }
            if round == 0 {
                return Ok(total);
            }
            total += round;
        }
    }

    /// Relays every database's outbox until `stop` turns true, and deletes
    /// sent rows past `worker.relay.sent_retention` now and then. A round in
    /// progress is finished before it stops.
    pub async fn run(&self, stop: watch::Receiver<bool>) {
        let loops = self
            .store
            .outbox_databases()
            .into_iter()
            .map(|db| self.run_db(db, stop.clone()));
        tokio::join!(futures::future::join_all(loops), self.purge(stop.clone()));
    }

    async fn run_db(&self, db: DbId, mut stop: watch::Receiver<bool>) {
        let backoff = Backoff::new(self.config.poll_interval, Duration::from_secs(5));
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let pause = match self.pump(db).await {
                Ok(n) if n >= self.config.batch_size => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    self.config.poll_interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    // Logged on the first failure and then every tenth, so a
                    // queue that is down does not flood the log.
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(%error, %db, failures, "outbox relay round failed; retrying");
                    }
                    backoff.delay_random(failures - 1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn purge(&self, mut stop: watch::Receiver<bool>) {
        let retention = i64::try_from(self.config.sent_retention.as_millis()).unwrap_or(i64::MAX);
        loop {
            for db in self.store.outbox_databases() {
                match self
                    .store
                    .purge_sent_outbox(db, now_ms().saturating_sub(retention))
                    .await
                {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(%db, deleted, "sent outbox rows deleted"),
                    Err(error) => tracing::warn!(%error, %db, "cannot delete sent outbox rows"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PURGE_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Publishes the backlog gauges of every database (rows waiting).
    pub async fn measure(&self) -> Result<(), StoreError> {
        for db in self.store.outbox_databases() {
            let lag = self.store.outbox_lag(db).await?;
            metrics::gauge!(OUTBOX_BACKLOG, "shard" => db.to_string()).set(lag.unsent as f64);
        }
        Ok(())
    }
}
