//! Harness for scalestack's tests and benchmarks.
//!
//! This crate owns what tests need to run real things: free loopback ports
//! ([`ports`]), a minimal HTTP client ([`http`]), and the whole stack started
//! from the real `scalestack` binary in a temporary directory ([`stack`]).
//! The PostgreSQL, Redis and NATS servers of later work are started here too.
//!
//! It must never be used by the product itself: only tests, benches and xtask
//! depend on it.

mod guarded;
pub mod http;
pub mod nats;
pub mod ports;
pub mod postgres;
pub mod redis;
pub mod stack;

/// Polls `probe` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
