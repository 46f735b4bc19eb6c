//! Typed configuration of every scalestack component.
//!
//! This crate owns the configuration structs, their defaults, TOML loading and
//! validation. [`Config::default`] *is* the embedded one-machine stack: SQLite
//! files under `./data/`, an in-process cache, two api instances behind a gateway
//! on `127.0.0.1:8080`. Every error names the offending key and value.
//!
//! It must not do network or database IO: components read their section and act
//! on it themselves. Doc comments on the fields are the user documentation; they
//! are rendered into `scalestack config default` by [`render`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod render;

/// Environment variable through which `scalestack up` hands the fully resolved
/// configuration (as TOML) to the processes it starts.
pub const CONFIG_ENV: &str = "SCALESTACK_CONFIG_TOML";

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML was malformed, had an unknown key or a value of the wrong type.
    #[error("invalid config in {origin}: {message}")]
    Parse {
        /// Where the TOML came from (a path, or the environment variable).
        origin: String,
        /// Which key failed and why.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid config value `{key}` = {value}: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `api.instances`.
        key: String,
        /// The rejected value, as written in TOML.
        value: String,
        /// What would be acceptable.
        reason: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The whole scalestack configuration: one section per component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded stack's data: the SQLite files of the catalog
    /// and of the user shards. Relative paths resolve from the current directory.
    pub data_dir: PathBuf,
    /// Logging of every process.
    pub log: LogConfig,
    /// The edge gateway: listens for clients and balances over the api instances.
    pub gateway: GatewayConfig,
    /// The stateless api servers of the reference service.
    pub api: ApiConfig,
    /// The background worker process.
    pub worker: WorkerConfig,
    /// Databases: the catalog and the user shards.
    pub store: StoreConfig,
    /// The in-process read cache of the api servers.
    pub cache: CacheConfig,
    /// `scalestack up`: how child processes are started, restarted and stopped.
    pub supervisor: SupervisorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            log: LogConfig::default(),
            gateway: GatewayConfig::default(),
            api: ApiConfig::default(),
            worker: WorkerConfig::default(),
            store: StoreConfig::default(),
            cache: CacheConfig::default(),
            supervisor: SupervisorConfig::default(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging of every process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in `tracing` syntax, e.g. `info` or `info,scalestack_gateway=debug`.
    /// The `RUST_LOG` environment variable overrides it.
    pub level: String,
    /// `text` for humans, `json` for log shippers.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The edge gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address for client traffic.
    pub listen: SocketAddr,
    /// Address of the gateway's own `/health` and `/metrics` (kept apart from
    /// client traffic so that every path of the client port reaches the upstreams).
    pub admin_listen: SocketAddr,
    /// Worker threads; 0 means one per CPU core.
    pub threads: usize,
    /// Largest request body accepted from a client, in bytes; larger gets 413.
    pub max_request_body: u64,
    /// The pool of api endpoints and how connections to them are kept.
    pub upstream: UpstreamConfig,
    /// Active health checks of the upstream endpoints.
    pub health_check: HealthCheckConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9000).into(),
            threads: 0,
            max_request_body: 1024 * 1024,
            upstream: UpstreamConfig::default(),
            health_check: HealthCheckConfig::default(),
        }
    }
}

/// The upstream pool of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints as `host:port`. Empty means the api instances that
    /// `scalestack up` starts.
    pub endpoints: Vec<String>,
    /// Time allowed to open a TCP connection to an endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Time allowed for an endpoint to send a response's headers.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How long an idle keep-alive connection to an endpoint is kept.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Most idle keep-alive connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 512,
        }
    }
}

/// Active health checks: a GET of `path` on every endpoint at every `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested on each endpoint; a 2xx answer counts as healthy.
    pub path: String,
    /// Time between two checks of one endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Time allowed for one check before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Consecutive successful checks before an unhealthy endpoint gets traffic again.
    pub rise: u32,
    /// Consecutive failed checks before a healthy endpoint stops getting traffic.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        }
    }
}

/// The api servers of the reference service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Number of api processes `scalestack up` starts.
    pub instances: u16,
    /// Address of the first instance; instance `i` listens on this port + `i`.
    pub listen: SocketAddr,
    /// Worker threads per instance; 0 means one per CPU core.
    pub threads: usize,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_request_body: u64,
    /// Page size of list endpoints when the request gives no `limit`.
    pub default_page_limit: u32,
    /// Largest `limit` a list endpoint honours; larger values are capped.
    pub max_page_limit: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            instances: 2,
            listen: ([127, 0, 0, 1], 8081).into(),
            threads: 0,
            max_request_body: 64 * 1024,
            default_page_limit: 20,
            max_page_limit: 100,
        }
    }
}

impl ApiConfig {
    /// How errors name the address of api instance `index` (0-based).
    pub fn instance_key(index: u16) -> String {
        format!("api.listen (instance {index})")
    }

