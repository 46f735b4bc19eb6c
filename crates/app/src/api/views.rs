//! The JSON representation of each resource, with `?fields=` projection.
//!
//! The views are also the OpenAPI schemas of the resources (utoipa), so the
//! published document cannot drift from what the handlers send.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scalestack_store::{OrderRecord, OutboxRow, ProductRecord, UserRecord};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

/// Fields of a user, in output order.
pub const USER_FIELDS: &[&str] = &["id", "email", "name", "created_at", "updated_at"];
/// Fields of a product.
pub const PRODUCT_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "price_cents",
    "stock",
    "created_at",
    "updated_at",
];
/// Fields of an order.
pub const ORDER_FIELDS: &[&str] = &[
    "id",
    "user_id",
    "product_id",
    "quantity",
    "unit_price_cents",
    "total_cents",
    "status",
    "created_at",
];

/// Milliseconds since the epoch as an RFC 3339 timestamp in UTC.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A user as the api shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView<'a> {
    /// Global user id.
    id: i64,
    /// Contact address.
    email: &'a str,
    /// Display name.
    name: &'a str,
    /// Creation time (RFC 3339, UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// Last change (RFC 3339, UTC).
    #[schema(format = DateTime)]
    updated_at: String,
}

impl<'a> From<&'a UserRecord> for UserView<'a> {
    fn from(u: &'a UserRecord) -> Self {
        Self {
            id: u.id,
            email: &u.email,
            name: &u.name,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// A product as the api shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Product)]
pub struct ProductView<'a> {
    /// Product id.
    id: i64,
    /// Name.
    name: &'a str,
    /// Free text.
    description: &'a str,
    /// Price in cents.
    price_cents: i64,
    /// Units in stock.
    stock: i64,
    /// Creation time (RFC 3339, UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// Last change (RFC 3339, UTC).
    #[schema(format = DateTime)]
    updated_at: String,
}

impl<'a> From<&'a ProductRecord> for ProductView<'a> {
    fn from(p: &'a ProductRecord) -> Self {
        Self {
            id: p.id,
            name: &p.name,
            description: &p.description,
            price_cents: p.price_cents,
            stock: p.stock,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// An order as the api shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
pub struct OrderView<'a> {
    /// Order id; the shard can be told from it alone.
    id: i64,
    /// The user who ordered.
    user_id: i64,
    /// The product ordered.
    product_id: i64,
    /// Units ordered.
    quantity: i64,
    /// Price per unit when the order was placed, in cents.
    unit_price_cents: i64,
    /// `quantity * unit_price_cents`.
    total_cents: i64,
    /// `placed` when written; later stages are the worker's.
    status: &'a str,
    /// Creation time (RFC 3339, UTC).
    #[schema(format = DateTime)]
    created_at: String,
}

impl<'a> From<&'a OrderRecord> for OrderView<'a> {
    fn from(o: &'a OrderRecord) -> Self {
        Self {
            id: o.id,
            user_id: o.user_id,
            product_id: o.product_id,
            quantity: o.quantity,
            unit_price_cents: o.unit_price_cents,
            total_cents: o.total_cents,
            status: &o.status,
            created_at: rfc3339(o.created_at),
        }
    }
}

/// An outbox row as the admin listing shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OutboxRow)]
pub struct OutboxRowView<'a> {
    /// Index of the shard the row lives on.
    shard: u16,
    /// Row id, increasing within the shard.
    id: i64,
    /// Topic the event goes to.
    topic: &'a str,
    /// Partitioning key.
    key: &'a str,
    /// The event.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// When it was written (RFC 3339, UTC).
    #[schema(format = DateTime)]
    created_at: String,
    /// When the relay published it; null while it waits.
    #[schema(format = DateTime)]
    sent_at: Option<String>,
}

impl<'a> From<&'a OutboxRow> for OutboxRowView<'a> {
    fn from(r: &'a OutboxRow) -> Self {
        Self {
            shard: r.shard,
            id: r.id,
            topic: &r.topic,
            key: &r.key,
            // A payload that is not JSON is shown as a string rather than hidden.
            payload: serde_json::from_str(&r.payload)
                .unwrap_or_else(|_| serde_json::Value::String(r.payload.clone())),
            created_at: rfc3339(r.created_at),
            sent_at: r.sent_at.map(rfc3339),
        }
    }
}

/// Serializes `view`, keeping only `fields` when given (already checked
/// against the resource's field list).
pub fn project<T: Serialize>(view: &T, fields: Option<&[String]>) -> serde_json::Value {
    let value = serde_json::to_value(view).expect("views serialize");
    match (fields, value) {
        (Some(fields), serde_json::Value::Object(mut map)) => {
            map.retain(|k, _| fields.iter().any(|f| f == k));
            serde_json::Value::Object(map)
        }
        (_, value) => value,
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("responses serialize");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// One resource as a JSON response, projected to `fields`.
pub fn resource_response<T: Serialize>(
    status: StatusCode,
    view: &T,
    fields: Option<&[String]>,
) -> Response {
    match fields {
        None => json_response(status, view),
        Some(_) => json_response(status, &project(view, fields)),
    }
}

/// A page of a list: `{"data": [...], "next_cursor": "..." | null}`.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The items.
    pub data: Vec<serde_json::Value>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            id: 7,
            email: "a@example.com".into(),
            name: "A".into(),
            created_at: 1_700_000_000_123,
            updated_at: 1_700_000_000_123,
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn views_show_every_listed_field() {
        let u = user();
        let v = project(&UserView::from(&u), None);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = USER_FIELDS.to_vec();
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
    }

    #[test]
    fn projection_keeps_only_the_requested_fields() {
        let u = user();
        let fields = vec!["name".to_owned(), "id".to_owned()];
        let v = project(&UserView::from(&u), Some(&fields));
        assert_eq!(v, serde_json::json!({"id": 7, "name": "A"}));
    }
}
