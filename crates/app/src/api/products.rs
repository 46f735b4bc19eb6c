//! `/products`: the catalog — create, read (through the cache, projected),
//! patch (by the `products` resource's write strategy), list (pages cached
//! as API responses, retired on every instance by any product write).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use scalestack_store::{DbId, NewProduct, ProductPatch, StoreError};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cached::write_error;
use super::consistency::{Tokens, attach};
use super::error::{ApiError, ErrorDoc};
use super::extract::{Id, JsonBody, check_fields, decode_cursor, encode_cursor, parse_query};
use super::openapi::ProductPage;
use super::views::{PRODUCT_FIELDS, Page, ProductView, json_response, project, resource_response};
use super::{AppState, created, validate_range, validate_text};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, patch_product))
}

/// A product to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProduct {
    /// Name, 1 to 200 characters.
    name: String,
    /// Free text, up to 2,000 characters.
    #[serde(default)]
    description: String,
    /// Price in cents, 0 to 10^12.
    price_cents: i64,
    /// Units in stock, 0 to 10^9.
    stock: i64,
}

/// Fields of a product to change; at least one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchProduct {
    /// New name, 1 to 200 characters.
    name: Option<String>,
    /// New description, up to 2,000 characters.
    description: Option<String>,
    /// New price in cents, 0 to 10^12.
    price_cents: Option<i64>,
    /// New units in stock, 0 to 10^9.
    stock: Option<i64>,
}

/// Creates a product in the catalog.
#[utoipa::path(
    post, path = "/products", tag = "products",
    request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = ProductView,
            headers(
                ("Location" = String, description = "The new product's URL"),
                ("Consistency-Token" = String, description = "Send back on reads to see this write"),
            )),
        (status = 400, description = "Malformed body or invalid field", body = ErrorDoc),
    )
)]
pub(crate) async fn create_product(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateProduct>,
) -> Result<Response, ApiError> {
    validate_text("name", &body.name, 1, 200)?;
    validate_text("description", &body.description, 0, 2_000)?;
    validate_range("price_cents", body.price_cents, 0, 1_000_000_000_000)?;
    validate_range("stock", body.stock, 0, 1_000_000_000)?;
    let written = s
        .store
        .create_product(&NewProduct {
            name: body.name,
            description: body.description,
            price_cents: body.price_cents,
            stock: body.stock,
        })
        .await?;
    let product = &written.value;
    // A cached "not found" of this id must not outlive the create.
    let new = product.clone();
    s.products
        .write_with(product.id, async { Ok::<_, StoreError>(Some(new)) })
        .await
        .map_err(write_error)?;
    s.pages.retire().await;
    let mut response = created(
        &format!("/products/{}", product.id),
        &ProductView::from(product),
    );
    attach(&mut response, written.token);
    Ok(response)
}

/// Reads a product, optionally only some fields.
#[utoipa::path(
    get, path = "/products/{id}", tag = "products",
    params(
        ("id" = i64, Path, description = "Product id"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
    ),
    responses(
        (status = 200, description = "The product", body = ProductView,
            headers(("ETag" = String, description = "Weak entity tag of the representation"))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad id, unknown parameter or field", body = ErrorDoc),
        (status = 404, description = "No such product", body = ErrorDoc),
    )
)]
pub(crate) async fn get_product(
    State(s): State<AppState>,
    Id(id): Id,
    tokens: Tokens,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), PRODUCT_FIELDS)?;
    let product = s
        .product(id, &tokens)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("product {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &ProductView::from(&*product),
        q.fields.as_deref(),
    ))
}

/// Changes a product's name, description, price or stock. Every instance
/// drops its cached copy (cache-aside) or holds the new one (write-through)
/// before the response is sent.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "products",
    params(("id" = i64, Path, description = "Product id")),
    request_body = PatchProduct,
    responses(
        (status = 200, description = "The changed product", body = ProductView,
            headers(("Consistency-Token" = String, description = "Send back on reads to see this write"))),
        (status = 400, description = "Malformed body, invalid field or empty patch", body = ErrorDoc),
        (status = 404, description = "No such product", body = ErrorDoc),
    )
)]
pub(crate) async fn patch_product(
    State(s): State<AppState>,
    Id(id): Id,
    JsonBody(body): JsonBody<PatchProduct>,
) -> Result<Response, ApiError> {
    if body.name.is_none()
        && body.description.is_none()
        && body.price_cents.is_none()
        && body.stock.is_none()
    {
        return Err(ApiError::bad_request(
            "empty_patch",
            "a patch must change at least one of: name, description, price_cents, stock",
        ));
    }
    if let Some(name) = &body.name {
        validate_text("name", name, 1, 200)?;
    }
    if let Some(description) = &body.description {
        validate_text("description", description, 0, 2_000)?;
    }
    if let Some(price) = body.price_cents {
        validate_range("price_cents", price, 0, 1_000_000_000_000)?;
    }
    if let Some(stock) = body.stock {
        validate_range("stock", stock, 0, 1_000_000_000)?;
    }
    let patch = ProductPatch {
        name: body.name,
        description: body.description,
        price_cents: body.price_cents,
        stock: body.stock,
    };
    let mut token = None;
    let product = if id > 0 {
        s.products
            .write_with(id, async {
                let written = s.store.update_product(id, &patch).await?;
                token = written.token;
                Ok(written.value)
            })
            .await
            .map_err(write_error)?
    } else {
        None
    };
    let product =
        product.ok_or_else(|| ApiError::not_found(format!("product {id} does not exist")))?;
    s.pages.retire().await;
    let mut response = json_response(StatusCode::OK, &ProductView::from(&*product));
    attach(&mut response, token);
    Ok(response)
}

/// A page of products in id order.
#[utoipa::path(
    get, path = "/products", tag = "products",
    params(
        ("limit" = Option<u32>, Query, description = "Page size (capped at api.max_page_limit)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
    ),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad parameter or cursor", body = ErrorDoc),
    )
)]
pub(crate) async fn list_products(
    State(s): State<AppState>,
    tokens: Tokens,
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
    // A page is a cached response unless the client must see its own write.
    let rows = if tokens.covers(DbId::Catalog) {
        let rows = s
            .store
            .list_products(after, limit + 1, tokens.for_db(DbId::Catalog))
            .await?;
        Arc::new(rows)
    } else {
        s.pages.get(&s.store, after, limit).await?
    };
    let shown = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match shown.last() {
        Some(last) if rows.len() > shown.len() => Some(encode_cursor("p", last.id)),
        _ => None,
    };
    let data = shown
        .iter()
        .map(|p| project(&ProductView::from(p), q.fields.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &Page { data, next_cursor }))
}
