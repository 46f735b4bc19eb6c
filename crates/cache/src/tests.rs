//! Unit tests of the L1 layer and of the resource API that need no Redis:
//! single flight, TTLs on a manual clock, negative caching, eviction, purges,
//! write strategies against an in-memory store, and the load/invalidate race.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::*;
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
    let held = cache.inner.as_ref().unwrap().l1.cache.weighted_size();
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

// === Tests of the full builder without Redis ===

use scalestack_config::CacheConfig;
use scalestack_resilience::ManualClock;

fn config() -> CacheConfig {
    CacheConfig::default()
}

async fn manual_cache(config: &CacheConfig) -> (Cache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let cache = Cache::builder(config)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    (cache, clock)
}

fn opts(ttl_secs: u64) -> ResourceOptions {
    ResourceOptions::new(Duration::from_secs(ttl_secs))
}

/// Reads `id` with a loader that returns `value` and counts its runs.
async fn read(
    r: &Resource<String>,
    id: i64,
    value: Option<&str>,
    loads: &AtomicUsize,
) -> Option<String> {
    r.get_or_load(id, async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(value.map(str::to_owned))
    })
    .await
    .unwrap()
    .map(|v| (*v).clone())
}

#[tokio::test]
async fn ttl_follows_the_injected_clock() {
    let (cache, clock) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>("users", opts(60), weigh_string)
        .unwrap();
    let loads = AtomicUsize::new(0);
    assert_eq!(read(&r, 1, Some("a"), &loads).await.as_deref(), Some("a"));
    clock.advance(Duration::from_secs(59));
    assert_eq!(read(&r, 1, Some("b"), &loads).await.as_deref(), Some("a"));
    clock.advance(Duration::from_secs(2));
    assert_eq!(read(&r, 1, Some("b"), &loads).await.as_deref(), Some("b"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn not_found_is_cached_for_the_negative_ttl() {
    let (cache, clock) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>(
            "users",
            ResourceOptions {
                negative_ttl: Duration::from_secs(5),
                ..opts(60)
            },
            weigh_string,
        )
        .unwrap();
    let loads = AtomicUsize::new(0);
    assert_eq!(read(&r, 9, None, &loads).await, None);
    assert_eq!(
        read(&r, 9, Some("created"), &loads).await,
        None,
        "the 404 is cached"
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        read(&r, 9, Some("created"), &loads).await.as_deref(),
        Some("created")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    // A write drops a cached 404 at once.
    let _ = read(&r, 10, None, &loads).await;
    r.insert(10, Arc::new("ten".to_owned())).await;
    assert_eq!(read(&r, 10, None, &loads).await.as_deref(), Some("ten"));
}

#[tokio::test]
async fn purge_by_prefix_drops_only_matching_keys() {
    let (cache, _) = manual_cache(&config()).await;
    let users = cache
        .resource_with::<String>("users", opts(60), weigh_string)
        .unwrap();
    let products = cache
        .resource_with::<String>("products", opts(60), weigh_string)
        .unwrap();
    let loads = AtomicUsize::new(0);
    for id in [1, 12, 2] {
        read(&users, id, Some("old"), &loads).await;
    }
    read(&products, 1, Some("old"), &loads).await;
    let report = cache.purge_prefix("users:1").await.unwrap();
    assert_eq!(report.l2_keys, 0);
    assert!(!report.broadcast, "no bus in a lone embedded instance");
    assert_eq!(
        read(&users, 1, Some("new"), &loads).await.as_deref(),
        Some("new")
    );
    assert_eq!(
        read(&users, 12, Some("new"), &loads).await.as_deref(),
        Some("new")
    );
    assert_eq!(
        read(&users, 2, Some("new"), &loads).await.as_deref(),
        Some("old")
    );
    assert_eq!(
        read(&products, 1, Some("new"), &loads).await.as_deref(),
        Some("old")
    );
    cache.purge_all().await.unwrap();
    assert_eq!(
        read(&products, 1, Some("new"), &loads).await.as_deref(),
        Some("new")
    );
}

#[tokio::test]
async fn lru_admits_every_newcomer_where_tiny_lfu_protects_frequent_keys() {
    let mut admitted = Vec::new();
    for eviction in [L1Eviction::Lru, L1Eviction::TinyLfu] {
        let mut c = config();
        // About ten 1 KB entries.
        c.l1_max_bytes = 10 * (1_000 + 200);
        c.l1_eviction = eviction;
        let (cache, _) = manual_cache(&c).await;
        let r = cache
            .resource_with::<String>("blobs", opts(600), weigh_string)
            .unwrap();
        let loads = AtomicUsize::new(0);
        let blob = "x".repeat(1_000);
        for _ in 0..20 {
            for id in 0..10 {
                read(&r, id, Some(&blob), &loads).await;
            }
            cache.run_pending_tasks().await;
        }
        read(&r, 99, Some(&blob), &loads).await;
        cache.run_pending_tasks().await;
        let before = loads.load(Ordering::SeqCst);
        read(&r, 99, Some(&blob), &loads).await;
        admitted.push(loads.load(Ordering::SeqCst) == before);
    }
    assert_eq!(
        admitted,
        vec![true, false],
        "LRU keeps the newcomer, TinyLFU rejects a key seen once"
    );
}

#[tokio::test]
async fn a_load_that_raced_a_write_does_not_overwrite_it() {
    let (cache, _) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>("users", opts(60), weigh_string)
        .unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let (r, release, started) = (r.clone(), release.clone(), started.clone());
        tokio::spawn(async move {
            r.get_or_load(1, async {
                started.notify_one();
                release.notified().await;
                Ok::<_, String>(Some("read before the write".to_owned()))
            })
            .await
            .unwrap()
        })
    };
    started.notified().await;
    r.insert(1, Arc::new("written".to_owned())).await;
    release.notify_one();
    let old = slow.await.unwrap().unwrap();
    assert_eq!(
        old.as_str(),
        "read before the write",
        "its caller gets its own read"
    );
    let loads = AtomicUsize::new(0);
    assert_eq!(
        read(&r, 1, Some("x"), &loads).await.as_deref(),
        Some("written")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_celebrity_key_is_the_hottest() {
    let (cache, _) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>("users", opts(60), weigh_string)
        .unwrap();
    let loads = AtomicUsize::new(0);
    for i in 0..2_000 {
        let id = if i % 4 == 0 { 42 } else { 1_000 + i };
        read(&r, id, Some("v"), &loads).await;
    }
    let hot = cache.hot_keys(3);
    assert_eq!(hot[0].0, "users:42", "{hot:?}");
}

#[tokio::test]
async fn resource_names_and_strategies_are_checked() {
    let (cache, _) = manual_cache(&config()).await;
    let err = cache
        .resource_with::<String>("us:ers", opts(1), weigh_string)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"us:ers\""), "{err}");
    let err = cache
        .resource_with::<String>(
            "users",
            ResourceOptions {
                strategy: WriteStrategy::WriteBehind,
                ..opts(1)
            },
            weigh_string,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.users.strategy"), "{err}");
    let err = Cache::disabled()
        .write_behind_resource::<String, _>("seen", opts(1), weigh_string, MapStore::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`cache.enabled` = false"), "{err}");
}

// === Write strategies against an in-memory store ===

/// A store: a map, a count of writes, and a switch that makes writes fail.
#[derive(Clone, Default)]
struct MapStore {
    rows: Arc<Mutex<HashMap<i64, String>>>,
    writes: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl MapStore {
    fn get(&self, id: i64) -> Option<String> {
        self.rows.lock().unwrap().get(&id).cloned()
    }

    fn put(&self, id: i64, v: &str) -> Result<(), String> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("store down".into());
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.rows.lock().unwrap().insert(id, v.to_owned());
        Ok(())
    }
}

impl BatchWriter<String> for MapStore {
    fn write_batch<'a>(
        &'a self,
        batch: &'a [(Id, Arc<String>)],
    ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            for (id, v) in batch {
                let Id::Int(id) = id else {
                    return Err("string id".into());
                };
                self.put(*id, v)?;
            }
            Ok(())
        })
    }
}

async fn read_through(
    r: &Resource<String>,
    store: &MapStore,
    id: i64,
    loads: &AtomicUsize,
) -> Option<String> {
    r.get_or_load(id, async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(store.get(id))
    })
    .await
    .unwrap()
    .map(|v| (*v).clone())
}

#[tokio::test]
async fn cache_aside_writes_the_store_then_invalidates() {
    let (cache, _) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>("users", opts(60), weigh_string)
        .unwrap();
    let store = MapStore::default();
    store.put(1, "old").unwrap();
    let loads = AtomicUsize::new(0);
    assert_eq!(
        read_through(&r, &store, 1, &loads).await.as_deref(),
        Some("old")
    );
    r.write(1, "new".to_owned(), |v| {
        let store = store.clone();
        async move { store.put(1, &v) }
    })
    .await
    .unwrap();
    assert_eq!(store.get(1).as_deref(), Some("new"));
    assert_eq!(
        read_through(&r, &store, 1, &loads).await.as_deref(),
        Some("new")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2, "the write forced a reload");

    // A failed store write changes nothing.
    store.failing.store(true, Ordering::SeqCst);
    let err = r
        .write(1, "lost".to_owned(), |v| {
            let store = store.clone();
            async move { store.put(1, &v) }
        })
        .await;
    assert!(matches!(err, Err(WriteError::Store(ref e)) if e == "store down"));
    assert_eq!(
        read_through(&r, &store, 1, &loads).await.as_deref(),
        Some("new")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn write_through_updates_store_and_cache_before_acknowledging() {
    let (cache, _) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>(
            "users",
            ResourceOptions {
                strategy: WriteStrategy::WriteThrough,
                ..opts(60)
            },
            weigh_string,
        )
        .unwrap();
    let store = MapStore::default();
    let loads = AtomicUsize::new(0);
    r.write(5, "five".to_owned(), |v| {
        let store = store.clone();
        async move { store.put(5, &v) }
    })
    .await
    .unwrap();
    assert_eq!(store.get(5).as_deref(), Some("five"));
    assert_eq!(
        read_through(&r, &store, 5, &loads).await.as_deref(),
        Some("five")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0, "served from the cache");
}

async fn write_behind_cache(dir: &std::path::Path, max_batch: usize) -> Cache {
    let mut c = config();
    // Flushes happen when a test asks, or when max_batch entries wait.
    c.write_behind.flush_interval = Duration::from_secs(3600);
    c.write_behind.max_batch = max_batch;
    Cache::builder(&c)
        .write_behind_dir(dir)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn write_behind_acknowledges_first_and_flushes_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_behind_cache(dir.path(), 1000).await;
    let store = MapStore::default();
    let r = cache
        .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
        .await
        .unwrap();
    let loads = AtomicUsize::new(0);
    for v in ["a", "b", "c"] {
        r.write(1, v.to_owned(), |_| async {
            Err::<(), String>("not called".into())
        })
        .await
        .unwrap();
    }
    r.write(2, "two".to_owned(), |_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    assert_eq!(store.get(1), None, "acknowledged before the store has it");
    assert_eq!(r.pending_writes(), 2, "three writes of one key coalesce");
    // Read-your-writes even when L1 dropped the entry.
    r.invalidate(1).await;
    assert_eq!(
        read_through(&r, &store, 1, &loads).await.as_deref(),
        Some("c")
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0);

    // A failing store keeps everything pending.
    store.failing.store(true, Ordering::SeqCst);
    assert!(r.flush().await.is_err());
    assert_eq!(r.pending_writes(), 2);
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(r.flush().await.unwrap(), 2);
    assert_eq!(store.get(1).as_deref(), Some("c"));
    assert_eq!(store.get(2).as_deref(), Some("two"));
    assert_eq!(
        store.writes.load(Ordering::SeqCst),
        2,
        "one store write per key"
    );
    assert_eq!(r.pending_writes(), 0);
    let segments = std::fs::read_dir(dir.path().join("seen"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(
        segments, 1,
        "flushed segments are deleted; only the active one is left"
    );
}

#[tokio::test]
async fn a_full_buffer_flushes_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_behind_cache(dir.path(), 3).await;
    let store = MapStore::default();
    let r = cache
        .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
        .await
        .unwrap();
    for id in 0..3 {
        r.write(id, format!("v{id}"), |_| async { Ok::<(), String>(()) })
            .await
            .unwrap();
    }
    let flushed = scalestack_testkit::eventually(Duration::from_secs(10), || async {
        (store.writes.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    assert!(flushed.is_some(), "max_batch = 3 entries started a flush");
}

#[tokio::test]
async fn a_restart_replays_unflushed_writes_and_the_log_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = MapStore::default();
    // The store is down for the whole life of the first process, so even
    // its final flush on drop fails and the writes live only in the log.
    store.failing.store(true, Ordering::SeqCst);
    {
        let cache = write_behind_cache(dir.path(), 1000).await;
        let r = cache
            .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
            .await
            .unwrap();
        for id in 0..10 {
            r.write(id, format!("v{id}"), |_| async { Ok::<(), String>(()) })
                .await
                .unwrap();
        }
        let second = write_behind_cache(dir.path(), 1000).await;
        let err = second
            .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("in use by another process"), "{err}");
    }
    store.failing.store(false, Ordering::SeqCst);
    // The first cache's flusher releases the lock once it has seen the drop.
    let reopened = scalestack_testkit::eventually(Duration::from_secs(10), || async {
        let cache = write_behind_cache(dir.path(), 1000).await;
        let r = cache
            .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
            .await
            .ok()?;
        Some((cache, r))
    })
    .await;
    let (_cache, r) = reopened.expect("the log can be opened again");
    let replayed = scalestack_testkit::eventually(Duration::from_secs(10), || async {
        (store.writes.load(Ordering::SeqCst) == 10).then_some(())
    })
    .await;
    assert!(replayed.is_some(), "the replayed log is flushed at open");
    for id in 0..10 {
        assert_eq!(store.get(id), Some(format!("v{id}")));
    }
    assert_eq!(r.pending_writes(), 0);
}

#[tokio::test]
async fn shutdown_flushes_write_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_behind_cache(dir.path(), 1000).await;
    let store = MapStore::default();
    let r = cache
        .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
        .await
        .unwrap();
    r.write(7, "seven".to_owned(), |_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    cache.shutdown().await;
    assert_eq!(store.get(7).as_deref(), Some("seven"));
}

#[tokio::test]
async fn write_with_caches_the_stored_value_by_strategy() {
    let (cache, _) = manual_cache(&config()).await;
    let store = MapStore::default();
    store.put(1, "old").unwrap();
    for (strategy, loads_after_write) in [
        (WriteStrategy::CacheAside, 2),
        (WriteStrategy::WriteThrough, 1),
    ] {
        let name = match strategy {
            WriteStrategy::CacheAside => "aside",
            _ => "through",
        };
        let r = cache
            .resource_with::<String>(
                name,
                ResourceOptions {
                    strategy,
                    ..opts(60)
                },
                weigh_string,
            )
            .unwrap();
        let loads = AtomicUsize::new(0);
        store.put(1, "old").unwrap();
        assert_eq!(
            read_through(&r, &store, 1, &loads).await.as_deref(),
            Some("old")
        );
        let written = r
            .write_with(1, async {
                store.put(1, "new")?;
                Ok::<_, String>(store.get(1))
            })
            .await
            .unwrap();
        assert_eq!(written.as_deref().map(String::as_str), Some("new"));
        assert_eq!(
            read_through(&r, &store, 1, &loads).await.as_deref(),
            Some("new"),
            "{strategy:?}"
        );
        assert_eq!(
            loads.load(Ordering::SeqCst),
            loads_after_write,
            "{strategy:?}"
        );

        // Nothing written (no such row) and a failed write both drop the key.
        read_through(&r, &store, 1, &loads).await;
        let before = loads.load(Ordering::SeqCst);
        r.write_with(1, async { Ok::<Option<String>, String>(None) })
            .await
            .unwrap();
        read_through(&r, &store, 1, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), before + 1, "{strategy:?}");
        let err = r
            .write_with(1, async { Err::<Option<String>, _>("timeout".to_owned()) })
            .await;
        assert!(matches!(err, Err(WriteError::Store(ref e)) if e == "timeout"));
        read_through(&r, &store, 1, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), before + 2, "{strategy:?}");
    }
}

#[tokio::test]
async fn a_direct_write_supersedes_a_pending_write_behind_value() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_behind_cache(dir.path(), 1000).await;
    let store = MapStore::default();
    let r = cache
        .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
        .await
        .unwrap();
    let loads = AtomicUsize::new(0);
    r.write(3, "deferred".to_owned(), |_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    r.write_with(3, async {
        store.put(3, "direct")?;
        Ok::<_, String>(store.get(3))
    })
    .await
    .unwrap();
    assert_eq!(
        read_through(&r, &store, 3, &loads).await.as_deref(),
        Some("direct"),
        "the older pending value no longer shadows the direct write"
    );
    cache.flush_write_behind().await.unwrap();
    assert_eq!(
        store.get(3).as_deref(),
        Some("direct"),
        "and is not flushed over it"
    );
}

#[tokio::test]
async fn the_health_check_syncs_every_log_and_ignores_l1_admission() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.l1_max_bytes = 1024;
    c.write_behind.flush_interval = Duration::from_secs(3600);
    let cache = Cache::builder(&c)
        .write_behind_dir(dir.path())
        .build()
        .await
        .unwrap();
    let store = MapStore::default();
    let r = cache
        .write_behind_resource::<String, _>("seen", opts(60), weigh_string, store.clone())
        .await
        .unwrap();
    // A full L1 of frequently read keys: TinyLFU refuses newcomers, which
    // must not matter to the health check.
    let hot = cache
        .resource_with::<String>("hot", opts(60), weigh_string)
        .unwrap();
    for _ in 0..20 {
        for id in 0..20 {
            hot.get_or_load(id, async { Ok::<_, String>(Some("x".repeat(64))) })
                .await
                .unwrap();
        }
    }
    cache.run_pending_tasks().await;
    for _ in 0..50 {
        cache.check().await.unwrap();
    }
    r.write(1, "one".to_owned(), |_| async { Ok::<(), String>(()) })
        .await
        .unwrap();
    assert_eq!(cache.flush_write_behind().await.unwrap(), 1);
    assert_eq!(store.get(1).as_deref(), Some("one"));
    drop(r);
    Cache::disabled().check().await.unwrap();
}

// === The invalidation receive path ===

fn envelope(origin: u64, seq: u64, event: crate::bus::Event) -> crate::bus::Envelope {
    crate::bus::Envelope {
        version: 1,
        origin,
        seq,
        sent_us: crate::bus::now_us(),
        event,
    }
}

#[tokio::test]
async fn a_lost_invalidation_purges_the_whole_l1() {
    let (cache, _) = manual_cache(&config()).await;
    let r = cache
        .resource_with::<String>("users", opts(600), weigh_string)
        .unwrap();
    let loads = AtomicUsize::new(0);
    for id in 1..=3 {
        read(&r, id, Some("old"), &loads).await;
    }
    let inner = cache.inner.clone().unwrap();
    let invalidate = |id: i64| crate::bus::Event::Invalidate {
        resource: "users".into(),
        id: Id::Int(id),
    };
    inner.receive(envelope(77, 1, invalidate(1)), "udp").await;
    assert_eq!(
        read(&r, 1, Some("new"), &loads).await.as_deref(),
        Some("new")
    );
    assert_eq!(
        read(&r, 2, Some("new"), &loads).await.as_deref(),
        Some("old"),
        "in order: only key 1 was dropped"
    );
    // Message 2 never arrived: message 3 reveals the gap.
    inner.receive(envelope(77, 3, invalidate(3)), "udp").await;
    assert_eq!(
        read(&r, 2, Some("new"), &loads).await.as_deref(),
        Some("new")
    );
    // A heartbeat ahead of what arrived does the same.
    inner
        .receive(envelope(77, 5, crate::bus::Event::Heartbeat), "udp")
        .await;
    assert_eq!(
        read(&r, 2, Some("newer"), &loads).await.as_deref(),
        Some("newer")
    );
}

#[tokio::test]
async fn while_the_redis_bus_is_down_entries_live_one_heartbeat() {
    // Nothing listens on this port: the bus cannot come up.
    let port = scalestack_testkit::ports::free_port();
    let mut c = config();
    c.l2.mode = scalestack_config::L2Mode::Standalone;
    c.l2.urls = vec![format!("redis://127.0.0.1:{port}")];
    c.invalidation.heartbeat = Duration::from_secs(1);
    let (cache, clock) = manual_cache(&c).await;
    assert!(!cache.invalidation_up());
    let r = cache
        .resource_with::<String>("users", opts(600), weigh_string)
        .unwrap();
    let loads = AtomicUsize::new(0);
    assert_eq!(read(&r, 1, Some("a"), &loads).await.as_deref(), Some("a"));
    clock.advance(Duration::from_millis(500));
    assert_eq!(read(&r, 1, Some("b"), &loads).await.as_deref(), Some("a"));
    clock.advance(Duration::from_millis(600));
    assert_eq!(
        read(&r, 1, Some("b"), &loads).await.as_deref(),
        Some("b"),
        "the 10-minute TTL was cut to the heartbeat"
    );
}

#[test]
fn peers_of_the_embedded_stack_come_from_the_api_config() {
    let api = scalestack_config::ApiConfig::default();
    let peers = Peers::api_instances(&api, 1);
    assert_eq!(peers.this, api.instance_addr(1));
    assert_eq!(
        peers.all,
        vec![api.instance_addr(0), api.instance_addr(1)],
        "two instances by default"
    );
}

#[test]
fn the_worker_is_a_member_of_the_embedded_bus() {
    let config = scalestack_config::Config::default();
    let peers = Peers::stack(&config, config.worker.listen);
    assert_eq!(peers.this, config.worker.listen);
    assert_eq!(
        peers.all,
        vec![
            config.api.instance_addr(0),
            config.api.instance_addr(1),
            config.worker.listen
        ]
    );
}
