//! The relay's side of the outbox: every database's unsent rows (the user
//! shards' `order.*` events and the catalog's `job.*` events), marking them
//! sent, and deleting sent rows after their retention.
//!
//! The relay itself (publishing to the queue) lives in the worker; this
//! module only reads and writes rows, always on the primaries, which the
//! relay must follow exactly. It must not know the queue: a row's message id
//! is [`RelayRow::message_id`], a string the relay hands to whatever it
//! publishes to.
//!
//! Crash safety is the order of operations, not a transaction across two
//! systems: a row is marked sent only after its publish was acknowledged, so
//! a relay that dies in between publishes the row again with the same message
//! id, and consumers recognise it.
//!
//! It also places orders in bulk, each with its outbox row
//! ([`Store::insert_orders`]): the load that the relay's proof tests and the
//! end-to-end benchmark push through the flows.

use futures::future::try_join_all;
use sqlx::QueryBuilder;

use crate::backend::{BeginWrite as _, Pool};
use crate::replica::ReplicaSet;
use crate::{
    Consistency, DbId, NewOrder, ORDERS_TOPIC, OrderPlaced, OrderRecord, Store, StoreError, ids,
    now_ms, on_pool,
};

/// Ids marked sent per statement: one parameter each, well within both
/// engines' limits.
const MARK_CHUNK: usize = 1_000;

/// Orders written per multi-row statement by [`Store::insert_orders`]: 8
/// parameters a row, well within both engines' limits.
const INSERT_CHUNK: usize = 1_000;

/// An unsent outbox row of one database.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RelayRow {
    /// The database it lives in (not a column).
    #[sqlx(skip)]
    pub db: Option<DbId>,
    /// Row id, increasing within the database.
    pub id: i64,
    /// Topic the event goes to: `orders` or `jobs`.
    pub topic: String,
    /// Partitioning key (the user id of an order, the id of a job).
    pub key: String,
    /// The event as JSON text.
    pub payload: String,
    /// When it was written, ms since the epoch.
    pub created_at: i64,
}

impl RelayRow {
    /// The id its message carries, the same for every publish of the row:
    /// `shard-3-17` is row 17 of shard 3's outbox, `catalog-5` row 5 of the
    /// catalog's.
    pub fn message_id(&self) -> String {
        match self.db {
            Some(db) => format!("{db}-{}", self.id),
            None => format!("unknown-{}", self.id),
        }
    }
}

/// How far one database's outbox is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxLag {
    /// Rows not yet published.
    pub unsent: u64,
    /// Creation time of the oldest of them (ms since the epoch).
    pub oldest_created_at: Option<i64>,
}

impl Store {
    /// Every database with an outbox, catalog first, then the shards.
    pub fn outbox_databases(&self) -> Vec<DbId> {
        self.sets().map(|s| s.id).collect()
    }

    pub(crate) fn set_of(&self, db: DbId) -> Result<&ReplicaSet, StoreError> {
        match db {
            DbId::Catalog => Ok(self.catalog()),
            DbId::Shard(i) => self
                .inner
                .shards
                .get(usize::from(i))
                .ok_or_else(|| StoreError::UnknownDatabase(db.to_string())),
        }
    }

    /// The oldest unsent rows of `db`'s outbox, at most `limit`, by id.
    pub async fn outbox_pending(&self, db: DbId, limit: u32) -> Result<Vec<RelayRow>, StoreError> {
        let set = self.set_of(db)?;
        let limit = i64::from(limit);
        let mut rows: Vec<RelayRow> = set
            .read("outbox_pending", Consistency::Primary, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as(
                    "SELECT id, topic, key, payload, created_at FROM outbox \
                     WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(p)
                .await)
            })
            .await?;
        for row in &mut rows {
            row.db = Some(db);
        }
        Ok(rows)
    }

    /// Marks rows of `db`'s outbox sent at `at` (ms); returns how many were
    /// unsent until now. Rows already marked are left as they are.
    pub async fn mark_outbox_sent(
        &self,
        db: DbId,
        ids: &[i64],
        at: i64,
    ) -> Result<u64, StoreError> {
        let set = self.set_of(db)?;
        let mut marked = 0;
        for chunk in ids.chunks(MARK_CHUNK) {
            marked += set
                .write("mark_outbox_sent", async {
                    on_pool!(&set.primary.pool, p, Db => {
                        let mut q = QueryBuilder::<Db>::new("UPDATE outbox SET sent_at = ");
                        q.push_bind(at);
                        q.push(" WHERE sent_at IS NULL AND id IN (");
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        q.push(")");
                        q.build().execute(p).await.map(|r| r.rows_affected())
                    })
                })
                .await?;
        }
        Ok(marked)
    }

    /// Deletes rows of `db`'s outbox sent before `before` (ms); returns how many.
    pub async fn purge_sent_outbox(&self, db: DbId, before: i64) -> Result<u64, StoreError> {
        let set = self.set_of(db)?;
        set.write("purge_sent_outbox", async {
            on_pool!(&set.primary.pool, p => sqlx::query(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
            )
            .bind(before)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        })
        .await
    }

    /// How many rows of `db`'s outbox wait, and since when.
    pub async fn outbox_lag(&self, db: DbId) -> Result<OutboxLag, StoreError> {
        let set = self.set_of(db)?;
        let (unsent, oldest): (i64, Option<i64>) = set
            .read("outbox_lag", Consistency::Primary, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL",
                )
                .fetch_one(p)
                .await)
            })
            .await?;
        Ok(OutboxLag {
            unsent: unsent.max(0) as u64,
            oldest_created_at: oldest,
        })
    }
}

