//! Failure-handling building blocks shared by the gateway, the api servers,
//! the worker runtime and the supervisor.
//!
//! This crate owns exponential backoff with jitter ([`backoff`]), the circuit
//! breaker ([`breaker`]), rate limiting with its four algorithms and the
//! store trait behind it ([`ratelimit`]), and the retry budget ([`budget`]).
//! It must not know about HTTP types or do IO of its own: callers feed it
//! keys, clocks and outcomes and act on its answers. (A rate-limit store
//! shared between processes implements [`ratelimit::RateLimitStore`] outside
//! the local one here.)

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod ratelimit;

pub use backoff::{Backoff, Jitter};
pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Clock, ManualClock, SystemClock};
pub use budget::RetryBudget;
pub use ratelimit::{Decision, LocalStore, Policy, RateLimitStore};
