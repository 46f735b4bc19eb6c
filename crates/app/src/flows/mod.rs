//! The flows of the seeds, run by the worker process: the outbox relay and
//! the consumer groups that give an order (and a job) its effects.
//!
//! ```text
//!  api ── one transaction: order + outbox row ──► shard
//!  relay (worker) ── outbox rows ──► topic `orders` ──┬─► inventory: stock in the catalog;
//!                                                     │   order confirmed or rejected
//!                                                     ├─► email: a confirmation in the mail sink
//!                                                     └─► analytics: the CQRS read model
//!  api ── job + outbox row ──► catalog ── relay ──► topic `jobs` ──► jobs: email or report
//! ```
//!
//! Delivery is at least once; every effect is exactly once *in effect*: each
//! handler records what it applied in the same transaction (or atomic file
//! operation) as the effect itself, so a redelivered or re-published message
//! is recognised by its id and skipped ([`EFFECTS`] counts both outcomes).
//!
//! This module owns the handlers, the relay, the topic layout and their
//! metrics. It must not talk to SQL, NATS or Redis directly: data goes
//! through `scalestack-store`, messages through `scalestack-queue`,
//! invalidations through `scalestack-cache`.

use std::collections::HashSet;
use std::sync::Arc;

use scalestack_cache::{Cache, CacheError, Peers, Resource, ResourceOptions, WriteStrategy};
use scalestack_config::Config;
use scalestack_queue::{
    Backend, Delivery, GroupOptions, HandlerError, QueueError, TopicSpec, Worker,
};
use scalestack_store::{JOBS_TOPIC, ORDERS_TOPIC, OrderRecord, StockOutcome, Store, StoreError};
use serde::Deserialize;

pub mod analytics;
pub mod email;
pub mod failpoint;
pub mod inventory;
pub mod jobs;
pub mod relay;

/// The consumer group that takes stock for orders.
pub const INVENTORY: &str = "inventory";
/// The consumer group that emails order confirmations.
pub const EMAIL: &str = "email";
/// The consumer group that builds the analytics read model.
pub const ANALYTICS: &str = "analytics";
/// The consumer group that runs jobs.
pub const JOBS: &str = "jobs";

/// Counter of messages handled by a flow's group, by `group` and `outcome`:
/// `applied` (the effect happened now) or `duplicate` (it had happened
/// before: a redelivery or a re-published copy, skipped).
pub const EFFECTS: &str = "scalestack_flow_effects_total";
/// Counter of stock decisions by `outcome` (`reserved`, `out_of_stock`,
/// `unknown_product`), counted when first made.
pub const STOCK_OUTCOMES: &str = "scalestack_flow_stock_outcomes_total";
/// Histogram of the time from an order's creation to its effect in `group`.
pub const EFFECT_LATENCY: &str = "scalestack_flow_effect_latency_seconds";
/// Gauge of jobs by `state` (`queued`, `running`, `done`, `failed`).
pub const JOBS_BY_STATE: &str = "scalestack_jobs";
/// Counter of job attempts that ended, by `kind` and `outcome` (`done`,
/// `retry`, `failed`).
pub const JOB_ATTEMPTS: &str = "scalestack_job_attempts_total";
/// Counter of jobs accepted by the api, by `kind`.
pub const JOBS_SUBMITTED: &str = "scalestack_jobs_submitted_total";

/// Registers the descriptions of the flows' series.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EFFECTS,
        "Messages handled by a flow, by group and outcome: applied now, or a duplicate skipped."
    );
    describe_counter!(
        STOCK_OUTCOMES,
        "Stock decisions for orders, by outcome (reserved, out_of_stock, unknown_product)."
    );
    describe_histogram!(
        EFFECT_LATENCY,
        Unit::Seconds,
        "Time from an order's creation to its effect, by consumer group."
    );
    describe_gauge!(
        JOBS_BY_STATE,
        "Jobs by state: queued, running, done, failed."
    );
    describe_counter!(
        JOB_ATTEMPTS,
        "Job attempts that ended, by kind and outcome (done, retry, failed)."
    );
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted by the api, by kind.");
    relay::describe_metrics();
}

