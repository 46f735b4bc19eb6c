//! The reference service of scalestack: what the rest of the system serves.
//!
//! This crate owns the domain (users, products, orders) as an HTTP API
//! ([`api`], run by `scalestack api`), the background worker process
//! ([`worker`], run by `scalestack worker`) with the flows it runs
//! ([`flows`]: the outbox relay and the consumer groups), and the data
//! seeder ([`seed`]).
//!
//! It must not talk to SQL, Redis or NATS directly: data goes through
//! `scalestack-store`, cached reads through `scalestack-cache`, messages
//! through `scalestack-queue`, and metrics and health reports through
//! `scalestack-telemetry`. It is the worked example of
//! building an API on those libraries.

use std::net::SocketAddr;

pub mod api;
pub mod flows;
mod http;
pub mod seed;
pub mod worker;

/// Errors that stop a process of this crate from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound.
    #[error("{instance}: cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The process, e.g. `api-1`.
        instance: String,
        /// The config key the address comes from.
        key: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] scalestack_store::StoreError),
    /// The cache could not be built (bad settings, the invalidation socket,
    /// or a damaged write-behind log).
    #[error("{0}")]
    Cache(#[from] scalestack_cache::CacheError),
    /// The queue could not be opened or its topics created.
    #[error("queue: {0}")]
    Queue(#[from] scalestack_queue::QueueError),
    /// Serving failed.
    #[error("{instance}: server error: {source}")]
    Serve {
        /// The process.
        instance: String,
        /// What went wrong.
        source: std::io::Error,
    },
}
