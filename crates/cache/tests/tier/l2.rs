//! The L2 against a real standalone Redis: sharing between instances,
//! negative caching, versioned keys, L2-only mode, the cross-instance load
//! lock, purges, and write-through.

use std::time::Duration;

use scalestack_cache::{ResourceOptions, WriteStrategy};
use scalestack_testkit::redis::RedisServer;

use crate::support::{Store, cache, standalone, ttl, users, without_bus};

#[tokio::test]
async fn a_value_loaded_by_one_instance_serves_another_from_l2() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let (a, b) = (cache(&config).await, cache(&config).await);
    let (ra, rb) = (users(&a, ttl(60)), users(&b, ttl(60)));
    let store = Store::default();
    store.set(1, "ada");
    assert_eq!(store.read(&ra, 1).await.as_deref(), Some("ada"));
    assert_eq!(store.read(&rb, 1).await.as_deref(), Some("ada"));
    assert_eq!(store.loads(), 1, "the second instance read L2");
    let stats = rb.stats();
    assert_eq!((stats.l1_misses, stats.l2_hits, stats.loads), (1, 1, 0));
    // The entry in Redis is namespaced, versioned and expires.
    let key = format!("{}:users:v1:1", config.namespace);
    let pttl: i64 = redis.cli(&["pttl", &key]).unwrap().trim().parse().unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");
}

#[tokio::test]
async fn not_found_is_shared_through_l2_for_the_negative_ttl() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let (a, b) = (cache(&config).await, cache(&config).await);
    let opts = ResourceOptions {
        negative_ttl: Duration::from_secs(30),
        ..ttl(60)
    };
    let (ra, rb) = (users(&a, opts), users(&b, opts));
    let store = Store::default();
    assert_eq!(store.read(&ra, 404).await, None);
    assert_eq!(store.read(&rb, 404).await, None);
    assert_eq!(store.loads(), 1, "the 404 came from L2");
    let key = format!("{}:users:v1:404", config.namespace);
    let pttl: i64 = redis.cli(&["pttl", &key]).unwrap().trim().parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 30_000,
        "negative TTL, not the full one: {pttl}"
    );
}

#[tokio::test]
async fn a_new_version_does_not_read_entries_of_the_old_one() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let (old, new) = (cache(&config).await, cache(&config).await);
    let r_old = users(&old, ttl(60));
    let r_new = users(
        &new,
        ResourceOptions {
            version: 2,
            ..ttl(60)
        },
    );
    let store = Store::default();
    store.set(1, "v1 shape");
    store.read(&r_old, 1).await;
    store.set(1, "v2 shape");
    assert_eq!(store.read(&r_new, 1).await.as_deref(), Some("v2 shape"));
    assert_eq!(store.loads(), 2);
}

#[tokio::test]
async fn with_the_l1_off_reads_come_from_l2_with_single_flight() {
    let redis = RedisServer::shared().unwrap();
    let mut config = without_bus(standalone(redis.url()));
    config.l1_max_bytes = 0;
    let c = cache(&config).await;
    let r = users(&c, ttl(60));
    let store = Store::default();
    store.set(1, "ada");
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let (r, store) = (r.clone(), store.clone());
            tokio::spawn(async move { store.read_slow(&r, 1, Duration::from_millis(100)).await })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap().as_deref(), Some("ada"));
    }
    assert_eq!(store.loads(), 1);
    for _ in 0..5 {
        assert_eq!(store.read(&r, 1).await.as_deref(), Some("ada"));
    }
    assert_eq!(store.loads(), 1, "later reads hit L2");
    assert!(r.stats().l2_hits >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_missing_everywhere_is_loaded_once_across_instances() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let store = Store::default();
    store.set(7, "celebrity");
    let mut caches = Vec::new();
    for _ in 0..8 {
        caches.push(cache(&config).await);
    }
    let mut reads = Vec::new();
    for c in &caches {
        let r = users(c, ttl(60));
        for _ in 0..4 {
            let (r, store) = (r.clone(), store.clone());
            reads.push(tokio::spawn(async move {
                store.read_slow(&r, 7, Duration::from_millis(300)).await
            }));
        }
    }
    for read in reads {
        assert_eq!(read.await.unwrap().as_deref(), Some("celebrity"));
    }
    assert_eq!(
        store.loads(),
        1,
        "32 readers on 8 instances: one load, the rest waited for its L2 fill"
    );
    let lock = format!("{}:users:v1:7:lock", config.namespace);
    assert_eq!(
        redis.cli(&["exists", &lock]).unwrap().trim(),
        "0",
        "lock released"
    );
}

#[tokio::test]
async fn write_through_puts_the_new_value_in_l2_for_every_instance() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let (a, b) = (cache(&config).await, cache(&config).await);
    let opts = ResourceOptions {
        strategy: WriteStrategy::WriteThrough,
        ..ttl(60)
    };
    let (ra, rb) = (users(&a, opts), users(&b, opts));
    let store = Store::default();
    store.write(&ra, 3, "written").await;
    assert_eq!(store.read(&rb, 3).await.as_deref(), Some("written"));
    assert_eq!(store.loads(), 0, "no instance had to load it");
}

#[tokio::test]
async fn cache_aside_writes_delete_the_l2_entry() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let (a, b) = (cache(&config).await, cache(&config).await);
    let (ra, rb) = (users(&a, ttl(60)), users(&b, ttl(60)));
    let store = Store::default();
    store.set(4, "old");
    store.read(&ra, 4).await;
    store.write(&ra, 4, "new").await;
    assert_eq!(store.read(&rb, 4).await.as_deref(), Some("new"));
    assert_eq!(store.loads(), 2);
}

#[tokio::test]
async fn purges_reach_l2_across_versions_and_spare_other_prefixes() {
    let redis = RedisServer::shared().unwrap();
    let config = without_bus(standalone(redis.url()));
    let c = cache(&config).await;
    let v1 = users(&c, ttl(60));
    let store = Store::default();
    for id in [1, 12, 2] {
        store.set(id, "x");
        store.read(&v1, id).await;
    }
    let other = cache(&config).await;
    let v2 = users(
        &other,
        ResourceOptions {
            version: 2,
            ..ttl(60)
        },
    );
    store.read(&v2, 1).await;
    let products = c
        .resource_with::<String>("products", ttl(60), crate::support::weigh)
        .unwrap();
    store.read(&products, 1).await;

    let report = c.purge_prefix("users:1").await.unwrap();
    assert_eq!(report.l2_keys, 3, "users 1 and 12 of v1, user 1 of v2");
    let loads = store.loads();
    store.read(&v1, 2).await;
    store.read(&products, 1).await;
    assert_eq!(store.loads(), loads, "other keys stayed");
    store.read(&v1, 12).await;
    assert_eq!(store.loads(), loads + 1);

    let report = c.purge_all().await.unwrap();
    assert_eq!(report.l2_keys, 3, "users 2 and 12, products 1");
    let pattern = format!("{}:*", config.namespace);
    assert_eq!(redis.cli(&["keys", &pattern]).unwrap().trim(), "");
}
