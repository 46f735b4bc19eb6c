//! The HTTP API of the reference service (`scalestack api`).
//!
//! Users and their orders live on user shards, products in the catalog; reads
//! of users and products are cache-aside through the process's L1 cache, and a
//! write invalidates the entry it changed on this instance. Every error is a
//! JSON body naming the problem (see [`error`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use scalestack_cache::{Cache, Resource};
use scalestack_config::{ApiConfig, Config};
use scalestack_store::{
    NewOrder, NewProduct, NewUser, ProductRecord, Store, StoreError, UserPatch, UserRecord,
};
use scalestack_telemetry::health::{Check, HealthReport};
use serde::Deserialize;
use tower_http::catch_panic::CatchPanicLayer;

pub mod error;
pub mod extract;
pub mod views;

use error::ApiError;
use extract::{Id, JsonBody, check_fields, decode_cursor, encode_cursor, parse_query};
use views::{
    ORDER_FIELDS, OrderView, PRODUCT_FIELDS, Page, ProductView, USER_FIELDS, UserView,
    json_response, project, resource_response,
};

use crate::AppError;
use crate::http::{
    HEALTH_CHECK_TIMEOUT, bind, health_response, metrics_response, record_metrics, serve,
    store_checks,
};

/// Everything a request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    cache: Cache,
    users: Resource<UserRecord>,
    products: Resource<ProductRecord>,
    config: Arc<ApiConfig>,
    instance: Arc<str>,
    started: Instant,
}

impl AppState {
    /// State over an open store, with the cache built from `config.cache`.
    pub fn new(config: &Config, store: Store, instance: &str) -> Self {
        let cache = if config.cache.enabled {
            Cache::new(config.cache.l1_max_bytes)
        } else {
            Cache::disabled()
        };
        let users = cache.resource("users", config.cache.users.ttl, |u: &UserRecord| {
            u.email.len() + u.name.len()
        });
        let products = cache.resource(
            "products",
            config.cache.products.ttl,
            |p: &ProductRecord| p.name.len() + p.description.len(),
        );
        Self {
            store,
            cache,
            users,
            products,
            config: Arc::new(config.api.clone()),
            instance: instance.into(),
            started: Instant::now(),
        }
    }

    fn page_limit(&self, requested: Option<u32>) -> u32 {
        requested
            .unwrap_or(self.config.default_page_limit)
            .min(self.config.max_page_limit)
    }

    async fn user(&self, id: i64) -> Result<Option<Arc<UserRecord>>, ApiError> {
        if id <= 0 {
            return Ok(None);
        }
        Ok(self.users.get_or_load(id, self.store.get_user(id)).await?)
    }

    async fn product(&self, id: i64) -> Result<Option<Arc<ProductRecord>>, ApiError> {
        if id <= 0 {
            return Ok(None);
        }
        Ok(self
            .products
            .get_or_load(id, self.store.get_product(id))
            .await?)
    }
}

/// The api's routes, with metrics, panic catching and the body limit.
pub fn router(state: AppState) -> Router {
    let body_limit = usize::try_from(state.config.max_request_body).unwrap_or(usize::MAX);
    Router::new()
        .route("/users", axum::routing::post(create_user))
        .route("/users/{id}", get(get_user).patch(patch_user))
        .route("/users/{id}/orders", get(list_user_orders))
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/orders", axum::routing::post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("a request handler panicked");
            let e = ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: "internal error".into(),
                field: None,
            };
            e.into_response()
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
    let state = AppState::new(config, store.clone(), &instance);
    tracing::info!(%instance, %addr, "api serving");
    let result = serve(&instance, listener, router(state), shutdown).await;
    store.close().await;
    tracing::info!(%instance, "api stopped");
    result
}

// === request bodies ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    email: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProduct {
    name: String,
    #[serde(default)]
    description: String,
    price_cents: i64,
    stock: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    user_id: i64,
    product_id: i64,
    quantity: i64,
}

/// Most units of one product in one order.
pub const MAX_ORDER_QUANTITY: i64 = 1_000;

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

fn created(location: &str, body: &impl serde::Serialize) -> Response {
    let mut response = json_response(StatusCode::CREATED, body);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// === users ===

async fn create_user(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<Response, ApiError> {
    validate_email(&body.email)?;
    validate_text("name", &body.name, 1, 200)?;
    let user = s
        .store
        .create_user(&NewUser {
            email: body.email,
            name: body.name,
        })
        .await?;
    Ok(created(
        &format!("/users/{}", user.id),
        &UserView::from(&user),
    ))
}

async fn get_user(
    State(s): State<AppState>,
    Id(id): Id,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), USER_FIELDS)?;
    let user = s
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &UserView::from(&*user),
        q.fields.as_deref(),
    ))
}

