//! The supervisor's own `/health` and `/metrics`: the state of every child.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::SupervisorError;

/// Lifecycle state of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildState {
    /// Not started yet.
    Pending,
    /// The process is alive but has not answered `/health` with 200 yet.
    Starting,
    /// The process is alive and has reported healthy since it started.
    Running,
    /// The process died; waiting to restart it.
    Backoff,
    /// Stopped by the supervisor.
    Stopped,
}

/// What the supervisor knows about one child.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    /// The child, e.g. `api-0`.
    pub name: String,
    /// Current state.
    pub state: ChildState,
    /// OS process id while running.
    pub pid: Option<u32>,
    /// Times the child was restarted after dying.
    pub restarts: u64,
    /// Seconds since the current process started.
    pub uptime_s: f64,
    /// How the previous process ended, e.g. `signal 9 (SIGKILL)`.
    pub last_exit: Option<String>,
    #[serde(skip)]
    pub(crate) started: Option<Instant>,
}

impl ChildStatus {
    pub(crate) fn pending(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: ChildState::Pending,
            pid: None,
            restarts: 0,
            uptime_s: 0.0,
            last_exit: None,
            started: None,
        }
    }
}

/// Shared, updated by the child tasks, read by `/health`.
pub(crate) type Statuses = Arc<Mutex<Vec<ChildStatus>>>;

#[derive(Serialize)]
struct Report {
    status: &'static str,
    pid: u32,
    children: Vec<ChildStatus>,
}

async fn health(State(statuses): State<Statuses>) -> Response {
    let mut children = statuses.lock().expect("status lock").clone();
    for c in &mut children {
        c.uptime_s = c.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    }
    let all_running = children.iter().all(|c| c.state == ChildState::Running);
    let report = Report {
        status: if all_running { "ok" } else { "fail" },
        pid: std::process::id(),
        children,
    };
    let code = if all_running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&report).expect("the report serializes"),
    )
        .into_response()
}

async fn metrics() -> Response {
    let text = scalestack_telemetry::metrics::install("supervisor", "supervisor").render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Binds `addr` and serves the status endpoints in the background.
pub(crate) async fn serve(
    addr: SocketAddr,
    statuses: Statuses,
) -> Result<JoinHandle<()>, SupervisorError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SupervisorError::PortInUse {
            component: "supervisor".into(),
            key: "supervisor.listen".into(),
            addr,
            source,
        })?;
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(statuses);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "supervisor status server failed");
        }
    }))
}
