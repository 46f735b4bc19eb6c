//! Settings of the database tier (`[store]`).
//!
//! This module owns the shape and the validation of the store's settings: the
//! catalog and the user shards (each a primary plus read replicas, by URL),
//! the shard map, replica routing, and the retention of idempotency keys. It
//! opens no database: `scalestack-store` acts on these values.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive, quoted};

/// Most user shards a store can have: every shard needs at least one of the
/// 1,024 logical buckets that order ids carry.
pub const MAX_SHARDS: usize = 1024;

/// How users are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShardMapKind {
    /// Consistent hashing of the user id (jump hash over 1024 logical buckets).
    Hash,
    /// Ranges of user ids, listed in `store.ranges`.
    Range,
    /// A user's region picks the shards, listed in `store.regions`; within a
    /// region, users are spread by consistent hashing.
    Geo,
}

/// How reads are spread over the usable replicas of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    /// Each read goes to the next usable replica in turn.
    RoundRobin,
    /// Each read goes to the usable replica with the fewest queries running.
    LeastOutstanding,
}

/// One range of a range shard map: users from `first_user` up to the next
/// range's `first_user` (or without end, for the last range) live on `shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRangeConfig {
    /// The first user id of the range.
    pub first_user: i64,
    /// Index of the shard in `store.shards` that holds the range.
    pub shard: u16,
}

/// One region of a geographic shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Name clients give when they create a user, e.g. `eu-west`.
    pub name: String,
    /// Indexes of the shards in `store.shards` that hold the region's users.
    pub shards: Vec<u16>,
}

