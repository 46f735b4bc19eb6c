//! Redis killed or hung under concurrent load: every read still succeeds
//! with the right value, the breaker opens, and closes again once Redis is
//! back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use scalestack_cache::{Cache, Resource};
use scalestack_config::CacheConfig;
use scalestack_resilience::BreakerState;
use scalestack_testkit::eventually;
use scalestack_testkit::redis::RedisServer;

use crate::support::{Store, cache, standalone, ttl, users, wait_bus_up};

const KEYS: i64 = 2_000;

fn outage_config(url: String) -> CacheConfig {
    let mut c = standalone(url);
    // A small L1 keeps most reads going to L2, so the outage is felt.
    c.l1_max_bytes = 8 * 1024;
    c.l2.timeout = Duration::from_millis(200);
    // The shipped lock settings: a lock left behind by a call that timed
    // out holds readers of that key back for at most `lock_wait`.
    c.l2.lock_ttl = CacheConfig::default().l2.lock_ttl;
    c.l2.lock_wait = CacheConfig::default().l2.lock_wait;
    c.l2.breaker.consecutive_failures = 3;
    c.l2.breaker.open_for = Duration::from_millis(300);
    c.l2.breaker.half_open_probes = 1;
    c
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
}

/// Readers on every resource until `stop`: random keys, each read checked
/// against the store and bounded by a generous deadline.
fn load(
    resources: &[Resource<String>],
    store: &Store,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            let (resources, store, stop, tally) = (
                resources.to_vec(),
                store.clone(),
                stop.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = 1 + (rand::random::<u64>() % KEYS as u64) as i64;
                    let r = &resources[rand::random::<u64>() as usize % resources.len()];
                    match tokio::time::timeout(Duration::from_secs(10), store.read(r, id)).await {
                        Ok(Some(v)) if v == format!("v{id}") => {
                            tally.ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(_) => tally.wrong.fetch_add(1, Ordering::Relaxed),
                        Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

async fn breakers_are(caches: &[&Cache], state: BreakerState) -> bool {
    eventually(Duration::from_secs(30), || async {
        caches
            .iter()
            .all(|c| c.l2_breaker() == Some(state))
            .then_some(())
    })
    .await
    .is_some()
}

/// Waits until `more` reads succeeded after the current count.
async fn progress(tally: &Tally, more: u64) -> bool {
    let from = tally.ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(30), || async {
        (tally.ok.load(Ordering::Relaxed) >= from + more).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_costs_no_request_and_the_breaker_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let config = outage_config(redis.url());
    let (a, b) = (cache(&config).await, cache(&config).await);
    wait_bus_up(&[&a, &b]).await;
    let (ra, rb) = (users(&a, ttl(600)), users(&b, ttl(600)));
    let store = Store::default();
    for id in 1..=KEYS {
        store.set(id, &format!("v{id}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(&[ra.clone(), rb.clone()], &store, &stop, &tally);
    let l2_in_use = eventually(Duration::from_secs(30), || async {
        (ra.stats().l2_hits + rb.stats().l2_hits > 0).then_some(())
    })
    .await;
    assert!(l2_in_use.is_some(), "L2 serves the reads L1 cannot hold");

    redis.kill();
    assert!(
        breakers_are(&[&a, &b], BreakerState::Open).await,
        "the breakers opened"
    );
    assert!(
        progress(&tally, 500).await,
        "reads go on while Redis is down"
    );
    let bus_down = eventually(Duration::from_secs(30), || async {
        (!a.invalidation_up() && !b.invalidation_up()).then_some(())
    })
    .await;
    assert!(bus_down.is_some(), "the bus is known to be down");

    redis.restart().unwrap();
    assert!(
        breakers_are(&[&a, &b], BreakerState::Closed).await,
        "the breakers closed again"
    );
    let l2_hits = ra.stats().l2_hits + rb.stats().l2_hits;
    assert!(progress(&tally, 500).await);
    assert!(
        ra.stats().l2_hits + rb.stats().l2_hits > l2_hits,
        "L2 serves again"
    );
    wait_bus_up(&[&a, &b]).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "no wrong value");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "no read hung");
    assert!(
        ra.stats().l2_unavailable + rb.stats().l2_unavailable > 0,
        "Redis calls were skipped"
    );

    // Invalidation works again after the outage.
    store.set(KEYS + 1, "old");
    store.read(&rb, KEYS + 1).await;
    store.write(&ra, KEYS + 1, "new").await;
    let seen = eventually(Duration::from_secs(10), || async {
        (store.read(&rb, KEYS + 1).await.as_deref() == Some("new")).then_some(())
    })
    .await;
    assert!(seen.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_cut_off_by_timeouts_and_probed_back() {
    let redis = RedisServer::start().unwrap();
    let config = outage_config(redis.url());
    let c = cache(&config).await;
    let r = users(&c, ttl(600));
    let store = Store::default();
    for id in 1..=KEYS {
        store.set(id, &format!("v{id}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(std::slice::from_ref(&r), &store, &stop, &tally);
    assert!(progress(&tally, 300).await);

    redis.pause().unwrap();
    assert!(breakers_are(&[&c], BreakerState::Open).await);
    assert!(progress(&tally, 300).await, "reads go on while Redis hangs");
    redis.resume().unwrap();
    assert!(breakers_are(&[&c], BreakerState::Closed).await);
    assert!(progress(&tally, 300).await);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0);
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_cache_starts_while_redis_is_down_and_uses_it_once_up() {
    let mut redis = RedisServer::start().unwrap();
    let config = outage_config(redis.url());
    redis.kill();
    let c = cache(&config).await;
    let r = users(&c, ttl(600));
    let store = Store::default();
    store.set(1, "one");
    assert_eq!(store.read(&r, 1).await.as_deref(), Some("one"));
    assert_eq!(r.stats().l2_hits + r.stats().l2_misses, 0);
    redis.restart().unwrap();
    let mut id = 1;
    let used = eventually(Duration::from_secs(30), || {
        id += 1;
        let (r, store) = (r.clone(), store.clone());
        async move {
            store.read(&r, id).await;
            (r.stats().l2_misses > 0).then_some(())
        }
    })
    .await;
    assert!(used.is_some(), "Redis is used once it is there");
}
