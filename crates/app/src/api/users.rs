//! `/users`: create, read (through the cache, projected), patch (by the
//! `users` resource's write strategy), a user's orders, and the last-seen
//! time (`/users/{id}/seen`, written behind the cache by default).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use scalestack_cache::WriteStrategy;
use scalestack_store::{
    Consistency, NewUser, StoreError, UserActivity, UserPatch, UserRecord, now_ms,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cached::write_error;
use super::consistency::{Tokens, attach};
use super::error::{ApiError, ErrorDoc};
use super::extract::{Id, JsonBody, check_fields, decode_cursor, parse_query};
use super::openapi::OrderPage;
use super::views::rfc3339;
use super::views::{
    ORDER_FIELDS, OrderView, Page, USER_FIELDS, UserView, json_response, project, resource_response,
};
use super::{AppState, created, next_cursor, validate_email, validate_text};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(get_user, patch_user))
        .routes(routes!(list_user_orders))
        .routes(routes!(get_last_seen, record_seen))
}

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    /// Contact address, `name@domain`.
    email: String,
    /// Display name, 1 to 200 characters.
    name: String,
    /// The user's region, when the store uses a geographic shard map.
    #[serde(default)]
    region: Option<String>,
}

/// Fields of a user to change; at least one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchUser {
    /// New contact address.
    email: Option<String>,
    /// New display name.
    name: Option<String>,
}

/// Creates a user on the shard its new id maps to.
#[utoipa::path(
    post, path = "/users", tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView,
            headers(
                ("Location" = String, description = "The new user's URL"),
                ("Consistency-Token" = String, description = "Send back on reads to see this write (databases with replicas only)"),
            )),
        (status = 400, description = "Malformed body or invalid field (`field` names it), or a region the shard map does not have", body = ErrorDoc),
        (status = 503, description = "The store is overloaded; retry after `Retry-After`", body = ErrorDoc),
    )
)]
pub(crate) async fn create_user(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<Response, ApiError> {
    validate_email(&body.email)?;
    validate_text("name", &body.name, 1, 200)?;
    let written = s
        .store
        .create_user(&NewUser {
            email: body.email,
            name: body.name,
            region: body.region,
        })
        .await
        .map_err(|e| match e {
            StoreError::UnknownRegion { region, known } => ApiError::invalid_field(
                "region",
                if known.is_empty() {
                    format!("region {region:?} given, but this store's shard map has no regions")
                } else {
                    format!("unknown region {region:?}; known regions: {known}")
                },
            ),
            other => other.into(),
        })?;
    let user = &written.value;
    // Ids are handed out in order, so a client may have asked for this one
    // before it existed: a cached "not found" must not outlive the create.
    let new = user.clone();
    s.users
        .write_with(user.id, async { Ok::<_, StoreError>(Some(new)) })
        .await
        .map_err(write_error)?;
    let mut response = created(&format!("/users/{}", user.id), &UserView::from(user));
    attach(&mut response, written.token);
    Ok(response)
}

/// Reads a user, optionally only some fields.
#[utoipa::path(
    get, path = "/users/{id}", tag = "users",
    params(
        ("id" = i64, Path, description = "User id"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
        ("Consistency-Token" = Option<String>, Header, description = "Tokens of earlier writes: the read reflects them"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier read: 304 when unchanged"),
    ),
    responses(
        (status = 200, description = "The user", body = UserView,
            headers(("ETag" = String, description = "Weak entity tag of the representation"))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad id, unknown parameter or field", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
        (status = 406, description = "The client accepts neither JSON nor MessagePack", body = ErrorDoc),
    )
)]
pub(crate) async fn get_user(
    State(s): State<AppState>,
    Id(id): Id,
    tokens: Tokens,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["fields"])?;
    check_fields(q.fields.as_deref(), USER_FIELDS)?;
    let user = s
        .user(id, &tokens)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    Ok(resource_response(
        StatusCode::OK,
        &UserView::from(&*user),
        q.fields.as_deref(),
    ))
}

/// Changes a user's email or name.
#[utoipa::path(
    patch, path = "/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "User id")),
    request_body = PatchUser,
    responses(
        (status = 200, description = "The changed user", body = UserView,
            headers(("Consistency-Token" = String, description = "Send back on reads to see this write"))),
        (status = 400, description = "Malformed body, invalid field or empty patch", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
    )
)]
pub(crate) async fn patch_user(
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
    if s.users.options().strategy == WriteStrategy::WriteBehind {
        return patch_behind(&s, id, &patch).await;
    }
    let mut token = None;
    let user = if id > 0 {
        s.users
            .write_with(id, async {
                let written = s.store.update_user(id, &patch).await?;
                token = written.token;
                Ok(written.value)
            })
            .await
            .map_err(write_error)?
    } else {
        None
    };
    let user = user.ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    let mut response = json_response(StatusCode::OK, &UserView::from(&*user));
    attach(&mut response, token);
    Ok(response)
}

