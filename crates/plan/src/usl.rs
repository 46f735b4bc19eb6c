//! The Universal Scalability Law, fitted to measured throughput at several
//! instance counts.
//!
//! Gunther's USL models the throughput of N instances as
//!
//! ```text
//! X(N) = λN / (1 + σ(N − 1) + κN(N − 1))
//! ```
//!
//! where λ is the throughput of one instance, σ the contention (the share
//! of work that serialises: Amdahl's law) and κ the coherency cost (the
//! crosstalk that makes throughput *fall* past a peak at
//! N* = √((1 − σ)/κ)). With measurements at three or more instance counts
//! the fit says how far scaling out keeps paying.
//!
//! The fit minimises the squared error in throughput itself. For given σ and
//! κ the best λ has a closed form (a one-variable least squares), so only σ
//! and κ are searched: a coarse grid over σ ∈ [0, 1] and κ ∈ {0} ∪
//! [10⁻⁹, 1] (log-spaced) followed by a pattern search that halves its step.
//! That is deterministic, needs no starting guess and cannot diverge.

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// A fitted USL model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UslFit {
    /// Throughput of one instance (requests per second).
    pub lambda: f64,
    /// Contention, 0 to 1.
    pub sigma: f64,
    /// Coherency, 0 or more.
    pub kappa: f64,
    /// Instance count of peak throughput; `None` when κ = 0 (throughput
    /// rises forever towards λ/σ).
    pub peak_n: Option<f64>,
    /// Throughput at `peak_n`, or the asymptote λ/σ when there is no peak
    /// (`None` for perfectly linear scaling).
    pub peak_throughput: Option<f64>,
    /// Coefficient of determination of the fit on throughput (1 is perfect).
    pub r_squared: f64,
    /// Root-mean-square error of the fit, requests per second.
    pub rmse: f64,
    /// Measurements fitted.
    pub points: usize,
}

impl UslFit {
    /// Predicted throughput at `n` instances.
    pub fn predict(&self, n: f64) -> f64 {
        model(self.lambda, self.sigma, self.kappa, n)
    }
}

fn model(lambda: f64, sigma: f64, kappa: f64, n: f64) -> f64 {
    lambda * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))
}

/// The best λ for σ, κ and its squared error.
fn best(points: &[(f64, f64)], sigma: f64, kappa: f64) -> (f64, f64) {
    let g = |n: f64| n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0));
    let (mut xg, mut gg) = (0.0, 0.0);
    for &(n, x) in points {
        xg += x * g(n);
        gg += g(n) * g(n);
    }
    let lambda = if gg > 0.0 { xg / gg } else { 0.0 };
    let sse = points
        .iter()
        .map(|&(n, x)| (x - lambda * g(n)).powi(2))
        .sum();
    (lambda, sse)
}

