//! `/admin/*`: operators' views. Today: the outbox rows waiting for the
//! queue's relay (`GET /admin/outbox`), across every shard.
//!
//! These routes serve the same listener as the api (there is no separate
//! admin port for the api yet); put the gateway's routing or a network
//! policy in front of them in a real deployment.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorDoc};
use super::extract::{decode_cursor_text, encode_cursor_text, parse_query};
use super::views::{OutboxRowView, json_response};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_outbox))
}

/// A page of outbox rows.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutboxPage<'a> {
    /// The rows, by creation time.
    data: Vec<OutboxRowView<'a>>,
    /// Pass as `cursor` to get the next page; null on the last page.
    next_cursor: Option<String>,
}

const CURSOR_TAG: &str = "outbox";

fn invalid_cursor() -> ApiError {
    ApiError::invalid_field("cursor", "cursor is not one this list issued")
}

/// Outbox rows of every shard, oldest first; unsent ones only unless
/// `unsent=false`.
#[utoipa::path(
    get, path = "/admin/outbox", tag = "admin",
    params(
        ("unsent" = Option<bool>, Query, description = "Only rows the relay has not published (default true)"),
        ("limit" = Option<u32>, Query, description = "Page size (capped at api.max_page_limit)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of outbox rows", body = OutboxPage),
        (status = 400, description = "Bad parameter or cursor", body = ErrorDoc),
    )
)]
pub(crate) async fn list_outbox(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["unsent", "limit", "cursor"])?;
    let unsent_only = match q.get("unsent") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "unsent",
                format!("unsent must be true or false, got {other:?}"),
            ));
        }
    };
    let shards = usize::from(s.store.shard_map().shard_count());
    let mut positions = vec![0i64; shards];
    if let Some(cursor) = q.cursor.as_deref() {
        let text = decode_cursor_text(CURSOR_TAG, cursor)?;
        let (flag, ids) = text.split_once('|').ok_or_else(invalid_cursor)?;
        let parsed: Vec<i64> = ids
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| invalid_cursor())?;
        if parsed.len() != shards || flag != unsent_only.to_string() {
            return Err(invalid_cursor());
        }
        positions = parsed;
    }
    let limit = s.page_limit(q.limit);
    let mut rows = s
        .store
        .outbox_page(&positions, limit + 1, unsent_only)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    for row in &rows {
        positions[usize::from(row.shard)] = row.id;
    }
    let next_cursor = more.then(|| {
        let ids: Vec<String> = positions.iter().map(i64::to_string).collect();
        encode_cursor_text(CURSOR_TAG, &format!("{unsent_only}|{}", ids.join(",")))
    });
    let page = OutboxPage {
        data: rows.iter().map(OutboxRowView::from).collect(),
        next_cursor,
    };
    Ok(json_response(StatusCode::OK, &page))
}
