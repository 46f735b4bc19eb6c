//! Orders: placed in one transaction with their outbox row (and idempotency
//! record) on the user's shard, found by id alone, listed per user, and
//! listed across every shard by time (scatter-gather).

use futures::future::try_join_all;

use crate::backend::{BeginWrite as _, Pool};
use crate::idempotency::{INSERT_KEY, SELECT_KEY, StoredKey, lock_id};
use crate::{
    Consistency, IdempotencyKey, NewOrder, ORDERS_TOPIC, OrderPlaced, OrderRecord, Placement,
    Store, StoreError, StoredResponse, Written, ids, now_ms, on_pool,
};

/// Which orders a cross-shard listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only orders with this status.
    pub status: Option<String>,
    /// Only orders created at or after this time (ms since the epoch).
    pub since: Option<i64>,
}

/// A place in the cross-shard order of orders: `(created_at, id)`. Order ids
/// are unique across shards, so the order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderPosition {
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Order id.
    pub id: i64,
}

impl OrderPosition {
    /// The position of `order`.
    pub fn of(order: &OrderRecord) -> Self {
        Self {
            created_at: order.created_at,
            id: order.id,
        }
    }
}

fn missing_user(user_id: i64) -> StoreError {
    StoreError::Missing {
        entity: "user",
        id: user_id,
    }
}

/// What the write transaction decided, before the token is read.
enum Decided {
    Done(Placement),
    MissingUser,
}

impl Store {
    /// Places an order without an idempotency key: the order row and its
    /// `order.placed` outbox row are written in one transaction on the
    /// user's shard.
    ///
    /// Fails with [`StoreError::Missing`] when the user does not exist.
    pub async fn create_order(&self, new: &NewOrder) -> Result<Written<OrderRecord>, StoreError> {
        let placed = self
            .place_order(new, None, |_| unreachable!("no key, nothing to render"))
            .await?;
        match placed.value {
            Placement::Created(order) => Ok(Written {
                value: order,
                token: placed.token,
            }),
            other => unreachable!("a write without a key is always created, got {other:?}"),
        }
    }

    /// Places an order honouring an idempotency key: in one transaction on
    /// the user's shard, an unexpired record of the key replays its response
    /// (or refuses another payload); otherwise the order, its outbox row and
    /// the key's record (with the response `render` makes of the order) are
    /// written together.
    ///
    /// On PostgreSQL a second request with the same key while the first one's
    /// transaction is open gets [`Placement::InFlight`] (an advisory lock);
    /// on SQLite writers are serialized, so it waits and then replays.
    ///
    /// Fails with [`StoreError::Missing`] when the user does not exist; no
    /// record is kept then, so a retry after creating the user succeeds.
    pub async fn place_order(
        &self,
        new: &NewOrder,
        key: Option<&IdempotencyKey>,
        render: impl FnOnce(&OrderRecord) -> StoredResponse,
    ) -> Result<Written<Placement>, StoreError> {
        let bucket = self.inner.map.bucket_of_user(new.user_id);
        let shard = self.shard_of_user(new.user_id);
        let expires_at = now_ms().saturating_add(
            i64::try_from(self.inner.idempotency_retention.as_millis()).unwrap_or(i64::MAX),
        );
        let want_lsn = shard.hands_out_tokens();
        let (decided, lsn) = shard
            .write("create_order", async {
                match &shard.primary.pool {
                    Pool::Sqlite(p) => place_sqlite(p, new, bucket, key, expires_at, render)
                        .await
                        .map(|d| (d, None)),
                    Pool::Postgres(p) => {
                        place_postgres(p, new, bucket, key, expires_at, render, want_lsn).await
                    }
                }
            })
            .await?;
        match decided {
            Decided::MissingUser => Err(missing_user(new.user_id)),
            Decided::Done(placement) => {
                let token = match (&placement, lsn) {
                    (Placement::Created(_), Some(lsn)) => Some(shard.token(lsn)),
                    (Placement::Created(_), None) => shard.token_after_commit().await,
                    _ => None,
                };
                Ok(Written {
                    value: placement,
                    token,
                })
            }
        }
    }

