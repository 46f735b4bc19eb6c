//! The database tier of scalestack.
//!
//! This crate owns the shard maps ([`shard`]), the id scheme ([`ids`]), the
//! databases of both engines (embedded SQLite, PostgreSQL) and their
//! versioned migrations, read/write splitting over replicas with lag-aware
//! routing and read-your-writes tokens ([`Consistency`]), and every SQL
//! statement of the reference service: users and orders on the user shards,
//! products in the catalog, the outbox row and the idempotency record written
//! in the same transaction as each order, and the cross-shard order listing.
//!
//! It must not know about HTTP, caching or the queue: callers get typed
//! records and typed errors ([`StoreError`]) and decide what they mean for a
//! client. An idempotent write stores the caller's response as opaque text.
//!
//! Every statement uses `$N` placeholders and portable SQL; the few places
//! where the engines differ branch on the engine explicitly. SQLite has no
//! replication: a database on SQLite is a primary alone.

use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use scalestack_config::{Backend, Config, ReplicaSetConfig, redact_url};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

mod activity;
mod analytics;
mod backend;
mod error;
mod idempotency;
pub mod ids;
mod inventory;
mod jobs;
mod node;
mod orders;
mod outbox;
mod products;
mod relay;
mod replica;
pub mod shard;
mod token;
mod users;

pub use activity::UserActivity;
pub use analytics::{ANALYTICS_CONSUMER, ProductSales, SaleEvent, SaleKind, UserSummary};
use backend::{Pool, PoolSettings, Role};
pub use error::StoreError;
pub use idempotency::{IDEMPOTENCY_PURGED, IdempotencyKey, Placement, StoredResponse};
pub use inventory::{
    ORDER_CONFIRMED, ORDER_REJECTED, OrderRejected, Settled, StockOutcome, StockRequest,
    StockResult,
};
pub use jobs::{JOB_STATES, JOBS_TOPIC, JobRecord, JobSubmitted};
use node::Node;
pub use node::{QUERIES, QUERY_DURATION, QUERY_ERRORS};
pub use orders::{OrderFilter, OrderPosition};
pub use outbox::OutboxRow;
pub use products::ProductPatch;
pub use relay::{OutboxLag, RelayRow};
use replica::ReplicaSet;
pub use replica::{
    Consistency, READS, REPLICA_LAG, REPLICA_LAG_BYTES, REPLICA_USABLE, ReplicaStatus,
};
use shard::ShardMap;
pub use token::{ConsistencyToken, DbId, TokenError};

/// Gauge of the shard map version in force.
pub const SHARD_MAP_VERSION: &str = "scalestack_store_shard_map_version";

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewUser {
    /// Contact address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// The user's region, under a geographic shard map (`None`: the map's
    /// first region). Other maps refuse a region.
    pub region: Option<String>,
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

/// The result of a write, with the token that lets its writer read it back
/// from a replica (`None` when the database has no replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// What was written.
    pub value: T,
    /// Pass as [`Consistency::AtLeast`] to read this write back.
    pub token: Option<ConsistencyToken>,
}

// === impl Store ===

/// All databases of the reference service, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: ReplicaSet,
    shards: Vec<ReplicaSet>,
    map: ShardMap,
    /// The unused rest of this process's reserved block of user id sequence values.
    user_ids: Mutex<Range<i64>>,
    /// How long idempotency keys are kept.
    idempotency_retention: Duration,
    /// The replica monitor, stopped with the store.
    monitor: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(monitor) = self
            .monitor
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            monitor.abort();
        }
    }
}

/// User id sequence values reserved from the catalog at a time by one process.
const USER_ID_BLOCK: i64 = 64;

/// What a data set records about the shard map it was written with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordedMap {
    kind: scalestack_config::ShardMapKind,
    shards: u16,
    version: u32,
    #[serde(default)]
    ranges: Vec<(i64, u16)>,
    #[serde(default)]
    regions: Vec<(String, Vec<u16>)>,
}

impl RecordedMap {
    fn of(config: &scalestack_config::StoreConfig) -> Self {
        Self {
            kind: config.shard_map,
            shards: u16::try_from(config.shards.len()).unwrap_or(u16::MAX),
            version: config.shard_map_version,
            ranges: config
                .ranges
                .iter()
                .map(|r| (r.first_user, r.shard))
                .collect(),
            regions: config
                .regions
                .iter()
                .map(|r| (r.name.clone(), r.shards.clone()))
                .collect(),
        }
    }

    fn map(&self) -> ShardMap {
        use scalestack_config::ShardMapKind as K;
        let map = match self.kind {
            K::Hash => ShardMap::hash(self.shards.max(1)),
            K::Range if !self.ranges.is_empty() => {
                ShardMap::range(self.shards.max(1), &self.ranges)
            }
            K::Geo if !self.regions.is_empty() => ShardMap::geo(self.shards.max(1), &self.regions),
            _ => ShardMap::hash(self.shards.max(1)),
        };
        map.with_version(self.version)
    }
}

