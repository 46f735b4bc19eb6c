//! The cache tier of scalestack.
//!
//! This crate owns the in-process L1 cache: one [`Cache`] per process with one
//! memory budget, and typed [`Resource`] views on it (users, products, ...) that
//! each carry their own TTL. Reads are cache-aside: [`Resource::get_or_load`]
//! answers from memory or runs the caller's loader once per key however many
//! requests wait for it (single flight), then keeps the value.
//!
//! It must not know SQL or domain types: values are opaque `Arc<V>` and loaders
//! are the caller's futures. The Redis L2, write strategies and cross-instance
//! invalidation of the cache-tier work extend this crate behind the same API.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;

/// Counter of lookups by cache (resource), layer and result (`hit`/`miss`).
pub const REQUESTS: &str = "scalestack_cache_requests_total";
/// Counter of loads run on a miss, by cache and outcome (`found`/`absent`/`error`).
pub const LOADS: &str = "scalestack_cache_loads_total";
/// Counter of entries removed, by cause (`expired`/`size`/`invalidated`).
pub const EVICTIONS: &str = "scalestack_cache_evictions_total";
/// Gauge of entries held.
pub const ENTRIES: &str = "scalestack_cache_entries";
/// Gauge of the memory budget used, in bytes (approximate).
pub const BYTES: &str = "scalestack_cache_bytes";

/// Approximate bytes of bookkeeping per entry (key, pointers, moka's node).
const ENTRY_OVERHEAD: u32 = 96;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    resource: &'static str,
    id: i64,
}

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    weight: u32,
    ttl: Duration,
}

/// Entries expire `ttl` after they were written; the TTL is per resource.
struct PerEntryTtl;

impl Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The process's L1 cache: one memory budget shared by every resource.
/// Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    l1: Option<moka::future::Cache<Key, Entry>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.l1.is_some())
            .finish()
    }
}

