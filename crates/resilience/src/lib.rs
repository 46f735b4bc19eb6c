//! Failure-handling building blocks shared by the gateway, the api servers,
//! the worker runtime and the supervisor.
//!
//! Today this crate owns exponential backoff with jitter ([`backoff`]); rate-limit
//! algorithms, circuit breakers and retry budgets join it with the gateway work.
//! It must not know about HTTP types or any IO: callers feed it clocks and
//! outcomes and act on its answers.

pub mod backoff;
pub mod breaker;

pub use backoff::{Backoff, Jitter};
pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Clock, ManualClock, SystemClock};
