//! The embedded backend: topics, groups and dead letters in one SQLite file.
//!
//! Why SQLite and not a hand-written segmented log: the one-machine stack has
//! several OS processes (api instances publish, the worker consumes, the CLI
//! redrives) on the same queue. SQLite in WAL mode gives them cross-process
//! locking, atomic multi-row commits (a batch ack, a move to the dead-letter
//! queue, a fetch that leases rows and moves a cursor) and crash recovery
//! that survives `kill -9` at any instruction, all of which a custom log would
//! have to build and prove. Throughput is bounded by one writer at a time;
//! batching (one transaction per published batch, per fetch, per ack of a
//! batch) keeps that in the tens of thousands of messages per second, well
//! above what the one-machine stack produces. `cargo xtask bench queue`
//! measures it.
//!
//! Durability: every operation is one transaction. With the default
//! `sync = "normal"` a commit is in the WAL in the OS's page cache before the
//! call returns, which survives the death of the process; `"full"` also
//! fsyncs each commit, which survives a power cut.
//!
//! This module owns the file's schema (`migrations/embedded`) and must not be opened
//! with another schema's migrations; nothing else reads the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use scalestack_config::{Config, QueueSync};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::dlq::{AttemptRecord, DeadLetter, DlqScope, DlqTarget};
use crate::metrics::{DUPLICATES, PUBLISHED, STALE};
use crate::{
    Backend, Delivery, Failure, GroupStats, Message, Published, QueueError, Token, TopicSpec,
    partition_of, validate_name,
};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/embedded");

/// Acknowledged messages stay this long so that a late duplicate publish of
/// the same id is still recognised (JetStream's default duplicate window).
const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// Messages per multi-row insert: 7 parameters each, within SQLite's
/// 32,766-parameter limit.
const PUBLISH_CHUNK: usize = 500;

/// How often one process trims acknowledged and expired messages.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Settings of an [`EmbeddedQueue`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The SQLite file.
    pub path: PathBuf,
    /// When commits are forced to disk.
    pub sync: QueueSync,
    /// How often an idle fetch looks for messages from other processes.
    pub poll_interval: Duration,
    /// Time a write waits for another process's write lock.
    pub busy_timeout: Duration,
    /// Time a consumer has to settle a delivery.
    pub ack_deadline: Duration,
    /// Longest time a message is kept.
    pub retention: Duration,
    /// The time source of due times and deadlines.
    pub clock: Arc<dyn Clock>,
}

impl EmbeddedOptions {
    /// Options for the file at `path` with the defaults of `[queue]`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let defaults = scalestack_config::QueueConfig::default();
        Self {
            path: path.into(),
            sync: defaults.embedded.sync,
            poll_interval: defaults.embedded.poll_interval,
            busy_timeout: defaults.embedded.busy_timeout,
            ack_deadline: defaults.ack_deadline,
            retention: defaults.retention,
            clock: Arc::new(SystemClock),
        }
    }

    /// Options from the configuration: the file resolves inside `data_dir`.
    pub fn from_config(config: &Config) -> Self {
        let queue = &config.queue;
        let file = &queue.embedded.file;
        let path = if file.is_absolute() {
            file.clone()
        } else {
            config.data_dir.join(file)
        };
        Self {
            path,
            sync: queue.embedded.sync,
            poll_interval: queue.embedded.poll_interval,
            busy_timeout: queue.embedded.busy_timeout,
            ack_deadline: queue.ack_deadline,
            retention: queue.retention,
            clock: Arc::new(SystemClock),
        }
    }

    /// Returns the options with another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Returns the options with another ack deadline.
    pub fn with_ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }
}

/// The embedded queue; cheap to clone, safe to open from several processes.
#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    options: EmbeddedOptions,
    /// Serialises this process's write transactions, so that only other
    /// processes ever meet SQLite's busy handler (which sleeps coarsely).
    write: tokio::sync::Mutex<()>,
    /// Wakes this process's idle fetches when it publishes or settles.
    wake: Notify,
    /// Rotates the first partition a fetch looks at, for fairness.
    rotor: AtomicU32,
    /// Partition counts of known topics.
    topics: Mutex<HashMap<String, u32>>,
    /// When this process last trimmed, in clock ms.
    last_trim: AtomicI64,
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> QueueError {
    move |source| QueueError::Embedded { op, source }
}