/// The topics of the flows and their groups, created before anything is
/// published so that no group misses a message.
pub fn topics(partitions: u32) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(ORDERS_TOPIC, partitions, &[INVENTORY, EMAIL, ANALYTICS]),
        TopicSpec::new(JOBS_TOPIC, partitions, &[JOBS]),
    ]
}

/// Creates the flows' topics and groups on `queue` (idempotent).
pub async fn ensure_topics<B: Backend>(queue: &B, partitions: u32) -> Result<(), QueueError> {
    for spec in topics(partitions) {
        queue.ensure_topic(&spec).await?;
    }
    Ok(())
}

// === order events ===

/// What happened to an order, as carried on topic `orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// `order.placed`: written with the order.
    Placed(OrderRecord),
    /// `order.rejected`: written by the inventory group when the stock was
    /// not there.
    Rejected(OrderRecord, StockOutcome),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    order: OrderRecord,
    #[serde(default)]
    reason: Option<StockOutcome>,
}

impl OrderEvent {
    /// Decodes a delivery of topic `orders`; a payload that is not an order
    /// event is a permanent error (retrying cannot fix it).
    pub fn decode(delivery: &Delivery) -> Result<Self, HandlerError> {
        let raw: RawEvent = serde_json::from_slice(&delivery.message.payload)
            .map_err(|e| HandlerError::permanent(format!("not an order event: {e}")))?;
        match raw.kind.as_str() {
            "order.placed" => Ok(OrderEvent::Placed(raw.order)),
            "order.rejected" => Ok(OrderEvent::Rejected(
                raw.order,
                raw.reason.unwrap_or(StockOutcome::OutOfStock),
            )),
            other => Err(HandlerError::permanent(format!(
                "unknown order event type {other:?}"
            ))),
        }
    }

    /// The order the event is about.
    pub fn order(&self) -> &OrderRecord {
        match self {
            OrderEvent::Placed(order) | OrderEvent::Rejected(order, _) => order,
        }
    }
}

/// A store failure as a handler sees it: worth retrying. Even errors the
/// store calls permanent (a constraint, a corrupt row) may be an operator's
/// to fix, and the retries end in the dead-letter queue where they can be
/// inspected and redriven.
pub(crate) fn store_failure(error: &StoreError) -> HandlerError {
    HandlerError::transient(format!("store: {error}"))
}

/// Counts handled messages of `group`.
pub(crate) fn count_effects(group: &'static str, applied: usize, duplicates: usize) {
    if applied > 0 {
        metrics::counter!(EFFECTS, "group" => group, "outcome" => "applied")
            .increment(applied as u64);
    }
    if duplicates > 0 {
        metrics::counter!(EFFECTS, "group" => group, "outcome" => "duplicate")
            .increment(duplicates as u64);
    }
}

/// Records the time from an order's creation to its effect in `group`.
pub(crate) fn record_latency(group: &'static str, created_at_ms: i64) {
    let ms = (scalestack_store::now_ms() - created_at_ms).max(0);
    metrics::histogram!(EFFECT_LATENCY, "group" => group).record(ms as f64 / 1e3);
}

// === cache invalidation ===

/// Drops the api instances' cached copies of what the flows change: a
/// product whose stock moved, a user whose order was rejected.
///
/// The worker holds a [`Cache`] of its own only to send invalidations: over
/// Redis pub/sub when an L2 is configured, else as UDP datagrams to the api
/// instances from the worker's own port (see [`worker_peers`]).
#[derive(Debug, Clone)]
pub struct Invalidator {
    cache: Cache,
    products: Resource<()>,
    users: Resource<()>,
}