async fn patch_user(
    State(s): State<AppState>,
    Id(id): Id,
    JsonBody(body): JsonBody<PatchUser>,
) -> Result<Response, ApiError> {
    if body.email.is_none() && body.name.is_none() {
        return Err(ApiError::bad_request(
            "empty_patch",
            "a patch must change at least one of: email, name",
        ));
    }
    if let Some(email) = &body.email {
        validate_email(email)?;
    }
    if let Some(name) = &body.name {
        validate_text("name", name, 1, 200)?;
    }
    let patch = UserPatch {
        email: body.email,
        name: body.name,
    };
    let updated = if id > 0 {
        s.store.update_user(id, &patch).await?
    } else {
        None
    };
    // Invalidate even when the row is gone: a stale entry must not outlive a write.
    s.users.invalidate(id).await;
    let user = updated.ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    Ok(json_response(StatusCode::OK, &UserView::from(&user)))
}

async fn list_user_orders(
    State(s): State<AppState>,
    Id(id): Id,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields", "limit", "cursor"])?;
    check_fields(q.fields.as_deref(), ORDER_FIELDS)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor("o", c))
        .transpose()?;
    let limit = s.page_limit(q.limit);
    if s.user(id).await?.is_none() {
        return Err(ApiError::not_found(format!("user {id} does not exist")));
    }
    let mut rows = s.store.list_user_orders(id, before, limit + 1).await?;
    let next_cursor = next_cursor(&mut rows, limit, |o| o.id, "o");
    let data = rows
        .iter()
        .map(|o| project(&OrderView::from(o), q.fields.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &Page { data, next_cursor }))
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

// === products ===

async fn create_product(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateProduct>,
) -> Result<Response, ApiError> {
    validate_text("name", &body.name, 1, 200)?;
    validate_text("description", &body.description, 0, 2_000)?;
    validate_range("price_cents", body.price_cents, 0, 1_000_000_000_000)?;
    validate_range("stock", body.stock, 0, 1_000_000_000)?;
    let product = s
        .store
        .create_product(&NewProduct {
            name: body.name,
            description: body.description,
            price_cents: body.price_cents,
            stock: body.stock,
        })
        .await?;
    Ok(created(
        &format!("/products/{}", product.id),
        &ProductView::from(&product),
    ))
}

async fn get_product(
    State(s): State<AppState>,
    Id(id): Id,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), PRODUCT_FIELDS)?;
    let product = s
        .product(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("product {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &ProductView::from(&*product),
        q.fields.as_deref(),
    ))
}

async fn list_products(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields", "limit", "cursor"])?;
    check_fields(q.fields.as_deref(), PRODUCT_FIELDS)?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor("p", c))
        .transpose()?;
    let limit = s.page_limit(q.limit);
    let mut rows = s.store.list_products(after, limit + 1).await?;
    let next_cursor = next_cursor(&mut rows, limit, |p| p.id, "p");
    let data = rows
        .iter()
        .map(|p| project(&ProductView::from(p), q.fields.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &Page { data, next_cursor }))
}

// === orders ===

async fn create_order(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    validate_range("quantity", body.quantity, 1, MAX_ORDER_QUANTITY)?;
    if s.user(body.user_id).await?.is_none() {
        return Err(ApiError::unprocessable(
            "user_id",
            format!("user {} does not exist", body.user_id),
        ));
    }
    let product = s.product(body.product_id).await?.ok_or_else(|| {
        ApiError::unprocessable(
            "product_id",
            format!("product {} does not exist", body.product_id),
        )
    })?;
    let order = s
        .store
        .create_order(&NewOrder {
            user_id: body.user_id,
            product_id: product.id,
            quantity: body.quantity,
            unit_price_cents: product.price_cents,
        })
        .await
        .map_err(|e| match e {
            // The user vanished between the check and the write.
            StoreError::Missing { entity, id } => {
                ApiError::unprocessable("user_id", format!("{entity} {id} does not exist"))
            }
            other => other.into(),
        })?;
    Ok(created(
        &format!("/orders/{}", order.id),
        &OrderView::from(&order),
    ))
}

async fn get_order(
    State(s): State<AppState>,
    Id(id): Id,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), ORDER_FIELDS)?;
    let order = s
        .store
        .get_order(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &OrderView::from(&order),
        q.fields.as_deref(),
    ))
}

// === operations ===

async fn health(State(s): State<AppState>) -> Response {
    let mut checks = store_checks(&s.store).await;
    checks.push(Check::run("cache.l1", HEALTH_CHECK_TIMEOUT, cache_probe(&s.cache)).await);
    let report = HealthReport::new("api", &s.instance, s.started.elapsed(), checks);
    health_response(&report)
}

/// Writes and reads back a probe entry: the cache answers and keeps values.
async fn cache_probe(cache: &Cache) -> Result<(), String> {
    if !cache.is_enabled() {
        return Ok(());
    }
    let probe = cache.resource::<u64>("health", std::time::Duration::from_secs(5), |_| 0);
    let token = rand_token();
    probe.insert(0, Arc::new(token)).await;
    let read = probe
        .get_or_load(0, async { Ok::<_, String>(None) })
        .await
        .map_err(|e| e.to_string())?;
    match read {
        Some(v) if *v == token => Ok(()),
        _ => Err("the cache did not return the value just written".into()),
    }
}

fn rand_token() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.cache.update_gauges();
    let metrics = scalestack_telemetry::metrics::install("api", &s.instance);
    metrics_response(metrics.render())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
