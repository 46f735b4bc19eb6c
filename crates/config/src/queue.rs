//! Settings of the message queue (`[queue]`): which backend carries the
//! topics, and how each backend is reached and tuned.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive, quoted};

/// Which implementation carries the topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackendKind {
    /// A SQLite file in `data_dir`, shared by every process of this machine.
    Embedded,
    /// NATS JetStream: streams and durable pull consumers on a nats-server.
    Nats,
}

/// When the embedded queue forces its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueSync {
    /// At WAL checkpoints only: a killed process loses nothing, a power cut
    /// may lose the last commits.
    Normal,
    /// At every commit: survives a power cut, at a cost in throughput.
    Full,
}

/// The embedded backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedQueueConfig {
    /// The queue's SQLite file; a relative path is inside `data_dir`.
    pub file: PathBuf,
    /// When commits are forced to disk: "normal" (safe against a killed
    /// process) or "full" (also against a power cut).
    pub sync: QueueSync,
    /// How often an idle consumer looks for new messages written by another
    /// process (publishes of its own process wake it at once).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Time a write waits for another process's write lock.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub busy_timeout: Duration,
}

impl Default for EmbeddedQueueConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("queue.db"),
            sync: QueueSync::Normal,
            poll_interval: Duration::from_millis(20),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The NATS JetStream backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NatsQueueConfig {
    /// Server URL, e.g. "nats://127.0.0.1:4222".
    pub url: String,
    /// Prefix of every stream and subject this stack creates, so that
    /// several stacks can share one server.
    pub prefix: String,
    /// Most publishes awaiting their acknowledgement at once; larger batches
    /// are sent in windows of this size (the client stalls near 5,000).
    pub publish_window: usize,
    /// How long the server remembers message ids to drop duplicate publishes
    /// (with `dedupe_on_publish`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duplicate_window: Duration,
    /// Whether the server drops a publish whose message id it saw within
    /// `duplicate_window` (the id goes in `Nats-Msg-Id`). Off by default: the
    /// id then travels in a header of ours, consumers skip duplicates by their
    /// own records (which they need anyway, for redeliveries and for
    /// duplicates older than the window), and every publish is about 12%
    /// cheaper for the server. On, a relay that re-publishes after a crash
    /// costs no second delivery.
    pub dedupe_on_publish: bool,
    /// Time between clean-ups of a topic's stream while its messages are
    /// being settled: each purges what every group has settled, so settled
    /// messages stay on the server up to about this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub clean_up_interval: Duration,
    /// Copies of every stream (1 on a single server; 3 on a cluster).
    pub replicas: usize,
    /// Time to wait for the server when connecting and for each request.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

impl Default for NatsQueueConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "scalestack".into(),
            publish_window: 1_000,
            duplicate_window: Duration::from_secs(120),
            dedupe_on_publish: false,
            clean_up_interval: Duration::from_secs(1),
            replicas: 1,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The message queue between the api servers and the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// "embedded" (a SQLite file in `data_dir`) or "nats" (JetStream).
    pub backend: QueueBackendKind,
    /// Partitions of a new topic: the most consumers of one group that can
    /// work at once, since a partition is processed by one at a time. Fixed
    /// once a topic exists.
    pub partitions: u32,
    /// Time a consumer has to settle a delivery before it is delivered again
    /// (the worker extends it while a handler runs).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ack_deadline: Duration,
    /// Longest time a message is kept; messages every group has acknowledged
    /// are dropped sooner. Dead letters are kept until purged.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: Duration,
    /// The embedded backend.
    pub embedded: EmbeddedQueueConfig,
    /// The NATS JetStream backend.
    pub nats: NatsQueueConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackendKind::Embedded,
            partitions: 16,
            ack_deadline: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            embedded: EmbeddedQueueConfig::default(),
            nats: NatsQueueConfig::default(),
        }
    }
}

impl QueueConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.partitions) {
            return Err(invalid(
                "queue.partitions",
                self.partitions,
                "must be 1 to 1024",
            ));
        }
        if self.ack_deadline < Duration::from_secs(1) {
            return Err(invalid(
                "queue.ack_deadline",
                duration_value(self.ack_deadline),
                "must be at least 1s",
            ));
        }
        positive("queue.retention", self.retention)?;
        if self.embedded.file.as_os_str().is_empty() {
            return Err(invalid("queue.embedded.file", "\"\"", "must name a file"));
        }
        positive("queue.embedded.poll_interval", self.embedded.poll_interval)?;
        let nats = &self.nats;
        if !(nats.url.starts_with("nats://") || nats.url.starts_with("tls://")) {
            return Err(invalid(
                "queue.nats.url",
                quoted(&nats.url),
                "must start with nats:// or tls://",
            ));
        }
        let prefix_ok = !nats.prefix.is_empty()
            && nats.prefix.len() <= 32
            && nats
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err(invalid(
                "queue.nats.prefix",
                quoted(&nats.prefix),
                "use 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        if !(1..=4_000).contains(&nats.publish_window) {
            return Err(invalid(
                "queue.nats.publish_window",
                nats.publish_window,
                "must be 1 to 4000 (the client stalls near 5000 outstanding acks)",
            ));
        }
        positive("queue.nats.duplicate_window", nats.duplicate_window)?;
        positive("queue.nats.clean_up_interval", nats.clean_up_interval)?;
        positive("queue.nats.request_timeout", nats.request_timeout)?;
        if !(1..=5).contains(&nats.replicas) {
            return Err(invalid(
                "queue.nats.replicas",
                nats.replicas,
                "must be 1 to 5",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn error_of(toml: &str) -> String {
        let config = Config::from_toml_str(toml, "test").unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let msg = error_of("[queue]\npartitions = 0\n");
        assert!(msg.contains("`queue.partitions` = 0"), "{msg}");
        let msg = error_of("[queue.nats]\nurl = \"http://x\"\n");
        assert!(msg.contains("`queue.nats.url` = \"http://x\""), "{msg}");
        let msg = error_of("[queue.nats]\nprefix = \"a.b\"\n");
        assert!(msg.contains("`queue.nats.prefix` = \"a.b\""), "{msg}");
        let msg = error_of("[queue.nats]\npublish_window = 5000\n");
        assert!(msg.contains("`queue.nats.publish_window` = 5000"), "{msg}");
        let msg = error_of("[queue]\nack_deadline = \"10ms\"\n");
        assert!(msg.contains("`queue.ack_deadline` = \"10ms\""), "{msg}");
        let msg = error_of("[queue.nats]\nclean_up_interval = \"0s\"\n");
        assert!(msg.contains("`queue.nats.clean_up_interval`"), "{msg}");
    }

    #[test]
    fn unknown_backend_names_the_key() {
        let err = Config::from_toml_str("[queue]\nbackend = \"kafka\"\n", "test").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("queue.backend"), "{msg}");
    }

    #[test]
    fn nats_backend_parses() {
        let config = Config::from_toml_str(
            "[queue]\nbackend = \"nats\"\n[queue.nats]\nurl = \"nats://10.0.0.1:4222\"\n",
            "test",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.queue.backend, super::QueueBackendKind::Nats);
    }
}
