//! The in-process L1: one moka cache per process, bounded in bytes, shared by
//! every resource, with per-entry TTLs.
//!
//! Two things sit on top of moka here:
//!
//! * **Expiry by an injectable clock.** Each entry records when it expires on
//!   the cache's [`Clock`]; a read past that instant is a miss. moka's own
//!   (wall-clock) expiry with the same TTL only reclaims the memory. This is
//!   what lets tests drive TTLs with a manual clock.
//! * **Invalidation epochs.** A load that started before an invalidation of
//!   its key must not put its (possibly stale) result in the cache after the
//!   invalidation. Every key hashes to one of [`STRIPES`] counters; an
//!   invalidation bumps its stripe, and a load only fills the cache if the
//!   stripe did not move while it ran. Striping keeps the check to one atomic
//!   load while making false conflicts rare.
//!
//! This module knows nothing of Redis or of the invalidation transports.

use std::any::Any;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use scalestack_config::L1Eviction;

use crate::key::Key;
use crate::metrics::EVICTIONS;

/// Approximate bytes of bookkeeping per entry (key, pointers, moka's node).
pub(crate) const ENTRY_OVERHEAD: u32 = 96;

/// Number of invalidation-epoch stripes.
const STRIPES: usize = 1024;

/// A cached value (`None` is a cached "not found") and its expiry.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) weight: u32,
    /// Wall-clock lifetime handed to moka (memory reclamation).
    pub(crate) ttl: Duration,
    /// When the entry stops being served, on the cache's clock.
    pub(crate) expires_at: Instant,
}

/// moka expires entries `ttl` after they were written or replaced.
struct PerEntryTtl;

impl Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &Key, entry: &Entry, _at: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Entry,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

pub(crate) struct L1 {
    pub(crate) cache: moka::future::Cache<Key, Entry>,
    epochs: Box<[AtomicU64]>,
}

impl L1 {
    pub(crate) fn new(max_bytes: u64, eviction: L1Eviction) -> Self {
        let policy = match eviction {
            L1Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
            L1Eviction::Lru => EvictionPolicy::lru(),
        };
        let cache = moka::future::Cache::builder()
            .name("l1")
            .max_capacity(max_bytes)
            .eviction_policy(policy)
            .weigher(|_key: &Key, entry: &Entry| entry.weight)
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .eviction_listener(|key: Arc<Key>, _entry, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "invalidated",
                    RemovalCause::Replaced => return,
                };
                metrics::counter!(EVICTIONS, "cache" => key.resource, "cause" => cause)
                    .increment(1);
            })
            .build();
        Self {
            cache,
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stripe(&self, key: &Key) -> &AtomicU64 {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        &self.epochs[(hash as usize) % STRIPES]
    }

    /// The invalidation epoch of `key`'s stripe.
    pub(crate) fn epoch(&self, key: &Key) -> u64 {
        self.stripe(key).load(Ordering::Acquire)
    }

    /// Marks `key` as invalidated for loads in flight.
    pub(crate) fn bump(&self, key: &Key) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Marks every key as invalidated for loads in flight (purges).
    pub(crate) fn bump_all(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Drops `key` and marks it invalidated.
    pub(crate) async fn invalidate(&self, key: &Key) {
        self.bump(key);
        self.cache.invalidate(key).await;
    }

    /// Drops every entry whose logical key starts with `prefix` ("" = all).
    pub(crate) fn purge_prefix(&self, prefix: &str) {
        self.bump_all();
        if prefix.is_empty() {
            self.cache.invalidate_all();
            return;
        }
        let prefix = prefix.to_owned();
        // The closure is registered with moka, which applies it lazily while
        // `get` already refuses matching entries; the only error is "closures
        // not enabled", which the builder above rules out.
        if self
            .cache
            .invalidate_entries_if(move |k, _| k.has_prefix(&prefix))
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }
}