/// A patch under write-behind: the new profile is made from the current one
/// (the pending one if an earlier patch is not flushed yet) and acknowledged
/// once logged. Its `updated_at` never goes backwards, because the flush
/// keeps the newer of two profiles. No consistency token: the store does not
/// have the write yet, and this instance answers reads of it from the log.
async fn patch_behind(s: &AppState, id: i64, patch: &UserPatch) -> Result<Response, ApiError> {
    let current = s
        .user(id, &Tokens::default())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    let next = UserRecord {
        email: patch.email.clone().unwrap_or_else(|| current.email.clone()),
        name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
        updated_at: now_ms().max(current.updated_at),
        ..(*current).clone()
    };
    let user = s
        .users
        .write(id, next, |_| async { Ok::<_, StoreError>(()) })
        .await
        .map_err(write_error)?;
    Ok(json_response(StatusCode::OK, &UserView::from(&*user)))
}

/// A page of a user's orders, newest first.
#[utoipa::path(
    get, path = "/users/{id}/orders", tag = "users",
    params(
        ("id" = i64, Path, description = "User id"),
        ("limit" = Option<u32>, Query, description = "Page size (capped at api.max_page_limit)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("fields" = Option<String>, Query, description = "Comma-separated fields to return"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad parameter or cursor", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
    )
)]
pub(crate) async fn list_user_orders(
    State(s): State<AppState>,
    Id(id): Id,
    tokens: Tokens,
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
    if s.user(id, &tokens).await?.is_none() {
        return Err(ApiError::not_found(format!("user {id} does not exist")));
    }
    let consistency = tokens.for_db(s.user_db(id));
    let mut rows = s
        .store
        .list_user_orders(id, before, limit + 1, consistency)
        .await?;
    let next_cursor = next_cursor(&mut rows, limit, |o| o.id, "o");
    let data = rows
        .iter()
        .map(|o| project(&OrderView::from(o), q.fields.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &Page { data, next_cursor }))
}

// === last seen ===

/// When a user was last seen.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LastSeenView {
    /// The user.
    id: i64,
    /// RFC 3339 time of the last `POST /users/{id}/seen`; null if never.
    last_seen_at: Option<String>,
}

impl From<&UserActivity> for LastSeenView {
    fn from(a: &UserActivity) -> Self {
        Self {
            id: a.id,
            last_seen_at: a.last_seen_at.map(rfc3339),
        }
    }
}

/// Reads when a user was last seen.
#[utoipa::path(
    get, path = "/users/{id}/seen", tag = "users",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "The last-seen time", body = LastSeenView),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, description = "Bad id or parameter", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
    )
)]
pub(crate) async fn get_last_seen(
    State(s): State<AppState>,
    Id(id): Id,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    parse_query(q.as_deref(), &[])?;
    let activity = if id > 0 {
        s.activity
            .get_or_load(id, s.store.get_user_activity(id, Consistency::Eventual))
            .await?
    } else {
        None
    };
    let activity =
        activity.ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    Ok(json_response(
        StatusCode::OK,
        &LastSeenView::from(&*activity),
    ))
}

/// Records that a user was seen now. Under the default write-behind
/// strategy the time is acknowledged once it is in this instance's durable
/// log and reaches the store in the next batch (`cache.write_behind`).
#[utoipa::path(
    post, path = "/users/{id}/seen", tag = "users",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "Recorded", body = LastSeenView),
        (status = 400, description = "Bad id", body = ErrorDoc),
        (status = 404, description = "No such user", body = ErrorDoc),
        (status = 503, description = "The time could not be logged; retry after `Retry-After`", body = ErrorDoc),
    )
)]
pub(crate) async fn record_seen(
    State(s): State<AppState>,
    Id(id): Id,
    tokens: Tokens,
) -> Result<Response, ApiError> {
    if s.user(id, &tokens).await?.is_none() {
        return Err(ApiError::not_found(format!("user {id} does not exist")));
    }
    let seen = UserActivity {
        id,
        last_seen_at: Some(now_ms()),
    };
    let store = s.store.clone();
    let activity = s
        .activity
        .write(id, seen, |a| async move {
            let at = a.last_seen_at.unwrap_or_default();
            store.record_last_seen(&[(a.id, at)]).await
        })
        .await
        .map_err(write_error)?;
    Ok(json_response(
        StatusCode::OK,
        &LastSeenView::from(&*activity),
    ))
}