/// A lease: the deliveries of one fetch share topic, group and token.
type LeaseKey<'a> = (&'a str, &'a str, i64);

/// A candidate partition of a fetch, as read without the write lock.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    partition: u32,
}

impl EmbeddedQueue {
    /// Opens (creating if missing) the queue file and brings its schema up to
    /// date.
    pub async fn open(options: EmbeddedOptions) -> Result<Self, QueueError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db("parse options"))?
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.sync {
                QueueSync::Normal => SqliteSynchronous::Normal,
                QueueSync::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(connect)
            .await
            .map_err(db("open"))?;
        migrate(&pool).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                write: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                rotor: AtomicU32::new(rand::random::<u32>()),
                topics: Mutex::new(HashMap::new()),
                last_trim: AtomicI64::new(0),
            }),
        })
    }

    /// The file this queue lives in.
    pub fn path(&self) -> &Path {
        &self.inner.options.path
    }

    /// Closes the connections (pending writes are already committed).
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    fn now(&self) -> i64 {
        self.inner.options.clock.now_ms()
    }

    /// Partitions of `topic`, from the cache or the file.
    async fn partitions(&self, topic: &str) -> Result<u32, QueueError> {
        if let Some(n) = self.inner.topics.lock().unwrap().get(topic) {
            return Ok(*n);
        }
        let n: Option<i64> = sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db("read topic"))?;
        let n = n.ok_or_else(|| QueueError::UnknownTopic(topic.to_owned()))? as u32;
        self.inner
            .topics
            .lock()
            .unwrap()
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    /// Partitions of `group` that may be fetched now, rotated for fairness.
    async fn candidates(&self, topic: &str, group: &str) -> Result<Vec<Candidate>, QueueError> {
        let now = self.now();
        let rows = sqlx::query(
            "SELECT c.partition, \
               EXISTS (SELECT 1 FROM pending p WHERE p.topic = c.topic AND p.grp = c.grp \
                       AND p.partition = c.partition AND p.in_flight = 1 AND p.due_at > ?3) AS blocked, \
               EXISTS (SELECT 1 FROM pending p WHERE p.topic = c.topic AND p.grp = c.grp \
                       AND p.partition = c.partition AND p.due_at <= ?3) AS due, \
               EXISTS (SELECT 1 FROM messages m WHERE m.topic = c.topic AND m.partition = c.partition \
                       AND m.seq > c.delivered AND m.only_group IN ('', c.grp)) AS fresh \
             FROM cursors c WHERE c.topic = ?1 AND c.grp = ?2",
        )
        .bind(topic)
        .bind(group)
        .bind(now)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db("find partitions"))?;
        if rows.is_empty() {
            self.partitions(topic).await?;
            return Err(QueueError::UnknownGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        }
        let count = rows.len() as u32;
        let start = self.inner.rotor.fetch_add(1, Ordering::Relaxed) % count;
        let mut found: Vec<(u32, Candidate)> = rows
            .iter()
            .filter(|r| !r.get::<bool, _>("blocked") && (r.get("due") || r.get("fresh")))
            .map(|r| {
                let partition = r.get::<i64, _>("partition") as u32;
                ((partition + count - start) % count, Candidate { partition })
            })
            .collect();
        found.sort_by_key(|(order, _)| *order);
        Ok(found.into_iter().map(|(_, c)| c).collect())
    }

    /// One attempt to lease up to `max` messages of one free partition.
    async fn try_fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let candidates = self.candidates(topic, group).await?;
        for candidate in candidates {
            let batch = self.lease(topic, group, candidate.partition, max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        Ok(Vec::new())
    }

    /// Leases the due redeliveries and then the new messages of one partition,
    /// unless another consumer took it since the candidates were read.
    ///
    /// A handful of set-based statements whatever the batch size: with
    /// sqlx's SQLite driver every statement is a round trip to the
    /// connection's thread, so per-row statements would dominate.
    async fn lease(
        &self,
        topic: &str,
        group: &str,
        partition: u32,
        max: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let _write = self.inner.write.lock().await;
        let now = self.now();
        let deadline = now + self.inner.options.ack_deadline.as_millis() as i64;
        let token: i64 = rand::random();
        let partition_arg = i64::from(partition);
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("begin fetch"))?;
        let blocked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pending WHERE topic = ? AND grp = ? AND partition = ? \
             AND in_flight = 1 AND due_at > ?)",
        )
        .bind(topic)
        .bind(group)
        .bind(partition_arg)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("check partition"))?;
        if blocked {
            return Ok(Vec::new());
        }
        // Redeliveries first: nakked messages whose delay is over and
        // in-flight messages whose deadline passed.
        let redelivered = sqlx::query(
            "UPDATE pending SET attempts = attempts + 1, in_flight = 1, due_at = ?1, token = ?2 \
             WHERE topic = ?3 AND grp = ?4 AND seq IN (SELECT seq FROM pending \
               WHERE topic = ?3 AND grp = ?4 AND partition = ?5 AND due_at <= ?6 \
               ORDER BY seq LIMIT ?7)",
        )
        .bind(deadline)
        .bind(token)
        .bind(topic)
        .bind(group)
        .bind(partition_arg)
        .bind(now)
        .bind(max as i64)
        .execute(&mut *tx)
        .await
        .map_err(db("lease redeliveries"))?
        .rows_affected() as usize;
        let room = max.saturating_sub(redelivered);
        if room > 0 {
            let fresh = sqlx::query(
                "INSERT INTO pending (topic, grp, seq, partition, attempts, in_flight, due_at, token) \
                 SELECT ?1, ?2, seq, partition, 1, 1, ?3, ?4 FROM messages \
                 WHERE topic = ?1 AND partition = ?5 AND only_group IN ('', ?2) AND seq > \
                   (SELECT delivered FROM cursors WHERE topic = ?1 AND grp = ?2 AND partition = ?5) \
                 ORDER BY seq LIMIT ?6",
            )
            .bind(topic)
            .bind(group)
            .bind(deadline)
            .bind(token)
            .bind(partition_arg)
            .bind(room as i64)
            .execute(&mut *tx)
            .await
            .map_err(db("lease new messages"))?
            .rows_affected();
            if fresh > 0 {
                sqlx::query(
                    "UPDATE cursors SET delivered = MAX(delivered, \
                       (SELECT MAX(seq) FROM pending WHERE topic = ?1 AND grp = ?2 \
                        AND partition = ?3 AND token = ?4)) \
                     WHERE topic = ?1 AND grp = ?2 AND partition = ?3",
                )
                .bind(topic)
                .bind(group)
                .bind(partition_arg)
                .bind(token)
                .execute(&mut *tx)
                .await
                .map_err(db("move cursor"))?;
            }
        }
        let rows = sqlx::query(
            "SELECT p.seq, p.attempts, m.msg_id, m.key, m.payload, m.headers, m.published_at \
             FROM pending p LEFT JOIN messages m ON m.seq = p.seq \
             WHERE p.topic = ? AND p.grp = ? AND p.partition = ? AND p.token = ? ORDER BY p.seq",
        )
        .bind(topic)
        .bind(group)
        .bind(partition_arg)
        .bind(token)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read leased messages"))?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get("seq");
            let Some(id) = row.get::<Option<String>, _>("msg_id") else {
                // Only retention removes a message with a pending row; there is
                // nothing left to deliver.
                tracing::warn!(topic, group, seq, "pending message expired before delivery");
                sqlx::query("DELETE FROM pending WHERE topic = ? AND grp = ? AND seq = ?")
                    .bind(topic)
                    .bind(group)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("drop expired pending"))?;
                continue;
            };
            let headers: String = row.get("headers");
            deliveries.push(Delivery {
                topic: topic.to_owned(),
                group: group.to_owned(),
                partition,
                seq: seq as u64,
                message: Message {
                    id,
                    key: row.get("key"),
                    payload: Bytes::from(row.get::<Vec<u8>, _>("payload")),
                    headers: serde_json::from_str(&headers).map_err(|e| QueueError::Decode {
                        what: "message headers",
                        message: e.to_string(),
                    })?,
                },
                published_at_ms: row.get("published_at"),
                attempt: row.get::<i64, _>("attempts") as u32,
                token: Token::Embedded(token),
            });
        }
        tx.commit().await.map_err(db("commit fetch"))?;
        Ok(deliveries)
    }

    /// Deletes messages every group is done with (once past the dedup
    /// window) and messages older than the retention, unless still pending.
    async fn trim(&self) -> Result<u64, QueueError> {
        let now = self.now();
        let last = self.inner.last_trim.load(Ordering::Relaxed);
        if now - last < TRIM_EVERY.as_millis() as i64 {
            return Ok(0);
        }
        self.inner.last_trim.store(now, Ordering::Relaxed);
        let done_before = now - DEDUP_WINDOW.as_millis() as i64;
        let expired_before = now - self.inner.options.retention.as_millis() as i64;
        let topics: Vec<(String, i64)> = sqlx::query_as("SELECT name, partitions FROM topics")
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db("list topics"))?;
        let mut removed = 0;
        // Per partition, so that every statement walks the (topic, partition,
        // seq) index, and in short transactions, so that the write lock is
        // never held for long.
        for (topic, partitions) in topics {
            for partition in 0..partitions {
                let _write = self.inner.write.lock().await;
                // Everything every group has been handed and settled, once
                // the dedup window has passed.
                removed += sqlx::query(
                    "DELETE FROM messages WHERE topic = ?1 AND partition = ?2 \
                     AND seq <= (SELECT MIN(delivered) FROM cursors WHERE topic = ?1 AND partition = ?2) \
                     AND published_at < ?3 \
                     AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.topic = ?1 AND p.seq = messages.seq)",
                )
                .bind(&topic)
                .bind(partition)
                .bind(done_before)
                .execute(&self.inner.pool)
                .await
                .map_err(db("trim settled"))?
                .rows_affected();
                // Whatever is older than the retention, oldest first.
                loop {
                    let expired = sqlx::query(
                        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages \
                           WHERE topic = ?1 AND partition = ?2 ORDER BY seq LIMIT 1000) \
                         AND published_at < ?3 \
                         AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.topic = ?1 AND p.seq = messages.seq)",
                    )
                    .bind(&topic)
                    .bind(partition)
                    .bind(expired_before)
                    .execute(&self.inner.pool)
                    .await
                    .map_err(db("trim expired"))?
                    .rows_affected();
                    removed += expired;
                    if expired < 1000 {
                        break;
                    }
                }
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "trimmed the embedded queue");
        }
        Ok(removed)
    }

    fn embedded_token(delivery: &Delivery) -> Result<i64, QueueError> {
        match &delivery.token {
            Token::Embedded(token) => Ok(*token),
            Token::Nats(_) => Err(QueueError::InvalidArgument(
                "a JetStream delivery cannot be settled on the embedded queue".into(),
            )),
        }
    }

    fn stale(delivery: &Delivery, op: &'static str, count: u64) {
        metrics::counter!(STALE, "topic" => delivery.topic.clone(), "group" => delivery.group.clone())
            .increment(count);
        tracing::debug!(topic = %delivery.topic, group = %delivery.group, count, op,
            "deliveries were redelivered since; settlement ignored");
    }

    /// Deliveries grouped by lease: (topic, group, token) → positions.
    fn leases(deliveries: &[Delivery]) -> Result<Vec<(LeaseKey<'_>, Vec<i64>)>, QueueError> {
        let mut leases: Vec<(LeaseKey<'_>, Vec<i64>)> = Vec::new();
        for d in deliveries {
            let key = (d.topic.as_str(), d.group.as_str(), Self::embedded_token(d)?);
            match leases.iter_mut().find(|(k, _)| *k == key) {
                Some((_, seqs)) => seqs.push(d.seq as i64),
                None => leases.push((key, vec![d.seq as i64])),
            }
        }
        Ok(leases)
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), QueueError> {
    // Two processes opening a fresh file at once may race on the migration
    // table; the loser finds the work done when it tries again.
    let mut attempt = 0;
    loop {
        match MIGRATIONS.run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(%error, attempt, "queue migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(source) => {
                return Err(QueueError::Embedded {
                    op: "migrate",
                    source: source.into(),
                });
            }
        }
    }
}

