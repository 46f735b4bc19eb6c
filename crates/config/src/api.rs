//! Settings of the api servers (`[api]`).

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, quoted};

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

/// Most api instances `up` will start on one machine.
pub const MAX_API_INSTANCES: u16 = 64;

impl ApiConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
