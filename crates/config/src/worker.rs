//! Settings of the worker process (`[worker]`).

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, positive};

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

impl WorkerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("worker.poll_interval", self.poll_interval)
    }
}