/// Fits the USL to `(instances, throughput)` measurements.
pub fn fit(points: &[(f64, f64)]) -> Result<UslFit, PlanError> {
    let bad = |reason: String| PlanError::Fit(reason);
    for &(n, x) in points {
        if !(n.is_finite() && n >= 1.0) {
            return Err(bad(format!("instance count {n} must be 1 or more")));
        }
        if !(x.is_finite() && x > 0.0) {
            return Err(bad(format!(
                "throughput {x} at {n} instances must be greater than 0"
            )));
        }
    }
    let mut distinct: Vec<f64> = points.iter().map(|p| p.0).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 3 {
        return Err(bad(format!(
            "the USL has three parameters: measure at least three different instance counts \
             (got {})",
            distinct.len()
        )));
    }

    let mut kappas = vec![0.0];
    kappas.extend((0..=180).map(|i| 10f64.powf(-9.0 + f64::from(i) / 20.0)));
    let (mut sigma, mut kappa, mut sse) = (0.0, 0.0, f64::INFINITY);
    for i in 0..=100 {
        let s = f64::from(i) / 100.0;
        for &k in &kappas {
            let (_, e) = best(points, s, k);
            if e < sse {
                (sigma, kappa, sse) = (s, k, e);
            }
        }
    }
    // Pattern search: σ linearly, κ multiplicatively (and through 0).
    let mut ds = 0.01;
    let mut dk = 1.2f64;
    while ds > 1e-9 || dk > 1.0 + 1e-9 {
        let mut improved = false;
        let k_up = if kappa == 0.0 { 1e-9 } else { kappa * dk };
        let k_down = if kappa < 1e-9 { 0.0 } else { kappa / dk };
        for (s, k) in [
            ((sigma + ds).min(1.0), kappa),
            ((sigma - ds).max(0.0), kappa),
            (sigma, k_up),
            (sigma, k_down),
        ] {
            let (_, e) = best(points, s, k);
            if e < sse {
                (sigma, kappa, sse) = (s, k, e);
                improved = true;
            }
        }
        if !improved {
            ds /= 2.0;
            dk = dk.sqrt();
        }
    }
    let (lambda, sse) = best(points, sigma, kappa);
    let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let sst: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let r_squared = if sst > 0.0 { 1.0 - sse / sst } else { 1.0 };
    let peak_n = (kappa > 0.0).then(|| ((1.0 - sigma) / kappa).sqrt());
    let peak_throughput = match peak_n {
        Some(n) => Some(model(lambda, sigma, kappa, n)),
        None if sigma > 0.0 => Some(lambda / sigma),
        None => None,
    };
    Ok(UslFit {
        lambda,
        sigma,
        kappa,
        peak_n,
        peak_throughput,
        r_squared,
        rmse: (sse / points.len() as f64).sqrt(),
        points: points.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(lambda: f64, sigma: f64, kappa: f64, ns: &[f64]) -> Vec<(f64, f64)> {
        ns.iter()
            .map(|&n| (n, model(lambda, sigma, kappa, n)))
            .collect()
    }

    #[test]
    fn recovers_the_parameters_of_exact_data() {
        let points = synthetic(1000.0, 0.05, 0.002, &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]);
        let f = fit(&points).unwrap();
        assert!((f.lambda - 1000.0).abs() < 1.0, "{f:?}");
        assert!((f.sigma - 0.05).abs() < 1e-3, "{f:?}");
        assert!((f.kappa - 0.002).abs() < 1e-4, "{f:?}");
        assert!(f.r_squared > 0.999_99, "{f:?}");
        let peak = f.peak_n.unwrap();
        assert!((peak - (0.95f64 / 0.002).sqrt()).abs() < 0.5, "{f:?}");
        assert!((f.predict(64.0) - model(1000.0, 0.05, 0.002, 64.0)).abs() < 10.0);
    }

    #[test]
    fn linear_scaling_has_no_peak() {
        let points = synthetic(500.0, 0.0, 0.0, &[1.0, 2.0, 3.0, 4.0]);
        let f = fit(&points).unwrap();
        assert!(f.sigma < 1e-6 && f.kappa < 1e-9, "{f:?}");
        assert_eq!(f.peak_n, None);
        assert!((f.predict(10.0) - 5000.0).abs() < 1.0);
    }

    #[test]
    fn noisy_data_fits_with_a_lower_r_squared() {
        let mut points = synthetic(1000.0, 0.1, 0.01, &[1.0, 2.0, 4.0, 8.0, 12.0, 16.0]);
        for (i, p) in points.iter_mut().enumerate() {
            p.1 *= if i % 2 == 0 { 1.05 } else { 0.95 };
        }
        let f = fit(&points).unwrap();
        assert!(f.r_squared < 0.999 && f.r_squared > 0.8, "{f:?}");
        assert!(f.peak_n.is_some());
    }

    #[test]
    fn refuses_too_few_or_bad_points() {
        let two = fit(&[(1.0, 100.0), (2.0, 190.0), (2.0, 195.0)])
            .unwrap_err()
            .to_string();
        assert!(two.contains("at least three"), "{two}");
        assert!(
            fit(&[(0.0, 1.0), (2.0, 2.0), (3.0, 3.0)])
                .unwrap_err()
                .to_string()
                .contains("instance count 0")
        );
        assert!(
            fit(&[(1.0, -1.0), (2.0, 2.0), (3.0, 3.0)])
                .unwrap_err()
                .to_string()
                .contains("throughput -1")
        );
    }
}
