//! The cache tier inside the reference service, through its HTTP API: each
//! write strategy of `users`, `products` and `user_activity`, cached product
//! pages (`responses`) retired by version, negative caching, purges, the admin view with hot keys, the health check under a
//! full TinyLFU L1, and (with a real redis-server, standalone and as a
//! 3-master cluster) the shared L2, its versioned keys and invalidation over
//! Redis pub/sub between two instances; and the write-behind batches and
//! product patches on PostgreSQL.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use scalestack_app::api::{AppState, router};
use scalestack_config::{Config, L2Mode, ReplicaSetConfig, WriteStrategy};
use scalestack_store::{Consistency, UserRecord};
use scalestack_testkit::eventually;
use scalestack_testkit::postgres::PgCluster;
use scalestack_testkit::redis::{RedisCluster, RedisServer};
use serde_json::Value;
use support::{Api, error_of};

async fn create_user(api: &Api, name: &str) -> i64 {
    let (s, v) = api
        .post(
            "/users",
            &format!(r#"{{"email":"{name}@example.com","name":"{name}"}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_i64().unwrap()
}

async fn patch(api: &Api, uri: &str, body: &str) -> (StatusCode, Value) {
    let (s, v, _) = api.call(Method::PATCH, uri, Some(body)).await;
    (s, v)
}

/// The admin view's counters of one resource.
async fn resource_stats(api: &Api, name: &str) -> Value {
    let (s, v) = api.get("/admin/cache").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no resource {name} in {v}"))
}

async fn loads(api: &Api, name: &str) -> u64 {
    resource_stats(api, name).await["loads"].as_u64().unwrap()
}

async fn stored_name(api: &Api, id: i64) -> String {
    api.store
        .get_user(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap()
        .name
}

fn with_users_strategy(strategy: WriteStrategy) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.cache.users.strategy = strategy;
        // Flushes happen when the test asks for one.
        c.cache.write_behind.flush_interval = Duration::from_secs(3600);
    }
}

#[tokio::test]
async fn a_patch_is_read_back_at_once_under_every_strategy() {
    for strategy in [
        WriteStrategy::CacheAside,
        WriteStrategy::WriteThrough,
        WriteStrategy::WriteBehind,
    ] {
        let api = Api::with(with_users_strategy(strategy)).await;
        let id = create_user(&api, "ada").await;
        let (s, v) = api.get(&format!("/users/{id}")).await;
        assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("ada")));
        let before = loads(&api, "users").await;

        let (s, v) = patch(&api, &format!("/users/{id}"), r#"{"name":"Ada L."}"#).await;
        assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("Ada L.")));
        let (s, v) = api.get(&format!("/users/{id}")).await;
        assert_eq!(
            (s, v["name"].as_str()),
            (StatusCode::OK, Some("Ada L.")),
            "{strategy:?}"
        );
        let after = loads(&api, "users").await;
        match strategy {
            WriteStrategy::CacheAside => {
                assert_eq!(after, before + 1, "the patch dropped the entry: one reload");
                assert_eq!(stored_name(&api, id).await, "Ada L.");
            }
            WriteStrategy::WriteThrough => {
                assert_eq!(after, before, "the patch put the new value in the cache");
                assert_eq!(stored_name(&api, id).await, "Ada L.");
            }
            WriteStrategy::WriteBehind => {
                assert_eq!(after, before, "answered from the pending write");
                assert_eq!(stored_name(&api, id).await, "ada", "not flushed yet");
                assert_eq!(resource_stats(&api, "users").await["pending_writes"], 1);
                let (s, v) = api.post("/admin/cache/flush", "").await;
                assert_eq!((s, v["written"].as_u64()), (StatusCode::OK, Some(1)));
                assert_eq!(stored_name(&api, id).await, "Ada L.");
                assert_eq!(resource_stats(&api, "users").await["pending_writes"], 0);
            }
        }
        // A patch of a missing user is a 404 under every strategy.
        let (s, v) = patch(&api, "/users/987654", r#"{"name":"Nobody"}"#).await;
        assert_eq!((s, error_of(&v).0), (StatusCode::NOT_FOUND, "not_found"));
    }
}

