//! `/emails`, `/reports` and `/jobs/{id}`: work done in the background.
//!
//! `POST /emails` and `POST /reports` validate the request, write the job and
//! its outbox row in one catalog transaction, and answer `202 Accepted` with
//! `Location: /jobs/{id}` at once; the worker's relay publishes the job and
//! its `jobs` group runs it (see `flows::jobs`). `GET /jobs/{id}` shows where
//! it is: `queued`, `running`, `done` with its result, or `failed` with the
//! error.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use scalestack_store::{Consistency, JobRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::consistency::attach;
use super::error::{ApiError, ErrorDoc};
use super::extract::{Id, JsonBody};
use super::views::{json_response, rfc3339};
use super::{AppState, validate_email, validate_range, validate_text};
use crate::flows::JOBS_SUBMITTED;
use crate::flows::jobs::{EMAIL_JOB, EmailJob, REPORT_JOB, ReportJob};

/// Longest body of an email job, in characters.
pub const MAX_EMAIL_BODY: usize = 20_000;
/// Most rows of a report.
pub const MAX_REPORT_ROWS: i64 = 100;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_email))
        .routes(routes!(submit_report))
        .routes(routes!(get_job))
}

/// An email to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitEmail {
    /// Recipient address (name@domain).
    to: String,
    /// Subject, 1 to 200 characters.
    subject: String,
    /// Plain-text body, 1 to 20,000 characters (line breaks and tabs allowed).
    body: String,
}

/// Which report.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReportName {
    /// Products by net revenue.
    TopProducts,
    /// Users by net spend.
    TopCustomers,
}

/// A report to compute from the analytics read model.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitReport {
    /// `top_products` or `top_customers`.
    report: ReportName,
    /// Rows, 1 to 100 (default 10).
    #[serde(default = "default_rows")]
    limit: i64,
}

fn default_rows() -> i64 {
    10
}

/// A background job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobView {
    /// Job id.
    id: i64,
    /// `email` or `report`.
    kind: String,
    /// `queued`, `running`, `done` or `failed`.
    state: String,
    /// Attempts started so far.
    attempts: i64,
    /// The job's parameters.
    #[schema(value_type = Object)]
    params: serde_json::Value,
    /// The result, once `done`.
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    /// The last error: why it is being retried, or why it `failed`.
    error: Option<String>,
    /// When it was accepted (RFC 3339, UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// Last change (RFC 3339, UTC).
    #[schema(format = DateTime)]
    updated_at: String,
}

fn json_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

impl From<&JobRecord> for JobView {
    fn from(j: &JobRecord) -> Self {
        Self {
            id: j.id,
            kind: j.kind.clone(),
            state: j.state.clone(),
            attempts: j.attempts,
            params: json_text(&j.params),
            result: j.result.as_deref().map(json_text),
            error: j.error.clone(),
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
        }
    }
}

/// Writes the job and answers 202 with its location.
async fn accept(
    s: &AppState,
    kind: &'static str,
    params: &impl Serialize,
) -> Result<Response, ApiError> {
    let params = serde_json::to_string(params).expect("job parameters serialize");
    let written = s.store.create_job(kind, &params).await?;
    metrics::counter!(JOBS_SUBMITTED, "kind" => kind).increment(1);
    let job = written.value;
    let mut response = json_response(StatusCode::ACCEPTED, &JobView::from(&job));
    if let Ok(location) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    attach(&mut response, written.token);
    Ok(response)
}

/// Sends an email in the background: it lands in the worker's mail sink.
#[utoipa::path(
    post, path = "/emails", tag = "jobs",
    request_body = SubmitEmail,
    responses(
        (status = 202, description = "Accepted: the job is queued", body = JobView,
            headers(("Location" = String, description = "The job's URL: /jobs/{id}"))),
        (status = 400, description = "Malformed body or invalid field (`field` names it)", body = ErrorDoc),
        (status = 503, description = "The store is overloaded; retry after `Retry-After`", body = ErrorDoc),
    )
)]
pub(crate) async fn submit_email(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<SubmitEmail>,
) -> Result<Response, ApiError> {
    validate_email(&body.to).map_err(|e| e.with_field("to"))?;
    validate_text("subject", &body.subject, 1, 200)?;
    let chars = body.body.chars().count();
    let bad_char = body
        .body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if body.body.trim().is_empty() || chars > MAX_EMAIL_BODY || bad_char {
        return Err(ApiError::invalid_field(
            "body",
            format!(
                "body must be 1 to {MAX_EMAIL_BODY} characters; line breaks and tabs are the only control characters allowed"
            ),
        ));
    }
    let params = EmailJob {
        to: body.to,
        subject: body.subject,
        body: body.body,
    };
    accept(&s, EMAIL_JOB, &params).await
}

/// Computes a report from the analytics read model in the background.
#[utoipa::path(
    post, path = "/reports", tag = "jobs",
    request_body = SubmitReport,
    responses(
        (status = 202, description = "Accepted: the job is queued", body = JobView,
            headers(("Location" = String, description = "The job's URL: /jobs/{id}"))),
        (status = 400, description = "Malformed body or invalid field (`field` names it)", body = ErrorDoc),
        (status = 503, description = "The store is overloaded; retry after `Retry-After`", body = ErrorDoc),
    )
)]
pub(crate) async fn submit_report(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<SubmitReport>,
) -> Result<Response, ApiError> {
    validate_range("limit", body.limit, 1, MAX_REPORT_ROWS)?;
    let report = match body.report {
        ReportName::TopProducts => crate::flows::jobs::ReportKind::TopProducts,
        ReportName::TopCustomers => crate::flows::jobs::ReportKind::TopCustomers,
    };
    let params = ReportJob {
        report,
        limit: u32::try_from(body.limit).unwrap_or(10),
    };
    accept(&s, REPORT_JOB, &params).await
}

/// Where a job is: queued, running, done (with its result) or failed (with
/// the error).
#[utoipa::path(
    get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such job", body = ErrorDoc),
    )
)]
pub(crate) async fn get_job(State(s): State<AppState>, Id(id): Id) -> Result<Response, ApiError> {
    let job = match s.store.get_job(id, Consistency::Eventual).await? {
        Some(job) => Some(job),
        // A replica may not have the job yet right after it was accepted.
        None => s.store.get_job(id, Consistency::Primary).await?,
    };
    let job = job.ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    let mut response = json_response(StatusCode::OK, &JobView::from(&job));
    // The state changes under the client's feet: never cache it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