    /// Reads an order by id; the id alone tells the shard.
    pub async fn get_order(
        &self,
        id: i64,
        consistency: Consistency,
    ) -> Result<Option<OrderRecord>, StoreError> {
        let Some(bucket) = ids::order_bucket(id) else {
            return Ok(None);
        };
        self.shard(self.inner.map.shard_of_bucket(bucket))
            .read("get_order", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, OrderRecord>(
                    "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, status, \
                     created_at FROM orders WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// Sets the status of an order (the worker's stages); `None` when there
    /// is no such order.
    pub async fn set_order_status(
        &self,
        id: i64,
        status: &str,
    ) -> Result<Written<Option<OrderRecord>>, StoreError> {
        let Some(bucket) = ids::order_bucket(id) else {
            return Ok(Written {
                value: None,
                token: None,
            });
        };
        let shard = self.shard(self.inner.map.shard_of_bucket(bucket));
        let order = shard
            .write("set_order_status", async {
                on_pool!(&shard.primary.pool, p => sqlx::query_as::<_, OrderRecord>(
                    "UPDATE orders SET status = $2 WHERE id = $1 RETURNING id, user_id, product_id, \
                     quantity, unit_price_cents, total_cents, status, created_at",
                )
                .bind(id)
                .bind(status)
                .fetch_optional(p)
                .await)
            })
            .await?;
        let token = match order {
            Some(_) => shard.token_after_commit().await,
            None => None,
        };
        Ok(Written {
            value: order,
            token,
        })
    }

    /// A page of a user's orders, newest first, starting below id `before`.
    pub async fn list_user_orders(
        &self,
        user_id: i64,
        before: Option<i64>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        self.shard_of_user(user_id)
            .read("list_user_orders", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, OrderRecord>(
                    "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, status, \
                     created_at FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(user_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await)
            })
            .await
    }

    /// The first `limit` orders of every user, across every shard, in
    /// `(created_at, id)` order, that pass `filter` and come after `after`.
    ///
    /// Every shard is asked in parallel for its first `limit` matches; the
    /// answers are merged and cut to `limit`. The last order of a page is the
    /// `after` of the next page. An order committed later with a
    /// `created_at` before a page already read is not returned by later
    /// pages: the listing is a consistent walk over what existed, not a feed.
    pub async fn list_orders(
        &self,
        filter: &OrderFilter,
        after: Option<OrderPosition>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let after = after.unwrap_or(OrderPosition {
            created_at: i64::MIN,
            id: i64::MIN,
        });
        let since = filter.since.unwrap_or(i64::MIN);
        let limit_sql = i64::from(limit);
        let per_shard = try_join_all(self.inner.shards.iter().map(|shard| {
            let status = filter.status.clone();
            shard.read("list_orders", consistency, move |pool| {
                let status = status.clone();
                async move {
                    match status {
                        Some(status) => on_pool!(&pool, p => sqlx::query_as::<_, OrderRecord>(
                            "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, \
                             status, created_at FROM orders \
                             WHERE status = $1 AND (created_at, id) > ($2, $3) AND created_at >= $4 \
                             ORDER BY created_at, id LIMIT $5",
                        )
                        .bind(status)
                        .bind(after.created_at)
                        .bind(after.id)
                        .bind(since)
                        .bind(limit_sql)
                        .fetch_all(p)
                        .await),
                        None => on_pool!(&pool, p => sqlx::query_as::<_, OrderRecord>(
                            "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, \
                             status, created_at FROM orders \
                             WHERE (created_at, id) > ($1, $2) AND created_at >= $3 \
                             ORDER BY created_at, id LIMIT $4",
                        )
                        .bind(after.created_at)
                        .bind(after.id)
                        .bind(since)
                        .bind(limit_sql)
                        .fetch_all(p)
                        .await),
                    }
                }
            })
        }))
        .await?;
        Ok(merge_pages(per_shard, limit as usize))
    }
}

/// Merges per-shard pages, each sorted by position, into the first `limit`
/// orders overall.
pub(crate) fn merge_pages(pages: Vec<Vec<OrderRecord>>, limit: usize) -> Vec<OrderRecord> {
    let mut all: Vec<OrderRecord> = pages.into_iter().flatten().collect();
    all.sort_unstable_by_key(OrderPosition::of);
    all.truncate(limit);
    all
}

fn new_order_record(id: i64, new: &NewOrder, created_at: i64) -> OrderRecord {
    OrderRecord {
        id,
        user_id: new.user_id,
        product_id: new.product_id,
        quantity: new.quantity,
        unit_price_cents: new.unit_price_cents,
        total_cents: new.quantity * new.unit_price_cents,
        status: "placed".into(),
        created_at,
    }
}

fn event_of(order: &OrderRecord) -> String {
    serde_json::to_string(&OrderPlaced {
        kind: "order.placed".into(),
        order: order.clone(),
    })
    .expect("an event serializes")
}

fn headers_text(response: &StoredResponse) -> String {
    serde_json::to_string(&response.headers).expect("headers serialize")
}

/// The SQLite transaction: writers are serialized by `BEGIN IMMEDIATE`, so
/// reading the key and then writing cannot race another writer.
async fn place_sqlite(
    pool: &sqlx::SqlitePool,
    new: &NewOrder,
    bucket: u32,
    key: Option<&IdempotencyKey>,
    expires_at: i64,
    render: impl FnOnce(&OrderRecord) -> StoredResponse,
) -> Result<Decided, sqlx::Error> {
    let mut tx = pool.begin_write().await?;
    let now = now_ms();
    if let Some(key) = key {
        let stored: Option<StoredKey> = sqlx::query_as(SELECT_KEY)
            .bind(new.user_id)
            .bind(&key.key)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(stored) = stored {
            tx.rollback().await?;
            return Ok(Decided::Done(stored.outcome(key)));
        }
    }
    let user_exists = sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE id = $1")
        .bind(new.user_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if !user_exists {
        tx.rollback().await?;
        return Ok(Decided::MissingUser);
    }
    let seq: i64 = sqlx::query_scalar(
        "UPDATE id_sequences SET next_value = next_value + 1 WHERE name = 'orders' \
         RETURNING next_value - 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    let order = new_order_record(ids::order_id(seq, bucket), new, now);
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, unit_price_cents, total_cents, \
         status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(order.id)
    .bind(order.user_id)
    .bind(order.product_id)
    .bind(order.quantity)
    .bind(order.unit_price_cents)
    .bind(order.total_cents)
    .bind(&order.status)
    .bind(order.created_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO outbox (topic, key, payload, created_at) VALUES ($1, $2, $3, $4)")
        .bind(ORDERS_TOPIC)
        .bind(order.user_id.to_string())
        .bind(event_of(&order))
        .bind(order.created_at)
        .execute(&mut *tx)
        .await?;
    if let Some(key) = key {
        let response = render(&order);
        sqlx::query(INSERT_KEY)
            .bind(new.user_id)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(i64::from(response.status))
            .bind(headers_text(&response))
            .bind(&response.body)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Decided::Done(Placement::Created(order)))
}

/// The PostgreSQL transaction: the order id comes from a sequence (no row
/// lock), the user's existence is the foreign key's business, and a key is
/// held by a transaction-scoped advisory lock while its order is written.
///
/// With `want_lsn`, the WAL position after the commit is read on the same
/// connection (for the writer's consistency token), saving a second trip
/// through the pool.
async fn place_postgres(
    pool: &sqlx::PgPool,
    new: &NewOrder,
    bucket: u32,
    key: Option<&IdempotencyKey>,
    expires_at: i64,
    render: impl FnOnce(&OrderRecord) -> StoredResponse,
    want_lsn: bool,
) -> Result<(Decided, Option<u64>), sqlx::Error> {
    use sqlx::Acquire as _;
    let mut conn = pool.acquire().await?;
    let decided =
        place_postgres_tx(conn.begin().await?, new, bucket, key, expires_at, render).await?;
    let lsn = match decided {
        Decided::Done(Placement::Created(_)) if want_lsn => {
            let lsn: i64 = sqlx::query_scalar(crate::replica::CURRENT_LSN)
                .fetch_one(&mut *conn)
                .await?;
            Some(lsn.max(0) as u64)
        }
        _ => None,
    };
    Ok((decided, lsn))
}

async fn place_postgres_tx(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewOrder,
    bucket: u32,
    key: Option<&IdempotencyKey>,
    expires_at: i64,
    render: impl FnOnce(&OrderRecord) -> StoredResponse,
) -> Result<Decided, sqlx::Error> {
    let now = now_ms();
    if let Some(key) = key {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock_id(new.user_id, &key.key))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(Decided::Done(Placement::InFlight));
        }
        let stored: Option<StoredKey> = sqlx::query_as(SELECT_KEY)
            .bind(new.user_id)
            .bind(&key.key)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(stored) = stored {
            tx.rollback().await?;
            return Ok(Decided::Done(stored.outcome(key)));
        }
    }
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO orders (id, user_id, product_id, quantity, unit_price_cents, total_cents, \
         status, created_at) VALUES (nextval('order_seq') * 1024 + $1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING id",
    )
    .bind(i64::from(bucket))
    .bind(new.user_id)
    .bind(new.product_id)
    .bind(new.quantity)
    .bind(new.unit_price_cents)
    .bind(new.quantity * new.unit_price_cents)
    .bind("placed")
    .bind(now)
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        // 23503: foreign_key_violation; the user does not exist.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            tx.rollback().await?;
            return Ok(Decided::MissingUser);
        }
        Err(other) => return Err(other),
    };
    let order = new_order_record(id, new, now);
    sqlx::query("INSERT INTO outbox (topic, key, payload, created_at) VALUES ($1, $2, $3, $4)")
        .bind(ORDERS_TOPIC)
        .bind(order.user_id.to_string())
        .bind(event_of(&order))
        .bind(order.created_at)
        .execute(&mut *tx)
        .await?;
    if let Some(key) = key {
        let response = render(&order);
        sqlx::query(INSERT_KEY)
            .bind(new.user_id)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(i64::from(response.status))
            .bind(headers_text(&response))
            .bind(&response.body)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Decided::Done(Placement::Created(order)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: i64, created_at: i64) -> OrderRecord {
        new_order_record(
            id,
            &NewOrder {
                user_id: 1,
                product_id: 1,
                quantity: 1,
                unit_price_cents: 1,
            },
            created_at,
        )
    }

    #[test]
    fn pages_merge_by_time_then_id() {
        let merged = merge_pages(
            vec![
                vec![order(5, 10), order(9, 30)],
                vec![order(3, 10), order(4, 20), order(8, 40)],
                vec![],
            ],
            4,
        );
        let ids: Vec<i64> = merged.iter().map(|o| o.id).collect();
        assert_eq!(ids, [3, 5, 4, 9]);
    }
}
