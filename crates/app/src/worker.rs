//! The background worker process (`scalestack worker`).
//!
//! It runs the flows of [`crate::flows`]: the outbox relay (every database's
//! outbox to its topic) and the consumer groups `inventory`, `email` and
//! `analytics` on topic `orders` and `jobs` on topic `jobs`, on the queue
//! backend of `[queue]`. Alongside it measures its backlogs (outbox rows per
//! database, jobs per state), deletes idempotency keys and dedupe records
//! past their retention, and serves `/health` and `/metrics`.
//!
//! On shutdown it stops fetching and relaying, finishes the batches in hand
//! (up to `worker.shutdown_grace`) and settles them; whatever it could not
//! finish is delivered again later. A worker killed outright loses nothing
//! either: see the flows' documentation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use scalestack_config::Config;
use scalestack_queue::{AnyQueue, Backend, Worker};
use scalestack_store::{ORDERS_TOPIC, Store, now_ms};
use scalestack_telemetry::health::{Check, HealthReport};
use tokio::sync::watch;

use crate::AppError;
use crate::flows::relay::Relay;
use crate::flows::{self, Flows, INVENTORY, Invalidator, JOBS_BY_STATE};
use crate::http::{
    HEALTH_CHECK_TIMEOUT, bind, health_response, metrics_response, record_metrics, serve,
    store_checks,
};

pub use crate::flows::relay::OUTBOX_BACKLOG;

/// How often dedupe records past `worker.dedupe_retention` are deleted.
const DEDUPE_PURGE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
struct WorkerState {
    store: Store,
    queue: Arc<AnyQueue>,
    relay: Arc<Relay<AnyQueue>>,
    started: Instant,
    /// Whether the last backlog poll succeeded.
    poll_ok: Arc<AtomicBool>,
}

/// Runs the worker until `shutdown` resolves.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let listener = bind("worker", "worker.listen", config.worker.listen).await?;
    let store = Store::open(config).await?;
    let queue = Arc::new(AnyQueue::open(config).await?);
    // Groups exist before the relay's first publish, so none misses a message.
    flows::ensure_topics(queue.as_ref(), config.queue.partitions).await?;
    let invalidator = Invalidator::from_config(config).await?;
    flows::describe_metrics();

    let worker = Flows::new(config, store.clone(), invalidator.clone())
        .register(Worker::from_config(queue.clone(), &config.worker));
    let relay = Arc::new(Relay::new(
        store.clone(),
        queue.clone(),
        &config.worker.relay,
    ));
    let state = WorkerState {
        store: store.clone(),
        queue: queue.clone(),
        relay: relay.clone(),
        started: Instant::now(),
        poll_ok: Arc::new(AtomicBool::new(true)),
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state.clone());
    tracing::info!(
        addr = %config.worker.listen,
        backend = queue.kind(),
        invalidation = invalidator.cache().invalidation_transport(),
        "worker serving: outbox relay and groups inventory, email, analytics, jobs"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal = {
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    };
    let server = {
        let stop_tx = stop_tx.clone();
        let stopped = stopped(stop_rx.clone());
        async move {
            let result = serve("worker", listener, router, stopped).await;
            // A server that fails stops the rest of the process with it.
            let _ = stop_tx.send(true);
            result
        }
    };
    let consumers = async {
        if let Err(error) = worker.run(stopped(stop_rx.clone())).await {
            tracing::error!(%error, "the consumer groups could not run");
            let _ = stop_tx.send(true);
        }
    };
    let background = async {
        tokio::join!(
            relay.run(stop_rx.clone()),
            poll_backlog(state.clone(), config.worker.poll_interval, stop_rx.clone()),
            purge_idempotency_keys(
                state.clone(),
                config.store.idempotency_cleanup_interval,
                stop_rx.clone()
            ),
            purge_dedupe_records(
                state.clone(),
                config.worker.dedupe_retention,
                stop_rx.clone()
            ),
        )
    };
    let (_, result, (), _) = tokio::join!(
        signal_or_stop(signal, stop_rx.clone()),
        server,
        consumers,
        background
    );
    invalidator.cache().shutdown().await;
    store.close().await;
    tracing::info!("worker stopped");
    result
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for the shutdown signal, or for something else to stop the process.
async fn signal_or_stop(signal: impl Future<Output = ()>, stop: watch::Receiver<bool>) {
    tokio::select! {
        () = signal => {}
        () = stopped(stop) => {}
    }
}

/// Runs `tick` every `interval` until `stop`.
async fn every<F, Fut>(interval: Duration, stop: watch::Receiver<bool>, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => tick().await,
            () = &mut stop => return,
        }
    }
}

/// Publishes the outbox backlog of every database and the jobs by state.
async fn poll_backlog(state: WorkerState, interval: Duration, stop: watch::Receiver<bool>) {
    every(interval, stop, || async {
        let measured = state.relay.measure().await;
        let jobs = state.store.job_counts().await;
        match (measured, jobs) {
            (Ok(()), Ok(jobs)) => {
                for (job_state, n) in jobs {
                    metrics::gauge!(JOBS_BY_STATE, "state" => job_state).set(n as f64);
                }
                state.poll_ok.store(true, Ordering::Relaxed);
            }
            (Err(error), _) | (_, Err(error)) => {
                if state.poll_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot read the outbox backlog or the jobs");
                }
            }
        }
    })
    .await;
}

/// Deletes idempotency keys past their retention every `interval`.
async fn purge_idempotency_keys(
    state: WorkerState,
    interval: Duration,
    stop: watch::Receiver<bool>,
) {
    every(interval, stop, || async {
        match state.store.purge_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete expired idempotency keys"),
        }
    })
    .await;
}

/// Deletes the consumers' dedupe records older than `retention`.
async fn purge_dedupe_records(
    state: WorkerState,
    retention: Duration,
    stop: watch::Receiver<bool>,
) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    every(DEDUPE_PURGE_EVERY, stop, || async {
        match state
            .store
            .purge_consumed(now_ms().saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "dedupe records past their retention deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old dedupe records"),
        }
    })
    .await;
}

async fn health(State(s): State<WorkerState>) -> Response {
    let mut checks = store_checks(&s.store).await;
    let poll_ok = s.poll_ok.load(Ordering::Relaxed);
    checks.push(
        Check::run("outbox.poll", HEALTH_CHECK_TIMEOUT, async move {
            if poll_ok {
                Ok(())
            } else {
                Err("the last outbox poll failed")
            }
        })
        .await,
    );
    let failing = s.relay.failing();
    checks.push(
        Check::run("relay", HEALTH_CHECK_TIMEOUT, async move {
            if failing.is_empty() {
                Ok(())
            } else {
                let dbs: Vec<String> = failing.iter().map(ToString::to_string).collect();
                Err(format!("relay rounds keep failing for {}", dbs.join(", ")))
            }
        })
        .await,
    );
    let queue = s.queue.clone();
    checks.push(
        Check::run(
            format!("queue.{}", queue.kind()),
            HEALTH_CHECK_TIMEOUT,
            async move {
                queue
                    .group_stats(ORDERS_TOPIC, INVENTORY)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await,
    );
    health_response(&HealthReport::new(
        "worker",
        "worker",
        s.started.elapsed(),
        checks,
    ))
}

async fn metrics() -> Response {
    metrics_response(scalestack_telemetry::metrics::install("worker", "worker").render())
}