    /// Listen address of api instance `index` (0-based).
    pub fn instance_addr(&self, index: u16) -> SocketAddr {
        let mut addr = self.listen;
        addr.set_port(self.listen.port().saturating_add(index));
        addr
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
    /// How often the worker measures the outbox backlog of every shard.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9001).into(),
            threads: 0,
            poll_interval: Duration::from_secs(1),
        }
    }
}

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

/// Cache settings of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceCacheConfig {
    /// Time an entry stays cached after it was loaded.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

/// The in-process (L1) read cache of the api servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether reads go through the cache at all.
    pub enabled: bool,
    /// Memory budget of the cache per process, in bytes, shared by all resources.
    pub l1_max_bytes: u64,
    /// User profiles.
    pub users: ResourceCacheConfig,
    /// Products of the catalog.
    pub products: ResourceCacheConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_max_bytes: 64 * 1024 * 1024,
            users: ResourceCacheConfig {
                ttl: Duration::from_secs(15 * 60),
            },
            products: ResourceCacheConfig {
                ttl: Duration::from_secs(60 * 60),
            },
        }
    }
}

/// `scalestack up`: starting, restarting and stopping the child processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Address of the supervisor's `/health` (every child's state, pid and
    /// restarts) and `/metrics`.
    pub listen: SocketAddr,
    /// Delay before the first restart of a child that died.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub restart_backoff_initial: Duration,
    /// Longest delay between restarts of a child that keeps dying.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub restart_backoff_max: Duration,
    /// A child that ran this long is considered stable: its backoff resets.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stable_after: Duration,
    /// Time a child has to report healthy after it starts.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub start_timeout: Duration,
    /// Time children have to exit after SIGTERM before they are killed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9002).into(),
            restart_backoff_initial: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            start_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

// === impl Config ===

impl Config {
    /// Parses TOML text; `origin` names the source in error messages.
    ///
    /// Unknown keys and wrongly typed values are errors that name the key.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| parse_error(e.to_string()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path.is_empty() || path == "." {
                parse_error(inner)
            } else {
                parse_error(format!("key `{path}`: {inner}"))
            }
        })
    }

    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Serializes the configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config types serialize to TOML")
    }

    /// Resolves a database URL of the store: `sqlite://NAME` becomes a path in
    /// `data_dir` unless it is absolute.
    pub fn resolve_sqlite_path(&self, url: &str) -> Option<PathBuf> {
        let rest = url.strip_prefix("sqlite://")?;
        let path = Path::new(rest);
        Some(if path.is_absolute() {
            path.to_owned()
        } else {
            self.data_dir.join(path)
        })
    }

    /// Checks every value; the first problem found is returned with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "\"\"", "must name a directory"));
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid(
                "log.level",
                "\"\"",
                "must be a filter such as \"info\"",
            ));
        }
        self.gateway.validate()?;
        self.api.validate()?;
        self.worker.validate()?;
        self.store.validate()?;
        self.cache.validate()?;
        self.supervisor.validate()?;
        self.validate_ports()
    }

    /// Every address `scalestack up` listens on, with the process that owns it
    /// and the config key it comes from.
    pub fn listeners(&self) -> Vec<Listener> {
        let mut all = vec![
            Listener::new("gateway", "gateway.listen", self.gateway.listen),
            Listener::new("gateway", "gateway.admin_listen", self.gateway.admin_listen),
            Listener::new("worker", "worker.listen", self.worker.listen),
            Listener::new("supervisor", "supervisor.listen", self.supervisor.listen),
        ];
        for i in 0..self.api.instances {
            all.push(Listener::new(
                &format!("api-{i}"),
                &ApiConfig::instance_key(i),
                self.api.instance_addr(i),
            ));
        }
        all
    }

    /// Two components of `up` must not share a listen address.
    fn validate_ports(&self) -> Result<(), ConfigError> {
        let taken = self.listeners();
        for (i, l) in taken.iter().enumerate() {
            if l.addr.port() == 0 {
                return Err(invalid(
                    l.key.clone(),
                    quoted(l.addr),
                    "port 0 is not allowed: other processes must know the port",
                ));
            }
            if let Some(other) = taken[..i].iter().find(|o| o.addr == l.addr) {
                return Err(invalid(
                    l.key.clone(),
                    quoted(l.addr),
                    format!("already used by {}", other.key),
                ));
            }
        }
        Ok(())
    }
}

/// A listen address of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The process: `gateway`, `api-0`, `worker`, `supervisor`.
    pub component: String,
    /// The config key of the address.
    pub key: String,
    /// The address.
    pub addr: SocketAddr,
}

impl Listener {
    fn new(component: &str, key: &str, addr: SocketAddr) -> Self {
        Self {
            component: component.to_owned(),
            key: key.to_owned(),
            addr,
        }
    }
}

fn quoted(v: impl std::fmt::Display) -> String {
    format!("\"{v}\"")
}

