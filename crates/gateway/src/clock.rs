//! The gateway's monotonic time as nanoseconds since the process started
//! using it, so that instants fit in atomics, and process-unique ids.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the base instant; never 0, so that 0 can mean "never".
pub(crate) fn now() -> u64 {
    at(Instant::now())
}

/// `instant` on the same scale as [`now`].
pub(crate) fn at(instant: Instant) -> u64 {
    ns(instant.saturating_duration_since(base())).max(1)
}

/// A duration in nanoseconds, saturating.
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A fresh id, unique in this process.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
