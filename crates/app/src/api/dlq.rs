//! `/admin/dlq`: the dead-letter queue on the admin API, with the operations
//! of `scalestack dlq`: list, show, redrive, purge.
//!
//! The operations are the queue crate's (`Backend::dlq_*`); this module
//! parses, validates and shapes them for HTTP. The queue is opened on first
//! use, so that an api instance starts (and serves everything else) while the
//! queue is unreachable; its operations then answer 503.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use scalestack_config::Config;
use scalestack_queue::{AnyQueue, Backend, DlqScope, DlqTarget, QueueError};
use serde::Serialize;
use tokio::sync::OnceCell;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorDoc};
use super::extract::{Id, ListQuery, parse_query};
use super::views::json_response;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters, purge_dead_letters))
        .routes(routes!(get_dead_letter, purge_dead_letter))
        .routes(routes!(redrive_dead_letter))
        .routes(routes!(redrive_dead_letters))
}

/// The queue of `[queue]`, opened when first needed; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct DlqHandle {
    config: Arc<Config>,
    queue: Arc<OnceCell<AnyQueue>>,
}

impl DlqHandle {
    /// A handle on the queue `config` names; nothing is opened yet.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            config: Arc::new(config.clone()),
            queue: Arc::new(OnceCell::new()),
        }
    }

    async fn queue(&self) -> Result<&AnyQueue, ApiError> {
        self.queue
            .get_or_try_init(|| AnyQueue::open(&self.config))
            .await
            .map_err(|e| queue_error(&e))
    }
}

/// A queue failure as the client sees it.
fn queue_error(error: &QueueError) -> ApiError {
    match error {
        QueueError::InvalidName { what, .. } => ApiError::invalid_field(what, error.to_string()),
        e if e.is_transient() => {
            tracing::warn!(error = %e, "queue unavailable for a dead-letter operation");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the queue is unavailable; retry shortly",
            )
        }
        e => {
            tracing::error!(error = %e, "dead-letter operation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

/// A dead letter: a message a consumer group gave up on.
#[derive(Debug, ToSchema)]
#[schema(as = DeadLetter)]
#[allow(dead_code)]
pub(crate) struct DeadLetterDoc {
    /// Id within the dead-letter queue.
    id: u64,
    /// The topic it came from.
    topic: String,
    /// The group that gave up on it.
    group: String,
    /// Its partition.
    partition: u32,
    /// Its position in the topic.
    seq: u64,
    /// The message id.
    message_id: String,
    /// The partition key.
    key: String,
    /// The payload, when it is UTF-8 text.
    payload: Option<String>,
    /// The payload in base64, when it is not.
    payload_base64: Option<String>,
    /// The message's headers.
    headers: BTreeMap<String, String>,
    /// When it was published, ms since the Unix epoch.
    published_at_ms: i64,
    /// Deliveries made before giving up.
    attempts: u32,
    /// The last error.
    error: String,
    /// True when the handler said retrying cannot help.
    permanent: bool,
    /// Every failed attempt, oldest first: `attempt`, `at_ms`, `error`,
    /// `retry_in_ms` (the backoff chosen before the next attempt).
    #[schema(value_type = Vec<Object>)]
    history: Vec<serde_json::Value>,
    /// When it was dead-lettered, ms since the Unix epoch.
    dead_at_ms: i64,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterPage {
    /// Dead letters, oldest first.
    #[schema(value_type = Vec<DeadLetterDoc>)]
    data: Vec<scalestack_queue::DeadLetter>,
    /// Pass as `after` to get the next page; null on the last page.
    next_after: Option<u64>,
}

/// How many dead letters an operation acted on.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqCount {
    /// Dead letters delivered again (redrive) or deleted (purge).
    count: u64,
}

/// The scope of `topic` and `group` parameters (validated names).
fn scope(q: &ListQuery) -> Result<DlqScope, ApiError> {
    let name = |field: &'static str| -> Result<Option<String>, ApiError> {
        q.get(field)
            .map(|v| {
                scalestack_queue::validate_name(field, v)
                    .map(|()| v.to_owned())
                    .map_err(|e| ApiError::invalid_field(field, e.to_string()))
            })
            .transpose()
    };
    Ok(DlqScope {
        topic: name("topic")?,
        group: name("group")?,
    })
}

fn dead_letter_id(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

/// Lists dead letters, oldest first, of one topic and/or group if given.
#[utoipa::path(
    get, path = "/admin/dlq", tag = "admin",
    params(
        ("topic" = Option<String>, Query, description = "Only dead letters of this topic"),
        ("group" = Option<String>, Query, description = "Only dead letters of this consumer group"),
        ("after" = Option<u64>, Query, description = "Start after this dead letter id (next_after of the previous page)"),
        ("limit" = Option<u32>, Query, description = "Page size (capped at api.max_page_limit)"),
    ),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad parameter (`field` names it)", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn list_dead_letters(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["topic", "group", "after", "limit"])?;
    let scope = scope(&q)?;
    let after = match q.get("after") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::invalid_field(
                "after",
                format!("after must be a dead letter id, got {v:?}"),
            )
        })?,
    };
    let limit = s.page_limit(q.limit) as usize;
    let queue = s.dlq.queue().await?;
    let mut data = queue
        .dlq_list(&scope, after, limit + 1)
        .await
        .map_err(|e| queue_error(&e))?;
    let more = data.len() > limit;
    data.truncate(limit);
    let next_after = if more {
        data.last().map(|d| d.id)
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &DeadLetterPage { data, next_after },
    ))
}

