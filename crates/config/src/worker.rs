//! Settings of the worker process (`[worker]`): its listener, how it runs
//! consumer groups (concurrency, batches, retries with backoff, shutdown),
//! the outbox relay (`[worker.relay]`) and the mail sink (`[worker.email]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive, quoted};

/// How retry delays are randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JitterKind {
    /// Exactly the exponential delay.
    None,
    /// Uniform between half the delay and the delay.
    Equal,
    /// Uniform between zero and the delay.
    Full,
}

/// How one consumer group is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Batches of the group handled at once by one worker process; each
    /// takes one partition, so more than `queue.partitions` does not help.
    pub concurrency: usize,
    /// Most messages fetched and handed to the handler at once.
    pub batch_size: usize,
    /// Longest an idle consumer waits in one fetch before looking at the
    /// shutdown signal again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub fetch_wait: Duration,
    /// Deliveries of a message before it goes to the dead-letter queue
    /// (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; each further retry waits
    /// `backoff_multiplier` times longer.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_initial: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// Growth of the delay per attempt (2.0 doubles: 1s, 2s, 4s, 8s ...).
    pub backoff_multiplier: f64,
    /// Randomisation of each delay, so that failures do not retry in
    /// lockstep: "none", "equal" or "full".
    pub jitter: JitterKind,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_size: 100,
            fetch_wait: Duration::from_millis(500),
            max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            backoff_multiplier: 2.0,
            jitter: JitterKind::Equal,
        }
    }
}

impl ConsumerConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(invalid(
                format!("{key}.concurrency"),
                self.concurrency,
                "must be 1 to 1024",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(invalid(
                format!("{key}.batch_size"),
                self.batch_size,
                "must be 1 to 10000",
            ));
        }
        positive(&format!("{key}.fetch_wait"), self.fetch_wait)?;
        if self.max_attempts == 0 {
            return Err(invalid(
                format!("{key}.max_attempts"),
                0,
                "must be at least 1",
            ));
        }
        positive(&format!("{key}.backoff_initial"), self.backoff_initial)?;
        if self.backoff_max < self.backoff_initial {
            return Err(invalid(
                format!("{key}.backoff_max"),
                duration_value(self.backoff_max),
                format!(
                    "must be at least backoff_initial ({})",
                    humantime::format_duration(self.backoff_initial)
                ),
            ));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier <= 100.0) {
            return Err(invalid(
                format!("{key}.backoff_multiplier"),
                self.backoff_multiplier,
                "must be 1.0 to 100.0",
            ));
        }
        Ok(())
    }
}

/// The outbox relay: publishes the rows that writes left in every database's
/// outbox and marks them sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Outbox rows of one database read and published at once.
    pub batch_size: usize,
    /// How often an idle relay looks for new outbox rows; a relay that found
    /// a full batch looks again at once.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// How long published rows stay in the outbox (for operators'
    /// `GET /admin/outbox?unsent=false`) before they are deleted.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub sent_retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(20),
            sent_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The mail sink of the `email` consumer group and of `POST /emails` jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// Directory that receives every email as an RFC 5322 `.eml` file, one
    /// file per message (its name is the message's identity, so a redelivered
    /// message never makes a second file); a relative path is inside `data_dir`.
    pub sink_dir: PathBuf,
    /// The `From:` address of the emails.
    pub from: String,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            sink_dir: PathBuf::from("mail"),
            from: "orders@scalestack.localhost".into(),
        }
    }
}

impl EmailConfig {
    /// The sink directory, resolved inside `data_dir` when relative.
    pub fn sink_path(&self, data_dir: &Path) -> PathBuf {
        if self.sink_dir.is_absolute() {
            self.sink_dir.clone()
        } else {
            data_dir.join(&self.sink_dir)
        }
    }
}

