//! The same cache over a 3-master Redis Cluster: keys spread over the
//! masters, invalidations published anywhere reach every subscriber, and
//! purges scan every master.

use std::time::Duration;

use scalestack_config::L2Mode;
use scalestack_testkit::eventually;
use scalestack_testkit::redis::RedisCluster;

use crate::support::{Store, cache, l2_config, ttl, users, wait_bus_up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let config = l2_config(L2Mode::Cluster, cluster.urls());
    let (a, b) = (cache(&config).await, cache(&config).await);
    let (ra, rb) = (users(&a, ttl(600)), users(&b, ttl(600)));
    let store = Store::default();
    for id in 1..=50 {
        store.set(id, &format!("v{id}"));
        store.read(&ra, id).await;
    }
    for id in 1..=50 {
        assert_eq!(store.read(&rb, id).await, Some(format!("v{id}")));
    }
    assert_eq!(
        store.loads(),
        50,
        "the second instance read everything from L2"
    );
    assert_eq!(cluster.dbsize().unwrap(), 50);
    for node in 0..cluster.len() {
        let keys: u64 = cluster
            .node(node)
            .cli(&["dbsize"])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(keys > 0, "keys live on every master");
    }

    wait_bus_up(&[&a, &b]).await;
    store.write(&ra, 1, "new").await;
    let seen = eventually(Duration::from_secs(10), || async {
        (store.read(&rb, 1).await.as_deref() == Some("new")).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the invalidation crossed the cluster");

    let report = a.purge_all().await.unwrap();
    assert_eq!(report.l2_keys, 50);
    assert_eq!(cluster.dbsize().unwrap(), 0);
    let loads = store.loads();
    let reloaded = eventually(Duration::from_secs(10), || async {
        store.read(&rb, 2).await;
        (store.loads() > loads).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "b's L1 was purged too");
}
