//! Observability shared by every scalestack process.
//!
//! This crate owns the process-wide metrics recorder and its Prometheus text
//! exposition ([`metrics`]), logging setup ([`logging`]), the JSON health report
//! served on `/health` ([`health`]) and readers of `/proc` for CPU accounting
//! ([`procfs`]).
//!
//! It knows nothing about any component: components name their own metrics and
//! health checks and hand them to the types here.

pub mod health;
pub mod logging;
pub mod metrics;
pub mod procfs;
