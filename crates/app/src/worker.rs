//! The background worker process (`scalestack worker`).
//!
//! Today it has no job types: it watches the outbox of every shard and
//! exports the backlog (events written with orders and not yet relayed),
//! deletes idempotency keys past their retention, and serves `/health` and
//! `/metrics`. The queue work adds the outbox relay and the consumer groups
//! here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use scalestack_config::Config;
use scalestack_store::Store;
use scalestack_telemetry::health::{Check, HealthReport};

use crate::AppError;
use crate::http::{bind, health_response, metrics_response, record_metrics, serve, store_checks};

/// Gauge of outbox rows not yet relayed, by shard.
pub const OUTBOX_BACKLOG: &str = "scalestack_outbox_backlog";

#[derive(Debug, Clone)]
struct WorkerState {
    store: Store,
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
    metrics::describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows written with orders and not yet relayed, by shard."
    );
    let state = WorkerState {
        store: store.clone(),
        started: Instant::now(),
        poll_ok: Arc::new(AtomicBool::new(true)),
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state.clone());
    tracing::info!(addr = %config.worker.listen, "worker serving; no job types are registered yet");

    let poll = poll_backlog(state.clone(), config.worker.poll_interval);
    let purge = purge_idempotency_keys(state, config.store.idempotency_cleanup_interval);
    let result = tokio::select! {
        result = serve("worker", listener, router, shutdown) => result,
        () = poll => unreachable!("the poll loop never ends"),
        () = purge => unreachable!("the purge loop never ends"),
    };
    store.close().await;
    tracing::info!("worker stopped");
    result
}

async fn poll_backlog(state: WorkerState, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match state.store.outbox_backlog().await {
            Ok(backlog) => {
                for (shard, rows) in backlog {
                    metrics::gauge!(OUTBOX_BACKLOG, "shard" => shard).set(rows as f64);
                }
                state.poll_ok.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                if state.poll_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot read the outbox backlog");
                }
            }
        }
    }
}

/// Deletes idempotency keys past their retention every `interval`.
async fn purge_idempotency_keys(state: WorkerState, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match state.store.purge_expired_idempotency_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete expired idempotency keys"),
        }
    }
}

async fn health(State(s): State<WorkerState>) -> Response {
    let mut checks = store_checks(&s.store).await;
    let poll_ok = s.poll_ok.load(Ordering::Relaxed);
    checks.push(
        Check::run(
            "outbox.poll",
            crate::http::HEALTH_CHECK_TIMEOUT,
            async move {
                if poll_ok {
                    Ok(())
                } else {
                    Err("the last outbox poll failed")
                }
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
