//! What a capacity plan is computed from: [`PlanInputs`], read from TOML or
//! built in code, with defaults that are the worked example of the seed
//! article (*Scaling to 1 Million Requests Per Second*) so that
//! `scalestack plan` with no input reproduces its figures.
//!
//! Like every configuration struct of the project: unknown keys are errors,
//! every field defaults, and [`PlanInputs::validate`] names the key and the
//! value of the first problem.

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// One kind of instance and what it costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The instance type, for the cost table (e.g. `t3.large`).
    pub instance: String,
    /// On-demand price per instance-hour, in dollars.
    pub hourly: f64,
}

impl Price {
    fn new(instance: &str, hourly: f64) -> Self {
        Self {
            instance: instance.into(),
            hourly,
        }
    }
}

/// Instance prices. The defaults are the seed's on-demand AWS figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Hours in a billed month (720 = 30 days, as the seed counts).
    pub hours_per_month: f64,
    /// API servers.
    pub api: Price,
    /// Queue brokers.
    pub broker: Price,
    /// Consumer workers.
    pub worker: Price,
    /// Cache nodes.
    pub cache: Price,
    /// Database primaries (one per shard).
    pub db_primary: Price,
    /// Database read replicas. The seed's cost table bills only its 50
    /// shard primaries; the default bills replicas at the primaries' price,
    /// and the seed's table is reproduced by setting this to 0.
    pub db_replica: Price,
    /// Load balancers, a flat monthly amount.
    pub load_balancer_monthly: f64,
    /// Outbound transfer per GB (decimal). The seed quotes $0.08–0.12 but
    /// leaves transfer out of its table; 0 leaves it out here too.
    pub egress_per_gb: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            hours_per_month: 720.0,
            api: Price::new("t3.large", 0.08),
            broker: Price::new("r5.xlarge", 0.25),
            worker: Price::new("t3.medium", 0.04),
            cache: Price::new("r5.large", 0.13),
            db_primary: Price::new("db.r5.2xlarge", 0.60),
            db_replica: Price::new("db.r5.2xlarge", 0.60),
            load_balancer_monthly: 500.0,
            egress_per_gb: 0.0,
        }
    }
}

/// Everything a capacity plan is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanInputs {
    /// Peak requests per second the system must serve.
    pub target_rps: f64,
    /// Share of requests that are reads (0 to 1); the rest are writes.
    pub read_ratio: f64,
    /// Share of reads answered by the cache (0 to 1).
    pub cache_hit_rate: f64,
    /// Average response payload, bytes (decimal: 1000 = 1 KB).
    pub payload_bytes: f64,
    /// Requests per second one API server sustains (Go/Rust 10–20k, Node
    /// 5–10k, Python 1–2k in the seed; measure yours with `plan --from`).
    pub api_rps_per_server: f64,
    /// Mean latency of one API request in milliseconds, for Little's law
    /// (in-flight requests per server); `None` leaves it out.
    pub api_latency_ms: Option<f64>,
    /// Spare API capacity for spikes, deploys and failures (0.5 = 50%).
    pub api_headroom: f64,
    /// Time one worker spends on one message, milliseconds.
    pub message_processing_ms: f64,
    /// Queue messages produced per request.
    pub messages_per_request: f64,
    /// Spare worker capacity (0 = exactly the Little's-law count).
    pub worker_headroom: f64,
    /// Mean time a message may wait for a worker, milliseconds; Erlang C
    /// finds the workers that keep the wait under it.
    pub queue_wait_target_ms: f64,
    /// Throughput of one queue partition, MB/s.
    pub partition_mb_per_s: f64,
    /// Throughput of one broker (all the partitions it hosts, replicas
    /// included), MB/s.
    pub broker_mb_per_s: f64,
    /// Copies of each queue partition.
    pub replication_factor: u32,
    /// Operations per second one cache node sustains.
    pub cache_node_ops: f64,
    /// Spare cache capacity.
    pub cache_headroom: f64,
    /// Reads per second one database replica sustains.
    pub replica_read_capacity: f64,
    /// Writes per second one primary sustains (10–30k for PostgreSQL in the
    /// seed; it uses 10k as the conservative anchor).
    pub primary_write_ceiling: f64,
    /// Replicas every shard has at least, whatever the read load.
    pub min_replicas_per_shard: u32,
    /// Spare database capacity.
    pub db_headroom: f64,
    /// Instance prices.
    pub prices: Prices,
}

