//! The store on real PostgreSQL: the whole suite on 2 shards × (primary + 1
//! streaming replica), then the replica behaviour that SQLite cannot show:
//! lag-bound routing, read-your-writes with replay paused, a replica that
//! goes down and comes back, and the read policies.
//!
//! The suite shares two clusters (fresh databases per test); the replica
//! tests pause and stop servers, so each starts a cluster of its own.

mod suite;
mod support;

use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use scalestack_config::{Config, ReadPolicy, ReplicaSetConfig};
use scalestack_store::{Consistency, ReplicaStatus, Store, UserPatch};
use scalestack_testkit::eventually;
use scalestack_testkit::postgres::PgCluster;
use support::{Fixture, quick_replicas};

// === the suite ===

#[tokio::test]
async fn users_round_trip_and_land_on_their_shard() {
    suite::users_round_trip_and_land_on_their_shard(Fixture::postgres().await).await;
}

#[tokio::test]
async fn orders_are_written_with_their_outbox_row_and_paged() {
    suite::orders_are_written_with_their_outbox_row_and_paged(Fixture::postgres().await).await;
}

#[tokio::test]
async fn an_order_for_a_missing_user_writes_nothing() {
    suite::an_order_for_a_missing_user_writes_nothing(Fixture::postgres().await).await;
}

#[tokio::test]
async fn products_page_in_id_order() {
    suite::products_page_in_id_order(Fixture::postgres().await).await;
}

#[tokio::test]
async fn data_survives_reopen_and_a_changed_shard_count_is_refused() {
    suite::data_survives_reopen_and_a_changed_shard_count_is_refused(Fixture::postgres().await)
        .await;
}