impl Store {
    /// Opens every database of `config.store`, applying migrations on the
    /// primaries, checks that the data set was written with a compatible
    /// shard layout, and starts the replica monitor when there are replicas.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let store = &config.store;
        let sets = std::iter::once(&store.catalog).chain(&store.shards);
        if sets
            .clone()
            .any(|s| Backend::of_url(&s.primary) == Some(Backend::Sqlite))
        {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        }
        let catalog = open_set(config, DbId::Catalog, &store.catalog, Role::Catalog).await?;
        let shards = try_join_all(store.shards.iter().enumerate().map(|(i, shard)| {
            let id = DbId::Shard(u16::try_from(i).unwrap_or(u16::MAX));
            open_set(config, id, shard, Role::Shard)
        }))
        .await?;
        node::describe_metrics();
        idempotency::describe_metrics();
        metrics::describe_gauge!(SHARD_MAP_VERSION, "Version of the shard map in force.");

        let map = check_layout(&catalog, &shards, store).await?;
        metrics::gauge!(SHARD_MAP_VERSION).set(f64::from(map.version()));
        let has_replicas = std::iter::once(&catalog)
            .chain(&shards)
            .any(|s| !s.replicas.is_empty());
        let inner = Arc::new(Inner {
            catalog,
            shards,
            map,
            user_ids: Mutex::new(0..0),
            idempotency_retention: store.idempotency_retention,
            monitor: std::sync::Mutex::new(None),
        });
        let store_handle = Store { inner };
        if has_replicas {
            // Measure once before the first read, so that reads go to the
            // replicas from the start rather than after the first interval.
            store_handle.check_replicas().await;
            let task = tokio::spawn(monitor(
                Arc::downgrade(&store_handle.inner),
                store.replica_check_interval,
            ));
            *store_handle
                .inner
                .monitor
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        }
        Ok(store_handle)
    }

    /// Stops the replica monitor and closes every pool, letting SQLite
    /// checkpoint its write-ahead logs.
    pub async fn close(&self) {
        let monitor = self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(monitor) = monitor {
            monitor.abort();
        }
        for set in self.sets() {
            set.close().await;
        }
    }

    /// The shard map in force.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    fn sets(&self) -> impl Iterator<Item = &ReplicaSet> {
        std::iter::once(&self.inner.catalog).chain(&self.inner.shards)
    }

    /// Names of every database, catalog first: `catalog`, `shard-0`, ...
    pub fn database_names(&self) -> Vec<String> {
        self.sets().map(|s| s.name().to_owned()).collect()
    }

    /// Runs a trivial query on the primary of database `name`: the deep
    /// health check. (Replicas are not part of it: reads survive without them.)
    pub async fn ping(&self, name: &str) -> Result<(), StoreError> {
        let set = self
            .sets()
            .find(|s| s.name() == name)
            .ok_or_else(|| StoreError::UnknownDatabase(name.to_owned()))?;
        set.write("ping", async {
            on_pool!(&set.primary.pool, p => sqlx::query("SELECT 1").execute(p).await.map(drop))
        })
        .await
    }

    /// Measures the health and lag of every replica now (the monitor does
    /// so every `store.replica_check_interval`).
    pub async fn check_replicas(&self) {
        futures::future::join_all(self.sets().map(ReplicaSet::check)).await;
    }

    /// The state of every replica, catalog first.
    pub fn replica_status(&self) -> Vec<ReplicaStatus> {
        self.sets().flat_map(ReplicaSet::statuses).collect()
    }

    /// The engine of the user shards (of shard 0, to be exact).
    pub fn backend(&self) -> Backend {
        self.inner.shards[0].backend()
    }

    fn shard(&self, index: usize) -> &ReplicaSet {
        &self.inner.shards[index]
    }

    fn shard_of_user(&self, user_id: i64) -> &ReplicaSet {
        self.shard(self.inner.map.shard_of_user(user_id))
    }

    fn catalog(&self) -> &ReplicaSet {
        &self.inner.catalog
    }
}

/// Opens the primary and the replicas of one database; migrates the primary.
async fn open_set(
    config: &Config,
    id: DbId,
    set: &ReplicaSetConfig,
    role: Role,
) -> Result<ReplicaSet, StoreError> {
    let store = &config.store;
    let name = id.to_string();
    let settings = PoolSettings {
        max_connections: store.max_connections,
        acquire_timeout: store.acquire_timeout,
        busy_timeout: store.busy_timeout,
    };
    let primary_pool = match Backend::of_url(&set.primary) {
        Some(Backend::Sqlite) => {
            let path = config
                .resolve_sqlite_path(&set.primary)
                .expect("an sqlite:// URL resolves to a path");
            Pool::open_sqlite(&name, &path, settings).await?
        }
        _ => Pool::open_postgres(&name, &set.primary, settings, false).await?,
    };
    primary_pool.migrate(&name, role).await?;
    let replica_settings = PoolSettings {
        // A replica that does not hand out a connection quickly is treated
        // as down; the primary serves the read instead.
        acquire_timeout: store.replica_check_timeout,
        ..settings
    };
    let mut replicas = Vec::with_capacity(set.replicas.len());
    for (i, url) in set.replicas.iter().enumerate() {
        let node_name = format!("replica-{i}");
        tracing::debug!(db = %name, node = %node_name, url = %redact_url(url), "opening replica");
        let pool = Pool::open_postgres(&format!("{name}/{node_name}"), url, replica_settings, true)
            .await?;
        replicas.push(Node::new(&name, node_name, pool, false));
    }
    Ok(ReplicaSet::new(
        id,
        Node::new(&name, "primary".into(), primary_pool, true),
        replicas,
        store.read_policy,
        store.max_replica_lag,
        store.replica_check_timeout,
    ))
}

