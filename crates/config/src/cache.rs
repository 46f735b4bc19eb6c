//! Settings of the cache tier (`[cache]`): the in-process L1, the optional
//! Redis L2, cross-instance invalidation, write-behind logs, and one table per
//! cached resource.
//!
//! This module only describes and validates; `scalestack-cache` acts on it.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive, quoted};

/// How the L1 cache picks a victim when its byte budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum L1Eviction {
    /// Admit a new entry only if it is likely to be used more often than the
    /// entry it would evict (frequency sketch); best for skewed (Zipf) keys.
    TinyLfu,
    /// Evict the least recently used entry; best when recency predicts reuse.
    Lru,
}

/// Where the Redis L2 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum L2Mode {
    /// No L2: every instance has only its own L1 (the embedded stack).
    Off,
    /// One Redis server (the first of `cache.l2.urls`).
    Standalone,
    /// A Redis Cluster; `cache.l2.urls` are seed nodes.
    Cluster,
}

/// How a write reaches the store and the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteStrategy {
    /// Write the store, then drop the cached copy everywhere; the next read
    /// loads it (L1, then L2, then the store).
    CacheAside,
    /// Write the store, then put the new value in L1 and L2, before the
    /// write is acknowledged.
    WriteThrough,
    /// Put the value in the cache and a durable local log, acknowledge, and
    /// write the store later in batches. For high-frequency fields such as a
    /// user's last-seen time, where a read elsewhere may lag by a flush.
    WriteBehind,
}

/// Which channel carries invalidations between the instances' L1 caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvalidationTransport {
    /// Redis pub/sub when an L2 is configured, UDP datagrams to the other api
    /// instances otherwise.
    Auto,
    /// Redis pub/sub on the L2 (requires `cache.l2.mode` other than `off`).
    Redis,
    /// UDP datagrams to the other api instances, whose addresses come from
    /// `api.listen` and `api.instances`; each instance receives on the UDP port
    /// with the number of its HTTP port.
    Peers,
    /// None: other instances see a write only when their entry expires.
    Off,
}

/// Cache settings of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceCacheConfig {
    /// Time an entry stays cached after it was loaded or written.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Time a "not found" stays cached (negative caching); "0s" disables it.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub negative_ttl: Duration,
    /// How writes of this resource reach the store and the cache.
    #[serde(default = "default_strategy")]
    pub strategy: WriteStrategy,
    /// Version in this resource's L2 keys; raise it when the cached value's
    /// shape changes, and entries written by older code are never read again.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Whether this resource uses the L2 (when one is configured).
    #[serde(default = "default_true")]
    pub l2: bool,
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_strategy() -> WriteStrategy {
    WriteStrategy::CacheAside
}

fn default_version() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

impl ResourceCacheConfig {
    /// A cache-aside resource with `ttl` and the default negative TTL.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            negative_ttl: default_negative_ttl(),
            strategy: default_strategy(),
            version: default_version(),
            l2: true,
        }
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        positive(&format!("{key}.ttl"), self.ttl)?;
        if self.negative_ttl > self.ttl {
            return Err(invalid(
                format!("{key}.negative_ttl"),
                duration_value(self.negative_ttl),
                format!(
                    "must not exceed {key}.ttl ({})",
                    humantime::format_duration(self.ttl)
                ),
            ));
        }
        if self.version == 0 {
            return Err(invalid(format!("{key}.version"), 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// When the L2's circuit breaker stops calling Redis and how it probes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct L2BreakerConfig {
    /// Failed or timed-out Redis calls in a row that open the breaker.
    pub consecutive_failures: u32,
    /// How long the breaker stays open (Redis is not called) before probing.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_for: Duration,
    /// Successful probes that close the breaker again.
    pub half_open_probes: u32,
}

impl Default for L2BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            open_for: Duration::from_secs(2),
            half_open_probes: 2,
        }
    }
}