#[tokio::test]
async fn a_range_map_grows_past_the_last_user_only_with_a_new_version() {
    suite::a_range_map_grows_past_the_last_user_only_with_a_new_version(Fixture::postgres().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_never_share_ids_or_lose_writes() {
    suite::two_stores_never_share_ids_or_lose_writes(Fixture::postgres().await).await;
}

#[tokio::test]
async fn bulk_insert_uses_reserved_ids() {
    suite::bulk_insert_uses_reserved_ids(Fixture::postgres().await).await;
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_and_expire() {
    suite::idempotency_keys_replay_refuse_and_expire(Fixture::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_raced_by_a_hundred_writes_makes_one_order() {
    suite::one_key_raced_by_a_hundred_writes_makes_one_order(Fixture::postgres().await).await;
}

/// Cross-shard pages against an in-memory model. The cases accumulate data
/// in one data set (fresh databases per case would dominate the run time).
#[test]
fn cross_shard_pages_match_the_model() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (fx, store) = rt.block_on(async {
        let fx = Fixture::postgres().await;
        let store = fx.open().await;
        (fx, store)
    });
    let model = Mutex::new(suite::Model::default());
    let case = (
        proptest::collection::vec((0usize..5, 0usize..3), 0..30),
        proptest::option::of(0usize..3),
        proptest::option::of(0usize..200),
        1u32..8,
    )
        .prop_map(|(orders, status, since, limit)| suite::ListingCase {
            orders,
            status,
            since,
            limit,
        });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 10,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&case, |case| {
            let mut model = model.lock().unwrap();
            rt.block_on(suite::check_listing(&fx, &store, &mut model, &case));
            Ok(())
        })
        .unwrap();
    rt.block_on(store.close());
}

// === replicas ===

/// A cluster of its own with the catalog and one shard on it.
async fn own_cluster(replicas: usize) -> (PgCluster, Config, tempfile::TempDir) {
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start(replicas))
        .await
        .unwrap()
        .unwrap();
    cluster.create_database("catalog").await.unwrap();
    cluster.create_database("shard0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    quick_replicas(&mut config);
    config.store.catalog = ReplicaSetConfig::postgres(
        cluster.primary_url("catalog"),
        cluster.replica_urls("catalog"),
    );
    config.store.shards = vec![ReplicaSetConfig::postgres(
        cluster.primary_url("shard0"),
        cluster.replica_urls("shard0"),
    )];
    config.validate().unwrap();
    (cluster, config, dir)
}

fn shard_replica(store: &Store, node: &str) -> ReplicaStatus {
    store
        .replica_status()
        .into_iter()
        .find(|r| r.db == "shard-0" && r.node == node)
        .unwrap()
}

async fn name_of(store: &Store, id: i64, consistency: Consistency) -> String {
    store.get_user(id, consistency).await.unwrap().unwrap().name
}

fn rename(name: &str) -> UserPatch {
    UserPatch {
        name: Some(name.into()),
        email: None,
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

/// With replay paused, a store with a generous lag bound keeps reading the
/// (stale) replica, while read-your-writes tokens go to the primary; a store
/// with a tight bound stops reading the replica once its measured lag passes
/// the bound, exports the lag, and takes the replica back after it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bounds_routing_and_tokens_read_your_writes_with_replay_paused() {
    let metrics = scalestack_telemetry::metrics::install("store-test", "store-test");
    let (cluster, mut config, _dir) = own_cluster(1).await;
    config.store.max_replica_lag = Duration::from_secs(3600);
    let generous = Store::open(&config).await.unwrap();
    let user = generous.create_user(&suite::alice()).await.unwrap();
    let id = user.value.id;
    let renamed = generous.update_user(id, &rename("v1")).await.unwrap();
    cluster.wait_caught_up(0, PATIENCE).await.unwrap();
    config.store.max_replica_lag = Duration::from_secs(1);
    let tight = Store::open(&config).await.unwrap();
    assert!(shard_replica(&tight, "replica-0").usable);

    cluster.pause_replay(0).await.unwrap();
    let written = generous.update_user(id, &rename("v2")).await.unwrap();
    let token = written
        .token
        .expect("a database with replicas hands out tokens");
    assert!(token.lsn > renamed.token.unwrap().lsn);
    generous.check_replicas().await;
    let before = shard_replica(&generous, "replica-0");
    assert!(before.usable, "{before:?}");
    assert!(
        before.replay_lsn < token.lsn,
        "replay is paused: {before:?}"
    );

    // Plain reads may see the replica's older data; the writer's own reads not.
    assert_eq!(name_of(&generous, id, Consistency::Eventual).await, "v1");
    assert_eq!(
        name_of(&generous, id, Consistency::AtLeast(token)).await,
        "v2"
    );
    assert_eq!(name_of(&generous, id, Consistency::Primary).await, "v2");
    let served = shard_replica(&generous, "replica-0").served;

    // The tight store drops the replica once the lag passes 1 s.
    let lagging = eventually(PATIENCE, || async {
        let status = shard_replica(&tight, "replica-0");
        (!status.usable && status.healthy).then_some(status)
    })
    .await
    .expect("the lagging replica leaves the rotation");
    assert!(lagging.lag.unwrap() > Duration::from_secs(1), "{lagging:?}");
    assert_eq!(name_of(&tight, id, Consistency::Eventual).await, "v2");
    let text = metrics.render();
    let lag_line = text
        .lines()
        .find(|l| {
            l.starts_with("scalestack_store_replica_lag_seconds")
                && l.contains("db=\"shard-0\"")
                && l.contains("node=\"replica-0\"")
        })
        .unwrap_or_else(|| panic!("no lag series in\n{text}"));
    let exported: f64 = lag_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(exported > 0.0, "{lag_line}");

    // Once replay resumes the replica catches up: back in the rotation, and
    // it serves the token's read itself.
    cluster.resume_replay(0).await.unwrap();
    cluster.wait_caught_up(0, PATIENCE).await.unwrap();
    eventually(PATIENCE, || async {
        shard_replica(&tight, "replica-0").usable.then_some(())
    })
    .await
    .expect("the replica comes back after catching up");
    assert_eq!(name_of(&tight, id, Consistency::Eventual).await, "v2");
    generous.check_replicas().await;
    assert_eq!(
        name_of(&generous, id, Consistency::AtLeast(token)).await,
        "v2"
    );
    assert!(shard_replica(&generous, "replica-0").served > served);
    generous.close().await;
    tight.close().await;
}

/// Reads spread over both replicas; a replica that stops is dropped at its
/// first failed read (no client sees an error) and taken back when it
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_is_dropped_and_taken_back() {
    let (cluster, mut config, _dir) = own_cluster(2).await;
    config.store.read_policy = ReadPolicy::RoundRobin;
    let store = Store::open(&config).await.unwrap();
    let id = store.create_user(&suite::alice()).await.unwrap().value.id;
    for i in 0..2 {
        cluster.wait_caught_up(i, PATIENCE).await.unwrap();
    }
    store.check_replicas().await;
    let served = |node: &str| shard_replica(&store, node).served;
    let (r0, r1) = (served("replica-0"), served("replica-1"));
    for _ in 0..10 {
        assert_eq!(name_of(&store, id, Consistency::Eventual).await, "Alice");
    }
    assert!(
        served("replica-0") > r0 && served("replica-1") > r1,
        "round robin uses both"
    );

    let replica = &cluster.replicas[0];
    tokio::task::block_in_place(|| replica.stop()).unwrap();
    for _ in 0..20 {
        assert_eq!(
            name_of(&store, id, Consistency::Eventual).await,
            "Alice",
            "reads survive a replica going away"
        );
    }
    eventually(PATIENCE, || async {
        (!shard_replica(&store, "replica-0").healthy).then_some(())
    })
    .await
    .expect("the stopped replica is marked down");
    let r1 = served("replica-1");
    for _ in 0..5 {
        name_of(&store, id, Consistency::Eventual).await;
    }
    assert!(
        served("replica-1") >= r1 + 5,
        "the other replica takes the reads"
    );

    tokio::task::block_in_place(|| replica.start()).unwrap();
    eventually(PATIENCE, || async {
        shard_replica(&store, "replica-0").usable.then_some(())
    })
    .await
    .expect("the restarted replica is taken back");
    let r0 = served("replica-0");
    for _ in 0..10 {
        name_of(&store, id, Consistency::Eventual).await;
    }
    assert!(
        served("replica-0") > r0,
        "the restarted replica serves reads again"
    );
    store.close().await;

    // Least outstanding also reaches both replicas when reads overlap.
    config.store.read_policy = ReadPolicy::LeastOutstanding;
    let store = Store::open(&config).await.unwrap();
    let (r0, r1) = (
        served_of(&store, "replica-0"),
        served_of(&store, "replica-1"),
    );
    let reads: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { name_of(&store, id, Consistency::Eventual).await })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap(), "Alice");
    }
    assert!(served_of(&store, "replica-0") > r0 && served_of(&store, "replica-1") > r1);
    store.close().await;
}

fn served_of(store: &Store, node: &str) -> u64 {
    shard_replica(store, node).served
}
