//! Settings of `scalestack up` (`[supervisor]`).

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, duration_value, invalid, positive};

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

impl SupervisorConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
