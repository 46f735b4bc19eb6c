//! The cache's metrics as Prometheus renders them: per-layer hits and
//! misses, hit ratio, evictions, L2 latency, breaker state, hot keys, invalidations.

use scalestack_testkit::redis::RedisServer;

use crate::support::{Store, cache, metrics, standalone, ttl, wait_bus_up};

#[tokio::test]
async fn every_feature_has_its_series() {
    let redis = RedisServer::shared().unwrap();
    let config = standalone(redis.url());
    let (a, b) = (cache(&config).await, cache(&config).await);
    wait_bus_up(&[&a, &b]).await;
    let ra = a
        .resource_with::<String>("mtest", ttl(60), crate::support::weigh)
        .unwrap();
    let rb = b
        .resource_with::<String>("mtest", ttl(60), crate::support::weigh)
        .unwrap();
    let store = Store::default();
    store.set(42, "celebrity");
    for _ in 0..50 {
        store.read(&ra, 42).await;
    }
    store.read(&rb, 42).await;
    store.write(&ra, 42, "changed").await;
    // The eviction listener runs in moka's housekeeping.
    a.run_pending_tasks().await;
    a.update_gauges();

    let text = metrics().render();
    for series in [
        r#"scalestack_cache_requests_total{cache="mtest",layer="l1",result="hit"}"#,
        r#"scalestack_cache_requests_total{cache="mtest",layer="l1",result="miss"}"#,
        r#"scalestack_cache_requests_total{cache="mtest",layer="l2",result="hit"}"#,
        r#"scalestack_cache_requests_total{cache="mtest",layer="l2",result="miss"}"#,
        r#"scalestack_cache_loads_total{cache="mtest",outcome="found"}"#,
        r#"scalestack_cache_stampede_total{cache="mtest",outcome="won"}"#,
        r#"scalestack_cache_writes_total{cache="mtest",strategy="cache_aside",outcome="ok"}"#,
        r#"scalestack_cache_hit_ratio{cache="mtest"}"#,
        r#"scalestack_cache_evictions_total{cache="mtest",cause="invalidated"}"#,
        r#"scalestack_cache_hot_key_requests{rank="1",key="mtest:42"}"#,
        r#"scalestack_cache_l2_duration_seconds{op="get""#,
        "scalestack_cache_l2_breaker_state ",
        r#"scalestack_cache_invalidations_total{direction="sent",transport="redis"}"#,
        r#"scalestack_cache_invalidations_total{direction="received",transport="redis"}"#,
        "scalestack_cache_entries ",
        "scalestack_cache_bytes ",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
}
