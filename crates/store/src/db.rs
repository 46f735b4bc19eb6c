//! One database of the store: a connection pool, its name for metrics and
//! errors, and the migrations of its role (catalog or shard).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::StoreError;

/// Schema of the catalog database.
static CATALOG_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite/catalog");
/// Schema of every user shard.
static SHARD_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite/shard");

/// Counter of queries by database and operation: shows a hot shard at a glance.
pub const QUERIES: &str = "scalestack_store_queries_total";
/// Histogram of query durations by database and operation.
pub const QUERY_DURATION: &str = "scalestack_store_query_duration_seconds";
/// Counter of failed queries by database and operation.
pub const QUERY_ERRORS: &str = "scalestack_store_query_errors_total";

/// Which schema a database carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Catalog,
    Shard,
}

/// A named connection pool.
#[derive(Debug, Clone)]
pub(crate) struct Database {
    pub(crate) name: String,
    pub(crate) pool: SqlitePool,
}

/// Connection settings shared by every database of a store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) busy_timeout: Duration,
}

impl Database {
    /// Opens (creating if missing) the SQLite file at `path` and brings its
    /// schema up to date.
    pub(crate) async fn open_sqlite(
        name: String,
        path: PathBuf,
        role: Role,
        settings: PoolSettings,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                db: name.clone(),
                source,
            })?
            .filename(&path)
            .create_if_missing(true)
            // WAL lets the api and worker processes read while one of them writes.
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL is durable against process crashes; only an OS
            // crash may lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                db: name.clone(),
                source,
            })?;
        let db = Self { name, pool };
        db.migrate(role).await?;
        Ok(db)
    }

    /// Applies pending migrations. Two processes opening a fresh file at the
    /// same moment may race; the loser retries and then finds them applied.
    async fn migrate(&self, role: Role) -> Result<(), StoreError> {
        let migrator = match role {
            Role::Catalog => &CATALOG_MIGRATIONS,
            Role::Shard => &SHARD_MIGRATIONS,
        };
        let mut attempt = 0;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(db = %self.name, %error, attempt, "migration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        db: self.name.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Runs `f` and records its duration and outcome under `op`.
    pub(crate) async fn timed<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let start = Instant::now();
        let result = f.await;
        let db = self.name.clone();
        metrics::histogram!(QUERY_DURATION, "db" => db.clone(), "op" => op)
            .record(start.elapsed().as_secs_f64());
        metrics::counter!(QUERIES, "db" => db.clone(), "op" => op).increment(1);
        result.map_err(|source| {
            metrics::counter!(QUERY_ERRORS, "db" => db.clone(), "op" => op).increment(1);
            StoreError::Query { db, op, source }
        })
    }

    /// Reads a `store_meta` value.
    pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.timed(
            "meta",
            sqlx::query_scalar::<_, String>("SELECT value FROM store_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool),
        )
        .await
    }

    /// Writes a `store_meta` value unless one is there; returns the value in force.
    pub(crate) async fn meta_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.timed(
            "meta",
            sqlx::query(
                "INSERT INTO store_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value)
            .execute(&self.pool),
        )
        .await?;
        Ok(self.meta(key).await?.unwrap_or_else(|| value.to_owned()))
    }
}

/// Registers the store's metrics with their help texts.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(QUERIES, "Queries run, by database and operation.");
    metrics::describe_counter!(
        QUERY_ERRORS,
        "Queries that failed, by database and operation."
    );
    metrics::describe_histogram!(
        QUERY_DURATION,
        metrics::Unit::Seconds,
        "Query duration including the wait for a connection, by database and operation."
    );
}