/// Reads a `store_meta` value of a database's primary.
async fn meta(set: &ReplicaSet, key: &str) -> Result<Option<String>, StoreError> {
    let key = key.to_owned();
    set.write("meta", async {
        on_pool!(&set.primary.pool, p => sqlx::query_scalar::<_, String>(
            "SELECT value FROM store_meta WHERE key = $1"
        )
        .bind(&key)
        .fetch_optional(p)
        .await)
    })
    .await
}

/// Writes a `store_meta` value, replacing one that is there.
async fn meta_set(set: &ReplicaSet, key: &str, value: &str) -> Result<(), StoreError> {
    set.write("meta", async {
        on_pool!(&set.primary.pool, p => sqlx::query(
            "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        .bind(key)
        .bind(value)
        .execute(p)
        .await
        .map(drop))
    })
    .await
}

/// Checks the data set against the configured layout and records the layout
/// of a fresh (or compatibly changed) data set. Returns the map in force.
async fn check_layout(
    catalog: &ReplicaSet,
    shards: &[ReplicaSet],
    config: &scalestack_config::StoreConfig,
) -> Result<ShardMap, StoreError> {
    let wanted = RecordedMap::of(config);
    let map = wanted.map();
    // Data sets from before maps were recorded have only their shard count:
    // they were written with the hash map, version 1.
    let recorded = match meta(catalog, "shard_map").await? {
        Some(json) => serde_json::from_str::<RecordedMap>(&json).ok(),
        None => meta(catalog, "shard_count")
            .await?
            .and_then(|n| n.parse::<u16>().ok())
            .map(|shards| RecordedMap {
                kind: scalestack_config::ShardMapKind::Hash,
                shards,
                version: 1,
                ranges: Vec::new(),
                regions: Vec::new(),
            }),
    };
    if let Some(old) = &recorded
        && *old != wanted
    {
        let old_map = old.map();
        let next_user: i64 = catalog
            .write("meta", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query_scalar(
                    "SELECT next_value FROM id_sequences WHERE name = 'users'"
                )
                .fetch_one(p)
                .await)
            })
            .await?;
        let same_layout =
            old_map.describe() == map.describe() && !old_map.moves_users(&map, i64::MAX);
        if !same_layout {
            let key = if old.shards != wanted.shards {
                "store.shards"
            } else {
                "store.shard_map"
            };
            if old_map.moves_users(&map, next_user) {
                return Err(StoreError::Layout {
                    key,
                    message: format!(
                        "the data set was written with the map {} (version {}) and the config \
                         describes {} (version {}); that would move existing users between \
                         shards, which is not supported yet",
                        old_map.describe(),
                        old.version,
                        map.describe(),
                        wanted.version
                    ),
                });
            }
            if wanted.version <= old.version {
                return Err(StoreError::Layout {
                    key: "store.shard_map_version",
                    message: format!(
                        "the shard map changed from {} to {} but its version did not grow \
                         (recorded {}, configured {}); raise store.shard_map_version",
                        old_map.describe(),
                        map.describe(),
                        old.version,
                        wanted.version
                    ),
                });
            }
            tracing::info!(
                from = %old_map.describe(),
                to = %map.describe(),
                version = wanted.version,
                "shard map changed without moving any user"
            );
        }
    }
    for (i, shard) in shards.iter().enumerate() {
        match meta(shard, "shard_index").await? {
            Some(recorded) if recorded != i.to_string() => {
                return Err(StoreError::Layout {
                    key: "store.shards",
                    message: format!(
                        "database {} holds shard {recorded}, but is listed as shard {i}",
                        shard.name()
                    ),
                });
            }
            Some(_) => {}
            None => meta_set(shard, "shard_index", &i.to_string()).await?,
        }
    }
    if recorded.as_ref() != Some(&wanted) {
        let json = serde_json::to_string(&wanted).expect("a map record serializes");
        meta_set(catalog, "shard_map", &json).await?;
        meta_set(catalog, "shard_count", &wanted.shards.to_string()).await?;
    }
    Ok(map)
}

/// Measures the replicas every `interval` while the store is alive.
async fn monitor(store: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = store.upgrade() else { return };
        Store { inner }.check_replicas().await;
    }
}
