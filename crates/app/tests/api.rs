//! The api router in process, over a real SQLite store in a temporary directory.

mod support;

use axum::http::{Method, StatusCode, header};
use scalestack_store::{Store, UserPatch};
use serde_json::{Value, json};
use support::{Api, error_of};

#[tokio::test]
async fn users_can_be_created_read_projected_and_patched() {
    let api = Api::start().await;
    let (status, user, headers) = api
        .call(
            Method::POST,
            "/users",
            Some(r#"{"email":"ada@example.com","name":"Ada"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let id = user["id"].as_i64().unwrap();
    assert_eq!(headers[header::LOCATION], format!("/users/{id}"));
    assert_eq!(user["email"], "ada@example.com");
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, got) = api.get(&format!("/users/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, user);

    let (status, projected) = api.get(&format!("/users/{id}?fields=name,id")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(projected, json!({"id": id, "name": "Ada"}));

    let (status, _, _) = api
        .call(
            Method::PATCH,
            &format!("/users/{id}"),
            Some(r#"{"name":"Ada L."}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = api.get(&format!("/users/{id}")).await;
    assert_eq!(
        got["name"], "Ada L.",
        "the write invalidated the cached entry"
    );
    assert_eq!(got["email"], "ada@example.com");
}

#[tokio::test]
async fn reads_are_served_from_the_cache_until_a_write_through_the_api() {
    let api = Api::start().await;
    let (_, user) = api
        .post("/users", r#"{"email":"b@example.com","name":"Before"}"#)
        .await;
    let id = user["id"].as_i64().unwrap();
    assert_eq!(api.get(&format!("/users/{id}")).await.1["name"], "Before");

    // A change behind the api's back (another process) is not seen until the
    // entry expires or this instance writes: the cache is really answering.
    let other = Store::open(&api.config).await.unwrap();
    other
        .update_user(
            id,
            &UserPatch {
                name: Some("Behind".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(api.get(&format!("/users/{id}")).await.1["name"], "Before");

    api.call(
        Method::PATCH,
        &format!("/users/{id}"),
        Some(r#"{"email":"c@example.com"}"#),
    )
    .await;
    let (_, got) = api.get(&format!("/users/{id}")).await;
    assert_eq!(
        (got["name"].as_str(), got["email"].as_str()),
        (Some("Behind"), Some("c@example.com"))
    );
}

#[tokio::test]
async fn a_disabled_cache_reads_through() {
    let api = Api::with(|c| c.cache.enabled = false).await;
    let (_, user) = api
        .post("/users", r#"{"email":"b@example.com","name":"Before"}"#)
        .await;
    let id = user["id"].as_i64().unwrap();
    api.get(&format!("/users/{id}")).await;
    api.store
        .update_user(
            id,
            &UserPatch {
                name: Some("After".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(api.get(&format!("/users/{id}")).await.1["name"], "After");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem() {
    let api = Api::start().await;
    let cases: &[(&str, &str, StatusCode, &str, Option<&str>)] = &[
        (
            "/users",
            "{",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            "/users",
            "",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            "/users",
            r#"{"name":"x"}"#,
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some("email"),
        ),
        (
            "/users",
            r#"{"email":5,"name":"x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("email"),
        ),
        (
            "/users",
            r#"{"email":"a@b","name":"x","age":3}"#,
            StatusCode::BAD_REQUEST,
            "unknown_field",
            Some("age"),
        ),
        (
            "/users",
            r#"{"email":"nope","name":"x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("email"),
        ),
        (
            "/users",
            r#"{"email":"a@b","name":"  "}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            "/products",
            r#"{"name":"p","price_cents":-1,"stock":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("price_cents"),
        ),
        (
            "/products",
            r#"{"name":"p","price_cents":"9","stock":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("price_cents"),
        ),
        (
            "/orders",
            r#"{"user_id":1,"product_id":1,"quantity":0}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("quantity"),
        ),
        (
            "/orders",
            r#"{"user_id":1,"product_id":1,"quantity":2.5}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("quantity"),
        ),
        (
            "/orders",
            r#"{"user_id":1,"product_id":1}"#,
            StatusCode::BAD_REQUEST,
            "missing_field",
            Some("quantity"),
        ),
    ];
    for (uri, body, status, code, field) in cases {
        let (got_status, v) = api.post(uri, body).await;
        assert_eq!(got_status, *status, "POST {uri} {body}: {v}");
        assert_eq!(error_of(&v), (*code, *field), "POST {uri} {body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }

    let gets: &[(&str, StatusCode, &str, Option<&str>)] = &[
        (
            "/users/abc",
            StatusCode::BAD_REQUEST,
            "invalid_path",
            Some("id"),
        ),
        ("/users/999", StatusCode::NOT_FOUND, "not_found", None),
        ("/users/0", StatusCode::NOT_FOUND, "not_found", None),
        (
            "/users/1?fields=id,shoe_size,age",
            StatusCode::BAD_REQUEST,
            "unknown_fields",
            Some("fields"),
        ),
        (
            "/users/1?sort=asc",
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            Some("sort"),
        ),
        (
            "/products?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("limit"),
        ),
        (
            "/products?cursor=garbage",
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("cursor"),
        ),
        ("/orders/12", StatusCode::NOT_FOUND, "not_found", None),
        ("/nowhere", StatusCode::NOT_FOUND, "not_found", None),
    ];
    for (uri, status, code, field) in gets {
        let (got_status, v) = api.get(uri).await;
        assert_eq!(got_status, *status, "GET {uri}: {v}");
        assert_eq!(error_of(&v), (*code, *field), "GET {uri}: {v}");
    }
    let (s, v) = api.get("/users/1?fields=id,shoe_size,age").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("age, shoe_size"),
        "{v}"
    );

    let (status, v, _) = api.call(Method::DELETE, "/users/1", None).await;
    assert_eq!(
        (status, error_of(&v).0),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (status, v, _) = api.call(Method::PATCH, "/users/1", Some("{}")).await;
    assert_eq!(
        (status, error_of(&v).0),
        (StatusCode::BAD_REQUEST, "empty_patch")
    );
    let (status, v, _) = api
        .call(Method::PATCH, "/users/77", Some(r#"{"name":"x"}"#))
        .await;
    assert_eq!(
        (status, error_of(&v).0),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let api = Api::with(|c| c.api.max_request_body = 100).await;
    let body = format!(
        r#"{{"email":"a@example.com","name":"{}"}}"#,
        "x".repeat(200)
    );
    let (status, v) = api.post("/users", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(error_of(&v).0, "payload_too_large");
}

#[tokio::test]
async fn products_page_with_cursors() {
    let api = Api::with(|c| {
        c.api.default_page_limit = 2;
        c.api.max_page_limit = 3;
    })
    .await;
    for i in 0..7 {
        let (s, v) = api
            .post(
                "/products",
                &format!(r#"{{"name":"p{i}","price_cents":{},"stock":5}}"#, 100 + i),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (_, first) = api.get("/products").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2, "default limit");

    let mut names = Vec::new();
    let mut uri = "/products?limit=50&fields=name".to_owned();
    loop {
        let (s, page) = api.get(&uri).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3, "limit is capped at max_page_limit");
        names.extend(data.iter().map(|p| {
            assert_eq!(p.as_object().unwrap().len(), 1, "only the requested field");
            p["name"].as_str().unwrap().to_owned()
        }));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/products?limit=50&fields=name&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());

    let (s, p) = api.get("/products/3?fields=price_cents").await;
    assert_eq!((s, p), (StatusCode::OK, json!({"price_cents": 102})));
}

#[tokio::test]
async fn orders_are_validated_placed_and_listed() {
    let api = Api::start().await;
    let (_, user) = api
        .post("/users", r#"{"email":"o@example.com","name":"O"}"#)
        .await;
    let uid = user["id"].as_i64().unwrap();
    let (_, product) = api
        .post(
            "/products",
            r#"{"name":"Widget","price_cents":250,"stock":10}"#,
        )
        .await;
    let pid = product["id"].as_i64().unwrap();

    let (s, v) = api
        .post(
            "/orders",
            &format!(r#"{{"user_id":999,"product_id":{pid},"quantity":1}}"#),
        )
        .await;
    assert_eq!(
        (s, error_of(&v)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("unknown_reference", Some("user_id"))
        )
    );
    let (s, v) = api
        .post(
            "/orders",
            &format!(r#"{{"user_id":{uid},"product_id":999,"quantity":1}}"#),
        )
        .await;
    assert_eq!(
        (s, error_of(&v)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("unknown_reference", Some("product_id"))
        )
    );

    let mut ids = Vec::new();
    for q in 1..=3 {
        let (s, order, headers) = api
            .call(
                Method::POST,
                "/orders",
                Some(&format!(
                    r#"{{"user_id":{uid},"product_id":{pid},"quantity":{q}}}"#
                )),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        assert_eq!(order["total_cents"], 250 * q);
        assert_eq!(order["status"], "placed");
        let id = order["id"].as_i64().unwrap();
        assert_eq!(headers[header::LOCATION], format!("/orders/{id}"));
        assert_eq!(api.get(&format!("/orders/{id}")).await.1, order);
        ids.push(id);
    }
    let (s, o) = api
        .get(&format!("/orders/{}?fields=quantity", ids[1]))
        .await;
    assert_eq!((s, o), (StatusCode::OK, json!({"quantity": 2})));

    let (_, page) = api
        .get(&format!("/users/{uid}/orders?limit=2&fields=id"))
        .await;
    let got: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = api
        .get(&format!("/users/{uid}/orders?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page["data"][0]["id"].as_i64(), Some(ids[0]));
    assert!(page["next_cursor"].is_null());

    let (s, _) = api.get("/users/424242/orders").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A product cursor is refused by an order list.
    let (_, products) = api.get("/products?limit=1").await;
    let _ = products;
    let product_cursor = {
        api.post("/products", r#"{"name":"Other","price_cents":1,"stock":1}"#)
            .await;
        let (_, page) = api.get("/products?limit=1").await;
        page["next_cursor"].as_str().unwrap().to_owned()
    };
    let (s, v) = api
        .get(&format!("/users/{uid}/orders?cursor={product_cursor}"))
        .await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("cursor"))
    );
}

#[tokio::test]
async fn health_is_deep_and_metrics_are_prometheus_text() {
    let api = Api::start().await;
    let (s, report) = api.get("/health").await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "ok");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "store.catalog",
            "store.shard-0",
            "store.shard-1",
            "store.shard-2",
            "store.shard-3",
            "cache"
        ]
    );

    let (s, text) = api.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap().to_owned();
    assert!(text.contains("scalestack_store_queries_total"), "{text}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");

    // With the databases gone, health fails with 503.
    api.store.close().await;
    let (s, report) = api.get("/health").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{report}");
    assert_eq!(report["status"], "fail");
    assert!(report["checks"][0]["error"].as_str().is_some());
}

// === idempotency ===

async fn post_order(api: &Api, body: &str, key: Option<&str>) -> support::Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    api.request(Method::POST, "/orders", Some(body), &headers)
        .await
}

#[tokio::test]
async fn an_idempotency_key_replays_refuses_and_is_validated() {
    let api = Api::start().await;
    let (uid, pid) = api.user_and_product().await;
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":2}}"#);

    let first = post_order(&api, &body, Some("\"order-1\"")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json());
    assert_eq!(first.header("idempotent-replayed"), None);
    let location = first.header("location").unwrap().to_owned();

    // The same key and body, even formatted differently: the same response.
    let spaced = format!(r#"{{ "quantity": 2, "product_id": {pid}, "user_id": {uid} }}"#);
    let again = post_order(&api, &spaced, Some("order-1")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("location"), Some(location.as_str()));
    assert_eq!(again.json(), first.json());

    // The same key with another body is refused, and nothing is written.
    let other = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":3}}"#);
    let reused = post_order(&api, &other, Some("order-1")).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_of(&reused.json()),
        ("idempotency_key_reused", Some("Idempotency-Key"))
    );

    for bad in ["a b", "\"open", "\"\"", &"k".repeat(300)] {
        let reply = post_order(&api, &body, Some(bad)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            error_of(&reply.json()),
            ("invalid_idempotency_key", Some("Idempotency-Key")),
            "{bad}"
        );
    }

    // A refused request is not recorded: fixed, it goes through with its key.
    let missing = format!(r#"{{"user_id":{uid},"product_id":999,"quantity":1}}"#);
    let refused = post_order(&api, &missing, Some("order-2")).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fixed = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#);
    let placed = post_order(&api, &fixed, Some("order-2")).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.json());
    assert_eq!(placed.header("idempotent-replayed"), None);

    let (_, orders) = api.get(&format!("/users/{uid}/orders")).await;
    assert_eq!(orders["data"].as_array().unwrap().len(), 2, "{orders}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_posts_with_one_key_make_one_order() {
    let api = std::sync::Arc::new(Api::start().await);
    let (uid, pid) = api.user_and_product().await;
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let api = api.clone();
            let body = body.clone();
            tokio::spawn(async move { post_order(&api, &body, Some("race")).await })
        })
        .collect();
    let mut fresh = Vec::new();
    let mut replayed = Vec::new();
    let mut in_flight = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED if reply.header("idempotent-replayed").is_some() => {
                replayed.push(reply.json())
            }
            StatusCode::CREATED => fresh.push(reply.json()),
            StatusCode::CONFLICT => {
                assert_eq!(error_of(&reply.json()).0, "idempotency_key_in_flight");
                assert!(reply.header("retry-after").is_some());
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {}", reply.json()),
        }
    }
    assert_eq!(
        fresh.len(),
        1,
        "replayed {}, in flight {in_flight}",
        replayed.len()
    );
    assert!(replayed.iter().all(|r| *r == fresh[0]));
    let (_, orders) = api.get(&format!("/users/{uid}/orders")).await;
    assert_eq!(orders["data"].as_array().unwrap().len(), 1, "{orders}");
    let (_, outbox) = api.get("/admin/outbox").await;
    assert_eq!(outbox["data"].as_array().unwrap().len(), 1, "{outbox}");
}

// === cross-shard listing and the outbox ===

#[tokio::test]
async fn orders_list_across_shards_with_filters_and_cursors() {
    let api = Api::with(|c| c.api.max_page_limit = 4).await;
    let mut users = Vec::new();
    for i in 0..4 {
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
    let mut orders = Vec::new();
    for i in 0..11 {
        let uid = users[i % users.len()];
        let (s, o) = api
            .post(
                "/orders",
                &format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        let mut id = o["id"].as_i64().unwrap();
        if i % 3 == 0 {
            let paid = api
                .store
                .set_order_status(id, "paid")
                .await
                .unwrap()
                .value
                .unwrap();
            id = paid.id;
        }
        orders.push(
            api.store
                .get_order(id, Default::default())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let shards: std::collections::HashSet<usize> = users
        .iter()
        .map(|u| api.store.shard_map().shard_of_user(*u))
        .collect();
    assert!(shards.len() > 1, "the users span shards");
    orders.sort_by_key(|o| (o.created_at, o.id));

    let walk = |query: &'static str| {
        let api = &api;
        async move {
            let mut ids = Vec::new();
            let mut uri = format!("/orders?{query}");
            loop {
                let (s, page) = api.get(&uri).await;
                assert_eq!(s, StatusCode::OK, "{page}");
                let data = page["data"].as_array().unwrap();
                assert!(data.len() <= 4, "the limit is capped");
                ids.extend(data.iter().map(|o| o["id"].as_i64().unwrap()));
                match page["next_cursor"].as_str() {
                    Some(c) => uri = format!("/orders?{query}&cursor={c}"),
                    None => break ids,
                }
            }
        }
    };
    let all: Vec<i64> = orders.iter().map(|o| o.id).collect();
    assert_eq!(walk("limit=50").await, all);
    assert_eq!(walk("limit=3&fields=id").await, all);
    let paid: Vec<i64> = orders
        .iter()
        .filter(|o| o.status == "paid")
        .map(|o| o.id)
        .collect();
    assert_eq!(walk("status=paid&limit=2").await, paid);
    assert_eq!(walk("status=shipped").await, Vec::<i64>::new());
    let future = "since=2999-01-01T00:00:00Z";
    assert_eq!(walk(future).await, Vec::<i64>::new());
    assert_eq!(walk("since=2000-01-01T00:00:00%2B02:00&limit=4").await, all);

    let (_, page) = api.get("/orders?limit=2").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (s, v) = api
        .get(&format!("/orders?limit=2&status=paid&cursor={cursor}"))
        .await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("cursor")),
        "{v}"
    );
    for (query, field) in [
        ("status=PAID", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
        ("sort=id", "sort"),
    ] {
        let (s, v) = api.get(&format!("/orders?{query}")).await;
        assert_eq!(
            (s, error_of(&v).1),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{query}: {v}"
        );
    }
}

#[tokio::test]
async fn the_outbox_is_visible_to_operators_across_shards() {
    let api = Api::start().await;
    let (uid, pid) = api.user_and_product().await;
    let (_, other) = api
        .post("/users", r#"{"email":"x@example.com","name":"X"}"#)
        .await;
    let uid2 = other["id"].as_i64().unwrap();
    let mut placed = Vec::new();
    for i in 0..5 {
        let user = if i % 2 == 0 { uid } else { uid2 };
        let (_, o) = api
            .post(
                "/orders",
                &format!(r#"{{"user_id":{user},"product_id":{pid},"quantity":1}}"#),
            )
            .await;
        placed.push(o["id"].as_i64().unwrap());
    }
    let mut seen = Vec::new();
    let mut uri = "/admin/outbox?limit=2".to_owned();
    loop {
        let (s, page) = api.get(&uri).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for row in page["data"].as_array().unwrap() {
            assert_eq!(row["topic"], "orders");
            assert!(row["sent_at"].is_null());
            assert_eq!(row["payload"]["type"], "order.placed");
            seen.push(row["payload"]["order"]["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/admin/outbox?limit=2&cursor={c}"),
            None => break,
        }
    }
    seen.sort_unstable();
    placed.sort_unstable();
    assert_eq!(seen, placed);
    let (s, v) = api.get("/admin/outbox?unsent=maybe").await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("unsent"))
    );
    let (_, page) = api.get("/admin/outbox?limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (s, v) = api
        .get(&format!("/admin/outbox?unsent=false&cursor={cursor}"))
        .await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("cursor"))
    );
}

// === representation ===

#[tokio::test]
async fn gets_carry_etags_and_answer_if_none_match_with_304() {
    let api = Api::start().await;
    let (uid, _) = api.user_and_product().await;
    let uri = format!("/users/{uid}");
    let first = api.request(Method::GET, &uri, None, &[]).await;
    let etag = first.header("etag").unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(first.header("cache-control"), Some("no-cache"));

    let same = api
        .request(Method::GET, &uri, None, &[("if-none-match", &etag)])
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(same.header("etag"), Some(etag.as_str()));

    // A projection is another representation with another tag.
    let projected = api
        .request(
            Method::GET,
            &format!("{uri}?fields=id"),
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(projected.status, StatusCode::OK);
    assert_ne!(projected.header("etag"), Some(etag.as_str()));

    // After a change the old tag no longer matches.
    api.call(Method::PATCH, &uri, Some(r#"{"name":"New"}"#))
        .await;
    let changed = api
        .request(Method::GET, &uri, None, &[("if-none-match", &etag)])
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.json()["name"], "New");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));

    // Lists are tagged too; errors and writes are not.
    let list = api.request(Method::GET, "/products", None, &[]).await;
    assert!(list.header("etag").is_some());
    let missing = api.request(Method::GET, "/users/999", None, &[]).await;
    assert_eq!(missing.header("etag"), None);
}

#[tokio::test]
async fn responses_are_compressed_by_accept_encoding() {
    use tower_http::decompression::Decompression;
    let api = Api::start().await;
    for i in 0..20 {
        api.post(
            "/products",
            &format!(r#"{{"name":"Product {i}","description":"a fairly repetitive description","price_cents":100,"stock":5}}"#),
        )
        .await;
    }
    let plain = api
        .request(Method::GET, "/products?limit=20", None, &[])
        .await;
    assert_eq!(plain.header("content-encoding"), None);
    for encoding in ["gzip", "br", "zstd"] {
        let headers = [("accept-encoding", encoding)];
        let raw = api
            .request(Method::GET, "/products?limit=20", None, &headers)
            .await;
        assert_eq!(raw.status, StatusCode::OK);
        assert_eq!(raw.header("content-encoding"), Some(encoding));
        assert!(
            raw.body.len() < plain.body.len(),
            "{encoding} shrinks the body"
        );
        assert_eq!(
            raw.header("etag"),
            plain.header("etag"),
            "the tag names the content"
        );

        let request = axum::http::Request::builder()
            .uri("/products?limit=20")
            .header("accept-encoding", encoding)
            .body(axum::body::Body::empty())
            .unwrap();
        let decoded = tower::ServiceExt::oneshot(Decompression::new(api.router.clone()), request)
            .await
            .unwrap();
        let bytes = http_body_util::BodyExt::collect(decoded.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(bytes, plain.body, "{encoding} round-trips");
    }
    let preferred = api
        .request(
            Method::GET,
            "/products?limit=20",
            None,
            &[("accept-encoding", "gzip;q=0.5, zstd")],
        )
        .await;
    assert_eq!(preferred.header("content-encoding"), Some("zstd"));
}

#[tokio::test]
async fn msgpack_when_accepted_and_406_when_nothing_fits() {
    let api = Api::start().await;
    let (uid, _) = api.user_and_product().await;
    let uri = format!("/users/{uid}");
    let json = api.request(Method::GET, &uri, None, &[]).await;
    let packed = api
        .request(
            Method::GET,
            &uri,
            None,
            &[("accept", "application/msgpack")],
        )
        .await;
    assert_eq!(packed.status, StatusCode::OK);
    assert_eq!(packed.header("content-type"), Some("application/msgpack"));
    assert!(packed.header("vary").is_some_and(|v| v.contains("accept")));
    let decoded: Value = rmp_serde::from_slice(&packed.body).unwrap();
    assert_eq!(decoded, json.json());
    assert_ne!(packed.header("etag"), json.header("etag"));

    // Errors follow the negotiated format too.
    let missing = api
        .request(
            Method::GET,
            "/users/999",
            None,
            &[("accept", "application/msgpack")],
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let error: Value = rmp_serde::from_slice(&missing.body).unwrap();
    assert_eq!(error["error"]["code"], "not_found");

    let refused = api
        .request(Method::GET, &uri, None, &[("accept", "text/html")])
        .await;
    assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(error_of(&refused.json()).0, "not_acceptable");
    let wildcard = api
        .request(Method::GET, &uri, None, &[("accept", "*/*")])
        .await;
    assert_eq!(wildcard.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn sqlite_writes_carry_no_token_and_bad_tokens_are_refused() {
    let api = Api::start().await;
    let reply = api
        .request(
            Method::POST,
            "/users",
            Some(r#"{"email":"t@example.com","name":"T"}"#),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.header("consistency-token"),
        None,
        "SQLite has no replicas"
    );
    let id = reply.json()["id"].as_i64().unwrap();
    let bad = api
        .request(
            Method::GET,
            &format!("/users/{id}"),
            None,
            &[("consistency-token", "yesterday")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_of(&bad.json()),
        ("invalid_consistency_token", Some("Consistency-Token"))
    );
    // A well-formed token for a database without replicas reads the primary.
    let ok = api
        .request(
            Method::GET,
            &format!("/users/{id}"),
            None,
            &[("consistency-token", "shard-0:0/1")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);

    let (s, v) = api
        .post(
            "/users",
            r#"{"email":"r@example.com","name":"R","region":"eu"}"#,
        )
        .await;
    assert_eq!(
        (s, error_of(&v).1),
        (StatusCode::BAD_REQUEST, Some("region")),
        "{v}"
    );
}

#[tokio::test]
async fn the_features_have_metrics() {
    let api = Api::start().await;
    let (uid, pid) = api.user_and_product().await;
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#);
    post_order(&api, &body, Some("m-1")).await;
    post_order(&api, &body, Some("m-1")).await;
    let uri = format!("/users/{uid}");
    let first = api
        .request(Method::GET, &uri, None, &[("accept-encoding", "gzip")])
        .await;
    let etag = first.header("etag").unwrap().to_owned();
    api.request(Method::GET, &uri, None, &[("if-none-match", &etag)])
        .await;
    api.request(
        Method::GET,
        &uri,
        None,
        &[("accept", "application/msgpack")],
    )
    .await;
    let (_, text) = api.get("/metrics").await;
    let text = text.as_str().unwrap();
    for series in [
        "scalestack_idempotency_requests_total{",
        "outcome=\"replayed\"",
        "scalestack_api_not_modified_total{",
        "scalestack_api_response_formats_total{",
        "format=\"msgpack\"",
        "scalestack_api_response_encodings_total{",
        "scalestack_store_reads_total{",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
}

// === OpenAPI ===

#[tokio::test]
async fn the_openapi_document_matches_its_snapshot_and_every_path_is_routed() {
    let api = Api::start().await;
    let reply = api.request(Method::GET, "/openapi.json", None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    expect_test::expect_file!["snapshots/openapi.json"]
        .assert_eq(&String::from_utf8_lossy(&reply.body));

    // Every documented operation exists: no 404 "no route", no 405.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{:?}", paths.keys());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let uri = path.replace("{id}", "1");
            let method: Method = method.to_uppercase().parse().unwrap();
            let reply = api.request(method.clone(), &uri, Some("{}"), &[]).await;
            assert_ne!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let body = reply.json();
            assert!(
                !body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("no route"),
                "{method} {path}: {body}"
            );
        }
        // Error responses name the shared error schema.
        let text = item.to_string();
        if text.contains("\"400\"") {
            assert!(text.contains("#/components/schemas/Error"), "{path}");
        }
    }
}