impl Cache {
    /// A cache bounded to about `max_bytes` of values plus bookkeeping, using
    /// moka's TinyLFU admission and LRU eviction.
    pub fn new(max_bytes: u64) -> Self {
        describe_metrics();
        let l1 = moka::future::Cache::builder()
            .name("l1")
            .max_capacity(max_bytes)
            .weigher(|_key: &Key, entry: &Entry| entry.weight)
            .expire_after(PerEntryTtl)
            .eviction_listener(|_key, _entry, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "invalidated",
                    RemovalCause::Replaced => return,
                };
                metrics::counter!(EVICTIONS, "cause" => cause).increment(1);
            })
            .build();
        Self { l1: Some(l1) }
    }

    /// A cache that holds nothing: every read goes to the loader.
    pub fn disabled() -> Self {
        describe_metrics();
        Self { l1: None }
    }

    /// Whether values are kept at all.
    pub fn is_enabled(&self) -> bool {
        self.l1.is_some()
    }

    /// A typed view for one resource; `weigh` estimates a value's heap bytes.
    pub fn resource<V: Send + Sync + 'static>(
        &self,
        name: &'static str,
        ttl: Duration,
        weigh: fn(&V) -> usize,
    ) -> Resource<V> {
        Resource {
            cache: self.clone(),
            name,
            ttl,
            weigh,
            _value: PhantomData,
        }
    }

    /// Drops every entry of every resource.
    pub fn invalidate_all(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    /// Publishes the entry count and bytes used as gauges (call before a scrape).
    pub fn update_gauges(&self) {
        if let Some(l1) = &self.l1 {
            metrics::gauge!(ENTRIES).set(l1.entry_count() as f64);
            metrics::gauge!(BYTES).set(l1.weighted_size() as f64);
        }
    }

    /// Applies pending evictions and expiries now (moka batches them); lets
    /// tests and health checks see an exact state.
    pub async fn run_pending_tasks(&self) {
        if let Some(l1) = &self.l1 {
            l1.run_pending_tasks().await;
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        REQUESTS,
        "Cache lookups by cache, layer and result (hit or miss)."
    );
    metrics::describe_counter!(LOADS, "Loads run on a cache miss, by cache and outcome.");
    metrics::describe_counter!(EVICTIONS, "Entries removed from the L1 cache, by cause.");
    metrics::describe_gauge!(ENTRIES, "Entries held by the L1 cache.");
    metrics::describe_gauge!(BYTES, "Approximate bytes held by the L1 cache.");
}

/// Why a cache-aside read produced no value.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader failed; the error is shared by every request that waited for it.
    Failed(Arc<E>),
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for LoadError<E> {}

/// What one load produced; `Absent` is not cached.
enum Miss<E> {
    Absent,
    Failed(Arc<E>),
}

/// A typed view of the cache for one resource (e.g. `users`), with its TTL.
pub struct Resource<V> {
    cache: Cache,
    name: &'static str,
    ttl: Duration,
    weigh: fn(&V) -> usize,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Resource<V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            name: self.name,
            ttl: self.ttl,
            weigh: self.weigh,
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for Resource<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<V: Send + Sync + 'static> Resource<V> {
    /// The resource's name, as used in metric labels.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn key(&self, id: i64) -> Key {
        Key {
            resource: self.name,
            id,
        }
    }

    fn entry(&self, value: Arc<V>) -> Entry {
        let weight =
            ((self.weigh)(&value) + std::mem::size_of::<V>()).min(u32::MAX as usize) as u32;
        Entry {
            value,
            weight: weight.saturating_add(ENTRY_OVERHEAD),
            ttl: self.ttl,
        }
    }

    fn count(&self, result: &'static str) {
        metrics::counter!(REQUESTS, "cache" => self.name, "layer" => "l1", "result" => result)
            .increment(1);
    }

    fn count_load(&self, outcome: &'static str) {
        metrics::counter!(LOADS, "cache" => self.name, "outcome" => outcome).increment(1);
    }

    /// Cache-aside read: the cached value, or the loader's. Concurrent misses of
    /// one key share a single load. `Ok(None)` (not found) is not cached.
    pub async fn get_or_load<E, F>(&self, id: i64, load: F) -> Result<Option<Arc<V>>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<V>, E>>,
    {
        let Some(l1) = &self.cache.l1 else {
            self.count("miss");
            return match load.await {
                Ok(v) => Ok(v.map(Arc::new)),
                Err(e) => Err(LoadError::Failed(Arc::new(e))),
            };
        };
        let key = self.key(id);
        if let Some(entry) = l1.get(&key).await {
            self.count("hit");
            return Ok(Some(downcast(entry)));
        }
        self.count("miss");
        let loaded = l1
            .try_get_with(key, async {
                match load.await {
                    Ok(Some(value)) => {
                        self.count_load("found");
                        Ok(self.entry(Arc::new(value)))
                    }
                    Ok(None) => {
                        self.count_load("absent");
                        Err(Miss::Absent)
                    }
                    Err(e) => {
                        self.count_load("error");
                        Err(Miss::Failed(Arc::new(e)))
                    }
                }
            })
            .await;
        match loaded {
            Ok(entry) => Ok(Some(downcast(entry))),
            // Every request that waited on this load shares its outcome.
            Err(miss) => match &*miss {
                Miss::Absent => Ok(None),
                Miss::Failed(e) => Err(LoadError::Failed(Arc::clone(e))),
            },
        }
    }

    /// Stores a value (after a write, so the next read needs no load).
    pub async fn insert(&self, id: i64, value: Arc<V>) {
        if let Some(l1) = &self.cache.l1 {
            l1.insert(self.key(id), self.entry(value)).await;
        }
    }

    /// Drops the cached value of `id`, e.g. after a write.
    pub async fn invalidate(&self, id: i64) {
        if let Some(l1) = &self.cache.l1 {
            l1.invalidate(&self.key(id)).await;
        }
    }
}

