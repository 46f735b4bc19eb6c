//! Users: created on the shard their id maps to, read from that shard's
//! replicas (or primary), and written in bulk by the seeder.

use std::ops::Range;

use futures::future::try_join_all;
use sqlx::QueryBuilder;

use crate::backend::BeginWrite as _;
use crate::{
    Consistency, NewUser, Store, StoreError, USER_ID_BLOCK, UserPatch, UserRecord, Written, now_ms,
    on_pool,
};

const USER_COLUMNS: &str = "id, email, name, created_at, updated_at";

impl Store {
    /// Reserves `n` consecutive values of the catalog's user id sequence.
    ///
    /// Under hash and range maps these are the user ids themselves; under a
    /// geographic map, [`ShardMap::user_id`](crate::shard::ShardMap::user_id)
    /// turns each into the id of a user in a region.
    pub async fn reserve_user_ids(&self, n: i64) -> Result<Range<i64>, StoreError> {
        let catalog = self.catalog();
        let next: i64 = catalog
            .write("reserve_user_ids", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query_scalar(
                    "UPDATE id_sequences SET next_value = next_value + $1 WHERE name = 'users' \
                     RETURNING next_value",
                )
                .bind(n)
                .fetch_one(p)
                .await)
            })
            .await?;
        Ok(next - n..next)
    }

    async fn next_user_seq(&self) -> Result<i64, StoreError> {
        let mut block = self.inner.user_ids.lock().await;
        if block.is_empty() {
            *block = self.reserve_user_ids(USER_ID_BLOCK).await?;
        }
        let seq = block.start;
        block.start += 1;
        Ok(seq)
    }

    /// Creates a user on the shard its new id maps to.
    ///
    /// Fails with [`StoreError::UnknownRegion`] for a region the shard map
    /// does not have (any region, unless the map is geographic).
    pub async fn create_user(&self, new: &NewUser) -> Result<Written<UserRecord>, StoreError> {
        // Check the region before a sequence value is spent on it.
        self.inner.map.user_id(1, new.region.as_deref())?;
        let seq = self.next_user_seq().await?;
        let id = self.inner.map.user_id(seq, new.region.as_deref())?;
        let now = now_ms();
        let user = UserRecord {
            id,
            email: new.email.clone(),
            name: new.name.clone(),
            created_at: now,
            updated_at: now,
        };
        let shard = self.shard_of_user(id);
        shard
            .write("create_user", async {
                on_pool!(&shard.primary.pool, p => sqlx::query(
                    "INSERT INTO users (id, email, name, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user.id)
                .bind(&user.email)
                .bind(&user.name)
                .bind(user.created_at)
                .bind(user.updated_at)
                .execute(p)
                .await
                .map(drop))
            })
            .await?;
        Ok(Written {
            value: user,
            token: shard.token_after_commit().await,
        })
    }

    /// Reads a user.
    pub async fn get_user(
        &self,
        id: i64,
        consistency: Consistency,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.shard_of_user(id)
            .read("get_user", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, UserRecord>(
                    "SELECT id, email, name, created_at, updated_at FROM users WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// Changes the given fields of a user; `None` when there is no such user.
    pub async fn update_user(
        &self,
        id: i64,
        patch: &UserPatch,
    ) -> Result<Written<Option<UserRecord>>, StoreError> {
        let shard = self.shard_of_user(id);
        let user = shard
            .write("update_user", async {
                on_pool!(&shard.primary.pool, p => sqlx::query_as::<_, UserRecord>(
                    "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), \
                     updated_at = $4 WHERE id = $1 \
                     RETURNING id, email, name, created_at, updated_at",
                )
                .bind(id)
                .bind(patch.email.as_deref())
                .bind(patch.name.as_deref())
                .bind(now_ms())
                .fetch_optional(p)
                .await)
            })
            .await?;
        let token = match user {
            Some(_) => shard.token_after_commit().await,
            None => None,
        };
        Ok(Written { value: user, token })
    }

    /// Inserts users with ids already reserved (see [`Store::reserve_user_ids`]):
    /// one transaction per shard, multi-row statements, shards in parallel.
    pub async fn insert_users(&self, users: &[UserRecord]) -> Result<(), StoreError> {
        let mut per_shard: Vec<Vec<&UserRecord>> = vec![Vec::new(); self.inner.shards.len()];
        for user in users {
            per_shard[self.inner.map.shard_of_user(user.id)].push(user);
        }
        try_join_all(
            per_shard
                .into_iter()
                .enumerate()
                .filter(|(_, rows)| !rows.is_empty())
                .map(|(i, rows)| async move {
                    let shard = self.shard(i);
                    shard
                        .write("insert_users", async {
                            on_pool!(&shard.primary.pool, p, Db => {
                                let mut tx = p.begin_write().await?;
                                // 5 parameters per row; SQLite allows 32766
                                // per statement and PostgreSQL 65535.
                                for chunk in rows.chunks(1000) {
                                    let mut q = QueryBuilder::<Db>::new(format!(
                                        "INSERT INTO users ({USER_COLUMNS}) "
                                    ));
                                    q.push_values(chunk, |mut b, u| {
                                        b.push_bind(u.id)
                                            .push_bind(&u.email)
                                            .push_bind(&u.name)
                                            .push_bind(u.created_at)
                                            .push_bind(u.updated_at);
                                    });
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
}
