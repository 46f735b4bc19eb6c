//! The HTTP API of the reference service (`scalestack api`).
//!
//! One module per resource ([`users`], [`products`], [`orders`], [`jobs`],
//! [`analytics`], [`admin`] with [`dlq`]) plus the operations endpoints
//! ([`ops`]); each registers its routes with
//! their OpenAPI documentation ([`openapi`]). Users and their orders live on
//! user shards, products in the catalog; reads of users and products go
//! through the cache tier (`cached`: L1, the Redis L2 when configured, then
//! the store) unless the request carries a consistency token for their
//! database ([`consistency`]), and every write updates or invalidates the
//! cached entry on every instance by its resource's write strategy.
//! Responses go through [`representation`] (format, ETag, compression);
//! every error is a JSON body naming the problem ([`error`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scalestack_cache::{Cache, Peers, Resource};
use scalestack_config::{ApiConfig, Config};
use scalestack_store::{Consistency, DbId, ProductRecord, Store, UserActivity, UserRecord, ids};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub mod admin;
pub mod analytics;
mod cached;
pub mod consistency;
pub mod dlq;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod products;
pub mod representation;
pub mod users;
pub mod views;

use consistency::Tokens;
use error::ApiError;
use extract::encode_cursor;
use views::json_response;

pub use orders::MAX_ORDER_QUANTITY;

use crate::AppError;
use crate::http::{bind, record_metrics, serve};

/// Everything a request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    cache: Cache,
    users: Resource<UserRecord>,
    products: Resource<ProductRecord>,
    activity: Resource<UserActivity>,
    /// Cached pages of `GET /products` (the `responses` resource).
    pages: cached::ProductPages,
    config: Arc<ApiConfig>,
    instance: Arc<str>,
    started: Instant,
    inflight: idempotency::InFlight,
    /// The queue, for the dead-letter operations of `/admin/dlq`.
    dlq: dlq::DlqHandle,
}

impl AppState {
    /// State of an api process on its own (tests, tools): its cache is built
    /// from `config.cache` and exchanges invalidations only over Redis, if
    /// configured.
    pub async fn new(config: &Config, store: Store, instance: &str) -> Result<Self, AppError> {
        let at = cached::Placement {
            instance,
            peers: None,
        };
        Self::build(config, store, at).await
    }

    /// State of api instance `index` of the stack: without Redis, its cache
    /// exchanges invalidations with the other processes of the stack over UDP.
    pub async fn for_instance(config: &Config, store: Store, index: u16) -> Result<Self, AppError> {
        let at = cached::Placement {
            instance: &format!("api-{index}"),
            peers: Some(Peers::stack(config, config.api.instance_addr(index))),
        };
        Self::build(config, store, at).await
    }

    async fn build(
        config: &Config,
        store: Store,
        at: cached::Placement<'_>,
    ) -> Result<Self, AppError> {
        let instance = at.instance.into();
        let cached = cached::Cached::build(config, &store, at).await?;
        representation::describe_metrics();
        idempotency::describe_metrics();
        Ok(Self {
            store,
            cache: cached.cache,
            users: cached.users,
            products: cached.products,
            activity: cached.activity,
            pages: cached.pages,
            config: Arc::new(config.api.clone()),
            instance,
            started: Instant::now(),
            inflight: idempotency::InFlight::default(),
            dlq: dlq::DlqHandle::new(config),
        })
    }

    /// Stops the cache's background work after a last write-behind flush.
    pub async fn shutdown(&self) {
        self.cache.shutdown().await;
    }

    fn page_limit(&self, requested: Option<u32>) -> u32 {
        requested
            .unwrap_or(self.config.default_page_limit)
            .min(self.config.max_page_limit)
    }

    /// The database of user `id`.
    fn user_db(&self, id: i64) -> DbId {
        let shard = self.store.shard_map().shard_of_user(id);
        DbId::Shard(u16::try_from(shard).unwrap_or(u16::MAX))
    }

    /// The database of order `id`, when the id is one we issue.
    fn order_db(&self, id: i64) -> Option<DbId> {
        let bucket = ids::order_bucket(id)?;
        let shard = self.store.shard_map().shard_of_bucket(bucket);
        Some(DbId::Shard(u16::try_from(shard).unwrap_or(u16::MAX)))
    }