fn downcast<V: Send + Sync + 'static>(entry: Entry) -> Arc<V> {
    entry
        .value
        .downcast::<V>()
        .expect("a resource's key space holds only that resource's values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[allow(clippy::ptr_arg)] // The weigher signature is `fn(&V)` with V = String.
    fn weigh_string(s: &String) -> usize {
        s.len()
    }

    #[tokio::test]
    async fn second_read_is_served_from_memory() {
        let cache = Cache::new(1 << 20);
        let users = cache.resource::<String>("users", Duration::from_secs(60), weigh_string);
        let loads = AtomicUsize::new(0);
        for _ in 0..3 {
            let v = users
                .get_or_load(7, async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Some("seven".to_owned()))
                })
                .await
                .unwrap();
            assert_eq!(v.as_deref().map(String::as_str), Some("seven"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_load() {
        let cache = Cache::new(1 << 20);
        let users = cache.resource::<String>("users", Duration::from_secs(60), weigh_string);
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let users = users.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                users
                    .get_or_load(1, async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(Some("one".to_owned()))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().as_str(), "one");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn absent_and_failed_loads_are_not_cached() {
        let cache = Cache::new(1 << 20);
        let users = cache.resource::<String>("users", Duration::from_secs(60), weigh_string);
        assert!(
            users
                .get_or_load(1, async { Ok::<_, String>(None) })
                .await
                .unwrap()
                .is_none()
        );
        let err = users
            .get_or_load(1, async { Err::<Option<String>, _>("db down".to_owned()) })
            .await;
        assert!(matches!(err, Err(LoadError::Failed(e)) if *e == "db down"));
        let v = users
            .get_or_load(1, async { Ok::<_, String>(Some("now".to_owned())) })
            .await
            .unwrap();
        assert_eq!(v.unwrap().as_str(), "now");
    }

    #[tokio::test]
    async fn invalidate_forces_a_reload_and_resources_do_not_collide() {
        let cache = Cache::new(1 << 20);
        let users = cache.resource::<String>("users", Duration::from_secs(60), weigh_string);
        let products = cache.resource::<u64>("products", Duration::from_secs(60), |_| 0);
        users
            .get_or_load(1, async { Ok::<_, ()>(Some("old".to_owned())) })
            .await
            .unwrap();
        products
            .get_or_load(1, async { Ok::<_, ()>(Some(99)) })
            .await
            .unwrap();

        users.invalidate(1).await;
        let v = users
            .get_or_load(1, async { Ok::<_, ()>(Some("new".to_owned())) })
            .await
            .unwrap();
        assert_eq!(v.unwrap().as_str(), "new");
        let p = products
            .get_or_load(1, async { Ok::<_, ()>(Some(0)) })
            .await
            .unwrap();
        assert_eq!(*p.unwrap(), 99, "the product entry was untouched");
    }

    #[tokio::test]
    async fn entries_expire_after_their_resource_ttl() {
        let cache = Cache::new(1 << 20);
        let short = cache.resource::<String>("short", Duration::from_millis(50), weigh_string);
        let long = cache.resource::<String>("long", Duration::from_secs(60), weigh_string);
        short
            .get_or_load(1, async { Ok::<_, ()>(Some("a".to_owned())) })
            .await
            .unwrap();
        long.get_or_load(1, async { Ok::<_, ()>(Some("a".to_owned())) })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let s = short
            .get_or_load(1, async { Ok::<_, ()>(Some("b".to_owned())) })
            .await
            .unwrap();
        let l = long
            .get_or_load(1, async { Ok::<_, ()>(Some("b".to_owned())) })
            .await
            .unwrap();
        assert_eq!(s.unwrap().as_str(), "b", "expired and reloaded");
        assert_eq!(l.unwrap().as_str(), "a", "still cached");
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_cache() {
        let cache = Cache::new(64 * 1024);
        let blobs = cache.resource::<String>("blobs", Duration::from_secs(60), weigh_string);
        for id in 0..1_000 {
            blobs
                .get_or_load(id, async { Ok::<_, ()>(Some("x".repeat(1_000))) })
                .await
                .unwrap();
        }
        cache.run_pending_tasks().await;
        let held = cache.l1.as_ref().unwrap().weighted_size();
        assert!(held <= 64 * 1024, "held {held} bytes");
        assert!(held > 0);
    }

    #[tokio::test]
    async fn a_disabled_cache_always_loads() {
        let cache = Cache::disabled();
        let users = cache.resource::<String>("users", Duration::from_secs(60), weigh_string);
        let loads = AtomicUsize::new(0);
        for _ in 0..3 {
            users
                .get_or_load(1, async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Some("v".to_owned()))
                })
                .await
                .unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }
}
