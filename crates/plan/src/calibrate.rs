//! Calibration: replacing the seed's ballpark per-instance figures with
//! measured ones.
//!
//! A [`Measurement`] is what a load test of a known number of instances
//! showed (the CLI fills it from a `scalestack bench --json` report; this
//! crate does not read files or know the report's format). Applying it sets
//! the API servers' capacity, their latency for Little's law and, when the
//! measured mix says so, the read share — and records where each came from.

use serde::{Deserialize, Serialize};

use crate::{PlanError, PlanInputs};

/// What a load test measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Where it came from, for the record (a file name).
    pub source: String,
    /// Instances that served the load.
    pub instances: u32,
    /// Requests per second they completed together.
    pub rps: f64,
    /// Mean latency, milliseconds.
    pub mean_latency_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_latency_ms: f64,
    /// Share of reads in the measured mix, when known.
    pub read_ratio: Option<f64>,
    /// Share of responses that were errors; a capacity measured while
    /// failing is not a capacity.
    pub error_ratio: f64,
}

/// What calibration changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The measurement used.
    pub measurement: Measurement,
    /// One sentence per input changed: key, old value, new value, why.
    pub changes: Vec<String>,
}

/// Above this error share a measurement is refused.
const MAX_ERROR_RATIO: f64 = 0.01;

impl Measurement {
    /// Sets `inputs` from this measurement.
    pub fn apply(&self, inputs: &mut PlanInputs) -> Result<Calibration, PlanError> {
        let bad = |reason: String| PlanError::Calibration {
            origin: self.source.clone(),
            reason,
        };
        if self.instances == 0 {
            return Err(bad("the measurement must name at least 1 instance".into()));
        }
        if !(self.rps.is_finite() && self.rps > 0.0) {
            return Err(bad(format!(
                "it completed no requests (rps = {})",
                self.rps
            )));
        }
        if self.error_ratio > MAX_ERROR_RATIO {
            return Err(bad(format!(
                "{:.1}% of its requests failed; a capacity measured while failing is not a \
                 capacity (at most {:.0}% accepted)",
                self.error_ratio * 100.0,
                MAX_ERROR_RATIO * 100.0
            )));
        }
        let mut changes = Vec::new();
        let per_instance = self.rps / f64::from(self.instances);
        changes.push(format!(
            "api_rps_per_server: {} → {per_instance:.0} ({:.0} req/s over {} instance(s) in {})",
            inputs.api_rps_per_server, self.rps, self.instances, self.source
        ));
        inputs.api_rps_per_server = per_instance;
        if self.mean_latency_ms.is_finite() && self.mean_latency_ms > 0.0 {
            changes.push(format!(
                "api_latency_ms: {} → {:.3} (mean; p99 was {:.3} ms)",
                inputs
                    .api_latency_ms
                    .map_or_else(|| "unset".to_owned(), |v| v.to_string()),
                self.mean_latency_ms,
                self.p99_latency_ms
            ));
            inputs.api_latency_ms = Some(self.mean_latency_ms);
        }
        if let Some(ratio) = self.read_ratio.filter(|r| (0.0..=1.0).contains(r)) {
            changes.push(format!(
                "read_ratio: {} → {ratio:.3} (the measured mix)",
                inputs.read_ratio
            ));
            inputs.read_ratio = ratio;
        }
        inputs.validate()?;
        Ok(Calibration {
            measurement: self.clone(),
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Measurement {
        Measurement {
            source: "r.json".into(),
            instances: 2,
            rps: 24_000.0,
            mean_latency_ms: 2.5,
            p99_latency_ms: 9.0,
            read_ratio: Some(0.95),
            error_ratio: 0.0,
        }
    }

    #[test]
    fn replaces_the_ballparks_with_measured_figures() {
        let mut inputs = PlanInputs::default();
        let c = measured().apply(&mut inputs).unwrap();
        assert_eq!(inputs.api_rps_per_server, 12_000.0);
        assert_eq!(inputs.api_latency_ms, Some(2.5));
        assert_eq!(inputs.read_ratio, 0.95);
        assert_eq!(c.changes.len(), 3);
        assert!(c.changes[0].contains("10000 → 12000"), "{:?}", c.changes);
        let plan = crate::CapacityPlan::compute(&inputs);
        // 1M × 1.5 / 12,000 = 125.
        assert_eq!(plan.api.servers, 125);
    }

    #[test]
    fn refuses_measurements_that_measured_nothing_or_failures() {
        let mut inputs = PlanInputs::default();
        let err = Measurement {
            rps: 0.0,
            ..measured()
        }
        .apply(&mut inputs)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.json") && err.contains("no requests"),
            "{err}"
        );
        let err = Measurement {
            error_ratio: 0.2,
            ..measured()
        }
        .apply(&mut inputs)
        .unwrap_err()
        .to_string();
        assert!(err.contains("20.0%"), "{err}");
        let err = Measurement {
            instances: 0,
            ..measured()
        }
        .apply(&mut inputs)
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 1 instance"), "{err}");
        assert_eq!(
            inputs,
            PlanInputs::default(),
            "a refused measurement changes nothing"
        );
    }
}
