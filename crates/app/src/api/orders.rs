//! `/orders`: place an order (with `Idempotency-Key`), read one by id, and
//! list orders across every shard by time.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use scalestack_store::{
    IdempotencyKey, NewOrder, OrderFilter, OrderPosition, Placement, StoreError, StoredResponse,
};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::consistency::{Tokens, attach};
use super::error::{ApiError, ErrorDoc};
use super::extract::{
    Id, JsonBody, ListQuery, check_fields, decode_cursor_text, encode_cursor_text, parse_query,
};
use super::openapi::OrderPage;
use super::views::{ORDER_FIELDS, OrderView, Page, json_response, project, resource_response};
use super::{AppState, created, idempotency, validate_range};

/// Most units of one product in one order.
pub const MAX_ORDER_QUANTITY: i64 = 1_000;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders, create_order))
        .routes(routes!(get_order))
}

/// An order to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrder {
    /// The user who orders.
    user_id: i64,
    /// The product ordered.
    product_id: i64,
    /// Units, 1 to 1,000.
    quantity: i64,
}

impl CreateOrder {
    /// What identifies the request for its idempotency key: the parsed
    /// payload, so that formatting differences do not count as another
    /// request.
    fn fingerprint(&self) -> String {
        format!(
            "user_id={};product_id={};quantity={}",
            self.user_id, self.product_id, self.quantity
        )
    }
}

/// Places an order: the order, its `order.placed` outbox row and the
/// idempotency record are written in one transaction on the user's shard.
#[utoipa::path(
    post, path = "/orders", tag = "orders",
    request_body = CreateOrder,
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "A key (sf-string, 1 to 255 characters) that makes retries safe: a finished key replays its response for 24 h"),
    ),
    responses(
        (status = 201, description = "Created (or, with `Idempotent-Replayed: true`, the replayed response of an earlier request with the same key)", body = OrderView,
            headers(
                ("Location" = String, description = "The new order's URL"),
                ("Consistency-Token" = String, description = "Send back on reads to see this write"),
                ("Idempotent-Replayed" = String, description = "`true` when the response is a replay"),
            )),
        (status = 400, description = "Malformed body, invalid field, or malformed Idempotency-Key", body = ErrorDoc),
        (status = 409, description = "A request with the same Idempotency-Key is in flight; retry after `Retry-After`", body = ErrorDoc),
        (status = 422, description = "Unknown user or product (`field` names it), or the Idempotency-Key was used with another body", body = ErrorDoc),
        (status = 503, description = "The store is overloaded; retry after `Retry-After`", body = ErrorDoc),
    )
)]
pub(crate) async fn create_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let key = idempotency::parse(&headers)?;
    validate_range("quantity", body.quantity, 1, MAX_ORDER_QUANTITY)?;
    // Held until the response is built, so that a concurrent duplicate on
    // this instance is told at once that the key is in flight.
    let _claim = match &key {
        Some(key) => Some(
            s.inflight
                .claim(body.user_id, key)
                .ok_or_else(idempotency::in_flight)?,
        ),
        None => None,
    };
    let product = s.product_for_write(body.product_id).await?.ok_or_else(|| {
        ApiError::unprocessable(
            "product_id",
            format!("product {} does not exist", body.product_id),
        )
    })?;
    let new = NewOrder {
        user_id: body.user_id,
        product_id: product.id,
        quantity: body.quantity,
        unit_price_cents: product.price_cents,
    };
    let idempotency_key = key.map(|key| IdempotencyKey {
        key,
        fingerprint: body.fingerprint(),
    });
    let render = |order: &scalestack_store::OrderRecord| StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        headers: vec![("location".into(), format!("/orders/{}", order.id))],
        body: serde_json::to_string(&OrderView::from(order)).expect("views serialize"),
    };
    let placed = s
        .store
        .place_order(&new, idempotency_key.as_ref(), render)
        .await
        .map_err(|e| match e {
            StoreError::Missing { entity, id } => {
                ApiError::unprocessable("user_id", format!("{entity} {id} does not exist"))
            }
            other => other.into(),
        })?;
    match placed.value {
        Placement::Created(order) => {
            if idempotency_key.is_some() {
                idempotency::count("created");
            }
            let mut response = created(&format!("/orders/{}", order.id), &OrderView::from(&order));
            attach(&mut response, placed.token);
            Ok(response)
        }
        Placement::Replayed(stored) => Ok(idempotency::replay(&stored)),
        Placement::InFlight => Err(idempotency::in_flight()),
        Placement::KeyReused => Err(idempotency::reused()),
    }
}

/// Reads an order; the id alone tells its shard.
#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders",
    params(
        ("id" = i64, Path, description = "Order id"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
        ("Consistency-Token" = Option<String>, Header, description = "Tokens of earlier writes: the read reflects them"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderView,
            headers(("ETag" = String, description = "Weak entity tag of the representation"))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad id, unknown parameter or field", body = ErrorDoc),
        (status = 404, description = "No such order", body = ErrorDoc),
    )
)]
pub(crate) async fn get_order(
    State(s): State<AppState>,
    Id(id): Id,
    tokens: Tokens,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), ORDER_FIELDS)?;
    let consistency = s
        .order_db(id)
        .map_or(scalestack_store::Consistency::Eventual, |db| {
            tokens.for_db(db)
        });
    let order = s
        .store
        .get_order(id, consistency)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &OrderView::from(&order),
        q.fields.as_deref(),
    ))
}

