//! Event-driven invalidation between instances: over Redis pub/sub, and over
//! UDP between the api instances of the embedded stack (no Redis at all).

use std::time::Duration;

use scalestack_cache::{Cache, Peers, ResourceOptions, WriteStrategy};
use scalestack_config::{CacheConfig, InvalidationTransport};
use scalestack_testkit::eventually;
use scalestack_testkit::ports::free_addr;
use scalestack_testkit::redis::RedisServer;

use crate::support::{Store, cache, standalone, ttl, users, wait_bus_up};

/// Both instances hold `id` in L1; a write on `a` must reach `b`'s L1.
async fn write_on_a_reaches_b(a: &Cache, b: &Cache, id: i64, opts: ResourceOptions) {
    let (ra, rb) = (users(a, opts), users(b, opts));
    let store = Store::default();
    store.set(id, "old");
    assert_eq!(store.read(&ra, id).await.as_deref(), Some("old"));
    assert_eq!(store.read(&rb, id).await.as_deref(), Some("old"));
    store.write(&ra, id, "new").await;
    let seen = eventually(Duration::from_secs(10), || async {
        (store.read(&rb, id).await.as_deref() == Some("new")).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "instance b still serves the old value from its L1"
    );
}

#[tokio::test]
async fn a_write_invalidates_every_instance_over_redis_pubsub() {
    let redis = RedisServer::shared().unwrap();
    let config = standalone(redis.url());
    let (a, b) = (cache(&config).await, cache(&config).await);
    assert_eq!(a.invalidation_transport(), "redis");
    wait_bus_up(&[&a, &b]).await;
    write_on_a_reaches_b(&a, &b, 1, ttl(600)).await;
    write_on_a_reaches_b(
        &a,
        &b,
        2,
        ResourceOptions {
            strategy: WriteStrategy::WriteThrough,
            ..ttl(600)
        },
    )
    .await;
}

#[tokio::test]
async fn a_purge_reaches_every_instance_over_redis_pubsub() {
    let redis = RedisServer::shared().unwrap();
    let config = standalone(redis.url());
    let (a, b) = (cache(&config).await, cache(&config).await);
    wait_bus_up(&[&a, &b]).await;
    let rb = users(&b, ttl(600));
    let store = Store::default();
    store.set(5, "old");
    store.read(&rb, 5).await;
    store.set(5, "new");
    a.purge_prefix("users").await.unwrap();
    let seen = eventually(Duration::from_secs(10), || async {
        (store.read(&rb, 5).await.as_deref() == Some("new")).then_some(())
    })
    .await;
    assert!(seen.is_some());
}

/// Caches for `n` api instances of one embedded stack: no Redis, each
/// knowing every instance's address.
async fn embedded(n: usize) -> Vec<Cache> {
    let addrs: Vec<_> = (0..n).map(|_| free_addr()).collect();
    let mut config = CacheConfig::default();
    config.invalidation.heartbeat = Duration::from_millis(200);
    let mut caches = Vec::new();
    for addr in &addrs {
        crate::support::metrics();
        let cache = Cache::builder(&config)
            .peers(Peers {
                this: *addr,
                all: addrs.clone(),
            })
            .build()
            .await
            .unwrap();
        assert_eq!(cache.invalidation_transport(), "udp");
        assert!(!cache.has_l2());
        caches.push(cache);
    }
    caches
}

#[tokio::test]
async fn a_write_invalidates_every_instance_of_the_embedded_stack_over_udp() {
    let caches = embedded(3).await;
    write_on_a_reaches_b(&caches[0], &caches[1], 1, ttl(600)).await;
    write_on_a_reaches_b(&caches[2], &caches[0], 2, ttl(600)).await;
    write_on_a_reaches_b(
        &caches[1],
        &caches[2],
        3,
        ResourceOptions {
            strategy: WriteStrategy::WriteThrough,
            ..ttl(600)
        },
    )
    .await;
}

#[tokio::test]
async fn without_a_bus_other_instances_keep_their_copy_until_the_ttl() {
    // The control experiment for the two tests above: the same write with
    // the bus off leaves the other instance's L1 as it was.
    let mut config = CacheConfig::default();
    config.invalidation.transport = InvalidationTransport::Off;
    let (a, b) = (cache(&config).await, cache(&config).await);
    let (ra, rb) = (users(&a, ttl(600)), users(&b, ttl(600)));
    let store = Store::default();
    store.set(1, "old");
    store.read(&ra, 1).await;
    store.read(&rb, 1).await;
    store.write(&ra, 1, "new").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.read(&rb, 1).await.as_deref(), Some("old"));
}

#[tokio::test]
async fn a_peer_port_taken_by_another_process_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Cache::builder(&CacheConfig::default())
        .peers(Peers {
            this: addr,
            all: vec![addr, free_addr()],
        })
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("udp://{addr}")), "{err}");
}
