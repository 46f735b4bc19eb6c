//! The database tier of scalestack.
//!
//! This crate owns the shard map ([`shard`]), the id scheme ([`ids`]), the
//! databases and their versioned migrations, and every SQL statement of the
//! reference service: users and orders on the user shards, products in the
//! catalog, and the outbox row written in the same transaction as each order.
//!
//! It must not know about HTTP, caching or the queue: callers get typed records
//! and typed errors ([`StoreError`]) and decide what they mean for a client.
//!
//! Today the backend is embedded SQLite (one file per database under the data
//! directory). Every statement uses `$N` placeholders and portable SQL so that
//! the PostgreSQL backend of the data-tier work can share it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use scalestack_config::Config;
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::Mutex;

mod db;
pub mod ids;
pub mod shard;

use db::{Database, PoolSettings, Role};
pub use db::{QUERIES, QUERY_DURATION, QUERY_ERRORS};
use shard::{ShardMap, bucket_of_user};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A database could not be opened.
    #[error("cannot open database {db}: {source}")]
    Open {
        /// Database name, e.g. `shard-2`.
        db: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Migrations could not be applied.
    #[error("cannot migrate database {db}: {source}")]
    Migrate {
        /// Database name.
        db: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// The data set on disk does not match the configuration.
    #[error("config key `{key}` does not match the data on disk: {message}")]
    Layout {
        /// The config key at fault.
        key: &'static str,
        /// What differs.
        message: String,
    },
    /// A query failed.
    #[error("{op} on {db} failed: {source}")]
    Query {
        /// Database name.
        db: String,
        /// Operation, e.g. `get_user`.
        op: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A write referred to a row that does not exist.
    #[error("{entity} {id} does not exist")]
    Missing {
        /// `user` or `product`.
        entity: &'static str,
        /// The id that was asked for.
        id: i64,
    },
    /// An unknown database name was asked for.
    #[error("no database named {0}")]
    UnknownDatabase(String),
}

impl StoreError {
    /// Whether the failure is likely temporary (overload, a lock held too long,
    /// a connection lost), so that the caller may answer 503 and a client may retry.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Query { source, .. } | StoreError::Open { source, .. } => match source {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                sqlx::Error::Database(e) => {
                    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), possibly extended.
                    let code = e.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                    matches!(code & 0xff, 5 | 6)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// === records ===

/// A user, as stored on its shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserRecord {
    /// Global user id.
    pub id: i64,
    /// Contact address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// Fields of a user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Contact address.
    pub email: String,
    /// Display name.
    pub name: String,
}

/// Fields of a user to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New contact address.
    pub email: Option<String>,
    /// New display name.
    pub name: Option<String>,
}

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProductRecord {
    /// Product id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i64,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// Fields of a product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in cents.
    pub price_cents: i64,
    /// Units in stock.
    pub stock: i64,
}

/// An order, stored on its user's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OrderRecord {
    /// Order id; carries the user's bucket (see [`ids`]).
    pub id: i64,
    /// The user who ordered.
    pub user_id: i64,
    /// The product ordered.
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Price per unit when the order was placed, in cents.
    pub unit_price_cents: i64,
    /// `quantity * unit_price_cents`.
    pub total_cents: i64,
    /// `placed` when written; later stages are the worker's.
    pub status: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

/// Fields of an order to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The user who orders; must exist.
    pub user_id: i64,
    /// The product ordered (checked by the caller against the catalog).
    pub product_id: i64,
    /// Units ordered.
    pub quantity: i64,
    /// Price per unit, taken from the catalog by the caller.
    pub unit_price_cents: i64,
}

/// Topic of the outbox events written with every order.
pub const ORDERS_TOPIC: &str = "orders";

/// The event an order's outbox row carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Always `order.placed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The order as written.
    pub order: OrderRecord,
}

// === impl Store ===

/// All databases of the reference service, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Database,
    shards: Vec<Database>,
    map: ShardMap,
    /// The unused rest of this process's reserved block of user ids.
    user_ids: Mutex<Range<i64>>,
}

/// User ids reserved from the catalog at a time by one process.
const USER_ID_BLOCK: i64 = 64;

