//! The worker runtime: runs consumer groups on any [`Backend`].
//!
//! Each group gets `concurrency` consume loops. A loop fetches a batch (up to
//! `batch_size` messages of one partition), hands the whole batch to the
//! group's [`BatchHandler`] (so that it can write to a database in bulk), and
//! settles every message by the handler's verdict:
//!
//! - `Ok` → acknowledged (all of a batch's successes in one call);
//! - a transient error with attempts left → nakked with the backoff delay
//!   of the attempt (exponential with jitter, capped), recorded in the
//!   message's history;
//! - a permanent error, or the last attempt → moved to the dead-letter queue
//!   with its error, attempt count and history.
//!
//! While a handler runs, its deliveries' ack deadlines are extended, so a
//! slow batch is not delivered twice; a crashed process stops extending and
//! its messages come back after the deadline. On shutdown the loops stop
//! fetching, finish the batches in hand and settle them; batches still
//! running after the grace period are dropped unsettled and delivered again
//! later. Nothing is ever acknowledged before its handler returned.
//!
//! The runtime knows no message types: handlers belong to the caller.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use scalestack_config::{ConsumerConfig, JitterKind, WorkerConfig};
use scalestack_resilience::{Backoff, Jitter};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::{Clock, SystemClock};
use crate::dlq::DlqScope;
use crate::metrics::{
    BATCH_SIZE, DEAD_LETTERED, DLQ_DEPTH, END_TO_END, ERRORS, IN_FLIGHT, LAG, PROCESSING, RETRIES,
    SETTLED,
};
use crate::{Backend, Delivery, Failure, QueueError};

// === Handlers ===

/// Whether a failed message may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying later: a timeout, a busy database, a full disk.
    Transient,
    /// Will fail every time: a malformed payload, a rule the message breaks.
    Permanent,
}

/// A handler's verdict on one message that it could not process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Retry or give up.
    pub kind: ErrorKind,
    /// What went wrong, kept in the message's history and dead letter.
    pub message: String,
}

impl HandlerError {
    /// An error worth retrying.
    pub fn transient(error: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: error.to_string(),
        }
    }

    /// An error retrying cannot fix: the message goes to the dead-letter queue.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: error.to_string(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Processes a batch of one partition's messages, in order, and returns one
/// result per message, in the same order.
///
/// Messages may arrive more than once (at-least-once delivery): handlers must
/// be idempotent, e.g. by remembering the message ids they applied.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `batch`; the result at index `i` settles `batch[i]`.
    fn handle<'a>(
        &'a self,
        batch: &'a [Delivery],
    ) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send + 'a;
}

/// A shared handler is a handler: callers keep a clone to look at its state.
impl<H: BatchHandler> BatchHandler for Arc<H> {
    fn handle<'a>(
        &'a self,
        batch: &'a [Delivery],
    ) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send + 'a {
        (**self).handle(batch)
    }
}

/// Processes one message at a time; wrap it in [`Each`] to run it.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Runs a [`MessageHandler`] over a batch, one message after the other.
#[derive(Debug, Clone)]
pub struct Each<H>(pub H);

impl<H: MessageHandler> BatchHandler for Each<H> {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        for delivery in batch {
            results.push(self.0.handle(delivery).await);
        }
        results
    }
}

/// A [`BatchHandler`] made from a closure that returns a boxed future.
pub struct FnHandler<F>(F);

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// A batch handler from a closure: `handler_fn(|batch| Box::pin(async move { ... }))`.
pub fn handler_fn<F>(f: F) -> FnHandler<F>
where
    F: for<'a> Fn(&'a [Delivery]) -> BoxFuture<'a, Vec<Result<(), HandlerError>>>
        + Send
        + Sync
        + 'static,
{
    FnHandler(f)
}

impl<F> BatchHandler for FnHandler<F>
where
    F: for<'a> Fn(&'a [Delivery]) -> BoxFuture<'a, Vec<Result<(), HandlerError>>>
        + Send
        + Sync
        + 'static,
{
    fn handle<'a>(
        &'a self,
        batch: &'a [Delivery],
    ) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send + 'a {
        (self.0)(batch)
    }
}

/// Object-safe form of [`BatchHandler`], so that groups with different
/// handler types run in one worker.
trait ErasedHandler: Send + Sync {
    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Vec<Result<(), HandlerError>>>;
}

impl<H: BatchHandler> ErasedHandler for H {
    fn handle<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Vec<Result<(), HandlerError>>> {
        Box::pin(BatchHandler::handle(self, batch))
    }
}

