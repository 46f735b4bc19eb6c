//! The PostgreSQL test cluster itself: replication streams, replay pauses,
//! a replica stops and comes back, and nothing outlives the cluster.

use std::time::Duration;

use scalestack_testkit::postgres::PgCluster;
use sqlx::Connection as _;

async fn count(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_pauses_stops_and_comes_back() {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(1))
        .await
        .unwrap()
        .unwrap();
    let db = PgCluster::unique_name("kit");
    cluster.create_database(&db).await.unwrap();
    let mut primary = cluster.primary.connect(&db).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)")
        .execute(&mut primary)
        .await
        .unwrap();
    cluster
        .wait_caught_up(0, Duration::from_secs(30))
        .await
        .unwrap();
    let mut replica = cluster.replicas[0].connect(&db).await.unwrap();
    assert_eq!(count(&mut replica).await, 1, "the replica streams");

    // With replay paused, the replica keeps showing the old state.
    cluster.pause_replay(0).await.unwrap();
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut primary)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&mut replica).await, 1, "replay is paused");
    cluster.resume_replay(0).await.unwrap();
    cluster
        .wait_caught_up(0, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(count(&mut replica).await, 2, "replay resumed");
    let _ = replica.close().await;

    // A stopped replica refuses connections; restarted, it catches up.
    let replica_server = &cluster.replicas[0];
    tokio::task::block_in_place(|| replica_server.stop()).unwrap();
    assert!(replica_server.connect(&db).await.is_err());
    sqlx::query("INSERT INTO t VALUES (3)")
        .execute(&mut primary)
        .await
        .unwrap();
    tokio::task::block_in_place(|| replica_server.start()).unwrap();
    cluster
        .wait_caught_up(0, Duration::from_secs(30))
        .await
        .unwrap();
    let mut replica = replica_server.connect(&db).await.unwrap();
    assert_eq!(count(&mut replica).await, 3);
    let _ = replica.close().await;
    let _ = primary.close().await;

    let data_dir = cluster.primary.data_dir.clone();
    let port = cluster.primary.port;
    drop(cluster);
    assert!(!data_dir.exists(), "the data directories are removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the primary is stopped"
    );
}