/// The shared Redis cache (L2) behind every instance's L1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct L2Config {
    /// `off` (L1 only), `standalone` or `cluster`.
    pub mode: L2Mode,
    /// Redis URLs such as "redis://127.0.0.1:6379": the server (standalone) or
    /// seed nodes (cluster).
    pub urls: Vec<String>,
    /// Longest wait for one Redis call; a slower call counts as a failure and
    /// the read falls back to the loader.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How long the instance that won a key's load lock may take to load it
    /// before another instance may try (stampede protection).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_ttl: Duration,
    /// How long an instance that lost the load lock waits for the winner's
    /// value in Redis before it loads the key itself.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock_wait: Duration,
    /// The circuit breaker in front of Redis.
    pub breaker: L2BreakerConfig,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            mode: L2Mode::Off,
            urls: Vec::new(),
            timeout: Duration::from_millis(100),
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_secs(1),
            breaker: L2BreakerConfig::default(),
        }
    }
}

/// How instances tell each other to drop entries from their L1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InvalidationConfig {
    /// `auto`, `redis`, `peers` or `off`.
    pub transport: InvalidationTransport,
    /// Interval of the heartbeat that carries each instance's last message
    /// number, so that a lost invalidation is noticed (and the receiver's L1
    /// purged) within about this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat: Duration,
}

impl Default for InvalidationConfig {
    fn default() -> Self {
        Self {
            transport: InvalidationTransport::Auto,
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// The durable logs of write-behind resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WriteBehindConfig {
    /// Directory of the logs, relative to `data_dir` unless absolute; each api
    /// instance writes its own subdirectory.
    pub dir: PathBuf,
    /// Longest time an acknowledged write waits before it is written to the store.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// Most entries handed to the store in one batch; a full buffer also
    /// starts a flush early.
    pub max_batch: usize,
    /// Whether each group of log appends is synced to disk before the writes
    /// are acknowledged. Without it a killed process still loses nothing, but
    /// a power cut may.
    pub fsync: bool,
}

impl WriteBehindConfig {
    /// The log directory of one process: `dir` under `data_dir` (unless
    /// absolute), then the process's name, e.g. `data/cache-wal/api-0`.
    pub fn instance_dir(&self, data_dir: &std::path::Path, instance: &str) -> PathBuf {
        data_dir.join(&self.dir).join(instance)
    }
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("cache-wal"),
            flush_interval: Duration::from_secs(1),
            max_batch: 500,
            fsync: true,
        }
    }
}

/// The cache tier of the api servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether reads go through the cache at all. Without it every read goes
    /// to the store and every write straight to it (`write_behind` resources
    /// are written through).
    pub enabled: bool,
    /// Memory budget of the L1 cache per process, in bytes, shared by all
    /// resources; 0 turns the L1 off (reads go to the L2, then the store).
    pub l1_max_bytes: u64,
    /// Eviction policy of the L1: `tiny_lfu` or `lru`.
    pub l1_eviction: L1Eviction,
    /// Prefix of every L2 key and of the invalidation channel, so that several
    /// stacks can share one Redis.
    pub namespace: String,
    /// The Redis L2.
    pub l2: L2Config,
    /// Invalidation of other instances' L1 after a write.
    pub invalidation: InvalidationConfig,
    /// Logs and flushing of write-behind resources.
    pub write_behind: WriteBehindConfig,
    /// User profiles (read often, written rarely). Any strategy; under
    /// `write_behind` a profile change is acknowledged once logged and
    /// written to the shard later (last write wins by `updated_at`).
    pub users: ResourceCacheConfig,
    /// Products of the catalog (change infrequently): `cache_aside` or
    /// `write_through`. Not `write_behind`, because stock also changes
    /// through orders, and a delayed write of a whole product would undo them.
    pub products: ResourceCacheConfig,
    /// Users' last-seen times (`POST /users/{id}/seen`): a high-frequency
    /// field, `write_behind` by default so that a burst of activity costs one
    /// store write per user and flush.
    pub user_activity: ResourceCacheConfig,
    /// Whole API responses, where freshness matters more: the pages of
    /// `GET /products`. A product written through the api retires every page
    /// at once; stock taken by orders shows in the pages within this TTL.
    /// `cache_aside` or `write_through` (the same here: pages are never
    /// written, only retired).
    pub responses: ResourceCacheConfig,
    /// Sessions, for services built on the cache library; the reference
    /// service has no sessions, so nothing reads this table yet.
    pub sessions: ResourceCacheConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        // TTLs are the usual starting points for these kinds of data: user
        // profiles 15 minutes, the catalog an hour, API responses one to five
        // minutes (the fresh end here), sessions 30 minutes.
        Self {
            enabled: true,
            l1_max_bytes: 64 * 1024 * 1024,
            l1_eviction: L1Eviction::TinyLfu,
            namespace: "scalestack".into(),
            l2: L2Config::default(),
            invalidation: InvalidationConfig::default(),
            write_behind: WriteBehindConfig::default(),
            users: ResourceCacheConfig::with_ttl(Duration::from_secs(15 * 60)),
            products: ResourceCacheConfig::with_ttl(Duration::from_secs(60 * 60)),
            user_activity: ResourceCacheConfig {
                strategy: WriteStrategy::WriteBehind,
                ..ResourceCacheConfig::with_ttl(Duration::from_secs(15 * 60))
            },
            responses: ResourceCacheConfig {
                negative_ttl: Duration::from_secs(10),
                ..ResourceCacheConfig::with_ttl(Duration::from_secs(60))
            },
            sessions: ResourceCacheConfig::with_ttl(Duration::from_secs(30 * 60)),
        }
    }
}

