//! The `jobs` group: runs the jobs that `POST /emails` and `POST /reports`
//! accept, and keeps each job's row up to date for `GET /jobs/{id}`.
//!
//! An attempt marks the job `running`, does the work and records `done` with
//! the result. A failure puts it back to `queued` while retries are left and
//! marks it `failed`, with the error, on the last attempt (the message then
//! goes to the dead-letter queue; redriving it runs the job again). A job
//! that is `done` is never run again: a redelivery is acknowledged as a
//! duplicate. An email job's effect is its file in the sink, written once
//! (see [`super::email`]); a report's is its result in the job's row.

use scalestack_queue::{BatchHandler, Delivery, ErrorKind, HandlerError};
use scalestack_store::{JobRecord, JobSubmitted, Store};
use serde::{Deserialize, Serialize};

use super::email::{MailSink, render_job};
use super::{JOB_ATTEMPTS, JOBS, count_effects, store_failure};

/// Kind of the jobs of `POST /emails`.
pub const EMAIL_JOB: &str = "email";
/// Kind of the jobs of `POST /reports`.
pub const REPORT_JOB: &str = "report";

/// Parameters of an email job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailJob {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Products by revenue.
    TopProducts,
    /// Users by spend.
    TopCustomers,
}

/// Parameters of a report job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportJob {
    /// Which report.
    pub report: ReportKind,
    /// Rows in it.
    pub limit: u32,
}

/// The `jobs` group's handler.
#[derive(Debug, Clone)]
pub struct JobsHandler {
    store: Store,
    sink: MailSink,
    max_attempts: u32,
}

/// How one attempt ended.
enum Outcome {
    Done,
    AlreadyDone,
}

impl JobsHandler {
    /// A handler over `store` writing email jobs to `sink`; `max_attempts`
    /// is the group's, so that the last attempt can mark its job `failed`.
    pub fn new(store: Store, sink: MailSink, max_attempts: u32) -> Self {
        Self {
            store,
            sink,
            max_attempts,
        }
    }

    async fn run(&self, delivery: &Delivery) -> Result<Outcome, HandlerError> {
        let event: JobSubmitted = serde_json::from_slice(&delivery.message.payload)
            .map_err(|e| HandlerError::permanent(format!("not a job event: {e}")))?;
        let job = self
            .store
            .start_job(event.job_id, i64::from(delivery.attempt))
            .await
            .map_err(|e| store_failure(&e))?
            .ok_or_else(|| {
                HandlerError::permanent(format!("job {} does not exist", event.job_id))
            })?;
        if job.state == "done" {
            return Ok(Outcome::AlreadyDone);
        }
        match self.work(&job).await {
            Ok(result) => {
                self.store
                    .finish_job(job.id, &result)
                    .await
                    .map_err(|e| store_failure(&e))?;
                metrics::counter!(JOB_ATTEMPTS, "kind" => kind_label(&job.kind), "outcome" => "done")
                    .increment(1);
                Ok(Outcome::Done)
            }
            Err(error) => {
                let last =
                    error.kind == ErrorKind::Permanent || delivery.attempt >= self.max_attempts;
                // If this write fails the job shows its previous state; the
                // retry (or the dead letter) still follows from the error.
                if let Err(e) = self.store.fail_job(job.id, &error.message, last).await {
                    tracing::warn!(error = %e, job = job.id, "cannot record the job's failure");
                }
                let outcome = if last { "failed" } else { "retry" };
                metrics::counter!(JOB_ATTEMPTS, "kind" => kind_label(&job.kind), "outcome" => outcome)
                    .increment(1);
                Err(error)
            }
        }
    }

    /// Does a job's work; returns its result as JSON text.
    async fn work(&self, job: &JobRecord) -> Result<String, HandlerError> {
        match job.kind.as_str() {
            EMAIL_JOB => {
                let params: EmailJob = serde_json::from_str(&job.params)
                    .map_err(|e| HandlerError::permanent(format!("bad email job: {e}")))?;
                let email = render_job(
                    &self.sink,
                    job.id,
                    &params.to,
                    &params.subject,
                    &params.body,
                    job.created_at,
                );
                let sink = self.sink.clone();
                let file = email.file.clone();
                let delivered = tokio::task::spawn_blocking(move || {
                    sink.deliver(&email.file, email.text.as_bytes())
                })
                .await
                .map_err(|e| HandlerError::transient(format!("the mail writer failed: {e}")))?
                .map_err(|e| {
                    HandlerError::transient(format!(
                        "cannot write {file} to the mail sink {}: {e}",
                        self.sink.dir().display()
                    ))
                })?;
                Ok(serde_json::json!({
                    "file": file,
                    "written": matches!(delivered, super::email::Delivered::Created),
                })
                .to_string())
            }
            REPORT_JOB => {
                let params: ReportJob = serde_json::from_str(&job.params)
                    .map_err(|e| HandlerError::permanent(format!("bad report job: {e}")))?;
                let generated_at = scalestack_store::now_ms();
                let rows = match params.report {
                    ReportKind::TopProducts => {
                        let rows = self
                            .store
                            .top_products(params.limit)
                            .await
                            .map_err(|e| store_failure(&e))?;
                        serde_json::to_value(rows)
                    }
                    ReportKind::TopCustomers => {
                        let rows = self
                            .store
                            .top_customers(params.limit)
                            .await
                            .map_err(|e| store_failure(&e))?;
                        serde_json::to_value(rows)
                    }
                }
                .map_err(|e| HandlerError::permanent(format!("cannot encode the report: {e}")))?;
                Ok(serde_json::json!({
                    "report": params.report,
                    "generated_at_ms": generated_at,
                    "rows": rows,
                })
                .to_string())
            }
            other => Err(HandlerError::permanent(format!(
                "unknown job kind {other:?}"
            ))),
        }
    }
}

/// A bounded metric label for a job kind.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        EMAIL_JOB => EMAIL_JOB,
        REPORT_JOB => REPORT_JOB,
        _ => "other",
    }
}

impl BatchHandler for JobsHandler {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(batch.len());
        let (mut applied, mut duplicates) = (0, 0);
        for delivery in batch {
            results.push(match self.run(delivery).await {
                Ok(Outcome::Done) => {
                    applied += 1;
                    Ok(())
                }
                Ok(Outcome::AlreadyDone) => {
                    duplicates += 1;
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        count_effects(JOBS, applied, duplicates);
        results
    }
}
