//! Topics, partitions and consumer groups over two backends, and the worker
//! runtime that consumes them with retries, backoff and a dead-letter queue.
//!
//! The model is Kafka's, kept small:
//!
//! - A **topic** has a fixed number of **partitions**; a message goes to the
//!   partition of its key, so messages of one key keep their publish order.
//! - A **consumer group** reads a topic once: consumers of one group compete
//!   for its messages (point-to-point); several groups on one topic each get
//!   every message (publish/subscribe).
//! - Delivery is **at least once**: a consumer acknowledges each message
//!   explicitly, may hand it back with a delay (nak), and a message neither
//!   acked nor nakked before the **ack deadline** is delivered again, so a
//!   crashed consumer loses nothing.
//! - One partition of a group has at most one batch in flight, so the
//!   messages of a key are processed in order unless one is retried: a retried
//!   message comes back after its delay while its partition moves on (no
//!   head-of-line blocking). The embedded backend enforces this across all
//!   processes; JetStream within each process, and across processes only up
//!   to a window of one batch per partition (see [`jetstream`]).
//!
//! [`Backend`] is that model as a trait with two implementations:
//! [`embedded::EmbeddedQueue`] (a SQLite file under the data directory, shared
//! by every process of the one-machine stack) and [`jetstream::JetStreamQueue`]
//! (NATS JetStream streams and durable pull consumers). [`AnyQueue`] picks one
//! from the configuration. [`worker`] runs consumer groups on any backend;
//! [`dlq`] holds the dead-letter records and their operations.
//!
//! This crate must not know the reference service's domain: payloads are
//! opaque bytes and handlers belong to the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub mod any;
pub mod clock;
pub mod dlq;
pub mod embedded;
pub mod jetstream;
pub mod metrics;
pub mod worker;

pub use any::AnyQueue;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dlq::{AttemptRecord, DeadLetter, DlqScope, DlqTarget};
pub use worker::{
    BatchHandler, Each, ErrorKind, GroupOptions, HandlerError, MessageHandler, RetryPolicy, Worker,
    handler_fn,
};

/// Errors of the queue backends and the worker runtime.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A topic or group name that the backends cannot carry.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `topic` or `group`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// What a valid name looks like.
        reason: &'static str,
    },
    /// The topic was never created with [`Backend::ensure_topic`].
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The group was never created on the topic.
    #[error("unknown consumer group {group:?} of topic {topic:?}")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// A topic exists with another partition count; partitions are fixed at
    /// creation because the key → partition mapping depends on them.
    #[error("topic {topic:?} has {existing} partitions, not {requested}")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Partitions on disk or on the server.
        existing: u32,
        /// Partitions asked for.
        requested: u32,
    },
    /// A value outside what the backend accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The embedded queue's directory could not be created.
    #[error("cannot create the queue directory {path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The embedded queue's database failed.
    #[error("embedded queue: {op}: {source}")]
    Embedded {
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        source: sqlx::Error,
    },
    /// A NATS or JetStream request failed.
    #[error("NATS: {op}: {message}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// The client's error, as text (its error types are many and generic).
        message: String,
    },
    /// Stored data that does not decode (a foreign or corrupt record).
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}

impl QueueError {
    /// Whether trying the same operation again later may succeed (a busy
    /// database, a lost connection) as opposed to a mistake in the request.
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Embedded { source, .. } => !matches!(
                source,
                sqlx::Error::Configuration(_) | sqlx::Error::Migrate(_)
            ),
            QueueError::Nats { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn nats(op: &'static str, error: impl fmt::Display) -> Self {
        QueueError::Nats {
            op,
            message: error.to_string(),
        }
    }
}

/// Checks a topic or group name: 1 to 64 characters of `[A-Za-z0-9_-]` (the
/// set that JetStream stream, consumer and subject names all accept), the
/// first a letter or digit.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), QueueError> {
    // The first character is alphanumeric: names starting with '_' are the
    // backends' own (JetStream's dead-letter subjects).
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(QueueError::InvalidName {
            what,
            name: name.to_owned(),
            reason: "use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-', starting with a letter or digit",
        })
    }
}

