//! `/admin/*`: operators' views and levers. The outbox rows waiting for the
//! queue's relay (`GET /admin/outbox`), across every shard; and the cache:
//! its state and hottest keys (`GET /admin/cache`), purges of everything or
//! of a key prefix on every instance and in Redis (`POST
//! /admin/cache/purge`), and an immediate flush of this instance's
//! write-behind entries (`POST /admin/cache/flush`).
//!
//! These routes serve the same listener as the api (there is no separate
//! admin port for the api yet); put the gateway's routing or a network
//! policy in front of them in a real deployment.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use scalestack_cache::{CacheError, Resource, WriteStrategy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorDoc};
use super::extract::{JsonBody, decode_cursor_text, encode_cursor_text, parse_query};
use super::views::{OutboxRowView, json_response};

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_outbox))
        .routes(routes!(cache_status))
        .routes(routes!(purge_cache))
        .routes(routes!(flush_cache))
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

// === the cache ===

/// Hot keys listed by default, and at most.
const HOT_KEYS_DEFAULT: u32 = 10;
const HOT_KEYS_MAX: u32 = 64;

/// The state of this instance's cache.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CacheStatus {
    /// This api instance.
    instance: String,
    /// Whether the cache holds anything (`cache.enabled`).
    enabled: bool,
    /// The Redis L2: null when none is configured.
    l2: Option<L2Status>,
    /// How writes reach the other instances' L1: `udp`, `redis` or `off`.
    invalidation_transport: &'static str,
    /// Whether invalidations from other instances are known to arrive.
    invalidation_up: bool,
    /// Every cached resource of this instance.
    resources: Vec<ResourceStatus>,
    /// The hottest keys (`resource:id`) by approximate recent lookups.
    hot_keys: Vec<HotKey>,
}

/// The Redis L2 as this instance sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct L2Status {
    /// The circuit breaker in front of Redis: `closed`, `open`, `half_open`.
    breaker: &'static str,
}

/// Settings and counters of one resource since this instance started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResourceStatus {
    /// Resource name (the first part of its keys).
    name: &'static str,
    /// `cache_aside`, `write_through` or `write_behind`.
    strategy: &'static str,
    /// Time to live of a value, in seconds.
    ttl_s: u64,
    /// Time to live of a "not found", in seconds.
    negative_ttl_s: u64,
    /// Version in the resource's L2 keys.
    version: u32,
    /// Reads answered by L1.
    l1_hits: u64,
    /// Reads L1 could not answer.
    l1_misses: u64,
    /// L1 misses answered by L2.
    l2_hits: u64,
    /// L1 misses L2 could not answer.
    l2_misses: u64,
    /// L1 misses for which L2 was skipped (breaker open) or failed.
    l2_unavailable: u64,
    /// Loads from the store.
    loads: u64,
    /// Share of reads answered without a load; null before the first read.
    hit_ratio: Option<f64>,
    /// Acknowledged write-behind entries not yet in the store.
    pending_writes: usize,
}

impl ResourceStatus {
    fn of<V: Send + Sync + 'static>(r: &Resource<V>) -> Self {
        let opts = r.options();
        let stats = r.stats();
        Self {
            name: r.name(),
            strategy: match opts.strategy {
                WriteStrategy::CacheAside => "cache_aside",
                WriteStrategy::WriteThrough => "write_through",
                WriteStrategy::WriteBehind => "write_behind",
            },
            ttl_s: opts.ttl.as_secs(),
            negative_ttl_s: opts.negative_ttl.as_secs(),
            version: opts.version,
            l1_hits: stats.l1_hits,
            l1_misses: stats.l1_misses,
            l2_hits: stats.l2_hits,
            l2_misses: stats.l2_misses,
            l2_unavailable: stats.l2_unavailable,
            loads: stats.loads,
            hit_ratio: stats.hit_ratio(),
            pending_writes: r.pending_writes(),
        }
    }
}

/// One hot key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HotKey {
    /// `resource:id`.
    key: String,
    /// Approximate recent lookups.
    requests: u64,
}

