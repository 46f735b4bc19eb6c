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

mod api;
mod cache;
mod gateway;
mod log;
mod queue;
pub mod render;
mod store;
mod supervisor;
mod worker;

pub use api::*;
pub use cache::*;
pub use gateway::*;
pub use log::*;
pub use queue::*;
pub use store::*;
pub use supervisor::*;
pub use worker::*;

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

pub(crate) fn invalid(
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
    /// The message queue between the api servers and the workers.
    pub queue: QueueConfig,
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
            queue: QueueConfig::default(),
            supervisor: SupervisorConfig::default(),
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
        self.queue.validate()?;
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

pub(crate) fn quoted(v: impl std::fmt::Display) -> String {
    format!("\"{v}\"")
}

pub(crate) fn duration_value(d: Duration) -> String {
    quoted(humantime::format_duration(d))
}

pub(crate) fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(invalid(key, duration_value(d), "must be greater than zero"))
    } else {
        Ok(())
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
