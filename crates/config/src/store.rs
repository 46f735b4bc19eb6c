//! Settings of the database tier (`[store]`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, positive, quoted};

/// How users are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShardMapKind {
    /// Consistent hashing of the user id (jump hash over 1024 logical buckets).
    Hash,
}

/// One database with its read replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaSetConfig {
    /// URL of the primary. `sqlite://NAME.db` is a file in `data_dir`.
    pub primary: String,
    /// URLs of read replicas (PostgreSQL only; SQLite has no replication).
    pub replicas: Vec<String>,
}

impl Default for ReplicaSetConfig {
    fn default() -> Self {
        Self::sqlite("catalog.db")
    }
}

impl ReplicaSetConfig {
    /// An embedded SQLite database file in `data_dir`, without replicas.
    pub fn sqlite(file: &str) -> Self {
        Self {
            primary: format!("sqlite://{file}"),
            replicas: Vec::new(),
        }
    }
}

/// Databases: the catalog and the user shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The unsharded catalog database (products, id sequences).
    pub catalog: ReplicaSetConfig,
    /// The user shards, in order: shard 0 first. Users and their orders live
    /// on the shard their user id maps to; changing the count of an existing
    /// data set is refused.
    pub shards: Vec<ReplicaSetConfig>,
    /// How user ids map to shards.
    pub shard_map: ShardMapKind,
    /// Most open connections per database and process.
    pub max_connections: u32,
    /// Time a query waits for a free connection before failing.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub acquire_timeout: Duration,
    /// Time an SQLite writer waits for another process's write lock.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub busy_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            catalog: ReplicaSetConfig::sqlite("catalog.db"),
            shards: (0..4)
                .map(|i| ReplicaSetConfig::sqlite(&format!("shard-{i}.db")))
                .collect(),
            shard_map: ShardMapKind::Hash,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate_replica_set("store.catalog", &self.catalog)?;
        if self.shards.is_empty() {
            return Err(invalid(
                "store.shards",
                "[]",
                "at least one shard is needed",
            ));
        }
        for (i, shard) in self.shards.iter().enumerate() {
            validate_replica_set(&format!("store.shards[{i}]"), shard)?;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            let same = |other: &ReplicaSetConfig| other.primary == shard.primary;
            if same(&self.catalog) || self.shards[..i].iter().any(same) {
                return Err(invalid(
                    format!("store.shards[{i}].primary"),
                    quoted(&shard.primary),
                    "every shard and the catalog need a database of their own",
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("store.max_connections", 0, "must be at least 1"));
        }
        positive("store.acquire_timeout", self.acquire_timeout)?;
        Ok(())
    }
}

fn validate_replica_set(key: &str, set: &ReplicaSetConfig) -> Result<(), ConfigError> {
    let Some(file) = set.primary.strip_prefix("sqlite://") else {
        return Err(invalid(
            format!("{key}.primary"),
            quoted(&set.primary),
            "this build supports sqlite:// URLs only (PostgreSQL arrives with the data tier)",
        ));
    };
    if file.is_empty() {
        return Err(invalid(
            format!("{key}.primary"),
            quoted(&set.primary),
            "names no file",
        ));
    }
    if let Some(replica) = set.replicas.first() {
        return Err(invalid(
            format!("{key}.replicas[0]"),
            quoted(replica),
            "SQLite has no replication; replicas need PostgreSQL",
        ));
    }
    Ok(())
}