// === Options ===

/// When to give up on a message and how long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries before the dead-letter queue (1 = no retry).
    pub max_attempts: u32,
    /// Delay before retry `n` is `backoff.delay(n - 1)`.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): the seeds' 1 s,
    /// 2 s, 4 s, 8 s ... for the default policy, before jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        self.backoff.delay_random(attempt.saturating_sub(1))
    }

    /// The policy of a `[worker.consumer]` section.
    pub fn from_config(config: &ConsumerConfig) -> Self {
        let jitter = match config.jitter {
            JitterKind::None => Jitter::None,
            JitterKind::Equal => Jitter::Equal,
            JitterKind::Full => Jitter::Full,
        };
        let mut backoff =
            Backoff::new(config.backoff_initial, config.backoff_max).with_jitter(jitter);
        backoff.multiplier = config.backoff_multiplier;
        Self {
            max_attempts: config.max_attempts.max(1),
            backoff,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from_config(&ConsumerConfig::default())
    }
}

/// How one consumer group runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Batches handled at once by this process.
    pub concurrency: usize,
    /// Most messages per batch.
    pub batch_size: usize,
    /// Longest wait of one fetch before the loop looks at the shutdown signal.
    pub fetch_wait: Duration,
    /// Retries and backoff.
    pub retry: RetryPolicy,
}

impl GroupOptions {
    /// A group with the defaults of `[worker.consumer]`.
    pub fn new(topic: &str, group: &str) -> Self {
        Self::from_config(topic, group, &ConsumerConfig::default())
    }

    /// A group with the settings of a `[worker.consumer]` section.
    pub fn from_config(topic: &str, group: &str, config: &ConsumerConfig) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            concurrency: config.concurrency.max(1),
            batch_size: config.batch_size.max(1),
            fetch_wait: config.fetch_wait,
            retry: RetryPolicy::from_config(config),
        }
    }
}

// === impl Worker ===

struct Group {
    options: GroupOptions,
    handler: Arc<dyn ErasedHandler>,
}

/// Runs consumer groups until shut down.
pub struct Worker<B: Backend> {
    backend: Arc<B>,
    clock: Arc<dyn Clock>,
    groups: Vec<Group>,
    stats_interval: Duration,
    shutdown_grace: Duration,
}

impl<B: Backend> fmt::Debug for Worker<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("backend", &self.backend.kind())
            .field(
                "groups",
                &self
                    .groups
                    .iter()
                    .map(|g| &g.options.group)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Worker<B> {
    /// A worker without groups on `backend`, with the `[worker]` defaults.
    pub fn new(backend: Arc<B>) -> Self {
        let defaults = WorkerConfig::default();
        Self {
            backend,
            clock: Arc::new(SystemClock),
            groups: Vec::new(),
            stats_interval: defaults.poll_interval,
            shutdown_grace: defaults.shutdown_grace,
        }
    }

    /// A worker with the timing of a `[worker]` section.
    pub fn from_config(backend: Arc<B>, config: &WorkerConfig) -> Self {
        Self {
            stats_interval: config.poll_interval,
            shutdown_grace: config.shutdown_grace,
            ..Self::new(backend)
        }
    }

    /// Uses `clock` for failure timestamps and latencies.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Measures lag and dead-letter depth every `interval`.
    pub fn with_stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = interval;
        self
    }

    /// Waits at most `grace` for batches in hand when shutting down.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Adds a consumer group with its handler.
    pub fn group<H: BatchHandler>(mut self, options: GroupOptions, handler: H) -> Self {
        self.groups.push(Group {
            options,
            handler: Arc::new(handler),
        });
        self
    }

    /// Runs every group until `shutdown` resolves, then stops fetching,
    /// finishes the batches in hand (for at most the grace period) and
    /// returns. Fails at once if a group's topic or group does not exist.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), QueueError> {
        crate::metrics::describe();
        for group in &self.groups {
            let o = &group.options;
            self.backend
                .prepare_group(&o.topic, &o.group, o.batch_size)
                .await?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        for group in &self.groups {
            let shared = Arc::new(Loop {
                backend: self.backend.clone(),
                clock: self.clock.clone(),
                options: group.options.clone(),
                handler: group.handler.clone(),
            });
            for _ in 0..group.options.concurrency {
                loops.spawn(shared.clone().run(stop_rx.clone()));
            }
            tracing::info!(
                topic = %group.options.topic,
                group = %group.options.group,
                backend = self.backend.kind(),
                concurrency = group.options.concurrency,
                batch_size = group.options.batch_size,
                max_attempts = group.options.retry.max_attempts,
                "consumer group running"
            );
        }
        let mut stats = JoinSet::new();
        for group in &self.groups {
            stats.spawn(measure(
                self.backend.clone(),
                group.options.topic.clone(),
                group.options.group.clone(),
                self.stats_interval,
            ));
        }

        shutdown.await;
        tracing::info!("worker stopping: finishing the batches in hand");
        let _ = stop_tx.send(true);
        stats.abort_all();
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while let Some(result) = loops.join_next().await {
                if let Err(error) = result {
                    tracing::error!(%error, "a consume loop failed");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace = ?self.shutdown_grace,
                left = loops.len(),
                "batches still running after the grace period are dropped; they will be delivered again"
            );
            loops.abort_all();
        }
        Ok(())
    }
}

