//! The capacity math: from [`PlanInputs`] to a [`CapacityPlan`] of every
//! tier — API servers, queue, workers, cache, database — its bandwidth and
//! its monthly cost, with notes where the numbers disagree with each other.
//!
//! Every count is "the load divided by one instance's capacity, times one
//! plus the headroom, rounded up", and every formula is written out in the
//! field's documentation, so a reader can redo any figure by hand.

use serde::{Deserialize, Serialize};

use crate::PlanInputs;
use crate::queueing::{erlang_c, little, servers_for_wait};
use crate::render::thousands;

const SECONDS_PER_DAY: f64 = 86_400.0;

/// Rounds up, forgiving the last bits of floating-point noise: 150.000…01
/// servers is 150 servers, not 151.
fn count(x: f64) -> u64 {
    if x <= 0.0 {
        return 0;
    }
    (x * (1.0 - 1e-12)).ceil() as u64
}

/// Requests and bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests per second.
    pub rps: f64,
    /// `rps × read_ratio`.
    pub reads_per_s: f64,
    /// `rps − reads_per_s`.
    pub writes_per_s: f64,
    /// `rps × 86,400`.
    pub requests_per_day: f64,
    /// `requests_per_day × hours_per_month / 24`.
    pub requests_per_month: f64,
    /// `rps × payload_bytes`.
    pub bytes_per_s: f64,
    /// `bytes_per_s × 86,400`.
    pub bytes_per_day: f64,
}

/// The stateless API tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTier {
    /// `⌈rps / api_rps_per_server⌉`: no headroom at all.
    pub minimum: u64,
    /// `⌈rps × (1 + api_headroom) / api_rps_per_server⌉`.
    pub servers: u64,
    /// Requests per second each server carries at peak: `rps / servers`.
    pub rps_per_server: f64,
    /// Little's law, `rps_per_server × api_latency_ms`: requests in flight
    /// on each server (size its worker pool and connection pools for it).
    pub in_flight_per_server: Option<f64>,
}

/// The queue between the API and the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueTier {
    /// `rps × messages_per_request`.
    pub messages_per_s: f64,
    /// `messages_per_s × payload_bytes`, in MB/s.
    pub mb_per_s: f64,
    /// `⌈mb_per_s / partition_mb_per_s⌉`: the parallelism dial.
    pub partitions: u64,
    /// `⌈mb_per_s × replication_factor / broker_mb_per_s⌉`.
    pub brokers: u64,
    /// Copies of each partition.
    pub replication_factor: u32,
}

/// The consumer workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTier {
    /// Messages one worker handles per second: `1000 / message_processing_ms`.
    pub messages_per_worker: f64,
    /// Little's law, `⌈messages_per_s × message_processing_ms / 1000⌉`:
    /// workers busy all the time.
    pub busy: u64,
    /// `⌈busy × (1 + worker_headroom)⌉`.
    pub workers: u64,
    /// Share of the time each worker is busy.
    pub utilisation: f64,
    /// Erlang C's mean wait for a worker at `workers`, in milliseconds;
    /// `None` when the utilisation is 100% or more (the backlog grows
    /// without bound).
    pub mean_wait_ms: Option<f64>,
    /// Erlang C: the fewest workers whose mean wait is at most
    /// `queue_wait_target_ms`.
    pub workers_for_wait_target: u64,
    /// The same load at 100×, 10× and 1× the processing time:
    /// (milliseconds per message, workers busy).
    pub by_processing_time: Vec<(f64, u64)>,
}

/// The cache tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheTier {
    /// One lookup per read plus one invalidation per write:
    /// `reads_per_s + writes_per_s`.
    pub ops_per_s: f64,
    /// `reads_per_s × cache_hit_rate`.
    pub hits_per_s: f64,
    /// `reads_per_s − hits_per_s`: reads that reach the database.
    pub misses_per_s: f64,
    /// `⌈ops_per_s × (1 + cache_headroom) / cache_node_ops⌉`.
    pub nodes: u64,
}

/// The database tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseTier {
    /// Reads that miss the cache.
    pub reads_per_s: f64,
    /// Every write reaches a primary.
    pub writes_per_s: f64,
    /// `⌈reads_per_s × (1 + db_headroom) / replica_read_capacity⌉`: read
    /// replicas the read load needs.
    pub read_replicas: u64,
    /// `⌈writes_per_s × (1 + db_headroom) / primary_write_ceiling⌉`: one
    /// primary each.
    pub shards: u64,
    /// `max(min_replicas_per_shard, ⌈read_replicas / shards⌉)`.
    pub replicas_per_shard: u64,
    /// `1 + replicas_per_shard`.
    pub instances_per_shard: u64,
    /// `shards × instances_per_shard`.
    pub instances: u64,
}