    /// A user: from the cache, or, when the request holds a token for the
    /// user's shard, from a database that has the token's write.
    async fn user(&self, id: i64, tokens: &Tokens) -> Result<Option<Arc<UserRecord>>, ApiError> {
        if id <= 0 {
            return Ok(None);
        }
        let db = self.user_db(id);
        if tokens.covers(db) {
            // A profile written behind is newer than any store row.
            if let Some(user) = self.users.pending(id) {
                return Ok(Some(user));
            }
            let user = self.store.get_user(id, tokens.for_db(db)).await?;
            return Ok(user.map(Arc::new));
        }
        Ok(self
            .users
            .get_or_load(id, self.store.get_user(id, Consistency::Eventual))
            .await?)
    }

    /// A product, the same way as [`user`](Self::user).
    async fn product(
        &self,
        id: i64,
        tokens: &Tokens,
    ) -> Result<Option<Arc<ProductRecord>>, ApiError> {
        if id <= 0 {
            return Ok(None);
        }
        if tokens.covers(DbId::Catalog) {
            let product = self
                .store
                .get_product(id, tokens.for_db(DbId::Catalog))
                .await?;
            return Ok(product.map(Arc::new));
        }
        Ok(self
            .products
            .get_or_load(id, self.store.get_product(id, Consistency::Eventual))
            .await?)
    }

    /// A product a write depends on: from the cache, but a miss is confirmed
    /// on the primary, so that a replica's lag cannot make a new product look
    /// missing.
    async fn product_for_write(&self, id: i64) -> Result<Option<Arc<ProductRecord>>, ApiError> {
        if let Some(product) = self.product(id, &Tokens::default()).await? {
            return Ok(Some(product));
        }
        if id <= 0 {
            return Ok(None);
        }
        let product = self.store.get_product(id, Consistency::Primary).await?;
        Ok(product.map(Arc::new))
    }
}

/// The documented resource routes (everything but the operations endpoints).
pub(crate) fn resource_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(users::routes())
        .merge(products::routes())
        .merge(orders::routes())
        .merge(admin::routes())
        .merge(jobs::routes())
        .merge(analytics::routes())
        .merge(dlq::routes())
}

/// The api's routes, with representation (format, ETag, compression),
/// metrics, panic catching and the body limit.
pub fn router(state: AppState) -> Router {
    let body_limit = usize::try_from(state.config.max_request_body).unwrap_or(usize::MAX);
    let (resources, _) = resource_routes().split_for_parts();
    let (ops, _) = ops::routes().split_for_parts();
    // The entity tag is computed over the negotiated representation, so the
    // format layer is inside the tag layer.
    let resources = resources
        .layer(axum::middleware::from_fn(representation::negotiate_format))
        .layer(axum::middleware::from_fn(representation::conditional_get));
    Router::new()
        .merge(resources)
        .merge(ops)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(representation::compression())
        .layer(axum::middleware::from_fn(representation::count_encodings))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        .with_state(state)
}

/// Runs api instance `index` until `shutdown` resolves.
///
/// The listener is bound before the store is opened so that a port in use is
/// reported at once, naming the port and the instance.
pub async fn run(
    config: &Config,
    index: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let instance = format!("api-{index}");
    let addr = config.api.instance_addr(index);
    let listener = bind(&instance, &ApiConfig::instance_key(index), addr).await?;
    let store = Store::open(config).await?;
    let state = AppState::for_instance(config, store.clone(), index).await?;
    tracing::info!(%instance, %addr, "api serving");
    let result = serve(&instance, listener, router(state.clone()), shutdown).await;
    // Writes acknowledged behind the cache reach the store before it closes.
    state.shutdown().await;
    store.close().await;
    tracing::info!(%instance, "api stopped");
    result
}

// === validation ===

fn validate_email(email: &str) -> Result<(), ApiError> {
    let well_formed = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if well_formed {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "email",
            format!("email must look like name@domain (at most 254 characters), got {email:?}"),
        ))
    }
}

fn validate_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let len = value.trim().chars().count();
    if len < min || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be {min} to {max} characters without control characters"),
        ));
    }
    Ok(())
}

fn validate_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("{field} must be between {min} and {max}, got {value}"),
        ))
    }
}

/// A 201 with `Location`.
fn created(location: &str, body: &impl serde::Serialize) -> Response {
    let mut response = json_response(StatusCode::CREATED, body);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Trims a `limit + 1` fetch to `limit` rows and returns the cursor of the next
/// page if there is one.
fn next_cursor<T>(
    rows: &mut Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> i64,
    tag: &str,
) -> Option<String> {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(tag, id(r)))
    } else {
        None
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