/// The partition of `key` among `partitions`: FNV-1a (64 bit) of the key's
/// bytes, modulo the count. Both backends use it, so a key maps to the same
/// partition whichever backend carries the topic.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id. Publishing the same id again to a topic is a duplicate: the
    /// embedded backend drops it while the first copy is retained, JetStream
    /// within its duplicate window when `queue.nats.dedupe_on_publish` is on,
    /// and otherwise delivers it again under the same id. Consumers dedupe on
    /// it (or on the effect's own key) in any case.
    pub id: String,
    /// Partition key: messages of one key keep their order.
    pub key: String,
    /// The body, opaque to the queue.
    pub payload: Bytes,
    /// Small string attributes (content type, trace id, ...).
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// A message without headers.
    pub fn new(id: impl Into<String>, key: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// Where a published message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The partition of its key.
    pub partition: u32,
    /// Its position in the topic: unique within the topic and increasing in
    /// publish order within a partition.
    pub seq: u64,
    /// True when the id was already published and this copy was dropped.
    pub duplicate: bool,
}

/// A topic and the consumer groups that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name (see [`validate_name`]).
    pub name: String,
    /// Partitions; fixed once the topic exists.
    pub partitions: u32,
    /// Consumer groups. A group sees every message published after it was
    /// created and every older message still retained; create the groups
    /// before the first publish so that none is missed.
    pub groups: Vec<String>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the given groups.
    pub fn new(name: &str, partitions: u32, groups: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            partitions,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), QueueError> {
        validate_name("topic", &self.name)?;
        if self.partitions == 0 || self.partitions > 1024 {
            return Err(QueueError::InvalidArgument(format!(
                "topic {:?}: partitions must be 1 to 1024, not {}",
                self.name, self.partitions
            )));
        }
        for group in &self.groups {
            validate_name("group", group)?;
        }
        Ok(())
    }
}

/// A message handed to a consumer, with what it needs to settle it.
#[derive(Clone)]
pub struct Delivery {
    /// The topic.
    pub topic: String,
    /// The consumer group it was delivered to.
    pub group: String,
    /// The partition of its key.
    pub partition: u32,
    /// Its position in the topic (see [`Published::seq`]).
    pub seq: u64,
    /// The message as published.
    pub message: Message,
    /// When it was published, in ms since the Unix epoch.
    pub published_at_ms: i64,
    /// Which delivery this is to the group: 1 the first time.
    pub attempt: u32,
    pub(crate) token: Token,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("partition", &self.partition)
            .field("seq", &self.seq)
            .field("id", &self.message.id)
            .field("key", &self.message.key)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The backend's handle on one delivery: only its current holder can settle it.
#[derive(Clone)]
pub(crate) enum Token {
    /// The lease token written with the pending row.
    Embedded(i64),
    /// The JetStream message, whose reply subject acknowledges it, and the
    /// consumer it came from.
    Nats(Box<jetstream::NatsToken>),
}

/// Why a delivery failed, recorded in its history and dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The handler's error message.
    pub error: String,
    /// True when retrying cannot help.
    pub permanent: bool,
    /// When it failed, in ms since the Unix epoch (from the runtime's clock).
    pub at_ms: i64,
}

/// How far a consumer group is behind, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStats {
    /// Messages not yet delivered to the group.
    pub undelivered: u64,
    /// Messages delivered and neither acked nor dead-lettered: in flight or
    /// waiting for a retry.
    pub unacked: u64,
}

impl GroupStats {
    /// The consumer lag: everything the group still has to finish.
    pub fn lag(&self) -> u64 {
        self.undelivered + self.unacked
    }
}