/// One line of the cost table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostLine {
    /// What is billed.
    pub component: String,
    /// How many (0 for flat amounts).
    pub count: u64,
    /// Instance type, or a description.
    pub setup: String,
    /// Dollars per instance-hour (0 for flat amounts).
    pub hourly: f64,
    /// Dollars per month.
    pub monthly: f64,
}

/// Everything a plan says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityPlan {
    /// Requests and bytes.
    pub traffic: Traffic,
    /// API servers.
    pub api: ApiTier,
    /// Queue partitions and brokers.
    pub queue: QueueTier,
    /// Consumer workers.
    pub workers: WorkerTier,
    /// Cache nodes.
    pub cache: CacheTier,
    /// Shards, replicas, instances.
    pub database: DatabaseTier,
    /// Monthly cost per component.
    pub cost: Vec<CostLine>,
    /// Sum of the cost lines, dollars per month.
    pub monthly_total: f64,
    /// `monthly_total × 12`.
    pub yearly_total: f64,
    /// Where the figures pull against each other, in plain sentences.
    pub notes: Vec<String>,
}

impl CapacityPlan {
    /// Computes the plan. The inputs should be valid
    /// ([`PlanInputs::validate`]); invalid ones give meaningless figures,
    /// never a panic.
    pub fn compute(i: &PlanInputs) -> Self {
        let rps = i.target_rps;
        let reads = rps * i.read_ratio;
        let writes = rps - reads;
        let per_day = rps * SECONDS_PER_DAY;
        let traffic = Traffic {
            rps,
            reads_per_s: reads,
            writes_per_s: writes,
            requests_per_day: per_day,
            requests_per_month: per_day * i.prices.hours_per_month / 24.0,
            bytes_per_s: rps * i.payload_bytes,
            bytes_per_day: rps * i.payload_bytes * SECONDS_PER_DAY,
        };

        let servers = count(rps * (1.0 + i.api_headroom) / i.api_rps_per_server);
        let rps_per_server = if servers > 0 {
            rps / servers as f64
        } else {
            0.0
        };
        let api = ApiTier {
            minimum: count(rps / i.api_rps_per_server),
            servers,
            rps_per_server,
            in_flight_per_server: i
                .api_latency_ms
                .map(|ms| little(rps_per_server, ms / 1000.0)),
        };

        let messages = rps * i.messages_per_request;
        let mb_per_s = messages * i.payload_bytes / 1e6;
        let queue = QueueTier {
            messages_per_s: messages,
            mb_per_s,
            partitions: count(mb_per_s / i.partition_mb_per_s),
            brokers: count(mb_per_s * f64::from(i.replication_factor) / i.broker_mb_per_s),
            replication_factor: i.replication_factor,
        };

        let service_s = i.message_processing_ms / 1000.0;
        let busy = count(little(messages, service_s));
        let workers = count(busy as f64 * (1.0 + i.worker_headroom));
        let planned = erlang_c(workers, messages, service_s);
        let worker_tier = WorkerTier {
            messages_per_worker: 1.0 / service_s,
            busy,
            workers,
            utilisation: planned.utilisation,
            mean_wait_ms: planned.mean_wait_s.map(|s| s * 1000.0),
            workers_for_wait_target: if messages > 0.0 {
                servers_for_wait(messages, service_s, i.queue_wait_target_ms / 1000.0)
            } else {
                0
            },
            by_processing_time: [100.0, 10.0, 1.0]
                .iter()
                .map(|f| {
                    let ms = i.message_processing_ms * f;
                    (ms, count(little(messages, ms / 1000.0)))
                })
                .collect(),
        };

        let hits = reads * i.cache_hit_rate;
        let misses = reads - hits;
        let cache = CacheTier {
            ops_per_s: reads + writes,
            hits_per_s: hits,
            misses_per_s: misses,
            nodes: count((reads + writes) * (1.0 + i.cache_headroom) / i.cache_node_ops),
        };

        let read_replicas = count(misses * (1.0 + i.db_headroom) / i.replica_read_capacity);
        let shards = count(writes * (1.0 + i.db_headroom) / i.primary_write_ceiling).max(1);
        let replicas_per_shard =
            u64::from(i.min_replicas_per_shard).max(read_replicas.div_ceil(shards));
        let database = DatabaseTier {
            reads_per_s: misses,
            writes_per_s: writes,
            read_replicas,
            shards,
            replicas_per_shard,
            instances_per_shard: 1 + replicas_per_shard,
            instances: shards * (1 + replicas_per_shard),
        };

        let p = &i.prices;
        let hours = p.hours_per_month;
        let line = |component: &str, count: u64, price: &crate::Price| CostLine {
            component: component.into(),
            count,
            setup: price.instance.clone(),
            hourly: price.hourly,
            monthly: count as f64 * price.hourly * hours,
        };
        let mut cost = vec![
            line("API servers", api.servers, &p.api),
            line("Queue brokers", queue.brokers, &p.broker),
            line("Workers", worker_tier.workers, &p.worker),
            line("Cache", cache.nodes, &p.cache),
            line("Database primaries", database.shards, &p.db_primary),
            line(
                "Database replicas",
                database.shards * database.replicas_per_shard,
                &p.db_replica,
            ),
            CostLine {
                component: "Load balancers".into(),
                count: 0,
                setup: "flat".into(),
                hourly: 0.0,
                monthly: p.load_balancer_monthly,
            },
        ];
        if p.egress_per_gb > 0.0 {
            let gb_per_month = traffic.bytes_per_s * hours * 3600.0 / 1e9;
            cost.push(CostLine {
                component: "Egress".into(),
                count: 0,
                setup: format!("{gb_per_month:.0} GB/month"),
                hourly: 0.0,
                monthly: gb_per_month * p.egress_per_gb,
            });
        }
        let monthly_total: f64 = cost.iter().map(|c| c.monthly).sum();

        let mut notes = Vec::new();
        if worker_tier.workers > queue.partitions {
            notes.push(format!(
                "{} workers share {} partitions: in a consumer group one consumer reads a \
                 partition at a time, so {} workers would idle; raise the partitions to at least \
                 the workers or have each worker take batches.",
                thousands(worker_tier.workers as f64),
                thousands(queue.partitions as f64),
                thousands((worker_tier.workers - queue.partitions) as f64)
            ));
        }
        if worker_tier.mean_wait_ms.is_none() && messages > 0.0 {
            notes.push(format!(
                "At {} workers the utilisation is {:.0}%: any burst grows a backlog that never \
                 drains. Erlang C: {} workers keep the mean wait under {} ms.",
                thousands(worker_tier.workers as f64),
                planned.utilisation * 100.0,
                thousands(worker_tier.workers_for_wait_target as f64),
                i.queue_wait_target_ms
            ));
        }
        if p.db_replica.hourly == 0.0 && database.replicas_per_shard > 0 {
            notes.push(format!(
                "The {} database replicas are not priced (`prices.db_replica.hourly` = 0).",
                thousands((database.shards * database.replicas_per_shard) as f64)
            ));
        }
        if i.cache_headroom == 0.0 {
            notes.push(
                "The cache has no headroom: a node failure overloads the others \
                 (the seed suggests 30%)."
                    .into(),
            );
        }

        Self {
            traffic,
            api,
            queue,
            workers: worker_tier,
            cache,
            database,
            cost,
            monthly_total,
            yearly_total: monthly_total * 12.0,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_forgives_noise_but_not_real_fractions() {
        assert_eq!(count(150.0), 150);
        assert_eq!(count(150.000_000_000_001), 150);
        assert_eq!(count(150.01), 151);
        assert_eq!(count(0.0), 0);
        assert_eq!(count(0.2), 1);
        assert_eq!(count(-3.0), 0);
    }

    #[test]
    fn calibrated_latency_sizes_the_pools_by_littles_law() {
        let inputs = PlanInputs {
            api_latency_ms: Some(20.0),
            ..PlanInputs::default()
        };
        let plan = CapacityPlan::compute(&inputs);
        // 1M / 150 servers ≈ 6,667 req/s each, 20 ms each: ≈ 133 in flight.
        let in_flight = plan.api.in_flight_per_server.unwrap();
        assert!((in_flight - 1e6 / 150.0 * 0.02).abs() < 1e-6);
    }

    #[test]
    fn headroom_on_workers_makes_the_queue_stable() {
        let inputs = PlanInputs {
            worker_headroom: 0.2,
            ..PlanInputs::default()
        };
        let plan = CapacityPlan::compute(&inputs);
        assert_eq!(plan.workers.workers, 1200);
        assert!(plan.workers.mean_wait_ms.unwrap() < 0.01);
        assert!(!plan.notes.iter().any(|n| n.contains("never drains")));
    }
}