/// The peers of the worker's invalidation bus: it sends from its own address
/// (`worker.listen`, as a UDP port) to every api instance, which accept it
/// as a member of the stack.
pub fn worker_peers(config: &Config) -> Peers {
    Peers::stack(config, config.worker.listen)
}

impl Invalidator {
    /// An invalidator over `cache`, with the resources named as the api names
    /// them (and with their configured options, so that L2 keys match).
    pub fn new(cache: Cache, config: &Config) -> Result<Self, CacheError> {
        // Only the name and the L2 key version matter for an invalidation;
        // the strategy is the api's business, so it is set to the one every
        // resource supports.
        let options = |c| ResourceOptions {
            strategy: WriteStrategy::CacheAside,
            ..ResourceOptions::from_config(c)
        };
        let products =
            cache.resource_with::<()>("products", options(&config.cache.products), |_| 0)?;
        let users = cache.resource_with::<()>("users", options(&config.cache.users), |_| 0)?;
        Ok(Self {
            cache,
            products,
            users,
        })
    }

    /// An invalidator that reaches nobody (tests, or a cache that is off).
    pub fn none(config: &Config) -> Self {
        Self::new(Cache::disabled(), config).expect("a disabled cache takes any resource")
    }

    /// Builds the worker's cache from `[cache]` and the worker's peers.
    pub async fn from_config(config: &Config) -> Result<Self, CacheError> {
        let cache = Cache::builder(&config.cache)
            .peers(worker_peers(config))
            .build()
            .await?;
        Self::new(cache, config)
    }

    /// The cache behind it, e.g. to shut it down.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Drops the cached copies of products (each id once).
    pub async fn products(&self, ids: impl IntoIterator<Item = i64>) {
        let unique: HashSet<i64> = ids.into_iter().collect();
        for id in unique {
            self.products.invalidate(id).await;
        }
    }

    /// Drops the cached copies of users (each id once).
    pub async fn users(&self, ids: impl IntoIterator<Item = i64>) {
        let unique: HashSet<i64> = ids.into_iter().collect();
        for id in unique {
            self.users.invalidate(id).await;
        }
    }
}

// === the worker's groups ===

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct Flows {
    store: Store,
    invalidator: Invalidator,
    sink: email::MailSink,
    config: Arc<Config>,
}

impl Flows {
    /// The flows over `store`, invalidating through `invalidator`, with the
    /// mail sink and group settings of `config.worker`.
    pub fn new(config: &Config, store: Store, invalidator: Invalidator) -> Self {
        Self {
            sink: email::MailSink::from_config(config),
            store,
            invalidator,
            config: Arc::new(config.clone()),
        }
    }

    /// The mail sink the email handlers write to.
    pub fn sink(&self) -> &email::MailSink {
        &self.sink
    }

    fn options(&self, topic: &str, group: &str) -> GroupOptions {
        GroupOptions::from_config(topic, group, self.config.worker.consumer_for(group))
    }

    /// Adds the four groups to `worker`: `inventory`, `email` and
    /// `analytics` on `orders`, `jobs` on `jobs`.
    pub fn register<B: Backend>(&self, worker: Worker<B>) -> Worker<B> {
        let jobs_attempts = self.config.worker.consumer_for(JOBS).max_attempts;
        worker
            .group(
                self.options(ORDERS_TOPIC, INVENTORY),
                inventory::InventoryHandler::new(self.store.clone(), self.invalidator.clone()),
            )
            .group(
                self.options(ORDERS_TOPIC, EMAIL),
                email::EmailHandler::new(self.store.clone(), self.sink.clone()),
            )
            .group(
                self.options(ORDERS_TOPIC, ANALYTICS),
                analytics::AnalyticsHandler::new(self.store.clone()),
            )
            .group(
                self.options(JOBS_TOPIC, JOBS),
                jobs::JobsHandler::new(self.store.clone(), self.sink.clone(), jobs_attempts),
            )
    }
}