/// One consume loop's shared context.
struct Loop<B: Backend> {
    backend: Arc<B>,
    clock: Arc<dyn Clock>,
    options: GroupOptions,
    handler: Arc<dyn ErasedHandler>,
}

impl<B: Backend> Loop<B> {
    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("topic", self.options.topic.clone()),
            ("group", self.options.group.clone()),
        ]
    }

    fn error(&self, op: &'static str, error: &QueueError) {
        let o = &self.options;
        metrics::counter!(ERRORS, "topic" => o.topic.clone(), "group" => o.group.clone(), "op" => op)
            .increment(1);
        tracing::warn!(%error, topic = %o.topic, group = %o.group, op, "queue operation failed");
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let o = &self.options;
        let mut failures = 0u32;
        while !*stop.borrow() {
            let batch = match self
                .backend
                .fetch(&o.topic, &o.group, o.batch_size, o.fetch_wait)
                .await
            {
                Ok(batch) => {
                    failures = 0;
                    batch
                }
                Err(error) => {
                    self.error("fetch", &error);
                    // Back off from a failing backend, but wake for shutdown.
                    failures = failures.saturating_add(1);
                    let pause = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                        .delay_random(failures - 1);
                    let _ = tokio::time::timeout(pause, stop.changed()).await;
                    continue;
                }
            };
            if !batch.is_empty() {
                // Not raced against `stop`: a batch in hand is finished and
                // settled before the loop looks at the signal again.
                self.process(batch).await;
            }
        }
    }

    /// Handles one batch and settles every message of it.
    async fn process(&self, batch: Vec<Delivery>) {
        let labels = self.labels();
        metrics::histogram!(BATCH_SIZE, &labels).record(batch.len() as f64);
        let in_flight = metrics::gauge!(IN_FLIGHT, &labels);
        in_flight.increment(1.0);
        let started = Instant::now();
        let results = self.handle_extending(&batch).await;
        metrics::histogram!(PROCESSING, &labels).record(started.elapsed().as_secs_f64());
        self.settle(batch, results).await;
        in_flight.decrement(1.0);
    }

    /// Runs the handler, extending the deliveries' deadlines while it runs;
    /// a panic fails the whole batch transiently.
    async fn handle_extending(&self, batch: &[Delivery]) -> Vec<Result<(), HandlerError>> {
        let handler = AssertUnwindSafe(self.handler.handle(batch)).catch_unwind();
        tokio::pin!(handler);
        let every = (self.backend.ack_deadline() / 3).max(Duration::from_millis(100));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                outcome = &mut handler => break outcome,
                _ = ticker.tick() => {
                    if let Err(error) = self.backend.extend(batch).await {
                        self.error("extend", &error);
                    }
                }
            }
        };
        let mut results = match outcome {
            Ok(results) => results,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(topic = %self.options.topic, group = %self.options.group,
                    panic = %what, "handler panicked; the batch will be retried");
                vec![Err(HandlerError::transient(format!("handler panicked: {what}"))); batch.len()]
            }
        };
        if results.len() != batch.len() {
            tracing::error!(topic = %self.options.topic, group = %self.options.group,
                results = results.len(), batch = batch.len(),
                "handler returned the wrong number of results; the rest will be retried");
            results.resize(
                batch.len(),
                Err(HandlerError::transient("the handler returned no result")),
            );
        }
        results
    }

    async fn settle(&self, batch: Vec<Delivery>, results: Vec<Result<(), HandlerError>>) {
        let labels = self.labels();
        let now = self.clock.now_ms();
        let mut done = Vec::with_capacity(batch.len());
        let mut failed = Vec::new();
        for (delivery, result) in batch.into_iter().zip(results) {
            match result {
                Ok(()) => done.push(delivery),
                Err(error) => failed.push((delivery, error)),
            }
        }
        if !done.is_empty() {
            match self.backend.ack(&done).await {
                Ok(()) => {
                    metrics::counter!(SETTLED, "topic" => labels[0].1.clone(),
                        "group" => labels[1].1.clone(), "outcome" => "ack")
                    .increment(done.len() as u64);
                    let latency = metrics::histogram!(END_TO_END, &labels);
                    for d in &done {
                        latency.record((now - d.published_at_ms).max(0) as f64 / 1e3);
                    }
                }
                // Unacknowledged messages come back after their deadline.
                Err(error) => self.error("ack", &error),
            }
        }
        for (delivery, error) in failed {
            let failure = Failure {
                error: error.message.clone(),
                permanent: error.kind == ErrorKind::Permanent,
                at_ms: self.clock.now_ms(),
            };
            let last = delivery.attempt >= self.options.retry.max_attempts;
            if failure.permanent || last {
                tracing::warn!(topic = %delivery.topic, group = %delivery.group,
                    id = %delivery.message.id, attempt = delivery.attempt,
                    permanent = failure.permanent, error = %failure.error,
                    "message moved to the dead-letter queue");
                match self.backend.dead_letter(&delivery, &failure).await {
                    Ok(()) => {
                        metrics::counter!(DEAD_LETTERED, &labels).increment(1);
                        metrics::counter!(SETTLED, "topic" => labels[0].1.clone(),
                            "group" => labels[1].1.clone(), "outcome" => "dead")
                        .increment(1);
                    }
                    Err(error) => self.error("dead_letter", &error),
                }
            } else {
                let delay = self.options.retry.delay_after(delivery.attempt);
                tracing::debug!(topic = %delivery.topic, group = %delivery.group,
                    id = %delivery.message.id, attempt = delivery.attempt,
                    retry_in = ?delay, error = %failure.error, "message will be retried");
                match self.backend.nak(&delivery, delay, &failure).await {
                    Ok(()) => {
                        metrics::counter!(RETRIES, &labels).increment(1);
                        metrics::counter!(SETTLED, "topic" => labels[0].1.clone(),
                            "group" => labels[1].1.clone(), "outcome" => "retry")
                        .increment(1);
                    }
                    Err(error) => self.error("nak", &error),
                }
            }
        }
    }
}

