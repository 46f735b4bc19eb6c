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

use sqlx::QueryBuilder;

use crate::replica::ReplicaSet;
use crate::{Consistency, DbId, Store, StoreError, on_pool};

/// Ids marked sent per statement: one parameter each, well within both
/// engines' limits.
const MARK_CHUNK: usize = 1_000;

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
