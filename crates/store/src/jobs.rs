//! Background jobs (`POST /emails`, `POST /reports`): their rows in the
//! catalog and the event that starts each one.
//!
//! [`Store::create_job`] writes the job (state `queued`) and its `job.submitted`
//! outbox row in one catalog transaction, so a job that exists is always
//! published (by the worker's relay) and a job is never published without
//! existing. The worker then moves it through `running` to `done` (with a
//! result) or `failed` (with the error); a job that is `done` stays done,
//! whatever a redelivery of its event tries.
//!
//! Parameters and results are JSON text, opaque here: the app defines them.
//! This module must not know the queue or HTTP.

use serde::{Deserialize, Serialize};

use crate::backend::BeginWrite as _;
use crate::{Consistency, Store, StoreError, Written, now_ms, on_pool};

/// Topic of the events that start jobs.
pub const JOBS_TOPIC: &str = "jobs";

/// The states of a job.
pub const JOB_STATES: [&str; 4] = ["queued", "running", "done", "failed"];

/// The columns of a [`JobRecord`], as a literal so that statements stay
/// static strings.
macro_rules! job_columns {
    () => {
        "id, kind, params, state, attempts, result, error, created_at, updated_at"
    };
}

/// A job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct JobRecord {
    /// Job id.
    pub id: i64,
    /// What kind of work, e.g. `email` or `report`.
    pub kind: String,
    /// Its parameters, as JSON text.
    pub params: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    /// Attempts started so far.
    pub attempts: i64,
    /// The result (JSON text) once `done`.
    pub result: Option<String>,
    /// The last error, while retrying or once `failed`.
    pub error: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// The event that starts a job (the payload of its outbox row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmitted {
    /// Always `job.submitted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The job's id.
    pub job_id: i64,
    /// The job's kind.
    pub job_kind: String,
}

impl Store {
    /// Creates a job in state `queued` and its `job.submitted` outbox row in
    /// one catalog transaction.
    pub async fn create_job(
        &self,
        kind: &str,
        params: &str,
    ) -> Result<Written<JobRecord>, StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        let job = catalog
            .write("create_job", async {
                on_pool!(&catalog.primary.pool, p => {
                    let mut tx = p.begin_write().await?;
                    let job: JobRecord = sqlx::query_as(concat!(
                        "INSERT INTO jobs (kind, params, state, attempts, created_at, updated_at) \
                         VALUES ($1, $2, 'queued', 0, $3, $3) RETURNING ",
                        job_columns!()
                    ))
                    .bind(kind)
                    .bind(params)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    let event = JobSubmitted {
                        kind: "job.submitted".into(),
                        job_id: job.id,
                        job_kind: job.kind.clone(),
                    };
                    sqlx::query(
                        "INSERT INTO outbox (topic, key, payload, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(JOBS_TOPIC)
                    .bind(job.id.to_string())
                    .bind(serde_json::to_string(&event).expect("an event serializes"))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(job)
                })
            })
            .await?;
        Ok(Written {
            value: job,
            token: catalog.token_after_commit().await,
        })
    }

    /// Reads a job.
    pub async fn get_job(
        &self,
        id: i64,
        consistency: Consistency,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.catalog()
            .read("get_job", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, JobRecord>(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// Marks attempt `attempt` of a job as running and returns the job; a
    /// job that is `done` is returned unchanged (the caller skips it), and
    /// `None` means there is no such job.
    pub async fn start_job(&self, id: i64, attempt: i64) -> Result<Option<JobRecord>, StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        catalog
            .write("start_job", async {
                on_pool!(&catalog.primary.pool, p => {
                    let mut tx = p.begin_write().await?;
                    let running: Option<JobRecord> = sqlx::query_as(concat!(
                        "UPDATE jobs SET state = 'running', attempts = $2, updated_at = $3 \
                         WHERE id = $1 AND state <> 'done' RETURNING ",
                        job_columns!()
                    ))
                    .bind(id)
                    .bind(attempt)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let job = match running {
                        Some(job) => Some(job),
                        None => sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?,
                    };
                    tx.commit().await?;
                    Ok(job)
                })
            })
            .await
    }

    /// Records a job's result: `done`. Returns false if it was done already.
    pub async fn finish_job(&self, id: i64, result: &str) -> Result<bool, StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        catalog
            .write("finish_job", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query(
                    "UPDATE jobs SET state = 'done', result = $2, error = NULL, updated_at = $3 \
                     WHERE id = $1 AND state <> 'done'",
                )
                .bind(id)
                .bind(result)
                .bind(now)
                .execute(p)
                .await
                .map(|r| r.rows_affected() == 1))
            })
            .await
    }

    /// Records a failed attempt: `failed` when it was the last, else back to
    /// `queued` for the retry. A job that is `done` is left alone.
    pub async fn fail_job(&self, id: i64, error: &str, last: bool) -> Result<(), StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        let state = if last { "failed" } else { "queued" };
        catalog
            .write("fail_job", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query(
                    "UPDATE jobs SET state = $2, error = $3, updated_at = $4 \
                     WHERE id = $1 AND state <> 'done'",
                )
                .bind(id)
                .bind(state)
                .bind(error)
                .bind(now)
                .execute(p)
                .await
                .map(drop))
            })
            .await
    }

    /// How many jobs are in each state (every state listed, zeros included).
    pub async fn job_counts(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .catalog()
            .read("job_counts", Consistency::Eventual, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as(
                    "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                )
                .fetch_all(p)
                .await)
            })
            .await?;
        Ok(JOB_STATES
            .iter()
            .map(|state| {
                let n = rows
                    .iter()
                    .find(|(s, _)| s == state)
                    .map_or(0, |(_, n)| (*n).max(0) as u64);
                (*state, n)
            })
            .collect())
    }
}