/// One dead letter in full: message, error and attempt history.
#[utoipa::path(
    get, path = "/admin/dlq/{id}", tag = "admin",
    params(("id" = u64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterDoc),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such dead letter", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn get_dead_letter(
    State(s): State<AppState>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let queue = s.dlq.queue().await?;
    match queue
        .dlq_get(dead_letter_id(id))
        .await
        .map_err(|e| queue_error(&e))?
    {
        Some(letter) => Ok(json_response(StatusCode::OK, &letter)),
        None => Err(ApiError::not_found(format!("no dead letter with id {id}"))),
    }
}

/// Delivers one dead letter to its group again, as a first attempt.
#[utoipa::path(
    post, path = "/admin/dlq/{id}/redrive", tag = "admin",
    params(("id" = u64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Redriven", body = DlqCount),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such dead letter", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn redrive_dead_letter(
    State(s): State<AppState>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let queue = s.dlq.queue().await?;
    let count = queue
        .dlq_redrive(&DlqTarget::One(dead_letter_id(id)))
        .await
        .map_err(|e| queue_error(&e))?;
    if count == 0 {
        return Err(ApiError::not_found(format!("no dead letter with id {id}")));
    }
    Ok(json_response(StatusCode::OK, &DlqCount { count }))
}

/// Delivers every dead letter of the scope (all, a topic's, a group's) to
/// its group again.
#[utoipa::path(
    post, path = "/admin/dlq/redrive", tag = "admin",
    params(
        ("topic" = Option<String>, Query, description = "Only dead letters of this topic"),
        ("group" = Option<String>, Query, description = "Only dead letters of this consumer group"),
    ),
    responses(
        (status = 200, description = "How many were redriven", body = DlqCount),
        (status = 400, description = "Bad parameter (`field` names it)", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn redrive_dead_letters(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["topic", "group"])?;
    let target = DlqTarget::All(scope(&q)?);
    let queue = s.dlq.queue().await?;
    let count = queue
        .dlq_redrive(&target)
        .await
        .map_err(|e| queue_error(&e))?;
    Ok(json_response(StatusCode::OK, &DlqCount { count }))
}

/// Deletes one dead letter for good.
#[utoipa::path(
    delete, path = "/admin/dlq/{id}", tag = "admin",
    params(("id" = u64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Deleted", body = DlqCount),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such dead letter", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn purge_dead_letter(
    State(s): State<AppState>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let queue = s.dlq.queue().await?;
    let count = queue
        .dlq_purge(&DlqTarget::One(dead_letter_id(id)))
        .await
        .map_err(|e| queue_error(&e))?;
    if count == 0 {
        return Err(ApiError::not_found(format!("no dead letter with id {id}")));
    }
    Ok(json_response(StatusCode::OK, &DlqCount { count }))
}

/// Deletes every dead letter of the scope for good; `all=true` is required,
/// so that a request that lost its parameters cannot empty the queue.
#[utoipa::path(
    delete, path = "/admin/dlq", tag = "admin",
    params(
        ("all" = bool, Query, description = "Must be true: confirms a purge of the whole scope"),
        ("topic" = Option<String>, Query, description = "Only dead letters of this topic"),
        ("group" = Option<String>, Query, description = "Only dead letters of this consumer group"),
    ),
    responses(
        (status = 200, description = "How many were deleted", body = DlqCount),
        (status = 400, description = "`all=true` missing or a bad parameter (`field` names it)", body = ErrorDoc),
        (status = 503, description = "The queue is unreachable", body = ErrorDoc),
    )
)]
pub(crate) async fn purge_dead_letters(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["all", "topic", "group"])?;
    if q.get("all") != Some("true") {
        return Err(ApiError::invalid_field(
            "all",
            "purging every dead letter of a scope needs all=true",
        ));
    }
    let target = DlqTarget::All(scope(&q)?);
    let queue = s.dlq.queue().await?;
    let count = queue
        .dlq_purge(&target)
        .await
        .map_err(|e| queue_error(&e))?;
    Ok(json_response(StatusCode::OK, &DlqCount { count }))
}
