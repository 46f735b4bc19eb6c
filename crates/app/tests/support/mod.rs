//! The api router in process over a real store, and a small client for it.

// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use scalestack_app::api::{AppState, router};
use scalestack_config::Config;
use scalestack_store::Store;
use serde_json::Value;
use tower::ServiceExt;

pub struct Api {
    pub router: Router,
    pub store: Store,
    pub config: Config,
    _dir: tempfile::TempDir,
}

/// A response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into()))
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// An api over SQLite in a temporary directory, with `tweak` applied to
    /// the default configuration.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        tweak(&mut config);
        Self::on(config, dir).await
    }

    /// An api over the store `config` describes.
    pub async fn on(config: Config, dir: tempfile::TempDir) -> Self {
        // As the binary does at start-up: record from the first request on.
        scalestack_telemetry::metrics::install("api", "api-test");
        let store = Store::open(&config).await.unwrap();
        let state = AppState::new(&config, store.clone(), "api-test")
            .await
            .unwrap();
        let router = router(state);
        Self {
            router,
            store,
            config,
            _dir: dir,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(
                body.map(|b| Body::from(b.to_owned()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value, header::HeaderMap) {
        let reply = self.request(method, uri, body, &[]).await;
        (reply.status, reply.json(), reply.headers)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, uri, None).await;
        (s, v)
    }

    pub async fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::POST, uri, Some(body)).await;
        (s, v)
    }

    /// Creates a user and a product; returns their ids.
    pub async fn user_and_product(&self) -> (i64, i64) {
        let (s, user) = self
            .post("/users", r#"{"email":"o@example.com","name":"O"}"#)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{user}");
        let (s, product) = self
            .post(
                "/products",
                r#"{"name":"Widget","price_cents":250,"stock":10}"#,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{product}");
        (
            user["id"].as_i64().unwrap(),
            product["id"].as_i64().unwrap(),
        )
    }
}

pub fn error_of(v: &Value) -> (&str, Option<&str>) {
    (
        v["error"]["code"].as_str().unwrap_or("?"),
        v["error"]["field"].as_str(),
    )
}