/// Publishes a group's lag and dead-letter depth every `interval`.
async fn measure<B: Backend>(backend: Arc<B>, topic: String, group: String, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let scope = DlqScope::group(&topic, &group);
    let labels = [("topic", topic.clone()), ("group", group.clone())];
    loop {
        ticker.tick().await;
        match backend.group_stats(&topic, &group).await {
            Ok(stats) => metrics::gauge!(LAG, &labels).set(stats.lag() as f64),
            Err(error) => tracing::debug!(%error, %topic, %group, "cannot measure the lag"),
        }
        match backend.dlq_depth(&scope).await {
            Ok(depth) => metrics::gauge!(DLQ_DEPTH, &labels).set(depth as f64),
            Err(error) => {
                tracing::debug!(%error, %topic, %group, "cannot measure the dead-letter queue")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_the_seeds_schedule() {
        let mut policy = RetryPolicy::default();
        policy.backoff = policy.backoff.with_jitter(Jitter::None);
        let secs: Vec<u64> = (1..=11).map(|a| policy.delay_after(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(policy.max_attempts, 10);
    }

    #[test]
    fn config_sets_multiplier_and_jitter() {
        let config = ConsumerConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            backoff_multiplier: 3.0,
            jitter: JitterKind::None,
            ..ConsumerConfig::default()
        };
        let policy = RetryPolicy::from_config(&config);
        let ms: Vec<u128> = (1..=4).map(|a| policy.delay_after(a).as_millis()).collect();
        assert_eq!(ms, [100, 300, 900, 1000]);
    }

    #[test]
    fn handler_errors_say_their_kind() {
        assert_eq!(
            HandlerError::permanent("bad json").to_string(),
            "permanent: bad json"
        );
        assert_eq!(HandlerError::transient("busy").kind, ErrorKind::Transient);
    }
}