/// The background worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address of the worker's `/health` and `/metrics`.
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per CPU core.
    pub threads: usize,
    /// How often the worker measures its backlogs: the outbox of every shard,
    /// and the lag and dead-letter depth of every consumer group.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Longest a stopping worker waits for the batches in hand; batches still
    /// running then are dropped unacknowledged and delivered again later.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// How every consumer group runs unless `groups` names it.
    pub consumer: ConsumerConfig,
    /// Settings of single groups by name, e.g. `[worker.groups.email]`; a
    /// group listed here uses only its own table, whose missing keys take the
    /// built-in defaults shown under `[worker.consumer]`. The groups of the
    /// reference service are `inventory`, `email` and `analytics` (topic
    /// `orders`) and `jobs` (topic `jobs`).
    pub groups: BTreeMap<String, ConsumerConfig>,
    /// How long consumers remember the ids of messages whose effect they
    /// applied, to recognise a redelivery or a duplicate publish; must
    /// outlast any redelivery, so at least `queue.retention` is wise.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dedupe_retention: Duration,
    /// The outbox relay.
    pub relay: RelayConfig,
    /// The mail sink.
    pub email: EmailConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9001).into(),
            threads: 0,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            consumer: ConsumerConfig::default(),
            groups: BTreeMap::new(),
            dedupe_retention: Duration::from_secs(8 * 24 * 3600),
            relay: RelayConfig::default(),
            email: EmailConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// The settings of consumer group `group`.
    pub fn consumer_for(&self, group: &str) -> &ConsumerConfig {
        self.groups.get(group).unwrap_or(&self.consumer)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("worker.poll_interval", self.poll_interval)?;
        positive("worker.shutdown_grace", self.shutdown_grace)?;
        self.consumer.validate("worker.consumer")?;
        for (name, group) in &self.groups {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(invalid(
                    "worker.groups",
                    quoted(name),
                    "a group name is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                ));
            }
            group.validate(&format!("worker.groups.{name}"))?;
        }
        positive("worker.dedupe_retention", self.dedupe_retention)?;
        let relay = &self.relay;
        if !(1..=10_000).contains(&relay.batch_size) {
            return Err(invalid(
                "worker.relay.batch_size",
                relay.batch_size,
                "must be 1 to 10000",
            ));
        }
        positive("worker.relay.poll_interval", relay.poll_interval)?;
        positive("worker.relay.sent_retention", relay.sent_retention)?;
        if self.email.sink_dir.as_os_str().is_empty() {
            return Err(invalid(
                "worker.email.sink_dir",
                "\"\"",
                "must name a directory",
            ));
        }
        let from = &self.email.from;
        let address_ok = matches!(from.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty())
            && !from
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
        if !address_ok {
            return Err(invalid(
                "worker.email.from",
                quoted(from),
                "must be an address such as orders@example.com",
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
        let msg = error_of("[worker.consumer]\nmax_attempts = 0\n");
        assert!(msg.contains("`worker.consumer.max_attempts` = 0"), "{msg}");
        let msg = error_of("[worker.groups.email]\nbatch_size = 0\n");
        assert!(
            msg.contains("`worker.groups.email.batch_size` = 0"),
            "{msg}"
        );
        let msg = error_of("[worker.consumer]\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"\n");
        assert!(
            msg.contains("`worker.consumer.backoff_max` = \"1s\""),
            "{msg}"
        );
        let msg = error_of("[worker.consumer]\nbackoff_multiplier = 0.5\n");
        assert!(
            msg.contains("`worker.consumer.backoff_multiplier` = 0.5"),
            "{msg}"
        );
        let msg = error_of("[worker.groups.\"a.b\"]\n");
        assert!(msg.contains("`worker.groups` = \"a.b\""), "{msg}");
    }

    #[test]
    fn relay_and_email_values_name_key_and_value() {
        let msg = error_of("[worker.relay]\nbatch_size = 0\n");
        assert!(msg.contains("`worker.relay.batch_size` = 0"), "{msg}");
        let msg = error_of("[worker.relay]\npoll_interval = \"0s\"\n");
        assert!(
            msg.contains("`worker.relay.poll_interval` = \"0s\""),
            "{msg}"
        );
        let msg = error_of("[worker.email]\nfrom = \"nobody\"\n");
        assert!(msg.contains("`worker.email.from` = \"nobody\""), "{msg}");
        let msg = error_of("[worker.email]\nsink_dir = \"\"\n");
        assert!(msg.contains("`worker.email.sink_dir` = \"\""), "{msg}");
        let msg = error_of("[worker]\ndedupe_retention = \"0s\"\n");
        assert!(msg.contains("`worker.dedupe_retention` = \"0s\""), "{msg}");
    }

    #[test]
    fn the_sink_resolves_inside_the_data_dir() {
        let email = crate::EmailConfig::default();
        assert_eq!(
            email.sink_path(std::path::Path::new("data")),
            std::path::PathBuf::from("data/mail")
        );
        let absolute = crate::EmailConfig {
            sink_dir: "/var/mail/x".into(),
            ..email
        };
        assert_eq!(
            absolute.sink_path(std::path::Path::new("data")),
            std::path::PathBuf::from("/var/mail/x")
        );
    }

    #[test]
    fn groups_override_the_defaults() {
        let config =
            Config::from_toml_str("[worker.groups.email]\nconcurrency = 1\n", "test").unwrap();
        config.validate().unwrap();
        assert_eq!(config.worker.consumer_for("email").concurrency, 1);
        assert_eq!(config.worker.consumer_for("analytics").concurrency, 4);
    }

    #[test]
    fn seeds_schedule_is_the_default() {
        let c = crate::ConsumerConfig::default();
        assert_eq!(c.backoff_initial, std::time::Duration::from_secs(1));
        assert_eq!(c.backoff_max, std::time::Duration::from_secs(300));
        assert_eq!(c.backoff_multiplier, 2.0);
    }
}