#[tokio::test]
async fn write_behind_profiles_never_go_back_in_time() {
    let api = Api::with(with_users_strategy(WriteStrategy::WriteBehind)).await;
    let id = create_user(&api, "grace").await;
    for name in ["G1", "G2", "G3"] {
        let (s, _) = patch(
            &api,
            &format!("/users/{id}"),
            &format!(r#"{{"name":"{name}"}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(
        resource_stats(&api, "users").await["pending_writes"],
        1,
        "coalesced"
    );
    api.post("/admin/cache/flush", "").await;
    let stored = api
        .store
        .get_user(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.name, "G3");
    // A replay of an older profile (a crash between a flush and the log's
    // deletion) is refused by the store: the newer profile stays.
    let older = UserRecord {
        name: "G1".into(),
        updated_at: stored.updated_at - 1,
        ..stored.clone()
    };
    api.store.write_user_profiles(&[older]).await.unwrap();
    assert_eq!(stored_name(&api, id).await, "G3");
}

#[tokio::test]
async fn last_seen_is_written_behind_and_flushed() {
    let api = Api::with(|c| c.cache.write_behind.flush_interval = Duration::from_secs(3600)).await;
    let id = create_user(&api, "lin").await;
    let (s, v) = api.get(&format!("/users/{id}/seen")).await;
    assert_eq!((s, &v["last_seen_at"]), (StatusCode::OK, &Value::Null));

    let (s, seen) = api.post(&format!("/users/{id}/seen"), "").await;
    assert_eq!(s, StatusCode::OK, "{seen}");
    assert!(seen["last_seen_at"].is_string(), "{seen}");
    let (s, v) = api.get(&format!("/users/{id}/seen")).await;
    assert_eq!((s, &v), (StatusCode::OK, &seen), "read back from the log");
    let stored = api
        .store
        .get_user_activity(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.last_seen_at, None,
        "acknowledged before the store has it"
    );

    let (s, v) = api.post("/admin/cache/flush", "").await;
    assert_eq!((s, v["written"].as_u64()), (StatusCode::OK, Some(1)));
    let stored = api
        .store
        .get_user_activity(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    let at = stored.last_seen_at.expect("flushed");
    // At least once: the same batch again, or an older time, changes nothing.
    api.store.record_last_seen(&[(id, at)]).await.unwrap();
    api.store
        .record_last_seen(&[(id, at - 5_000)])
        .await
        .unwrap();
    let again = api
        .store
        .get_user_activity(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.last_seen_at, Some(at));

    let (s, v) = api.post("/users/987654/seen", "").await;
    assert_eq!((s, error_of(&v).0), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = api.get("/users/x/seen").await;
    assert_eq!((s, error_of(&v).1), (StatusCode::BAD_REQUEST, Some("id")));
}

#[tokio::test]
async fn last_seen_can_be_written_straight_through() {
    for strategy in [WriteStrategy::CacheAside, WriteStrategy::WriteThrough] {
        let api = Api::with(|c| c.cache.user_activity.strategy = strategy).await;
        let id = create_user(&api, "kim").await;
        let (s, seen) = api.post(&format!("/users/{id}/seen"), "").await;
        assert_eq!(s, StatusCode::OK, "{seen}");
        let stored = api
            .store
            .get_user_activity(id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored.last_seen_at.is_some(),
            "{strategy:?}: in the store at once"
        );
        let (_, v) = api.get(&format!("/users/{id}/seen")).await;
        assert_eq!(v, seen, "{strategy:?}");
    }
}

#[tokio::test]
async fn a_cached_not_found_is_dropped_by_a_create_and_by_a_purge() {
    let api = Api::start().await;
    let first = create_user(&api, "a").await;
    // The next id does not exist yet; asking for it caches the 404.
    let next = first + 1;
    let (s, _) = api.get(&format!("/users/{next}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(create_user(&api, "b").await, next);
    let (s, v) = api.get(&format!("/users/{next}")).await;
    assert_eq!(
        (s, v["name"].as_str()),
        (StatusCode::OK, Some("b")),
        "the create dropped the 404"
    );

    // A row that appears behind the api's back stays "not found" for the
    // negative TTL: that is the negative cache at work...
    let ids = api.store.reserve_user_ids(1).await.unwrap();
    let (s, _) = api.get(&format!("/users/{}", ids.start)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.store
        .insert_users(&[UserRecord {
            id: ids.start,
            email: "c@example.com".into(),
            name: "c".into(),
            created_at: 1,
            updated_at: 1,
        }])
        .await
        .unwrap();
    let (s, _) = api.get(&format!("/users/{}", ids.start)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "served from the negative cache");
    // ...until an operator purges it.
    let (s, v) = api
        .post(
            "/admin/cache/purge",
            &format!(r#"{{"prefix":"users:{}"}}"#, ids.start),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["prefix"], format!("users:{}", ids.start));
    let (s, v) = api.get(&format!("/users/{}", ids.start)).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("c")));
}

#[tokio::test]
async fn purges_name_a_bad_prefix() {
    let api = Api::start().await;
    for body in [
        r#"{"prefix":"nope"}"#,
        r#"{"prefix":"users:4x"}"#,
        r#"{}"#,
        r#"{"prefix":"users","extra":1}"#,
    ] {
        let (s, v) = api.post("/admin/cache/purge", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (_, v) = api.post("/admin/cache/purge", r#"{"prefix":"nope"}"#).await;
    assert_eq!(error_of(&v).1, Some("prefix"));
    for prefix in ["", "users", "products:1", "user_activity"] {
        let (s, v) = api
            .post("/admin/cache/purge", &format!(r#"{{"prefix":"{prefix}"}}"#))
            .await;
        assert_eq!(s, StatusCode::OK, "{prefix}: {v}");
    }
}

#[tokio::test]
async fn the_hottest_key_is_listed_first() {
    let api = Api::start().await;
    let hot = create_user(&api, "celebrity").await;
    let cold = create_user(&api, "someone").await;
    for i in 0..60 {
        api.get(&format!("/users/{hot}")).await;
        if i % 10 == 0 {
            api.get(&format!("/users/{cold}")).await;
        }
    }
    let (s, v) = api.get("/admin/cache?limit=2").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let keys = v["hot_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{v}");
    assert_eq!(keys[0]["key"], format!("users:{hot}"));
    assert!(
        keys[0]["requests"].as_u64() > keys[1]["requests"].as_u64(),
        "{v}"
    );
    assert_eq!(v["l2"], Value::Null);
    assert_eq!(v["invalidation_transport"], "off");
    let users = resource_stats(&api, "users").await;
    assert_eq!(users["strategy"], "cache_aside");
    assert!(users["hit_ratio"].as_f64().unwrap() > 0.9, "{users}");

    let (s, v) = api.get("/admin/cache?limit=many").await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("limit"))
    );
}

#[tokio::test]
async fn health_stays_ok_while_tiny_lfu_refuses_newcomers() {
    // The smallest L1 allowed, full of keys read over and over: TinyLFU
    // admits few newcomers, which must not make the instance look unhealthy.
    let api = Api::with(|c| c.cache.l1_max_bytes = 1024).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(create_user(&api, &format!("u{i}")).await);
    }
    for _ in 0..50 {
        for id in &ids {
            api.get(&format!("/users/{id}")).await;
        }
    }
    // Between checks, a stream of one-off misses keeps moka's write log
    // busy, so that its housekeeping (where admission is decided) runs
    // inside the cache calls that a read-back probe would make.
    let mut missing = 1_000_000;
    for _ in 0..30 {
        for _ in 0..50 {
            missing += 1;
            api.get(&format!("/users/{missing}")).await;
        }
        let (s, report) = api.get("/health").await;
        assert_eq!(s, StatusCode::OK, "{report}");
    }
    // With the L1 off (the "L2 only" set-up), nothing is ever admitted.
    let api = Api::with(|c| c.cache.l1_max_bytes = 0).await;
    let (s, report) = api.get("/health").await;
    assert_eq!(s, StatusCode::OK, "{report}");
}

#[tokio::test]
async fn products_patch_by_strategy_and_orders_see_the_new_price() {
    for strategy in [WriteStrategy::CacheAside, WriteStrategy::WriteThrough] {
        let api = Api::with(|c| c.cache.products.strategy = strategy).await;
        let (uid, pid) = api.user_and_product().await;
        let (s, v) = api.get(&format!("/products/{pid}")).await;
        assert_eq!((s, v["price_cents"].as_i64()), (StatusCode::OK, Some(250)));
        let before = loads(&api, "products").await;
        let (s, v) = patch(&api, &format!("/products/{pid}"), r#"{"price_cents":300}"#).await;
        assert_eq!(
            (s, v["price_cents"].as_i64()),
            (StatusCode::OK, Some(300)),
            "{v}"
        );
        let (s, order) = api
            .post(
                "/orders",
                &format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":2}}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        assert_eq!(
            order["total_cents"], 600,
            "{strategy:?}: the order saw the new price"
        );
        let reloads = loads(&api, "products").await - before;
        match strategy {
            WriteStrategy::WriteThrough => assert_eq!(reloads, 0),
            _ => assert_eq!(reloads, 1),
        }
    }

    let api = Api::start().await;
    let (_, pid) = api.user_and_product().await;
    for (body, code, field) in [
        ("{}", "empty_patch", None),
        (
            r#"{"price_cents":-1}"#,
            "invalid_field",
            Some("price_cents"),
        ),
        (r#"{"stock":"many"}"#, "invalid_field", Some("stock")),
        (r#"{"name":""}"#, "invalid_field", Some("name")),
        (r#"{"colour":"red"}"#, "invalid_field", Some("colour")),
    ] {
        let (s, v) = patch(&api, &format!("/products/{pid}"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(error_of(&v).1, field, "{body}: {v}");
        if field.is_none() {
            assert_eq!(error_of(&v).0, code);
        }
    }
    let (s, _) = patch(&api, "/products/987654", r#"{"stock":1}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn product_pages_are_cached_responses_retired_by_any_product_write() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, v) = api
            .post(
                "/products",
                &format!(r#"{{"name":"p{i}","price_cents":100,"stock":5}}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    let (s, first) = api.get("/products?limit=2").await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (_, again) = api.get("/products?limit=2").await;
    assert_eq!(first, again);
    let pages = resource_stats(&api, "responses").await;
    assert_eq!(
        (pages["loads"].as_u64(), pages["l1_hits"].as_u64()),
        (Some(1), Some(1)),
        "the second read was a cached response: {pages}"
    );
    assert_eq!(
        pages["ttl_s"], 60,
        "the seeds' one minute for API responses"
    );

    // A change behind the api's back (as the worker's stock updates are)
    // shows only when the page expires...
    api.store
        .update_product(
            ids[0],
            &scalestack_store::ProductPatch {
                stock: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, cached) = api.get("/products?limit=2").await;
    assert_eq!(cached["data"][0]["stock"], 5, "served from the cache");
    // ...but any product write through the api retires every page at once.
    let (s, _) = patch(
        &api,
        &format!("/products/{}", ids[1]),
        r#"{"name":"renamed"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, fresh) = api.get("/products?limit=2").await;
    assert_eq!(
        (&fresh["data"][0]["stock"], &fresh["data"][1]["name"]),
        (&Value::from(1), &Value::from("renamed"))
    );
    let cursor = fresh["next_cursor"].as_str().unwrap().to_owned();
    let (_, last) = api.get(&format!("/products?limit=2&cursor={cursor}")).await;
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert!(last["next_cursor"].is_null(), "{last}");
    // A create, too: the cached last page does not hide the new product.
    let (s, _) = api
        .post("/products", r#"{"name":"p3","price_cents":1,"stock":1}"#)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, last) = api.get(&format!("/products?limit=2&cursor={cursor}")).await;
    assert_eq!(last["data"].as_array().unwrap().len(), 2, "{last}");

    // An operator can purge the pages alone.
    let (s, v) = api
        .post("/admin/cache/purge", r#"{"prefix":"responses:products"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = loads(&api, "responses").await;
    api.get("/products?limit=2").await;
    assert_eq!(loads(&api, "responses").await, before + 1);
}

#[tokio::test]
async fn without_a_cache_every_strategy_writes_the_store() {
    let api = Api::with(|c| c.cache.enabled = false).await;
    let id = create_user(&api, "plain").await;
    let (s, _) = api.post(&format!("/users/{id}/seen"), "").await;
    assert_eq!(s, StatusCode::OK);
    let stored = api
        .store
        .get_user_activity(id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.last_seen_at.is_some(),
        "no cache, nothing written behind"
    );
    let (s, v) = api.get("/admin/cache").await;
    assert_eq!((s, &v["enabled"]), (StatusCode::OK, &Value::Bool(false)));
}

// === with a real Redis ===

/// A second api instance over `api`'s store and config (its own L1 and
/// write-behind log; the same L2).
async fn second_instance(api: &Api, config: &Config, name: &str) -> axum::Router {
    let state = AppState::new(config, api.store.clone(), name)
        .await
        .unwrap();
    router(state)
}

async fn get_on(router: &axum::Router, uri: &str) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn stats_on(router: &axum::Router, name: &str) -> Value {
    let (_, v) = get_on(router, "/admin/cache").await;
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_l2_and_invalidate_each_other_over_redis() {
    let redis = RedisServer::shared().unwrap();
    share_and_invalidate(L2Mode::Standalone, vec![redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holds_on_a_redis_cluster_of_three_masters() {
    let cluster = RedisCluster::start(3).unwrap();
    share_and_invalidate(L2Mode::Cluster, cluster.urls()).await;
}

/// Two (then three) api instances over one store and one L2: the L2 is
/// shared, a patch reaches the other instance's L1 over pub/sub, a version
/// bump hides older entries, and a purge through one instance empties the
/// L2 (every version) and the other's L1.
async fn share_and_invalidate(mode: L2Mode, urls: Vec<String>) {
    let namespace = format!("app{:08x}", rand_u32());
    let tweak = |c: &mut Config| {
        c.cache.namespace = namespace.clone();
        c.cache.l2.mode = mode;
        c.cache.l2.urls = urls.clone();
        c.cache.l2.timeout = Duration::from_secs(1);
        c.cache.invalidation.heartbeat = Duration::from_millis(200);
    };
    let a = Api::with(tweak).await;
    let b = second_instance(&a, &a.config, "api-b").await;
    let id = create_user(&a, "hedy").await;

    // A loads from the store and fills the L2; B finds it there.
    let (s, _) = a.get(&format!("/users/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = get_on(&b, &format!("/users/{id}")).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("hedy")));
    let users_b = stats_on(&b, "users").await;
    assert_eq!(
        (users_b["l2_hits"].as_u64(), users_b["loads"].as_u64()),
        (Some(1), Some(0))
    );

    // A patch through A reaches B's L1 over Redis pub/sub.
    let (s, _) = patch(&a, &format!("/users/{id}"), r#"{"name":"Hedy L."}"#).await;
    assert_eq!(s, StatusCode::OK);
    let seen = eventually(Duration::from_secs(10), || async {
        let (_, v) = get_on(&b, &format!("/users/{id}")).await;
        (v["name"] == "Hedy L.").then_some(())
    })
    .await;
    assert!(seen.is_some(), "instance B never saw the patch");
    let (_, status) = get_on(&b, "/admin/cache").await;
    assert_eq!(status["invalidation_transport"], "redis");

    // A product written through A retires the pages B had cached.
    let (_, pid) = a.user_and_product().await;
    let (s, page) = get_on(&b, "/products").await;
    assert_eq!(
        (s, &page["data"][0]["price_cents"]),
        (StatusCode::OK, &Value::from(250))
    );
    let (s, _) = patch(&a, &format!("/products/{pid}"), r#"{"price_cents":260}"#).await;
    assert_eq!(s, StatusCode::OK);
    let repriced = eventually(Duration::from_secs(10), || async {
        let (_, page) = get_on(&b, "/products").await;
        (page["data"][0]["price_cents"] == 260).then_some(())
    })
    .await;
    assert!(repriced.is_some(), "instance B kept serving a retired page");
    assert_eq!(status["l2"]["breaker"], "closed");

    // Raising the resource's version makes older entries unreachable: an
    // instance on version 2 loads from the store instead of reading v1.
    let mut v2 = a.config.clone();
    v2.cache.users.version = 2;
    let c = second_instance(&a, &v2, "api-c").await;
    let (s, _) = get_on(&c, &format!("/users/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    let users_c = stats_on(&c, "users").await;
    assert_eq!(
        (users_c["l2_hits"].as_u64(), users_c["loads"].as_u64()),
        (Some(0), Some(1))
    );

    // A purge through B empties A's L1 and the L2 of every version.
    let (s, v) = {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let request = axum::http::Request::post("/admin/cache/purge")
            .body(axum::body::Body::from(r#"{"prefix":"users"}"#))
            .unwrap();
        let response = b.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["l2_keys"].as_u64().unwrap() >= 2,
        "v1 and v2 entries: {v}"
    );
    let reloaded = eventually(Duration::from_secs(10), || async {
        let before = loads(&a, "users").await;
        a.get(&format!("/users/{id}")).await;
        (loads(&a, "users").await > before).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "A's L1 was not purged");
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(7)
}

// === on PostgreSQL ===

/// The batch writes behind the cache (profiles, last-seen times) and product
/// patches on PostgreSQL, with two shards, so that each batch is split by
/// shard: everything acknowledged reaches the rows, and replays of older
/// values change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_batches_and_product_patches_reach_postgres() {
    let pg = tokio::task::spawn_blocking(|| PgCluster::start(0))
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let prefix = PgCluster::unique_name("cache");
    let (catalog, s0, s1) = (
        format!("{prefix}_catalog"),
        format!("{prefix}_s0"),
        format!("{prefix}_s1"),
    );
    for db in [&catalog, &s0, &s1] {
        pg.create_database(db).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.store.catalog = ReplicaSetConfig::postgres(pg.primary_url(&catalog), vec![]);
    config.store.shards = vec![
        ReplicaSetConfig::postgres(pg.primary_url(&s0), vec![]),
        ReplicaSetConfig::postgres(pg.primary_url(&s1), vec![]),
    ];
    with_users_strategy(WriteStrategy::WriteBehind)(&mut config);
    config.validate().unwrap();
    let api = Api::on(config, dir).await;

    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(create_user(&api, &format!("pg{i}")).await);
    }
    let shards: std::collections::HashSet<_> = ids
        .iter()
        .map(|id| api.store.shard_map().shard_of_user(*id))
        .collect();
    assert_eq!(shards.len(), 2, "the users span both shards: {ids:?}");
    let mut seen = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (s, v) = patch(
            &api,
            &format!("/users/{id}"),
            &format!(r#"{{"name":"P{i}"}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = api.post(&format!("/users/{id}/seen"), "").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        seen.push(v["last_seen_at"].clone());
    }
    assert_eq!(stored_name(&api, ids[0]).await, "pg0", "not flushed yet");
    let (s, v) = api.post("/admin/cache/flush", "").await;
    assert_eq!(
        (s, v["written"].as_u64()),
        (StatusCode::OK, Some(16)),
        "{v}"
    );
    for (i, id) in ids.iter().enumerate() {
        let row = api
            .store
            .get_user(*id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.name, format!("P{i}"));
        let activity = api
            .store
            .get_user_activity(*id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        let at = activity.last_seen_at.expect("flushed");
        // Replays of older values (at least once, any order) change nothing.
        api.store
            .write_user_profiles(&[UserRecord {
                name: "old".into(),
                updated_at: row.updated_at - 1,
                ..row.clone()
            }])
            .await
            .unwrap();
        api.store.record_last_seen(&[(*id, at - 1)]).await.unwrap();
        assert_eq!(stored_name(&api, *id).await, format!("P{i}"));
        let again = api
            .store
            .get_user_activity(*id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.last_seen_at, Some(at));
        let (_, v) = api.get(&format!("/users/{id}/seen")).await;
        assert_eq!(v["last_seen_at"], seen[i]);
    }

    let (_, pid) = api.user_and_product().await;
    let (s, v) = patch(&api, &format!("/products/{pid}"), r#"{"price_cents":300}"#).await;
    assert_eq!((s, v["price_cents"].as_i64()), (StatusCode::OK, Some(300)));
    let (s, v) = api.get(&format!("/products/{pid}")).await;
    assert_eq!((s, v["price_cents"].as_i64()), (StatusCode::OK, Some(300)));
    let (s, _) = patch(&api, "/products/987654", r#"{"stock":1}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