// === bulk load ===

impl Store {
    /// Places many orders at once, each with its `order.placed` outbox row,
    /// as [`Store::create_order`] would but in one transaction per shard with
    /// multi-row statements, shards in parallel: a load for the relay and the
    /// consumer groups (proof tests and `cargo xtask bench queue`).
    ///
    /// The users must exist and the prices come from the caller, as for
    /// `create_order`; unlike it, a missing user is not checked on SQLite.
    /// Returns the orders as written, in no particular order.
    pub async fn insert_orders(&self, orders: &[NewOrder]) -> Result<Vec<OrderRecord>, StoreError> {
        let mut per_shard: Vec<Vec<&NewOrder>> = vec![Vec::new(); self.inner.shards.len()];
        for order in orders {
            per_shard[self.inner.map.shard_of_user(order.user_id)].push(order);
        }
        let written = try_join_all(
            per_shard
                .into_iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(i, rows)| async move {
                    let shard = self.shard(i);
                    shard
                        .write("insert_orders", async {
                            match &shard.primary.pool {
                                Pool::Sqlite(p) => insert_orders_sqlite(self, p, &rows).await,
                                Pool::Postgres(p) => insert_orders_postgres(self, p, &rows).await,
                            }
                        })
                        .await
                }),
        )
        .await?;
        Ok(written.into_iter().flatten().collect())
    }
}

/// The records of `rows` with ids from sequence values `seqs`.
fn records(store: &Store, rows: &[&NewOrder], seqs: &[i64], now: i64) -> Vec<OrderRecord> {
    rows.iter()
        .zip(seqs)
        .map(|(new, seq)| OrderRecord {
            id: ids::order_id(*seq, store.inner.map.bucket_of_user(new.user_id)),
            user_id: new.user_id,
            product_id: new.product_id,
            quantity: new.quantity,
            unit_price_cents: new.unit_price_cents,
            total_cents: new.quantity * new.unit_price_cents,
            status: "placed".into(),
            created_at: now,
        })
        .collect()
}

/// Writes `$orders` and their outbox rows inside `$tx`, a transaction of
/// engine `$db` (a macro because the statements are the same text on both).
macro_rules! write_orders {
    ($tx:expr, $orders:expr, $db:ty) => {{
        for chunk in $orders.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<$db>::new(
                "INSERT INTO orders (id, user_id, product_id, quantity, unit_price_cents, \
                 total_cents, status, created_at) ",
            );
            q.push_values(chunk, |mut b, o| {
                b.push_bind(o.id)
                    .push_bind(o.user_id)
                    .push_bind(o.product_id)
                    .push_bind(o.quantity)
                    .push_bind(o.unit_price_cents)
                    .push_bind(o.total_cents)
                    .push_bind(o.status.clone())
                    .push_bind(o.created_at);
            });
            q.build().execute(&mut *$tx).await?;
            let mut q =
                QueryBuilder::<$db>::new("INSERT INTO outbox (topic, key, payload, created_at) ");
            q.push_values(chunk, |mut b, o| {
                b.push_bind(ORDERS_TOPIC)
                    .push_bind(o.user_id.to_string())
                    .push_bind(event_of(o))
                    .push_bind(o.created_at);
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}

fn event_of(order: &OrderRecord) -> String {
    serde_json::to_string(&OrderPlaced {
        kind: "order.placed".into(),
        order: order.clone(),
    })
    .expect("an event serializes")
}

async fn insert_orders_sqlite(
    store: &Store,
    pool: &sqlx::SqlitePool,
    rows: &[&NewOrder],
) -> Result<Vec<OrderRecord>, sqlx::Error> {
    let mut tx = pool.begin_write().await?;
    let n = rows.len() as i64;
    let first: i64 = sqlx::query_scalar(
        "UPDATE id_sequences SET next_value = next_value + $1 WHERE name = 'orders' \
         RETURNING next_value - $1",
    )
    .bind(n)
    .fetch_one(&mut *tx)
    .await?;
    let seqs: Vec<i64> = (first..first + n).collect();
    let orders = records(store, rows, &seqs, now_ms());
    write_orders!(tx, orders, sqlx::Sqlite);
    tx.commit().await?;
    Ok(orders)
}

async fn insert_orders_postgres(
    store: &Store,
    pool: &sqlx::PgPool,
    rows: &[&NewOrder],
) -> Result<Vec<OrderRecord>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('order_seq') FROM generate_series(1, $1)")
            .bind(rows.len() as i64)
            .fetch_all(&mut *tx)
            .await?;
    let orders = records(store, rows, &seqs, now_ms());
    write_orders!(tx, orders, sqlx::Postgres);
    tx.commit().await?;
    Ok(orders)
}