fn duration_value(d: Duration) -> String {
    quoted(humantime::format_duration(d))
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(invalid(key, duration_value(d), "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_body == 0 {
            return Err(invalid(
                "gateway.max_request_body",
                0,
                "must be at least 1 byte",
            ));
        }
        for (i, endpoint) in self.upstream.endpoints.iter().enumerate() {
            if endpoint.parse::<SocketAddr>().is_err() && !looks_like_host_port(endpoint) {
                return Err(invalid(
                    format!("gateway.upstream.endpoints[{i}]"),
                    quoted(endpoint),
                    "must be host:port",
                ));
            }
        }
        positive(
            "gateway.upstream.connect_timeout",
            self.upstream.connect_timeout,
        )?;
        positive(
            "gateway.upstream.request_timeout",
            self.upstream.request_timeout,
        )?;
        positive("gateway.upstream.idle_timeout", self.upstream.idle_timeout)?;
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            return Err(invalid(
                "gateway.health_check.path",
                quoted(&hc.path),
                "must start with /",
            ));
        }
        positive("gateway.health_check.interval", hc.interval)?;
        positive("gateway.health_check.timeout", hc.timeout)?;
        if hc.rise == 0 {
            return Err(invalid(
                "gateway.health_check.rise",
                0,
                "must be at least 1",
            ));
        }
        if hc.fall == 0 {
            return Err(invalid(
                "gateway.health_check.fall",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

/// Most api instances `up` will start on one machine.
pub const MAX_API_INSTANCES: u16 = 64;

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.instances == 0 || self.instances > MAX_API_INSTANCES {
            return Err(invalid(
                "api.instances",
                self.instances,
                format!("must be between 1 and {MAX_API_INSTANCES}"),
            ));
        }
        if u32::from(self.listen.port()) + u32::from(self.instances) - 1 > u32::from(u16::MAX) {
            return Err(invalid(
                "api.listen",
                quoted(self.listen),
                format!("{} instances need ports above 65535", self.instances),
            ));
        }
        if self.max_request_body == 0 {
            return Err(invalid(
                "api.max_request_body",
                0,
                "must be at least 1 byte",
            ));
        }
        if self.max_page_limit == 0 {
            return Err(invalid("api.max_page_limit", 0, "must be at least 1"));
        }
        if self.default_page_limit == 0 || self.default_page_limit > self.max_page_limit {
            return Err(invalid(
                "api.default_page_limit",
                self.default_page_limit,
                format!(
                    "must be between 1 and api.max_page_limit ({})",
                    self.max_page_limit
                ),
            ));
        }
        Ok(())
    }
}

impl WorkerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("worker.poll_interval", self.poll_interval)
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
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

impl CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.l1_max_bytes < 1024 {
            return Err(invalid(
                "cache.l1_max_bytes",
                self.l1_max_bytes,
                "must be at least 1024",
            ));
        }
        positive("cache.users.ttl", self.users.ttl)?;
        positive("cache.products.ttl", self.products.ttl)
    }
}

impl SupervisorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(
            "supervisor.restart_backoff_initial",
            self.restart_backoff_initial,
        )?;
        if self.restart_backoff_max < self.restart_backoff_initial {
            return Err(invalid(
                "supervisor.restart_backoff_max",
                duration_value(self.restart_backoff_max),
                "must not be below supervisor.restart_backoff_initial",
            ));
        }
        positive("supervisor.start_timeout", self.start_timeout)?;
        positive("supervisor.shutdown_timeout", self.shutdown_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            Config::from_toml_str("", "test").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[api]\ninstanses = 3\n", "test").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("instanses"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_dotted_key() {
        let err = Config::from_toml_str("[api]\ninstances = \"two\"\n", "test").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("api.instances"), "{msg}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = Config::from_toml_str("[cache.users]\nttl = \"soon\"\n", "test").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cache.users.ttl"), "{msg}");
    }

    #[test]
    fn invalid_value_names_key_and_value() {
        let mut config = Config::default();
        config.api.instances = 0;
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains("`api.instances` = 0"), "{msg}");
    }

    #[test]
    fn clashing_ports_are_refused() {
        let mut config = Config::default();
        config.worker.listen = config.api.instance_addr(1);
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains("worker.listen"), "{msg}");
        assert!(msg.contains("api.listen (instance 1)"), "{msg}");
    }

    #[test]
    fn replicas_on_sqlite_are_refused() {
        let text =
            "[[store.shards]]\nprimary = \"sqlite://a.db\"\nreplicas = [\"sqlite://b.db\"]\n";
        let config = Config::from_toml_str(text, "test").unwrap();
        let msg = config.validate().unwrap_err().to_string();
        assert!(msg.contains("store.shards[0].replicas[0]"), "{msg}");
    }

    #[test]
    fn sqlite_paths_resolve_in_data_dir() {
        let config = Config::default();
        assert_eq!(
            config.resolve_sqlite_path("sqlite://shard-1.db"),
            Some(PathBuf::from("data/shard-1.db"))
        );
        assert_eq!(
            config.resolve_sqlite_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(config.resolve_sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = Config::default();
        config.api.instances = 5;
        config.cache.users.ttl = Duration::from_secs(90);
        let back = Config::from_toml_str(&config.to_toml(), "test").unwrap();
        assert_eq!(back, config);
    }
}