impl CacheConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.l1_max_bytes != 0 && self.l1_max_bytes < 1024 {
            return Err(invalid(
                "cache.l1_max_bytes",
                self.l1_max_bytes,
                "must be 0 (no L1) or at least 1024",
            ));
        }
        if self.namespace.is_empty()
            || !self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(invalid(
                "cache.namespace",
                quoted(&self.namespace),
                "must be non-empty ASCII letters, digits, '_', '-' or '.'",
            ));
        }
        self.validate_l2()?;
        positive("cache.invalidation.heartbeat", self.invalidation.heartbeat)?;
        if self.invalidation.transport == InvalidationTransport::Redis
            && self.l2.mode == L2Mode::Off
        {
            return Err(invalid(
                "cache.invalidation.transport",
                quoted("redis"),
                "needs cache.l2.mode = \"standalone\" or \"cluster\"",
            ));
        }
        let wb = &self.write_behind;
        if wb.dir.as_os_str().is_empty() {
            return Err(invalid(
                "cache.write_behind.dir",
                "\"\"",
                "must name a directory",
            ));
        }
        positive("cache.write_behind.flush_interval", wb.flush_interval)?;
        if wb.max_batch == 0 {
            return Err(invalid(
                "cache.write_behind.max_batch",
                0,
                "must be at least 1",
            ));
        }
        for (name, resource) in self.resources() {
            resource.validate(&format!("cache.{name}"))?;
        }
        if self.products.strategy == WriteStrategy::WriteBehind {
            return Err(invalid(
                "cache.products.strategy",
                quoted("write_behind"),
                "use \"cache_aside\" or \"write_through\": stock also changes through orders, \
                 and a delayed write of a whole product would undo those changes",
            ));
        }
        if self.responses.strategy == WriteStrategy::WriteBehind {
            return Err(invalid(
                "cache.responses.strategy",
                quoted("write_behind"),
                "use \"cache_aside\": cached responses are never written behind, only retired",
            ));
        }
        Ok(())
    }

    fn validate_l2(&self) -> Result<(), ConfigError> {
        let l2 = &self.l2;
        if l2.mode != L2Mode::Off && l2.urls.is_empty() {
            return Err(invalid(
                "cache.l2.urls",
                "[]",
                "needs at least one redis:// URL when cache.l2.mode is not \"off\"",
            ));
        }
        for (i, url) in l2.urls.iter().enumerate() {
            let rest = url
                .strip_prefix("redis://")
                .or_else(|| url.strip_prefix("rediss://"));
            if rest.is_none_or(|r| r.is_empty()) {
                return Err(invalid(
                    format!("cache.l2.urls[{i}]"),
                    quoted(url),
                    "must look like \"redis://host:port\"",
                ));
            }
        }
        positive("cache.l2.timeout", l2.timeout)?;
        positive("cache.l2.lock_ttl", l2.lock_ttl)?;
        if l2.lock_wait > l2.lock_ttl {
            return Err(invalid(
                "cache.l2.lock_wait",
                duration_value(l2.lock_wait),
                "must not exceed cache.l2.lock_ttl",
            ));
        }
        if l2.breaker.consecutive_failures == 0 {
            return Err(invalid(
                "cache.l2.breaker.consecutive_failures",
                0,
                "must be at least 1",
            ));
        }
        positive("cache.l2.breaker.open_for", l2.breaker.open_for)?;
        if l2.breaker.half_open_probes == 0 {
            return Err(invalid(
                "cache.l2.breaker.half_open_probes",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Every resource table with its key name under `cache.`.
    pub fn resources(&self) -> [(&'static str, &ResourceCacheConfig); 5] {
        [
            ("users", &self.users),
            ("products", &self.products),
            ("user_activity", &self.user_activity),
            ("responses", &self.responses),
            ("sessions", &self.sessions),
        ]
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn check(toml: &str) -> String {
        let config = Config::from_toml_str(toml, "test").unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_seeds_ttls_are_the_defaults() {
        let c = super::CacheConfig::default();
        assert_eq!(c.users.ttl.as_secs(), 15 * 60);
        assert_eq!(c.products.ttl.as_secs(), 60 * 60);
        assert_eq!(c.responses.ttl.as_secs(), 60);
        assert_eq!(c.sessions.ttl.as_secs(), 30 * 60);
    }

    #[test]
    fn a_resource_table_needs_only_its_ttl() {
        let config = Config::from_toml_str("[cache.users]\nttl = \"90s\"\n", "test").unwrap();
        assert_eq!(config.cache.users.ttl.as_secs(), 90);
        assert_eq!(config.cache.users.version, 1);
        config.validate().unwrap();
    }

    #[test]
    fn l2_without_urls_is_refused_by_key() {
        let msg = check("[cache.l2]\nmode = \"standalone\"\n");
        assert!(msg.contains("`cache.l2.urls` = []"), "{msg}");
    }

    #[test]
    fn a_bad_url_is_named_with_its_index() {
        let msg = check("[cache.l2]\nmode = \"cluster\"\nurls = [\"redis://a:1\", \"b:2\"]\n");
        assert!(msg.contains("`cache.l2.urls[1]` = \"b:2\""), "{msg}");
    }

    #[test]
    fn redis_invalidation_needs_an_l2() {
        let msg = check("[cache.invalidation]\ntransport = \"redis\"\n");
        assert!(msg.contains("cache.invalidation.transport"), "{msg}");
    }

    #[test]
    fn negative_ttl_longer_than_ttl_is_refused() {
        let msg = check("[cache.sessions]\nttl = \"1m\"\nnegative_ttl = \"2m\"\n");
        assert!(
            msg.contains("`cache.sessions.negative_ttl` = \"2m\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_strategy_names_the_key() {
        let err = Config::from_toml_str(
            "[cache.users]\nttl = \"1m\"\nstrategy = \"write_sideways\"\n",
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache.users.strategy"), "{err}");
    }

    #[test]
    fn each_instance_has_its_own_write_behind_log() {
        let wb = super::WriteBehindConfig::default();
        assert_eq!(
            wb.instance_dir(std::path::Path::new("data"), "api-1"),
            std::path::PathBuf::from("data/cache-wal/api-1")
        );
    }

    #[test]
    fn products_refuse_write_behind() {
        let msg = check("[cache.products]\nttl = \"1h\"\nstrategy = \"write_behind\"\n");
        assert!(
            msg.contains("`cache.products.strategy` = \"write_behind\""),
            "{msg}"
        );
    }

    #[test]
    fn responses_refuse_write_behind() {
        let msg = check("[cache.responses]\nttl = \"2m\"\nstrategy = \"write_behind\"\n");
        assert!(
            msg.contains("`cache.responses.strategy` = \"write_behind\""),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_namespace_is_refused() {
        let msg = check("[cache]\nnamespace = \"a b\"\n");
        assert!(msg.contains("`cache.namespace` = \"a b\""), "{msg}");
    }
}