/// A queue backend: topics with partitions, consumer groups, at-least-once
/// delivery with explicit settlement, and the dead-letter queue.
///
/// Both implementations pass the same test suite (`tests/queue`). Futures are
/// `Send` so that the worker runtime can run them on any thread.
pub trait Backend: Send + Sync + 'static {
    /// `embedded` or `nats`, for metrics and logs.
    fn kind(&self) -> &'static str;

    /// The time after which an unsettled delivery is delivered again.
    fn ack_deadline(&self) -> Duration;

    /// Creates the topic and its groups if missing (idempotent; groups may be
    /// added later). Fails if the topic exists with another partition count.
    fn ensure_topic(&self, spec: &TopicSpec)
    -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Readies a group for a consumer that fetches up to `batch_size`
    /// messages at a time; fails if the topic or group does not exist.
    /// JetStream sizes each partition's unacknowledged window to the batch,
    /// so that a partition never has two batches in flight.
    fn prepare_group(
        &self,
        topic: &str,
        group: &str,
        batch_size: usize,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Publishes `messages` to `topic`, each to the partition of its key, and
    /// returns once all are durable, in the order given.
    fn publish(
        &self,
        topic: &str,
        messages: &[Message],
    ) -> impl Future<Output = Result<Vec<Published>, QueueError>> + Send;

    /// Takes up to `max` messages of one partition for `group`, waiting up to
    /// `wait` for one to become available; empty when none did.
    ///
    /// The partition has no other delivery in flight for the group. Due
    /// redeliveries come first, then new messages in publish order.
    fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send;

    /// Acknowledges deliveries: they are done and will not come back. Stale
    /// deliveries (redelivered to someone else since) are skipped.
    fn ack(&self, deliveries: &[Delivery]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Hands a delivery back to be delivered again after `delay`, recording
    /// `failure` in its history.
    fn nak(
        &self,
        delivery: &Delivery,
        delay: Duration,
        failure: &Failure,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Pushes the ack deadline of deliveries still being worked on.
    fn extend(
        &self,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Moves a delivery to the dead-letter queue of its group with its final
    /// failure and the history of earlier attempts, and acknowledges it.
    fn dead_letter(
        &self,
        delivery: &Delivery,
        failure: &Failure,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Lag of a group.
    fn group_stats(
        &self,
        topic: &str,
        group: &str,
    ) -> impl Future<Output = Result<GroupStats, QueueError>> + Send;

    /// Dead letters in `scope` with an id greater than `after`, oldest first.
    fn dlq_list(
        &self,
        scope: &DlqScope,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// One dead letter by id.
    fn dlq_get(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<DeadLetter>, QueueError>> + Send;

    /// Number of dead letters in `scope`.
    fn dlq_depth(&self, scope: &DlqScope) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Delivers dead letters again, to their group only, as first attempts;
    /// removes them from the dead-letter queue. Returns how many.
    fn dlq_redrive(
        &self,
        target: &DlqTarget,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Deletes dead letters for good. Returns how many.
    fn dlq_purge(&self, target: &DlqTarget)
    -> impl Future<Output = Result<u64, QueueError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("topic", "orders").is_ok());
        assert!(validate_name("topic", "order-events_2").is_ok());
        for bad in ["", "a.b", "a b", "a*", ">", "_dlq", &"x".repeat(65)] {
            let err = validate_name("topic", bad).unwrap_err().to_string();
            assert!(err.contains("invalid topic name"), "{err}");
        }
    }

    #[test]
    fn partition_of_is_stable() {
        // Fixed values: a change would remap every key of existing topics.
        assert_eq!(partition_of("", 16), 0xcbf2_9ce4_8422_2325u64 as u32 % 16);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(partition_of("a", 16), 0xc);
        assert_eq!(
            partition_of("a", 1000),
            (0xaf63_dc4c_8601_ec8cu64 % 1000) as u32
        );
        assert_eq!(partition_of("anything", 1), 0);
    }

    proptest! {
        #[test]
        fn partition_is_in_range(key in ".*", partitions in 1u32..2048) {
            prop_assert!(partition_of(&key, partitions) < partitions);
        }
    }
}