fn scope_args(scope: &DlqScope) -> (Option<&str>, Option<&str>) {
    (scope.topic.as_deref(), scope.group.as_deref())
}

fn decode_letter(id: i64, record: &str) -> Result<DeadLetter, QueueError> {
    let mut letter: DeadLetter = serde_json::from_str(record).map_err(|e| QueueError::Decode {
        what: "dead letter",
        message: e.to_string(),
    })?;
    letter.id = id as u64;
    Ok(letter)
}

impl Backend for EmbeddedQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn ack_deadline(&self) -> Duration {
        self.inner.options.ack_deadline
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), QueueError> {
        spec.validate()?;
        let _write = self.inner.write.lock().await;
        let now = self.now();
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("begin ensure topic"))?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read topic"))?;
        match existing {
            Some(n) if n as u32 != spec.partitions => {
                return Err(QueueError::PartitionMismatch {
                    topic: spec.name.clone(),
                    existing: n as u32,
                    requested: spec.partitions,
                });
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO topics (name, partitions, created_at) VALUES (?, ?, ?)")
                    .bind(&spec.name)
                    .bind(spec.partitions as i64)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("create topic"))?;
            }
        }
        for group in &spec.groups {
            sqlx::query("INSERT OR IGNORE INTO groups (topic, grp, created_at) VALUES (?, ?, ?)")
                .bind(&spec.name)
                .bind(group)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("create group"))?;
            for partition in 0..spec.partitions {
                sqlx::query(
                    "INSERT OR IGNORE INTO cursors (topic, grp, partition, delivered) VALUES (?, ?, ?, 0)",
                )
                .bind(&spec.name)
                .bind(group)
                .bind(partition as i64)
                .execute(&mut *tx)
                .await
                .map_err(db("create cursor"))?;
            }
        }
        tx.commit().await.map_err(db("commit ensure topic"))?;
        self.inner
            .topics
            .lock()
            .unwrap()
            .insert(spec.name.clone(), spec.partitions);
        Ok(())
    }

    async fn prepare_group(
        &self,
        topic: &str,
        group: &str,
        _batch_size: usize,
    ) -> Result<(), QueueError> {
        // Exclusivity per partition is enforced by every fetch; checking
        // that the group exists is all there is to do.
        self.group_stats(topic, group).await.map(|_| ())
    }

    async fn publish(
        &self,
        topic: &str,
        messages: &[Message],
    ) -> Result<Vec<Published>, QueueError> {
        let partitions = self.partitions(topic).await?;
        let mut out = Vec::with_capacity(messages.len());
        let mut duplicates = 0u64;
        {
            let _write = self.inner.write.lock().await;
            let now = self.now();
            let mut tx = self
                .inner
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db("begin publish"))?;
            let headers: Vec<String> = messages
                .iter()
                .map(|m| serde_json::to_string(&m.headers).expect("string maps serialize"))
                .collect();
            // Multi-row inserts: one statement per chunk instead of per message.
            for (chunk, chunk_headers) in messages
                .chunks(PUBLISH_CHUNK)
                .zip(headers.chunks(PUBLISH_CHUNK))
            {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO messages (topic, partition, msg_id, key, payload, headers, published_at) ",
                );
                insert.push_values(chunk.iter().zip(chunk_headers), |mut row, (m, h)| {
                    row.push_bind(topic)
                        .push_bind(i64::from(partition_of(&m.key, partitions)))
                        .push_bind(m.id.as_str())
                        .push_bind(m.key.as_str())
                        .push_bind(m.payload.as_ref())
                        .push_bind(h.as_str())
                        .push_bind(now);
                });
                insert.push(
                    " ON CONFLICT (topic, msg_id) WHERE only_group = '' DO NOTHING RETURNING seq, msg_id",
                );
                let inserted: Vec<(i64, String)> = insert
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("insert messages"))?;
                let mut seqs: HashMap<String, i64> =
                    inserted.into_iter().map(|(seq, id)| (id, seq)).collect();
                for m in chunk {
                    let partition = partition_of(&m.key, partitions);
                    // The first copy of an id in this chunk takes its seq;
                    // later copies and ids already in the topic are duplicates.
                    let published = match seqs.remove(&m.id) {
                        Some(seq) => Published {
                            partition,
                            seq: seq as u64,
                            duplicate: false,
                        },
                        None => {
                            duplicates += 1;
                            let seq: i64 = sqlx::query_scalar(
                                "SELECT seq FROM messages WHERE topic = ? AND msg_id = ? AND only_group = ''",
                            )
                            .bind(topic)
                            .bind(&m.id)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db("find duplicate"))?;
                            Published {
                                partition,
                                seq: seq as u64,
                                duplicate: true,
                            }
                        }
                    };
                    out.push(published);
                }
            }
            tx.commit().await.map_err(db("commit publish"))?;
        }
        self.inner.wake.notify_waiters();
        let labels = [
            ("topic", topic.to_owned()),
            ("backend", "embedded".to_owned()),
        ];
        metrics::counter!(PUBLISHED, &labels).increment(messages.len() as u64 - duplicates);
        if duplicates > 0 {
            metrics::counter!(DUPLICATES, &labels).increment(duplicates);
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Err(QueueError::InvalidArgument(
                "fetch needs max of at least 1".into(),
            ));
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            // Register for a wake-up before looking, so that a publish between
            // the look and the wait is not missed.
            let woken = self.inner.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch = self.try_fetch(topic, group, max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if let Err(error) = self.trim().await {
                tracing::warn!(%error, "cannot trim the embedded queue");
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(batch);
            }
            let nap = self.inner.options.poll_interval.min(until - now);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let leases = Self::leases(deliveries)?;
        let mut stale = 0u64;
        {
            let _write = self.inner.write.lock().await;
            let mut tx = self
                .inner
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db("begin ack"))?;
            for ((topic, group, token), seqs) in &leases {
                let done = sqlx::query(
                    "DELETE FROM pending WHERE topic = ? AND grp = ? AND token = ? \
                     AND seq IN (SELECT value FROM json_each(?))",
                )
                .bind(*topic)
                .bind(*group)
                .bind(token)
                .bind(serde_json::to_string(seqs).expect("numbers serialize"))
                .execute(&mut *tx)
                .await
                .map_err(db("ack"))?;
                stale += seqs.len() as u64 - done.rows_affected();
            }
            tx.commit().await.map_err(db("commit ack"))?;
        }
        if stale > 0 {
            Self::stale(&deliveries[0], "ack", stale);
        }
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn nak(
        &self,
        delivery: &Delivery,
        delay: Duration,
        failure: &Failure,
    ) -> Result<(), QueueError> {
        let token = Self::embedded_token(delivery)?;
        let record = AttemptRecord {
            attempt: delivery.attempt,
            at_ms: failure.at_ms,
            error: failure.error.clone(),
            retry_in_ms: Some(delay.as_millis() as u64),
        };
        let record = serde_json::to_string(&record).expect("records serialize");
        let done = {
            let _write = self.inner.write.lock().await;
            let due = self.now() + delay.as_millis() as i64;
            sqlx::query(
                "UPDATE pending SET in_flight = 0, due_at = ?, \
                 history = json_insert(history, '$[#]', json(?)) \
                 WHERE topic = ? AND grp = ? AND seq = ? AND token = ?",
            )
            .bind(due)
            .bind(&record)
            .bind(&delivery.topic)
            .bind(&delivery.group)
            .bind(delivery.seq as i64)
            .bind(token)
            .execute(&self.inner.pool)
            .await
            .map_err(db("nak"))?
        };
        if done.rows_affected() == 0 {
            Self::stale(delivery, "nak", 1);
        }
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn extend(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let leases = Self::leases(deliveries)?;
        let _write = self.inner.write.lock().await;
        let due = self.now() + self.inner.options.ack_deadline.as_millis() as i64;
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("begin extend"))?;
        for ((topic, group, token), seqs) in &leases {
            sqlx::query(
                "UPDATE pending SET due_at = ? WHERE topic = ? AND grp = ? AND token = ? \
                 AND in_flight = 1 AND seq IN (SELECT value FROM json_each(?))",
            )
            .bind(due)
            .bind(*topic)
            .bind(*group)
            .bind(token)
            .bind(serde_json::to_string(seqs).expect("numbers serialize"))
            .execute(&mut *tx)
            .await
            .map_err(db("extend"))?;
        }
        tx.commit().await.map_err(db("commit extend"))?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, failure: &Failure) -> Result<(), QueueError> {
        let token = Self::embedded_token(delivery)?;
        let moved = {
            let _write = self.inner.write.lock().await;
            let mut tx = self
                .inner
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db("begin dead letter"))?;
            let history: Option<String> = sqlx::query_scalar(
                "SELECT history FROM pending WHERE topic = ? AND grp = ? AND seq = ? AND token = ?",
            )
            .bind(&delivery.topic)
            .bind(&delivery.group)
            .bind(delivery.seq as i64)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read history"))?;
            match history {
                None => false,
                Some(history) => {
                    let history: Vec<AttemptRecord> =
                        serde_json::from_str(&history).map_err(|e| QueueError::Decode {
                            what: "retry history",
                            message: e.to_string(),
                        })?;
                    let letter = DeadLetter::from_delivery(0, delivery, failure, history);
                    let record = serde_json::to_string(&letter).expect("dead letters serialize");
                    sqlx::query(
                        "INSERT INTO dead_letters (topic, grp, dead_at, record) VALUES (?, ?, ?, ?)",
                    )
                    .bind(&delivery.topic)
                    .bind(&delivery.group)
                    .bind(failure.at_ms)
                    .bind(&record)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("insert dead letter"))?;
                    sqlx::query("DELETE FROM pending WHERE topic = ? AND grp = ? AND seq = ?")
                        .bind(&delivery.topic)
                        .bind(&delivery.group)
                        .bind(delivery.seq as i64)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("settle dead letter"))?;
                    tx.commit().await.map_err(db("commit dead letter"))?;
                    true
                }
            }
        };
        if !moved {
            Self::stale(delivery, "dead_letter", 1);
        }
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats, QueueError> {
        validate_name("topic", topic)?;
        validate_name("group", group)?;
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM groups WHERE topic = ? AND grp = ?)")
                .bind(topic)
                .bind(group)
                .fetch_one(&self.inner.pool)
                .await
                .map_err(db("read group"))?;
        if !known {
            return Err(QueueError::UnknownGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        }
        let undelivered: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM cursors c JOIN messages m ON m.topic = c.topic \
             AND m.partition = c.partition AND m.seq > c.delivered AND m.only_group IN ('', c.grp) \
             WHERE c.topic = ? AND c.grp = ?",
        )
        .bind(topic)
        .bind(group)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(db("count undelivered"))?;
        let unacked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pending WHERE topic = ? AND grp = ?")
                .bind(topic)
                .bind(group)
                .fetch_one(&self.inner.pool)
                .await
                .map_err(db("count pending"))?;
        Ok(GroupStats {
            undelivered: undelivered as u64,
            unacked: unacked as u64,
        })
    }

    async fn dlq_list(
        &self,
        scope: &DlqScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        scope.validate()?;
        let (topic, group) = scope_args(scope);
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, record FROM dead_letters WHERE id > ? AND (? IS NULL OR topic = ?) \
             AND (? IS NULL OR grp = ?) ORDER BY id LIMIT ?",
        )
        .bind(after as i64)
        .bind(topic)
        .bind(topic)
        .bind(group)
        .bind(group)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db("list dead letters"))?;
        rows.iter()
            .map(|(id, record)| decode_letter(*id, record))
            .collect()
    }

    async fn dlq_get(&self, id: u64) -> Result<Option<DeadLetter>, QueueError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, record FROM dead_letters WHERE id = ?")
                .bind(id as i64)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(db("read dead letter"))?;
        row.map(|(id, record)| decode_letter(id, &record))
            .transpose()
    }

    async fn dlq_depth(&self, scope: &DlqScope) -> Result<u64, QueueError> {
        scope.validate()?;
        let (topic, group) = scope_args(scope);
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dead_letters WHERE (? IS NULL OR topic = ?) AND (? IS NULL OR grp = ?)",
        )
        .bind(topic)
        .bind(topic)
        .bind(group)
        .bind(group)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(db("count dead letters"))?;
        Ok(n as u64)
    }

    async fn dlq_redrive(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        let letters = match target {
            DlqTarget::One(id) => self.dlq_get(*id).await?.into_iter().collect(),
            DlqTarget::All(scope) => self.dlq_list(scope, 0, usize::MAX).await?,
        };
        if letters.is_empty() {
            return Ok(0);
        }
        let mut redriven = 0;
        {
            let _write = self.inner.write.lock().await;
            let now = self.now();
            let mut tx = self
                .inner
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db("begin redrive"))?;
            for letter in &letters {
                let message = letter.message()?;
                let headers =
                    serde_json::to_string(&message.headers).expect("string maps serialize");
                // The copy is for the letter's group only (only_group) and goes
                // to its old partition, the one of its key.
                sqlx::query(
                    "INSERT INTO messages (topic, partition, msg_id, key, payload, headers, published_at, only_group) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&letter.topic)
                .bind(letter.partition as i64)
                .bind(&message.id)
                .bind(&message.key)
                .bind(message.payload.as_ref())
                .bind(&headers)
                .bind(now)
                .bind(&letter.group)
                .execute(&mut *tx)
                .await
                .map_err(db("redrive message"))?;
                let gone = sqlx::query("DELETE FROM dead_letters WHERE id = ?")
                    .bind(letter.id as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("delete redriven letter"))?;
                redriven += gone.rows_affected();
            }
            tx.commit().await.map_err(db("commit redrive"))?;
        }
        self.inner.wake.notify_waiters();
        Ok(redriven)
    }

    async fn dlq_purge(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        let _write = self.inner.write.lock().await;
        let result = match target {
            DlqTarget::One(id) => sqlx::query("DELETE FROM dead_letters WHERE id = ?")
                .bind(*id as i64)
                .execute(&self.inner.pool)
                .await
                .map_err(db("purge dead letter"))?,
            DlqTarget::All(scope) => {
                scope.validate()?;
                let (topic, group) = scope_args(scope);
                sqlx::query(
                    "DELETE FROM dead_letters WHERE (? IS NULL OR topic = ?) AND (? IS NULL OR grp = ?)",
                )
                .bind(topic)
                .bind(topic)
                .bind(group)
                .bind(group)
                .execute(&self.inner.pool)
                .await
                .map_err(db("purge dead letters"))?
            }
        };
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    async fn open(dir: &Path, clock: &ManualClock, retention: Duration) -> EmbeddedQueue {
        let mut options =
            EmbeddedOptions::new(dir.join("q.db")).with_clock(Arc::new(clock.clone()));
        options.retention = retention;
        EmbeddedQueue::open(options).await.unwrap()
    }

    async fn stored(q: &EmbeddedQueue) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&q.inner.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn trim_keeps_unsettled_and_recent_messages_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000_000);
        let q = open(dir.path(), &clock, Duration::from_secs(3_600)).await;
        q.ensure_topic(&TopicSpec::new("t", 2, &["a", "b"]))
            .await
            .unwrap();
        let messages: Vec<Message> = (0..6)
            .map(|i| Message::new(format!("m{i}"), format!("k{i}"), "x"))
            .collect();
        q.publish("t", &messages).await.unwrap();
        // Group a settles everything; group b settles only what it fetches
        // first and holds its second batch.
        loop {
            let got = q.fetch("t", "a", 10, Duration::ZERO).await.unwrap();
            if got.is_empty() {
                break;
            }
            q.ack(&got).await.unwrap();
        }
        let first = q.fetch("t", "b", 10, Duration::ZERO).await.unwrap();
        q.ack(&first).await.unwrap();
        let held = q.fetch("t", "b", 10, Duration::ZERO).await.unwrap();
        assert!(!first.is_empty() && !held.is_empty());

        // Within the dedup window nothing goes, so a duplicate is still caught.
        clock.advance(TRIM_EVERY);
        assert_eq!(q.trim().await.unwrap(), 0);
        assert!(q.publish("t", &messages[..1]).await.unwrap()[0].duplicate);

        // Past it, what both groups settled goes; b's held batch stays.
        clock.advance(DEDUP_WINDOW);
        assert_eq!(q.trim().await.unwrap() as usize, first.len());
        assert_eq!(stored(&q).await as usize, held.len());
        // Trimming twice within TRIM_EVERY does nothing.
        assert_eq!(q.trim().await.unwrap(), 0);
        q.ack(&held).await.unwrap();
        clock.advance(TRIM_EVERY);
        q.trim().await.unwrap();
        assert_eq!(stored(&q).await, 0);
        assert_eq!(q.group_stats("t", "b").await.unwrap().lag(), 0);
    }

    #[tokio::test]
    async fn retention_drops_undelivered_messages() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000_000);
        let q = open(dir.path(), &clock, Duration::from_secs(600)).await;
        q.ensure_topic(&TopicSpec::new("t", 1, &["idle"]))
            .await
            .unwrap();
        let messages: Vec<Message> = (0..2_500)
            .map(|i| Message::new(format!("m{i}"), "k", "x"))
            .collect();
        q.publish("t", &messages).await.unwrap();
        assert_eq!(q.group_stats("t", "idle").await.unwrap().undelivered, 2_500);
        clock.advance(Duration::from_secs(601));
        assert_eq!(q.trim().await.unwrap(), 2_500);
        assert_eq!(q.group_stats("t", "idle").await.unwrap().lag(), 0);
    }
}
