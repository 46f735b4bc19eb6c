//! The deep health report served on `/health` by every process.
//!
//! A report is a list of named checks (a database, a cache, an upstream), each
//! timed and bounded by a timeout. The process is healthy only when every check
//! passes; `/health` answers 200 then, 503 otherwise, with the report as JSON.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Overall state of a process or of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working.
    Ok,
    /// Not working; the process should not receive traffic.
    Fail,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. `store.shard-2`.
    pub name: String,
    /// Whether it passed.
    pub status: Status,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    /// Runs `probe`, bounded by `timeout`, and records its outcome under `name`.
    pub async fn run<F, E>(name: impl Into<String>, timeout: Duration, probe: F) -> Check
    where
        F: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let start = Instant::now();
        let outcome = tokio::time::timeout(timeout, probe).await;
        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
        };
        Check {
            name: name.into(),
            status: if error.is_none() {
                Status::Ok
            } else {
                Status::Fail
            },
            latency_ms,
            error,
        }
    }
}

/// The body of `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ok` when every check passed.
    pub status: Status,
    /// Component kind: `gateway`, `api`, `worker`.
    pub component: String,
    /// This process, e.g. `api-1`.
    pub instance: String,
    /// Process id, so that operators (and tests) can find the process.
    pub pid: u32,
    /// Seconds since the process started serving.
    pub uptime_s: f64,
    /// Every check that was run.
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// Builds a report from finished checks.
    pub fn new(component: &str, instance: &str, uptime: Duration, checks: Vec<Check>) -> Self {
        let ok = checks.iter().all(|c| c.status == Status::Ok);
        Self {
            status: if ok { Status::Ok } else { Status::Fail },
            component: component.to_owned(),
            instance: instance.to_owned(),
            pid: std::process::id(),
            uptime_s: uptime.as_secs_f64(),
            checks,
        }
    }

    /// 200 when healthy, 503 otherwise.
    pub fn http_status(&self) -> u16 {
        match self.status {
            Status::Ok => 200,
            Status::Fail => 503,
        }
    }

    /// The report as a JSON body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a health report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_or_slow_check_fails_the_report() {
        let ok = Check::run("fast", Duration::from_secs(1), async {
            Ok::<(), String>(())
        })
        .await;
        let failed = Check::run("broken", Duration::from_secs(1), async { Err("disk gone") }).await;
        let slow = Check::run("slow", Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), String>(())
        })
        .await;
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(failed.error.as_deref(), Some("disk gone"));
        assert_eq!(slow.status, Status::Fail);

        let good = HealthReport::new("api", "api-0", Duration::ZERO, vec![ok.clone()]);
        assert_eq!(good.http_status(), 200);
        let bad = HealthReport::new("api", "api-0", Duration::ZERO, vec![ok, failed, slow]);
        assert_eq!(bad.http_status(), 503);
        assert!(bad.to_json().contains("\"status\":\"fail\""));
    }
}
