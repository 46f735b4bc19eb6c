//! Users' last-seen times: the high-frequency field that the api writes
//! behind its cache, and the batch writes that the write-behind flushers use
//! (last-seen times, and whole user profiles when profiles are written
//! behind too).
//!
//! Write-behind delivers at least once: a batch that reached the database
//! may be written again after a crash, and two api instances may flush
//! values of one user in either order. Every statement here is therefore
//! idempotent and order-independent: a last-seen time only ever moves
//! forward (the greater time wins), and a profile is replaced only by one at
//! least as new (`updated_at`). Replaying any prefix of the log, in any
//! order, leaves the same rows.
//!
//! Batches are grouped by shard: one transaction per shard, one multi-row
//! `UPDATE ... FROM (VALUES ...)` per chunk, shards in parallel. This module
//! knows nothing of the cache; it only offers the writes.

use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;

use crate::backend::BeginWrite as _;
use crate::{Consistency, Store, StoreError, UserRecord, on_pool};

/// Rows per statement: 4 parameters per profile row, well under SQLite's
/// 32,766 and PostgreSQL's 65,535 parameters per statement.
const CHUNK: usize = 1000;

/// When a user was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserActivity {
    /// The user.
    pub id: i64,
    /// Last activity, ms since the epoch; `None` until the user is first seen.
    pub last_seen_at: Option<i64>,
}

impl Store {
    /// Reads a user's last-seen time; `None` when there is no such user.
    pub async fn get_user_activity(
        &self,
        id: i64,
        consistency: Consistency,
    ) -> Result<Option<UserActivity>, StoreError> {
        self.shard_of_user(id)
            .read("get_user_activity", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, UserActivity>(
                    "SELECT id, last_seen_at FROM users WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// Records `(user id, seen at)` pairs: each user's last-seen time becomes
    /// the later of the stored one and the given one. Unknown users are
    /// skipped. Idempotent and order-independent (see the module docs).
    pub async fn record_last_seen(&self, seen: &[(i64, i64)]) -> Result<(), StoreError> {
        try_join_all(
            self.group_by_shard(seen, |s| s.0)
                .map(|(i, rows)| async move {
                    let shard = self.shard(i);
                    shard
                .write("record_last_seen", async {
                    on_pool!(&shard.primary.pool, p, Db => {
                        let mut tx = p.begin_write().await?;
                        for chunk in rows.chunks(CHUNK) {
                            let mut q = QueryBuilder::<Db>::new(
                                "UPDATE users SET last_seen_at = v.column2 FROM (",
                            );
                            q.push_values(chunk, |mut b, (id, at)| {
                                b.push_bind(*id).push_bind(*at);
                            });
                            q.push(
                                ") AS v WHERE users.id = v.column1 AND \
                                 (users.last_seen_at IS NULL OR users.last_seen_at < v.column2)",
                            );
                            q.build().execute(&mut *tx).await?;
                        }
                        tx.commit().await
                    })
                })
                .await
                }),
        )
        .await
        .map(drop)
    }

    /// Writes whole user profiles (email, name, `updated_at`) that were
    /// acknowledged earlier: a stored profile is replaced only by one at
    /// least as new, so a replayed or late batch never undoes a newer change.
    /// Unknown users are skipped.
    pub async fn write_user_profiles(&self, users: &[UserRecord]) -> Result<(), StoreError> {
        try_join_all(
            self.group_by_shard(users, |u| u.id)
                .map(|(i, rows)| async move {
                    let shard = self.shard(i);
                    shard
                        .write("write_user_profiles", async {
                            on_pool!(&shard.primary.pool, p, Db => {
                                let mut tx = p.begin_write().await?;
                                for chunk in rows.chunks(CHUNK) {
                                    let mut q = QueryBuilder::<Db>::new(
                                        "UPDATE users SET email = v.column2, name = v.column3, \
                                         updated_at = v.column4 FROM (",
                                    );
                                    q.push_values(chunk, |mut b, u| {
                                        b.push_bind(u.id)
                                            .push_bind(&u.email)
                                            .push_bind(&u.name)
                                            .push_bind(u.updated_at);
                                    });
                                    q.push(
                                        ") AS v WHERE users.id = v.column1 \
                                         AND users.updated_at <= v.column4",
                                    );
                                    q.build().execute(&mut *tx).await?;
                                }
                                tx.commit().await
                            })
                        })
                        .await
                }),
        )
        .await
        .map(drop)
    }

    /// `rows` grouped by the shard of their user, skipping empty shards.
    fn group_by_shard<'r, T>(
        &self,
        rows: &'r [T],
        user_id: impl Fn(&T) -> i64,
    ) -> impl Iterator<Item = (usize, Vec<&'r T>)> {
        let mut groups: Vec<Vec<&'r T>> = vec![Vec::new(); self.inner.shards.len()];
        for row in rows {
            groups[self.inner.map.shard_of_user(user_id(row))].push(row);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
    }
}
