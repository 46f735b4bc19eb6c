//! The cache tier of scalestack.
//!
//! This crate owns caching for the api servers: one [`Cache`] per process
//! with an in-process L1 (moka, TinyLFU or LRU, bounded in bytes) and an
//! optional Redis L2 (standalone or cluster) behind a circuit breaker, and
//! typed [`Resource`] views on it (users, products, sessions...) that each
//! carry their own TTLs, key version and write strategy.
//!
//! * Reads are cache-aside: L1 → L2 → the caller's loader, one load per key
//!   per instance (single flight) and, with an L2, one per key across
//!   instances (a short Redis lock); "not found" is cached briefly.
//! * Writes are cache-aside (invalidate), write-through (store, then cache)
//!   or write-behind (durable local log, batched store writes through a
//!   caller's [`BatchWriter`]; see [`write_behind`]).
//! * Every write drops the other instances' L1 copies through the
//!   invalidation bus: Redis pub/sub, or UDP between the api instances of
//!   the embedded stack (see the `bus` module's documentation).
//! * Redis down or slow never fails a read: the breaker skips it and the
//!   loader answers.
//!
//! It must not know SQL or domain types: values are opaque `Arc<V>`, loaders
//! and store writes are the caller's futures. Metric names are in [`metrics`].

mod bus;
mod cache;
mod codec;
mod hotkeys;
mod key;
mod l1;
mod l2;
pub mod metrics;
mod resource;
pub mod write_behind;

pub use cache::{Cache, CacheBuilder, CacheError, Peers, PurgeReport};
pub use key::Id;
pub use metrics::{BYTES, ENTRIES, EVICTIONS, LOADS, REQUESTS};
pub use resource::{LoadError, Resource, ResourceOptions, ResourceStats, WriteError};
pub use scalestack_config::{L1Eviction, WriteStrategy};
pub use write_behind::{BatchWriter, BoxError, WriteBehindError};

#[cfg(test)]
mod tests;
