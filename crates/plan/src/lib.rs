//! Capacity planning: the math behind `scalestack plan`.
//!
//! This crate owns turning load figures into instance counts and money: the
//! back-of-the-envelope method of the seed article (*Scaling to 1 Million
//! Requests Per Second*) as code ([`PlanInputs`] → [`CapacityPlan`]: API
//! servers, queue partitions and brokers, consumer workers, cache nodes,
//! read replicas, shards and their instances, bandwidth, monthly cost),
//! calibrated by measurement instead of ballparks ([`Measurement`]), the
//! Universal Scalability Law fitted to measured throughput at several
//! instance counts ([`usl`]), Little's law and Erlang C ([`queueing`]), and
//! a cache eviction-policy simulator ([`cache_sim`]).
//!
//! It does no IO at all — no files, no network, no clock: callers (the
//! CLI) read inputs, traces and bench reports and hand this crate numbers.
//! That keeps every figure a pure function of its inputs, which is what the
//! snapshot test of the seed's worked example relies on.

mod calibrate;
mod capacity;
mod inputs;
mod render;

pub mod cache_sim;
pub mod queueing;
pub mod usl;

pub use calibrate::{Calibration, Measurement};
pub use capacity::{
    ApiTier, CacheTier, CapacityPlan, CostLine, DatabaseTier, QueueTier, Traffic, WorkerTier,
};
pub use inputs::{PlanInputs, Price, Prices};
pub use render::{Format, aligned, bytes, render, thousands};

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// An input is out of range.
    #[error("invalid `{key}` = {value}: {reason}")]
    Invalid {
        /// The input's key, dotted for nested ones (`prices.api.hourly`).
        key: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// The inputs file does not parse.
    #[error("{origin}: {message}")]
    Inputs {
        /// Where the text came from.
        origin: String,
        /// The key's path and what is wrong.
        message: String,
    },
    /// A measurement cannot calibrate a plan.
    #[error("cannot calibrate from {origin}: {reason}")]
    Calibration {
        /// Where the measurement came from.
        origin: String,
        /// Why not.
        reason: String,
    },
    /// A model cannot be fitted to the points given.
    #[error("cannot fit: {0}")]
    Fit(String),
}

impl PlanError {
    pub(crate) fn invalid(
        key: &'static str,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        Self::Invalid {
            key,
            value: value.to_string(),
            reason,
        }
    }
}