/// The state of this instance's cache: L2 breaker, invalidation channel,
/// per-resource counters and the hottest keys (`limit` of them, default 10,
/// at most 64), so that a celebrity key is visible.
#[utoipa::path(
    get, path = "/admin/cache", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "Hot keys to list (default 10, at most 64)")),
    responses(
        (status = 200, description = "The cache's state", body = CacheStatus),
        (status = 400, description = "Bad parameter", body = ErrorDoc),
    )
)]
pub(crate) async fn cache_status(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(q.as_deref(), &["limit"])?;
    let top = q.limit.unwrap_or(HOT_KEYS_DEFAULT).min(HOT_KEYS_MAX);
    let status = CacheStatus {
        instance: s.instance.to_string(),
        enabled: s.cache.is_enabled(),
        l2: s.cache.l2_breaker().map(|b| L2Status {
            breaker: b.as_str(),
        }),
        invalidation_transport: s.cache.invalidation_transport(),
        invalidation_up: s.cache.invalidation_up(),
        resources: vec![
            ResourceStatus::of(&s.users),
            ResourceStatus::of(&s.products),
            ResourceStatus::of(&s.activity),
            ResourceStatus::of(&s.pages.pages),
        ],
        hot_keys: s
            .cache
            .hot_keys(top as usize)
            .into_iter()
            .map(|(key, requests)| HotKey { key, requests })
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &status))
}

/// What to purge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeRequest {
    /// `""` for everything; a resource (`users`, `products`,
    /// `user_activity`, `responses`); or a resource and an id prefix
    /// (`users:42` drops users 42, 420, 4200...; `responses:products`
    /// drops every cached page of `GET /products`).
    prefix: String,
}

/// What a purge did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PurgeResult {
    /// The prefix purged (`""`: everything).
    prefix: String,
    /// Keys deleted from the Redis L2 (0 without one).
    l2_keys: u64,
    /// Whether the other instances were told to purge their L1.
    broadcast: bool,
}

/// Checks a purge prefix against the resources this service caches.
fn check_prefix(s: &AppState, prefix: &str) -> Result<(), ApiError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let names = [
        s.users.name(),
        s.products.name(),
        s.activity.name(),
        s.pages.pages.name(),
    ];
    let (resource, id_prefix) = prefix.split_once(':').unwrap_or((prefix, ""));
    if !names.contains(&resource) {
        return Err(ApiError::invalid_field(
            "prefix",
            format!(
                "unknown resource {resource:?}; prefix must be \"\" (everything), a resource \
                 ({}) or resource:id-prefix",
                names.join(", ")
            ),
        ));
    }
    // Responses are keyed by path-like strings, the others by integer ids.
    if resource != s.pages.pages.name() && !id_prefix.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid_field(
            "prefix",
            format!("the id part of {prefix:?} must be digits (ids are integers)"),
        ));
    }
    Ok(())
}

/// Drops cached entries on every instance and in Redis: everything
/// (`{"prefix": ""}`), one resource, or the ids of a resource that start
/// with given digits.
#[utoipa::path(
    post, path = "/admin/cache/purge", tag = "admin",
    request_body = PurgeRequest,
    responses(
        (status = 200, description = "Purged", body = PurgeResult),
        (status = 400, description = "Malformed body or unknown prefix (`field` = `prefix`)", body = ErrorDoc),
        (status = 503, description = "Every L1 was purged but Redis could not be reached; retry", body = ErrorDoc),
    )
)]
pub(crate) async fn purge_cache(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<PurgeRequest>,
) -> Result<Response, ApiError> {
    check_prefix(&s, &body.prefix)?;
    match s.cache.purge_prefix(&body.prefix).await {
        Ok(report) => {
            tracing::info!(prefix = %body.prefix, l2_keys = report.l2_keys, "cache purged");
            let result = PurgeResult {
                prefix: body.prefix,
                l2_keys: report.l2_keys,
                broadcast: report.broadcast,
            };
            Ok(json_response(StatusCode::OK, &result))
        }
        Err(error) => Err(cache_unavailable(&error, "the L1 caches were purged, but")),
    }
}

/// What a flush did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FlushResult {
    /// Write-behind entries written to the store.
    written: usize,
}

/// Writes this instance's pending write-behind entries to the store now
/// (they are flushed every `cache.write_behind.flush_interval` anyway), e.g.
/// before maintenance or to read them back from the store at once.
#[utoipa::path(
    post, path = "/admin/cache/flush", tag = "admin",
    responses(
        (status = 200, description = "Flushed", body = FlushResult),
        (status = 503, description = "The store refused the batch; the entries stay pending", body = ErrorDoc),
    )
)]
pub(crate) async fn flush_cache(State(s): State<AppState>) -> Result<Response, ApiError> {
    match s.cache.flush_write_behind().await {
        Ok(written) => Ok(json_response(StatusCode::OK, &FlushResult { written })),
        Err(error) => Err(cache_unavailable(&error, "")),
    }
}

/// A 503 for a cache operation that depends on Redis or the store.
fn cache_unavailable(error: &CacheError, done: &str) -> ApiError {
    tracing::warn!(%error, "cache operation failed");
    let message = match error {
        CacheError::L2Unavailable { .. } => {
            format!("{done} the Redis L2 could not be reached; retry later")
        }
        other => format!("{done} {other}; retry later"),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cache_unavailable",
        message.trim_start(),
    )
}
