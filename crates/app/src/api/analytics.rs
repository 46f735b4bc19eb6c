//! `/analytics/*`: the query side of the CQRS read model that the worker's
//! `analytics` group builds from order events (see `flows::analytics`).
//!
//! Reads come from the read model only, never from the orders: they are as
//! fresh as the group's consumer lag, which is the trade CQRS makes. A product
//! or user that exists but has no event yet reads as zeros; one that does not
//! exist is a 404.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use scalestack_store::{Consistency, ProductSales, UserSummary};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::consistency::Tokens;
use super::error::{ApiError, ErrorDoc};
use super::extract::Id;
use super::views::{json_response, rfc3339};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(product_sales))
        .routes(routes!(user_summary))
}

/// Net sales of a product: orders placed and not rejected.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProductSales)]
pub(crate) struct ProductSalesView {
    /// The product.
    product_id: i64,
    /// Orders placed and not rejected.
    orders: i64,
    /// Units of those orders.
    units: i64,
    /// Their revenue, in cents.
    revenue_cents: i64,
    /// Orders rejected for want of stock.
    rejected_orders: i64,
    /// When the read model last changed for it (RFC 3339, UTC); null before
    /// its first order.
    #[schema(format = DateTime)]
    updated_at: Option<String>,
}

impl ProductSalesView {
    fn of(id: i64, sales: Option<&ProductSales>) -> Self {
        Self {
            product_id: id,
            orders: sales.map_or(0, |s| s.orders),
            units: sales.map_or(0, |s| s.units),
            revenue_cents: sales.map_or(0, |s| s.revenue_cents),
            rejected_orders: sales.map_or(0, |s| s.rejected_orders),
            updated_at: sales.map(|s| rfc3339(s.updated_at)),
        }
    }
}

/// Orders and spend of a user.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UserSummary)]
pub(crate) struct UserSummaryView {
    /// The user.
    user_id: i64,
    /// Orders placed and not rejected.
    orders: i64,
    /// What those orders cost, in cents.
    spend_cents: i64,
    /// Orders rejected for want of stock.
    rejected_orders: i64,
    /// When the user's latest order was placed (RFC 3339, UTC); null before
    /// the first.
    #[schema(format = DateTime)]
    last_order_at: Option<String>,
    /// When the read model last changed for them (RFC 3339, UTC).
    #[schema(format = DateTime)]
    updated_at: Option<String>,
}

impl UserSummaryView {
    fn of(id: i64, summary: Option<&UserSummary>) -> Self {
        Self {
            user_id: id,
            orders: summary.map_or(0, |s| s.orders),
            spend_cents: summary.map_or(0, |s| s.spend_cents),
            rejected_orders: summary.map_or(0, |s| s.rejected_orders),
            last_order_at: summary.map(|s| rfc3339(s.last_order_at)),
            updated_at: summary.map(|s| rfc3339(s.updated_at)),
        }
    }
}

/// Net sales of a product, from the analytics read model.
#[utoipa::path(
    get, path = "/analytics/products/{id}", tag = "analytics",
    params(("id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "Net sales (zeros before the first order)", body = ProductSalesView),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such product", body = ErrorDoc),
    )
)]
pub(crate) async fn product_sales(
    State(s): State<AppState>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let sales = s.store.product_sales(id, Consistency::Eventual).await?;
    if sales.is_none() && s.product(id, &Tokens::default()).await?.is_none() {
        return Err(ApiError::not_found(format!("product {id} does not exist")));
    }
    Ok(json_response(
        StatusCode::OK,
        &ProductSalesView::of(id, sales.as_ref()),
    ))
}

/// Orders and spend of a user, from the analytics read model.
#[utoipa::path(
    get, path = "/analytics/users/{id}", tag = "analytics",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "Orders and spend (zeros before the first order)", body = UserSummaryView),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
    )
)]
pub(crate) async fn user_summary(
    State(s): State<AppState>,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let summary = s.store.user_summary(id, Consistency::Eventual).await?;
    if summary.is_none() && s.user(id, &Tokens::default()).await?.is_none() {
        return Err(ApiError::not_found(format!("user {id} does not exist")));
    }
    Ok(json_response(
        StatusCode::OK,
        &UserSummaryView::of(id, summary.as_ref()),
    ))
}
