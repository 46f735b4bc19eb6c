//! The outbox: events written in the same transaction as the orders they
//! announce, waiting for the queue's relay. Until the relay exists they
//! accumulate, and operators see them through [`Store::outbox_page`].

use futures::future::try_join_all;

use crate::{Consistency, OrderPlaced, Store, StoreError, on_pool};

/// One outbox row, with the shard it lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Index of the shard.
    pub shard: u16,
    /// Row id, increasing within the shard.
    pub id: i64,
    /// Topic the event goes to, e.g. `orders`.
    pub topic: String,
    /// Partitioning key (the user id of an order).
    pub key: String,
    /// The event as JSON text.
    pub payload: String,
    /// When it was written, ms since the epoch.
    pub created_at: i64,
    /// When the relay published it; `None` while it waits.
    pub sent_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    key: String,
    payload: String,
    created_at: i64,
    sent_at: Option<i64>,
}

impl Store {
    /// Unsent outbox rows per shard, as `(shard name, count)`.
    pub async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, StoreError> {
        try_join_all(self.inner.shards.iter().map(|shard| async move {
            let n: i64 = shard
                .read("outbox_backlog", Consistency::Eventual, |pool| async move {
                    on_pool!(&pool, p => sqlx::query_scalar(
                        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
                    )
                    .fetch_one(p)
                    .await)
                })
                .await?;
            Ok((shard.name().to_owned(), n.max(0) as u64))
        }))
        .await
    }

    /// The oldest unsent outbox rows of every shard (at most `limit` per shard),
    /// as `(shard name, event)`: what the queue's relay will publish. Read
    /// from the primaries, which the relay must follow exactly.
    pub async fn outbox_unsent(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, OrderPlaced)>, StoreError> {
        let limit = i64::from(limit);
        let per_shard = try_join_all(self.inner.shards.iter().map(|shard| async move {
            let payloads: Vec<String> = shard
                .read("outbox_unsent", Consistency::Primary, |pool| async move {
                    on_pool!(&pool, p => sqlx::query_scalar(
                        "SELECT payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(p)
                    .await)
                })
                .await?;
            Ok::<_, StoreError>(
                payloads
                    .iter()
                    .filter_map(|p| serde_json::from_str::<OrderPlaced>(p).ok())
                    .map(|event| (shard.name().to_owned(), event))
                    .collect::<Vec<_>>(),
            )
        }))
        .await?;
        Ok(per_shard.into_iter().flatten().collect())
    }

    /// A page of outbox rows across every shard: on each shard the rows after
    /// `after[shard]` (all rows when `after` is shorter), merged by
    /// `(created_at, shard, id)` and cut to `limit`. `unsent_only` leaves out
    /// rows the relay has published.
    ///
    /// The next page starts after the last row of this page *on each shard*,
    /// so every row is listed exactly once however the shards interleave.
    /// Read from the primaries: an operator chasing a stuck event must not
    /// be shown a replica's older picture.
    pub async fn outbox_page(
        &self,
        after: &[i64],
        limit: u32,
        unsent_only: bool,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let limit_sql = i64::from(limit);
        let per_shard = try_join_all(self.inner.shards.iter().enumerate().map(|(i, shard)| {
            let after_id = after.get(i).copied().unwrap_or(0);
            async move {
                let rows: Vec<Row> = shard
                    .read("outbox_page", Consistency::Primary, |pool| async move {
                        on_pool!(&pool, p => sqlx::query_as(
                            "SELECT id, topic, key, payload, created_at, sent_at FROM outbox \
                             WHERE id > $1 AND ($2 = 0 OR sent_at IS NULL) ORDER BY id LIMIT $3",
                        )
                        .bind(after_id)
                        .bind(i64::from(unsent_only))
                        .bind(limit_sql)
                        .fetch_all(p)
                        .await)
                    })
                    .await?;
                Ok::<_, StoreError>(
                    rows.into_iter()
                        .map(|r| OutboxRow {
                            shard: u16::try_from(i).unwrap_or(u16::MAX),
                            id: r.id,
                            topic: r.topic,
                            key: r.key,
                            payload: r.payload,
                            created_at: r.created_at,
                            sent_at: r.sent_at,
                        })
                        .collect::<Vec<_>>(),
                )
            }
        }))
        .await?;
        let mut all: Vec<OutboxRow> = per_shard.into_iter().flatten().collect();
        all.sort_unstable_by_key(|r| (r.created_at, r.shard, r.id));
        all.truncate(limit as usize);
        Ok(all)
    }
}
