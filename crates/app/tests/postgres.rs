//! The api over PostgreSQL with 2 shards × (primary + 1 streaming replica):
//! the idempotency race, read-your-writes through the `Consistency-Token`
//! header with replay paused, and the cross-shard listing.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use scalestack_config::{Config, ReplicaSetConfig};
use scalestack_testkit::postgres::PgCluster;
use support::{Api, error_of};

struct Shared {
    a: PgCluster,
    b: PgCluster,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| PgCluster::start(1));
            let b = s.spawn(|| PgCluster::start(1));
            Shared {
                a: a.join().unwrap().expect("start cluster a"),
                b: b.join().unwrap().expect("start cluster b"),
            }
        })
    })
}

fn base_config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.store.replica_check_interval = Duration::from_millis(100);
    config
}

/// An api over fresh databases: catalog and shard 0 on cluster a, shard 1 on b.
async fn api_on_shared(tweak: impl FnOnce(&mut Config)) -> Api {
    let pg = tokio::task::spawn_blocking(shared).await.unwrap();
    let prefix = PgCluster::unique_name("app");
    let (catalog, s0, s1) = (
        format!("{prefix}_catalog"),
        format!("{prefix}_s0"),
        format!("{prefix}_s1"),
    );
    futures::future::try_join3(
        pg.a.create_database(&catalog),
        pg.a.create_database(&s0),
        pg.b.create_database(&s1),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&dir);
    config.store.catalog =
        ReplicaSetConfig::postgres(pg.a.primary_url(&catalog), pg.a.replica_urls(&catalog));
    config.store.shards = vec![
        ReplicaSetConfig::postgres(pg.a.primary_url(&s0), pg.a.replica_urls(&s0)),
        ReplicaSetConfig::postgres(pg.b.primary_url(&s1), pg.b.replica_urls(&s1)),
    ];
    tweak(&mut config);
    config.validate().unwrap();
    Api::on(config, dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_posts_with_one_key_make_one_order() {
    let api = Arc::new(api_on_shared(|_| {}).await);
    let (uid, pid) = api.user_and_product().await;
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let api = api.clone();
            let body = body.clone();
            tokio::spawn(async move {
                api.request(
                    Method::POST,
                    "/orders",
                    Some(&body),
                    &[("idempotency-key", "\"pg-race\"")],
                )
                .await
            })
        })
        .collect();
    let (mut fresh, mut replayed, mut in_flight) = (Vec::new(), 0, 0);
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED if reply.header("idempotent-replayed").is_some() => replayed += 1,
            StatusCode::CREATED => fresh.push(reply.json()),
            StatusCode::CONFLICT => {
                assert_eq!(error_of(&reply.json()).0, "idempotency_key_in_flight");
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {}", reply.json()),
        }
    }
    assert_eq!(fresh.len(), 1, "replayed {replayed}, in flight {in_flight}");
    let reply = api
        .request(
            Method::GET,
            &format!("/users/{uid}/orders"),
            None,
            &[(
                "consistency-token",
                "shard-0:FFFFFFFF/FFFFFFFF, shard-1:FFFFFFFF/FFFFFFFF",
            )],
        )
        .await;
    assert_eq!(
        reply.json()["data"].as_array().unwrap().len(),
        1,
        "{}",
        reply.json()
    );
    let (_, outbox) = api.get("/admin/outbox").await;
    assert_eq!(outbox["data"].as_array().unwrap().len(), 1, "{outbox}");
}

#[tokio::test]
async fn orders_list_across_postgres_shards() {
    let api = api_on_shared(|_| {}).await;
    let mut users = Vec::new();
    for i in 0..6 {
        let (_, u) = api
            .post(
                "/users",
                &format!(r#"{{"email":"u{i}@example.com","name":"U{i}"}}"#),
            )
            .await;
        users.push(u["id"].as_i64().unwrap());
    }
    let (_, p) = api
        .post("/products", r#"{"name":"P","price_cents":5,"stock":1}"#)
        .await;
    let pid = p["id"].as_i64().unwrap();
    let mut expected = Vec::new();
    for i in 0..13 {
        let uid = users[i % users.len()];
        let (s, o) = api
            .post(
                "/orders",
                &format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        // The stored time in milliseconds: the RFC 3339 text does not sort
        // (it drops trailing zeros of the fraction).
        let order = api
            .store
            .get_order(
                o["id"].as_i64().unwrap(),
                scalestack_store::Consistency::Primary,
            )
            .await
            .unwrap()
            .unwrap();
        expected.push((order.created_at, order.id));
    }
    let shards: std::collections::HashSet<usize> = users
        .iter()
        .map(|u| api.store.shard_map().shard_of_user(*u))
        .collect();
    assert_eq!(shards.len(), 2, "the users span both shards");
    expected.sort();
    let expected: Vec<i64> = expected.into_iter().map(|(_, id)| id).collect();
    // The primaries answer reads that carry tokens, so the listing sees
    // every order at once.
    let token = [("consistency-token", "shard-0:0/1")];
    let mut got = Vec::new();
    let mut uri = "/orders?limit=4".to_owned();
    loop {
        let reply = api.request(Method::GET, &uri, None, &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
        let page = reply.json();
        got.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/orders?limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(got, expected);
}

/// With replay paused on the replica, a client that sends back its write's
/// token reads its write; a client without it reads the replica's older data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consistency_token_header_reads_your_writes_with_replay_paused() {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(1))
        .await
        .unwrap()
        .unwrap();
    cluster.create_database("catalog").await.unwrap();
    cluster.create_database("shard0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&dir);
    config.cache.enabled = false;
    config.store.max_replica_lag = Duration::from_secs(3600);
    config.store.catalog = ReplicaSetConfig::postgres(
        cluster.primary_url("catalog"),
        cluster.replica_urls("catalog"),
    );
    config.store.shards = vec![ReplicaSetConfig::postgres(
        cluster.primary_url("shard0"),
        cluster.replica_urls("shard0"),
    )];
    let api = Api::on(config, dir).await;
    let (s, user) = api
        .post("/users", r#"{"email":"a@example.com","name":"Before"}"#)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let uri = format!("/users/{}", user["id"]);
    cluster
        .wait_caught_up(0, Duration::from_secs(20))
        .await
        .unwrap();
    api.store.check_replicas().await;

    cluster.pause_replay(0).await.unwrap();
    let patched = api
        .request(Method::PATCH, &uri, Some(r#"{"name":"After"}"#), &[])
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let token = patched.header("consistency-token").unwrap().to_owned();
    assert!(token.starts_with("shard-0:"), "{token}");

    let mine = api
        .request(Method::GET, &uri, None, &[("consistency-token", &token)])
        .await;
    assert_eq!(mine.json()["name"], "After", "the writer reads its write");
    let others = api.request(Method::GET, &uri, None, &[]).await;
    assert_eq!(
        others.json()["name"],
        "Before",
        "plain reads go to the paused replica"
    );

    cluster.resume_replay(0).await.unwrap();
    cluster
        .wait_caught_up(0, Duration::from_secs(20))
        .await
        .unwrap();
    let caught_up = api.request(Method::GET, &uri, None, &[]).await;
    assert_eq!(caught_up.json()["name"], "After");
    api.store.close().await;
}
