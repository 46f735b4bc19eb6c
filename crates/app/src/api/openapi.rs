//! `GET /openapi.json`: the OpenAPI 3.1 document of the api, generated from
//! the handlers' annotations and the views' types (utoipa). Routes are
//! registered through `utoipa_axum`, so a route without documentation cannot
//! exist; a snapshot test keeps the published document under review.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::views::{OrderView, ProductView};

/// The document's fixed parts; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "scalestack reference service",
        description = "Users and their orders on sharded, replicated databases; products in the catalog. \
            Every error body is `{\"error\": {\"code\", \"message\", \"field\"?}}`. \
            Responses are JSON, or MessagePack for `Accept: application/msgpack`; \
            gzip, br and zstd by `Accept-Encoding`; GETs carry an `ETag` and answer \
            `If-None-Match` with 304. Writes to databases with replicas return a \
            `Consistency-Token`: send it back on reads to read your writes.",
        license(name = "MIT OR Apache-2.0"),
    ),
    tags(
        (name = "users", description = "Users, on the shard their id maps to"),
        (name = "products", description = "The unsharded catalog"),
        (name = "orders", description = "Orders, co-located with their user"),
        (name = "jobs", description = "Work done in the background: 202 Accepted, then poll /jobs/{id}"),
        (name = "analytics", description = "The CQRS read model built from order events"),
        (name = "admin", description = "Operators' views: the outbox and the dead-letter queue"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub(crate) struct ApiDoc;

/// A page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderPage<'a> {
    /// The orders (all fields, or those named by `fields`).
    data: Vec<OrderView<'a>>,
    /// Pass as `cursor` to get the next page; null on the last page.
    next_cursor: Option<String>,
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProductPage<'a> {
    /// The products (all fields, or those named by `fields`).
    data: Vec<ProductView<'a>>,
    /// Pass as `cursor` to get the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The OpenAPI document of every route of the api.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = super::resource_routes().split_for_parts();
    let (_, ops) = super::ops::routes().split_for_parts();
    doc.merge(ops);
    doc
}

/// The document as pretty JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// Serves the OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This api's OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}