/// What an `/orders` cursor carries: the query it belongs to and where its
/// page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrdersCursor {
    map_version: u32,
    status: String,
    since: Option<i64>,
    after: OrderPosition,
}

const ORDERS_CURSOR_TAG: &str = "orders";

impl OrdersCursor {
    fn encode(&self) -> String {
        let since = self.since.map(|s| s.to_string()).unwrap_or_default();
        encode_cursor_text(
            ORDERS_CURSOR_TAG,
            &format!(
                "{}|{}|{}|{}|{}",
                self.map_version, self.status, since, self.after.created_at, self.after.id
            ),
        )
    }

    fn decode(cursor: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid_field("cursor", "cursor is not one this list issued");
        let text = decode_cursor_text(ORDERS_CURSOR_TAG, cursor)?;
        let parts: Vec<&str> = text.split('|').collect();
        let [version, status, since, created_at, id] = parts[..] else {
            return Err(invalid());
        };
        Ok(Self {
            map_version: version.parse().map_err(|_| invalid())?,
            status: status.to_owned(),
            since: match since {
                "" => None,
                s => Some(s.parse().map_err(|_| invalid())?),
            },
            after: OrderPosition {
                created_at: created_at.parse().map_err(|_| invalid())?,
                id: id.parse().map_err(|_| invalid())?,
            },
        })
    }
}

fn parse_status(q: &ListQuery) -> Result<Option<String>, ApiError> {
    let Some(status) = q.get("status") else {
        return Ok(None);
    };
    let ok = !status.is_empty()
        && status.len() <= 32
        && status.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if !ok {
        return Err(ApiError::invalid_field(
            "status",
            format!("status must be 1 to 32 lowercase letters or '_', got {status:?}"),
        ));
    }
    Ok(Some(status.to_owned()))
}

fn parse_since(q: &ListQuery) -> Result<Option<i64>, ApiError> {
    let Some(since) = q.get("since") else {
        return Ok(None);
    };
    let t = OffsetDateTime::parse(since, &Rfc3339).map_err(|_| {
        ApiError::invalid_field(
            "since",
            format!("since must be an RFC 3339 time such as 2024-05-01T12:00:00Z, got {since:?}"),
        )
    })?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// Orders of every user, oldest first, across every shard (scatter-gather).
#[utoipa::path(
    get, path = "/orders", tag = "orders",
    params(
        ("status" = Option<String>, Query, description = "Only orders with this status, e.g. `placed`"),
        ("since" = Option<String>, Query, description = "Only orders created at or after this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "Page size (capped at api.max_page_limit)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page (only valid with the same status and since)"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
    ),
    responses(
        (status = 200, description = "A page of orders in (created_at, id) order", body = OrderPage),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad parameter, or a cursor of another query or shard map", body = ErrorDoc),
    )
)]
pub(crate) async fn list_orders(
    State(s): State<AppState>,
    tokens: Tokens,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(
        q.as_deref(),
        &["status", "since", "limit", "cursor", "fields"],
    )?;
    check_fields(q.fields.as_deref(), ORDER_FIELDS)?;
    let filter = OrderFilter {
        status: parse_status(&q)?,
        since: parse_since(&q)?,
    };
    let map_version = s.store.shard_map().version();
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let cursor = OrdersCursor::decode(c)?;
            if cursor.map_version != map_version {
                return Err(ApiError::invalid_field(
                    "cursor",
                    "the cursor was issued under another shard map; start the listing again",
                ));
            }
            if cursor.status != filter.status.clone().unwrap_or_default()
                || cursor.since != filter.since
            {
                return Err(ApiError::invalid_field(
                    "cursor",
                    "the cursor belongs to a listing with other status or since parameters",
                ));
            }
            Some(cursor.after)
        }
    };
    let limit = s.page_limit(q.limit);
    let mut rows = s
        .store
        .list_orders(&filter, after, limit + 1, tokens.for_all())
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|o| {
            OrdersCursor {
                map_version,
                status: filter.status.clone().unwrap_or_default(),
                since: filter.since,
                after: OrderPosition::of(o),
            }
            .encode()
        })
    } else {
        None
    };
    let data = rows
        .iter()
        .map(|o| project(&OrderView::from(o), q.fields.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &Page { data, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_cursors_round_trip() {
        let cursor = OrdersCursor {
            map_version: 3,
            status: "paid".into(),
            since: Some(-5),
            after: OrderPosition {
                created_at: 1_700_000_000_000,
                id: 1025,
            },
        };
        assert_eq!(OrdersCursor::decode(&cursor.encode()).unwrap(), cursor);
        let open = OrdersCursor {
            status: String::new(),
            since: None,
            ..cursor
        };
        assert_eq!(OrdersCursor::decode(&open.encode()).unwrap(), open);
        assert!(OrdersCursor::decode(&encode_cursor_text("orders", "1|x")).is_err());
        assert!(OrdersCursor::decode(&encode_cursor_text("p", "1|||1|1")).is_err());
    }
}