const USER_COLUMNS: &str = "id, email, name, created_at, updated_at";

impl Store {
    /// Opens every database of `config.store`, applying migrations, and checks
    /// that the data on disk was written with the same shard layout.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let store = &config.store;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let settings = PoolSettings {
            max_connections: store.max_connections,
            acquire_timeout: store.acquire_timeout,
            busy_timeout: store.busy_timeout,
        };
        let path_of = |url: &str| {
            config
                .resolve_sqlite_path(url)
                .expect("config validation admits sqlite:// URLs only")
        };
        let catalog = Database::open_sqlite(
            "catalog".into(),
            path_of(&store.catalog.primary),
            Role::Catalog,
            settings,
        )
        .await?;
        let shards = try_join_all(store.shards.iter().enumerate().map(|(i, shard)| {
            Database::open_sqlite(
                format!("shard-{i}"),
                path_of(&shard.primary),
                Role::Shard,
                settings,
            )
        }))
        .await?;
        db::describe_metrics();

        let count = u16::try_from(shards.len()).map_err(|_| StoreError::Layout {
            key: "store.shards",
            message: format!("{} shards is more than supported", shards.len()),
        })?;
        let recorded = catalog.meta_init("shard_count", &count.to_string()).await?;
        if recorded != count.to_string() {
            return Err(StoreError::Layout {
                key: "store.shards",
                message: format!(
                    "the data set was written with {recorded} shards and the config lists {count}; \
                     moving users between shards is not supported yet"
                ),
            });
        }
        for (i, shard) in shards.iter().enumerate() {
            let recorded = shard.meta_init("shard_index", &i.to_string()).await?;
            if recorded != i.to_string() {
                return Err(StoreError::Layout {
                    key: "store.shards",
                    message: format!(
                        "database {} holds shard {recorded}, but is listed as shard {i}",
                        shard.name
                    ),
                });
            }
        }
        Ok(Store {
            inner: Arc::new(Inner {
                catalog,
                shards,
                map: ShardMap::hash(count),
                user_ids: Mutex::new(0..0),
            }),
        })
    }

    /// Closes every pool, letting SQLite checkpoint its write-ahead logs.
    pub async fn close(&self) {
        self.inner.catalog.pool.close().await;
        for shard in &self.inner.shards {
            shard.pool.close().await;
        }
    }

    /// The shard map in force.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// Names of every database, catalog first: `catalog`, `shard-0`, ...
    pub fn database_names(&self) -> Vec<String> {
        std::iter::once(&self.inner.catalog)
            .chain(&self.inner.shards)
            .map(|d| d.name.clone())
            .collect()
    }

    /// Runs a trivial query on database `name`: the deep health check.
    pub async fn ping(&self, name: &str) -> Result<(), StoreError> {
        let db = std::iter::once(&self.inner.catalog)
            .chain(&self.inner.shards)
            .find(|d| d.name == name)
            .ok_or_else(|| StoreError::UnknownDatabase(name.to_owned()))?;
        db.timed("ping", sqlx::query("SELECT 1").execute(&db.pool))
            .await
            .map(drop)
    }

    fn shard_of_user(&self, user_id: i64) -> &Database {
        &self.inner.shards[self.inner.map.shard_of_user(user_id)]
    }

    // --- ids ---

    /// Reserves `n` consecutive user ids from the catalog sequence.
    pub async fn reserve_user_ids(&self, n: i64) -> Result<Range<i64>, StoreError> {
        let catalog = &self.inner.catalog;
        let next: i64 = catalog
            .timed(
                "reserve_user_ids",
                sqlx::query_scalar(
                    "UPDATE id_sequences SET next_value = next_value + $1 WHERE name = 'users' \
                     RETURNING next_value",
                )
                .bind(n)
                .fetch_one(&catalog.pool),
            )
            .await?;
        Ok(next - n..next)
    }

    async fn next_user_id(&self) -> Result<i64, StoreError> {
        let mut block = self.inner.user_ids.lock().await;
        if block.is_empty() {
            *block = self.reserve_user_ids(USER_ID_BLOCK).await?;
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }

    // --- users ---

    /// Creates a user on the shard its new id maps to.
    pub async fn create_user(&self, new: &NewUser) -> Result<UserRecord, StoreError> {
        let id = self.next_user_id().await?;
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
            .timed(
                "create_user",
                sqlx::query(
                    "INSERT INTO users (id, email, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user.id)
                .bind(&user.email)
                .bind(&user.name)
                .bind(user.created_at)
                .bind(user.updated_at)
                .execute(&shard.pool),
            )
            .await?;
        Ok(user)
    }

    /// Reads a user.
    pub async fn get_user(&self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let shard = self.shard_of_user(id);
        shard
            .timed(
                "get_user",
                sqlx::query_as::<_, UserRecord>(
                    "SELECT id, email, name, created_at, updated_at FROM users WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&shard.pool),
            )
            .await
    }

    /// Changes the given fields of a user; `None` when there is no such user.
    pub async fn update_user(
        &self,
        id: i64,
        patch: &UserPatch,
    ) -> Result<Option<UserRecord>, StoreError> {
        let shard = self.shard_of_user(id);
        shard
            .timed(
                "update_user",
                sqlx::query_as::<_, UserRecord>(
                    "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), \
                     updated_at = $4 WHERE id = $1 \
                     RETURNING id, email, name, created_at, updated_at",
                )
                .bind(id)
                .bind(patch.email.as_deref())
                .bind(patch.name.as_deref())
                .bind(now_ms())
                .fetch_optional(&shard.pool),
            )
            .await
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
                    let shard = &self.inner.shards[i];
                    shard
                        .timed("insert_users", async {
                            let mut tx = shard.pool.begin_with("BEGIN IMMEDIATE").await?;
                            // 5 parameters per row; SQLite allows 32766 per statement.
                            for chunk in rows.chunks(1000) {
                                let mut q = QueryBuilder::<Sqlite>::new(format!(
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
                        .await
                }),
        )
        .await
        .map(drop)
    }

    // --- products ---

    /// Creates a product in the catalog.
    pub async fn create_product(&self, new: &NewProduct) -> Result<ProductRecord, StoreError> {
        let catalog = &self.inner.catalog;
        let now = now_ms();
        catalog
            .timed(
                "create_product",
                sqlx::query_as::<_, ProductRecord>(
                    "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     RETURNING id, name, description, price_cents, stock, created_at, updated_at",
                )
                .bind(&new.name)
                .bind(&new.description)
                .bind(new.price_cents)
                .bind(new.stock)
                .bind(now)
                .fetch_one(&catalog.pool),
            )
            .await
    }

    /// Reads a product.
    pub async fn get_product(&self, id: i64) -> Result<Option<ProductRecord>, StoreError> {
        let catalog = &self.inner.catalog;
        catalog
            .timed(
                "get_product",
                sqlx::query_as::<_, ProductRecord>(
                    "SELECT id, name, description, price_cents, stock, created_at, updated_at \
                     FROM products WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&catalog.pool),
            )
            .await
    }

    /// A page of products in id order, starting after id `after`.
    pub async fn list_products(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        let catalog = &self.inner.catalog;
        catalog
            .timed(
                "list_products",
                sqlx::query_as::<_, ProductRecord>(
                    "SELECT id, name, description, price_cents, stock, created_at, updated_at \
                     FROM products WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.unwrap_or(0))
                .bind(i64::from(limit))
                .fetch_all(&catalog.pool),
            )
            .await
    }

    /// Inserts products in one transaction with multi-row statements.
    pub async fn insert_products(&self, products: &[NewProduct]) -> Result<(), StoreError> {
        let catalog = &self.inner.catalog;
        let now = now_ms();
        catalog
            .timed("insert_products", async {
                let mut tx = catalog.pool.begin_with("BEGIN IMMEDIATE").await?;
                for chunk in products.chunks(1000) {
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut b, p| {
                        b.push_bind(&p.name)
                            .push_bind(&p.description)
                            .push_bind(p.price_cents)
                            .push_bind(p.stock)
                            .push_bind(now)
                            .push_bind(now);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await
            })
            .await
    }

    // --- orders ---

    /// Places an order: the order row and its `order.placed` outbox row are
    /// written in one transaction on the user's shard.
    ///
    /// Fails with [`StoreError::Missing`] when the user does not exist.
    pub async fn create_order(&self, new: &NewOrder) -> Result<OrderRecord, StoreError> {
        let bucket = bucket_of_user(new.user_id);
        let shard = self.shard_of_user(new.user_id);
        let written = shard
            .timed("create_order", async {
                // IMMEDIATE takes the write lock up front: a deferred transaction
                // that upgrades later can fail with SQLITE_BUSY without waiting.
                let mut tx = shard.pool.begin_with("BEGIN IMMEDIATE").await?;
                let user_exists = sqlx::query_scalar::<_, i64>("SELECT 1 FROM users WHERE id = $1")
                    .bind(new.user_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !user_exists {
                    return Ok(None);
                }
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE id_sequences SET next_value = next_value + 1 WHERE name = 'orders' \
                     RETURNING next_value - 1",
                )
                .fetch_one(&mut *tx)
                .await?;
                let order = OrderRecord {
                    id: ids::order_id(seq, bucket),
                    user_id: new.user_id,
                    product_id: new.product_id,
                    quantity: new.quantity,
                    unit_price_cents: new.unit_price_cents,
                    total_cents: new.quantity * new.unit_price_cents,
                    status: "placed".into(),
                    created_at: now_ms(),
                };
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
                let event = OrderPlaced {
                    kind: "order.placed".into(),
                    order: order.clone(),
                };
                sqlx::query("INSERT INTO outbox (topic, key, payload, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(ORDERS_TOPIC)
                    .bind(order.user_id.to_string())
                    .bind(serde_json::to_string(&event).expect("an event serializes"))
                    .bind(order.created_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(order))
            })
            .await?;
        written.ok_or(StoreError::Missing {
            entity: "user",
            id: new.user_id,
        })
    }

    /// Reads an order by id; the id alone tells the shard.
    pub async fn get_order(&self, id: i64) -> Result<Option<OrderRecord>, StoreError> {
        let Some(bucket) = ids::order_bucket(id) else {
            return Ok(None);
        };
        let shard = &self.inner.shards[self.inner.map.shard_of_bucket(bucket)];
        shard
            .timed(
                "get_order",
                sqlx::query_as::<_, OrderRecord>(
                    "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, status, \
                     created_at FROM orders WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&shard.pool),
            )
            .await
    }

    /// A page of a user's orders, newest first, starting below id `before`.
    pub async fn list_user_orders(
        &self,
        user_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let shard = self.shard_of_user(user_id);
        shard
            .timed(
                "list_user_orders",
                sqlx::query_as::<_, OrderRecord>(
                    "SELECT id, user_id, product_id, quantity, unit_price_cents, total_cents, status, \
                     created_at FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(user_id)
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&shard.pool),
            )
            .await
    }

    // --- outbox ---

    /// Unsent outbox rows per shard, as `(shard name, count)`.
    pub async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, StoreError> {
        try_join_all(self.inner.shards.iter().map(|shard| async move {
            let n: i64 = shard
                .timed(
                    "outbox_backlog",
                    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
                        .fetch_one(&shard.pool),
                )
                .await?;
            Ok((shard.name.clone(), n.max(0) as u64))
        }))
        .await
    }

    /// The oldest unsent outbox rows of every shard (at most `limit` per shard),
    /// as `(shard name, event)`: what the queue's relay will publish.
    pub async fn outbox_unsent(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, OrderPlaced)>, StoreError> {
        let per_shard = try_join_all(self.inner.shards.iter().map(|shard| async move {
            let payloads: Vec<String> = shard
                .timed(
                    "outbox_unsent",
                    sqlx::query_scalar(
                        "SELECT payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                    )
                    .bind(i64::from(limit))
                    .fetch_all(&shard.pool),
                )
                .await?;
            Ok::<_, StoreError>(
                payloads
                    .iter()
                    .filter_map(|p| serde_json::from_str::<OrderPlaced>(p).ok())
                    .map(|event| (shard.name.clone(), event))
                    .collect::<Vec<_>>(),
            )
        }))
        .await?;
        Ok(per_shard.into_iter().flatten().collect())
    }
}
