//! Settings of the cache tier (`[cache]`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, positive};

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

impl CacheConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