impl Default for PlanInputs {
    /// The seed's worked example: 1M req/s, 1 KB responses, 80% cache hits,
    /// Go/Rust-class servers at 10k req/s each with 50% headroom, 1 ms per
    /// message, the write-heavy (50/50) case with 5 replicas per shard.
    fn default() -> Self {
        Self {
            target_rps: 1_000_000.0,
            read_ratio: 0.5,
            cache_hit_rate: 0.8,
            payload_bytes: 1000.0,
            api_rps_per_server: 10_000.0,
            api_latency_ms: None,
            api_headroom: 0.5,
            message_processing_ms: 1.0,
            messages_per_request: 1.0,
            worker_headroom: 0.0,
            queue_wait_target_ms: 10.0,
            partition_mb_per_s: 10.0,
            broker_mb_per_s: 150.0,
            replication_factor: 3,
            cache_node_ops: 200_000.0,
            cache_headroom: 0.0,
            replica_read_capacity: 12_000.0,
            primary_write_ceiling: 10_000.0,
            min_replicas_per_shard: 5,
            db_headroom: 0.0,
            prices: Prices::default(),
        }
    }
}

impl PlanInputs {
    /// Parses inputs from TOML; `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PlanError> {
        let bad = |message: String| PlanError::Inputs {
            origin: origin.to_owned(),
            message,
        };
        let de =
            toml::Deserializer::parse(text).map_err(|e| bad(e.to_string().trim().to_owned()))?;
        let inputs: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim().to_owned();
            bad(if path.is_empty() || path == "." {
                message
            } else {
                format!("{path}: {message}")
            })
        })?;
        inputs.validate()?;
        Ok(inputs)
    }

    /// The inputs as TOML (what `from_toml` reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain data serialises")
    }

    /// Checks every value; the error names the first bad key and its value.
    pub fn validate(&self) -> Result<(), PlanError> {
        let positive = [
            ("target_rps", self.target_rps),
            ("payload_bytes", self.payload_bytes),
            ("api_rps_per_server", self.api_rps_per_server),
            ("message_processing_ms", self.message_processing_ms),
            ("queue_wait_target_ms", self.queue_wait_target_ms),
            ("partition_mb_per_s", self.partition_mb_per_s),
            ("broker_mb_per_s", self.broker_mb_per_s),
            ("cache_node_ops", self.cache_node_ops),
            ("replica_read_capacity", self.replica_read_capacity),
            ("primary_write_ceiling", self.primary_write_ceiling),
            ("prices.hours_per_month", self.prices.hours_per_month),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(PlanError::invalid(
                    key,
                    value,
                    "must be a number greater than 0",
                ));
            }
        }
        let fractions = [
            ("read_ratio", self.read_ratio),
            ("cache_hit_rate", self.cache_hit_rate),
        ];
        for (key, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return Err(PlanError::invalid(
                    key,
                    value,
                    "must be a share from 0 to 1",
                ));
            }
        }
        let non_negative = [
            ("api_headroom", self.api_headroom),
            ("worker_headroom", self.worker_headroom),
            ("cache_headroom", self.cache_headroom),
            ("db_headroom", self.db_headroom),
            ("messages_per_request", self.messages_per_request),
            ("prices.api.hourly", self.prices.api.hourly),
            ("prices.broker.hourly", self.prices.broker.hourly),
            ("prices.worker.hourly", self.prices.worker.hourly),
            ("prices.cache.hourly", self.prices.cache.hourly),
            ("prices.db_primary.hourly", self.prices.db_primary.hourly),
            ("prices.db_replica.hourly", self.prices.db_replica.hourly),
            (
                "prices.load_balancer_monthly",
                self.prices.load_balancer_monthly,
            ),
            ("prices.egress_per_gb", self.prices.egress_per_gb),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PlanError::invalid(
                    key,
                    value,
                    "must be a number, 0 or more",
                ));
            }
        }
        if let Some(latency) = self.api_latency_ms
            && !(latency.is_finite() && latency > 0.0)
        {
            return Err(PlanError::invalid(
                "api_latency_ms",
                latency,
                "must be a number greater than 0",
            ));
        }
        if self.replication_factor == 0 {
            return Err(PlanError::invalid(
                "replication_factor",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let inputs = PlanInputs::default();
        inputs.validate().unwrap();
        let text = inputs.to_toml();
        assert_eq!(PlanInputs::from_toml(&text, "x").unwrap(), inputs);
        let partial =
            PlanInputs::from_toml("target_rps = 5000\n[prices]\nhours_per_month = 730\n", "x")
                .unwrap();
        assert_eq!(partial.target_rps, 5000.0);
        assert_eq!(partial.prices.hours_per_month, 730.0);
        assert_eq!(partial.prices.api, Prices::default().api);
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let err = PlanInputs::from_toml("read_ratio = 1.5", "in.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid `read_ratio` = 1.5: must be a share from 0 to 1"
        );
        let err = PlanInputs::from_toml("target_rsp = 1", "in.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("in.toml: ") && err.contains("target_rsp"),
            "{err}"
        );
        let err = PlanInputs::from_toml("[prices.api]\ninstance = 'x'\nhourly = -1", "in.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prices.api.hourly") && err.contains("-1"),
            "{err}"
        );
        let err = PlanInputs::from_toml("[prices]\nwat = 1", "in.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prices") && err.contains("wat"), "{err}");
        let err = PlanInputs::from_toml("api_latency_ms = 0", "in.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_latency_ms"), "{err}");
    }
}