/// One database with its read replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaSetConfig {
    /// URL of the primary: `sqlite://NAME.db` is a file in `data_dir`;
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` is a PostgreSQL database.
    pub primary: String,
    /// URLs of streaming read replicas of the primary (PostgreSQL only: SQLite
    /// has no replication).
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

    /// A PostgreSQL primary with `replicas`.
    pub fn postgres(primary: impl Into<String>, replicas: Vec<String>) -> Self {
        Self {
            primary: primary.into(),
            replicas,
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
    /// on the shard their user id maps to. A change that would move existing
    /// users (such as another shard under the hash map) is refused; a range
    /// map may grow past its last user with a new `shard_map_version`.
    pub shards: Vec<ReplicaSetConfig>,
    /// How user ids map to shards: `hash`, `range` or `geo`.
    pub shard_map: ShardMapKind,
    /// Version of the shard map. A data set remembers the map it was written
    /// with; a different map is refused, and cursors of cross-shard lists carry
    /// the version so that a cursor from another map is refused too.
    pub shard_map_version: u32,
    /// The user id ranges of a `range` shard map, ascending; the first starts
    /// at user 1 and the last has no end. Empty for other maps.
    pub ranges: Vec<UserRangeConfig>,
    /// The regions of a `geo` shard map; the first is where users without a
    /// region go. Empty for other maps.
    pub regions: Vec<RegionConfig>,
    /// How reads are spread over the replicas of a database:
    /// `round_robin` or `least_outstanding`.
    pub read_policy: ReadPolicy,
    /// Replication lag above which a replica receives no reads until it
    /// catches up.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_replica_lag: Duration,
    /// How often the lag and the health of every replica are measured.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub replica_check_interval: Duration,
    /// Time a replica has to answer a check (and a read waits for one of its
    /// connections) before it is taken out of the read rotation.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub replica_check_timeout: Duration,
    /// How long a finished `Idempotency-Key` is remembered and replayed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idempotency_retention: Duration,
    /// How often the worker deletes idempotency keys past their retention.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idempotency_cleanup_interval: Duration,
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
            shard_map_version: 1,
            ranges: Vec::new(),
            regions: Vec::new(),
            read_policy: ReadPolicy::RoundRobin,
            max_replica_lag: Duration::from_secs(2),
            replica_check_interval: Duration::from_millis(500),
            replica_check_timeout: Duration::from_secs(1),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            idempotency_cleanup_interval: Duration::from_secs(60),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The engine of `url`, from its scheme; `None` for an unsupported scheme.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite://") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// `url` with the password (if any) replaced by `***`, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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
        if self.shards.len() > MAX_SHARDS {
            return Err(invalid(
                "store.shards",
                format!("[{} shards]", self.shards.len()),
                format!("at most {MAX_SHARDS} shards are supported"),
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
                    quoted(redact_url(&shard.primary)),
                    "every shard and the catalog need a database of their own",
                ));
            }
        }
        if self.shard_map_version == 0 {
            return Err(invalid("store.shard_map_version", 0, "must be at least 1"));
        }
        self.validate_ranges()?;
        self.validate_regions()?;
        if self.max_connections == 0 {
            return Err(invalid("store.max_connections", 0, "must be at least 1"));
        }
        positive("store.acquire_timeout", self.acquire_timeout)?;
        positive("store.max_replica_lag", self.max_replica_lag)?;
        positive("store.replica_check_interval", self.replica_check_interval)?;
        positive("store.replica_check_timeout", self.replica_check_timeout)?;
        positive("store.idempotency_retention", self.idempotency_retention)?;
        positive(
            "store.idempotency_cleanup_interval",
            self.idempotency_cleanup_interval,
        )?;
        if self.idempotency_retention > Duration::from_secs(365 * 24 * 60 * 60) {
            return Err(invalid(
                "store.idempotency_retention",
                duration_value(self.idempotency_retention),
                "must be at most a year",
            ));
        }
        Ok(())
    }

    fn shard_index_ok(&self, key: String, shard: u16) -> Result<(), ConfigError> {
        if usize::from(shard) >= self.shards.len() {
            return Err(invalid(
                key,
                shard,
                format!(
                    "there are {} shards in store.shards (indexes 0 to {})",
                    self.shards.len(),
                    self.shards.len() - 1
                ),
            ));
        }
        Ok(())
    }

    fn validate_ranges(&self) -> Result<(), ConfigError> {
        if self.shard_map != ShardMapKind::Range {
            if !self.ranges.is_empty() {
                return Err(invalid(
                    "store.ranges",
                    format!("[{} ranges]", self.ranges.len()),
                    "ranges are only used when store.shard_map = \"range\"",
                ));
            }
            return Ok(());
        }
        let Some(first) = self.ranges.first() else {
            return Err(invalid(
                "store.ranges",
                "[]",
                "a range shard map needs at least one range",
            ));
        };
        if first.first_user != 1 {
            return Err(invalid(
                "store.ranges[0].first_user",
                first.first_user,
                "the first range must start at user 1",
            ));
        }
        for (i, range) in self.ranges.iter().enumerate() {
            self.shard_index_ok(format!("store.ranges[{i}].shard"), range.shard)?;
            if i > 0 && range.first_user <= self.ranges[i - 1].first_user {
                return Err(invalid(
                    format!("store.ranges[{i}].first_user"),
                    range.first_user,
                    format!(
                        "ranges must ascend: the previous range starts at {}",
                        self.ranges[i - 1].first_user
                    ),
                ));
            }
        }
        if self.ranges.len() > MAX_SHARDS {
            return Err(invalid(
                "store.ranges",
                format!("[{} ranges]", self.ranges.len()),
                format!("at most {MAX_SHARDS} ranges are supported"),
            ));
        }
        Ok(())
    }

    fn validate_regions(&self) -> Result<(), ConfigError> {
        if self.shard_map != ShardMapKind::Geo {
            if !self.regions.is_empty() {
                return Err(invalid(
                    "store.regions",
                    format!("[{} regions]", self.regions.len()),
                    "regions are only used when store.shard_map = \"geo\"",
                ));
            }
            return Ok(());
        }
        if self.regions.is_empty() {
            return Err(invalid(
                "store.regions",
                "[]",
                "a geographic shard map needs at least one region",
            ));
        }
        let mut owner: Vec<Option<usize>> = vec![None; self.shards.len()];
        for (i, region) in self.regions.iter().enumerate() {
            let name_ok = !region.name.is_empty()
                && region.name.len() <= 64
                && region
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    format!("store.regions[{i}].name"),
                    quoted(&region.name),
                    "must be 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            if self.regions[..i].iter().any(|r| r.name == region.name) {
                return Err(invalid(
                    format!("store.regions[{i}].name"),
                    quoted(&region.name),
                    "is listed twice",
                ));
            }
            if region.shards.is_empty() {
                return Err(invalid(
                    format!("store.regions[{i}].shards"),
                    "[]",
                    "a region needs at least one shard",
                ));
            }
            for (j, &shard) in region.shards.iter().enumerate() {
                let key = format!("store.regions[{i}].shards[{j}]");
                self.shard_index_ok(key.clone(), shard)?;
                if let Some(other) = owner[usize::from(shard)].replace(i) {
                    return Err(invalid(
                        key,
                        shard,
                        format!(
                            "shard {shard} already belongs to region {:?}",
                            self.regions[other].name
                        ),
                    ));
                }
            }
        }
        if self.regions.len() > MAX_SHARDS {
            return Err(invalid(
                "store.regions",
                format!("[{} regions]", self.regions.len()),
                format!("at most {MAX_SHARDS} regions are supported"),
            ));
        }
        Ok(())
    }
}

fn validate_url(key: &str, url: &str) -> Result<Backend, ConfigError> {
    let shown = || quoted(redact_url(url));
    let Some(backend) = Backend::of_url(url) else {
        return Err(invalid(
            key,
            shown(),
            "must start with sqlite:// (an embedded file) or postgres:// (a PostgreSQL server)",
        ));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(key, shown(), "must not contain spaces"));
    }
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    match backend {
        Backend::Sqlite if rest.is_empty() => Err(invalid(key, shown(), "names no file")),
        Backend::Postgres => {
            let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let database = database.split('?').next().unwrap_or_default();
            if host.is_empty() {
                Err(invalid(key, shown(), "names no host"))
            } else if database.is_empty() {
                Err(invalid(
                    key,
                    shown(),
                    "names no database (postgres://HOST:PORT/DATABASE)",
                ))
            } else {
                Ok(backend)
            }
        }
        Backend::Sqlite => Ok(backend),
    }
}

fn validate_replica_set(key: &str, set: &ReplicaSetConfig) -> Result<(), ConfigError> {
    let backend = validate_url(&format!("{key}.primary"), &set.primary)?;
    for (i, replica) in set.replicas.iter().enumerate() {
        let replica_key = format!("{key}.replicas[{i}]");
        if backend == Backend::Sqlite {
            return Err(invalid(
                replica_key,
                quoted(redact_url(replica)),
                "SQLite has no replication; replicas need a PostgreSQL primary",
            ));
        }
        if validate_url(&replica_key, replica)? != Backend::Postgres {
            return Err(invalid(
                replica_key,
                quoted(redact_url(replica)),
                "a replica of a PostgreSQL primary must be a postgres:// URL",
            ));
        }
        if *replica == set.primary || set.replicas[..i].contains(replica) {
            return Err(invalid(
                replica_key,
                quoted(redact_url(replica)),
                "is listed twice (as the primary or as another replica)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, "test").unwrap()
    }

    fn error_of(text: &str) -> String {
        parse(text).validate().unwrap_err().to_string()
    }

    #[test]
    fn postgres_with_replicas_is_accepted() {
        let config = parse(
            r#"
            [store]
            read_policy = "least_outstanding"
            [store.catalog]
            primary = "postgres://app:secret@10.0.0.1:5432/catalog"
            replicas = ["postgres://app:secret@10.0.0.2:5432/catalog"]
            [[store.shards]]
            primary = "postgresql://10.0.0.3/shard0"
            replicas = ["postgres://10.0.0.4/shard0", "postgres://10.0.0.5/shard0"]
            "#,
        );
        config.validate().unwrap();
        assert_eq!(config.store.read_policy, ReadPolicy::LeastOutstanding);
        assert_eq!(config.store.shards[0].replicas.len(), 2);
    }

    #[test]
    fn bad_urls_name_the_key_and_hide_the_password() {
        let msg = error_of("[store.catalog]\nprimary = \"mysql://u:pw@h/db\"\n");
        assert!(msg.contains("store.catalog.primary"), "{msg}");
        assert!(msg.contains("u:***@h"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");

        let msg = error_of("[store.catalog]\nprimary = \"postgres://h:5432\"\n");
        assert!(msg.contains("names no database"), "{msg}");

        let msg = error_of(
            "[store.catalog]\nprimary = \"postgres://h/db\"\nreplicas = [\"sqlite://x.db\"]\n",
        );
        assert!(msg.contains("store.catalog.replicas[0]"), "{msg}");

        let msg = error_of(
            "[store.catalog]\nprimary = \"postgres://h/db\"\nreplicas = [\"postgres://h/db\"]\n",
        );
        assert!(msg.contains("listed twice"), "{msg}");
    }

    #[test]
    fn redaction_keeps_everything_but_the_password() {
        assert_eq!(
            redact_url("postgres://u:p@ss@h:1/db?x=1"),
            "postgres://u:***@h:1/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn range_maps_are_checked() {
        let shards = "[[store.shards]]\nprimary = \"sqlite://a.db\"\n[[store.shards]]\nprimary = \"sqlite://b.db\"\n";
        let ok = format!(
            "[store]\nshard_map = \"range\"\nranges = [{{ first_user = 1, shard = 0 }}, {{ first_user = 1000, shard = 1 }}]\n{shards}"
        );
        parse(&ok).validate().unwrap();

        let msg = error_of(&format!(
            "[store]\nshard_map = \"range\"\nranges = [{{ first_user = 5, shard = 0 }}]\n{shards}"
        ));
        assert!(msg.contains("store.ranges[0].first_user` = 5"), "{msg}");
        let msg = error_of(&format!(
            "[store]\nshard_map = \"range\"\nranges = [{{ first_user = 1, shard = 0 }}, {{ first_user = 1, shard = 1 }}]\n{shards}"
        ));
        assert!(msg.contains("store.ranges[1].first_user"), "{msg}");
        let msg = error_of(&format!(
            "[store]\nshard_map = \"range\"\nranges = [{{ first_user = 1, shard = 2 }}]\n{shards}"
        ));
        assert!(msg.contains("store.ranges[0].shard` = 2"), "{msg}");
        let msg = error_of(&format!("[store]\nshard_map = \"range\"\n{shards}"));
        assert!(msg.contains("store.ranges"), "{msg}");
        let msg = error_of("[store]\nranges = [{ first_user = 1, shard = 0 }]\n");
        assert!(msg.contains("only used when"), "{msg}");
    }

    #[test]
    fn geo_maps_are_checked() {
        let ok = "[store]\nshard_map = \"geo\"\nregions = [{ name = \"eu\", shards = [0, 1] }, { name = \"us\", shards = [2, 3] }]\n";
        parse(ok).validate().unwrap();
        let msg = error_of(
            "[store]\nshard_map = \"geo\"\nregions = [{ name = \"eu\", shards = [0, 1] }, { name = \"us\", shards = [1] }]\n",
        );
        assert!(msg.contains("store.regions[1].shards[0]"), "{msg}");
        assert!(msg.contains("already belongs to region \"eu\""), "{msg}");
        let msg = error_of(
            "[store]\nshard_map = \"geo\"\nregions = [{ name = \"eu west\", shards = [0] }]\n",
        );
        assert!(msg.contains("store.regions[0].name"), "{msg}");
        let msg =
            error_of("[store]\nshard_map = \"geo\"\nregions = [{ name = \"eu\", shards = [9] }]\n");
        assert!(msg.contains("store.regions[0].shards[0]` = 9"), "{msg}");
        let msg = error_of("[store]\nshard_map = \"geo\"\n");
        assert!(msg.contains("store.regions"), "{msg}");
    }

    #[test]
    fn durations_and_versions_are_checked() {
        let msg = error_of("[store]\nmax_replica_lag = \"0s\"\n");
        assert!(msg.contains("store.max_replica_lag"), "{msg}");
        let msg = error_of("[store]\nshard_map_version = 0\n");
        assert!(msg.contains("store.shard_map_version` = 0"), "{msg}");
        let msg = error_of("[store]\nidempotency_retention = \"0s\"\n");
        assert!(msg.contains("store.idempotency_retention"), "{msg}");
        let msg = Config::from_toml_str("[store]\nread_policy = \"random\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("store.read_policy"), "{msg}");
    }
}
