//! The api router in process, over a real SQLite store in a temporary directory.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use scalestack_app::api::{AppState, router};
use scalestack_config::Config;
use scalestack_store::{Store, UserPatch};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    store: Store,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        // As the binary does at start-up: record from the first request on.
        scalestack_telemetry::metrics::install("api", "api-test");
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        tweak(&mut config);
        let store = Store::open(&config).await.unwrap();
        let router = router(AppState::new(&config, store.clone(), "api-test"));
        Self {
            router,
            store,
            config,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value, header::HeaderMap) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(
                body.map(|b| Body::from(b.to_owned()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value, headers)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, uri, None).await;
        (s, v)
    }

    async fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::POST, uri, Some(body)).await;
        (s, v)
    }
}

fn error_of(v: &Value) -> (&str, Option<&str>) {
    (
        v["error"]["code"].as_str().unwrap_or("?"),
        v["error"]["field"].as_str(),
    )
}

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
            "cache.l1"
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
