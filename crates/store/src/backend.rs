//! The two database engines behind one connection-pool type.
//!
//! A [`Pool`] is an SQLite or a PostgreSQL pool. Statements are written once
//! with `$N` placeholders and portable SQL; [`on_pool!`](crate::on_pool)
//! expands one body for each engine, so the compiler checks the code against
//! both drivers without a trait object or a macro that needs a live database.
//! Where the engines really differ (sequences, transaction modes, the WAL
//! position) the caller branches on [`Pool::backend`].
//!
//! This module also owns the migrations of each engine and role (catalog or
//! shard), which are versioned by sqlx and applied when a primary is opened.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use scalestack_config::Backend;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Sqlite, SqlitePool, Transaction};

use crate::StoreError;

/// Schema of the SQLite catalog database.
static SQLITE_CATALOG: Migrator = sqlx::migrate!("migrations/sqlite/catalog");
/// Schema of every SQLite user shard.
static SQLITE_SHARD: Migrator = sqlx::migrate!("migrations/sqlite/shard");
/// Schema of the PostgreSQL catalog database.
static POSTGRES_CATALOG: Migrator = sqlx::migrate!("migrations/postgres/catalog");
/// Schema of every PostgreSQL user shard.
static POSTGRES_SHARD: Migrator = sqlx::migrate!("migrations/postgres/shard");

/// Which schema a database carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Catalog,
    Shard,
}

/// A connection pool of either engine; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Expands `$body` once per engine with `$p` bound to the engine's pool
/// (and, in the second form, `$db` to the engine's sqlx database type).
#[macro_export]
#[doc(hidden)]
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::backend::Pool::Sqlite($p) => $body,
            $crate::backend::Pool::Postgres($p) => $body,
        }
    };
    ($pool:expr, $p:ident, $db:ident => $body:expr) => {
        match $pool {
            $crate::backend::Pool::Sqlite($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::backend::Pool::Postgres($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}

/// Connection settings shared by every database of a store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) busy_timeout: Duration,
}

impl Pool {
    /// The engine of this pool.
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens (creating if missing) the SQLite file at `path`.
    pub(crate) async fn open_sqlite(
        name: &str,
        path: &Path,
        settings: PoolSettings,
    ) -> Result<Pool, StoreError> {
        let open_err = |source| StoreError::Open {
            db: name.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
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
            .map_err(open_err)?;
        Ok(Pool::Sqlite(pool))
    }

    /// Opens a PostgreSQL pool. A primary connects at once, so that a wrong
    /// URL fails the start; a replica connects lazily, so that a replica that
    /// is down does not keep the store from opening.
    pub(crate) async fn open_postgres(
        name: &str,
        url: &str,
        settings: PoolSettings,
        lazy: bool,
    ) -> Result<Pool, StoreError> {
        let open_err = |source| StoreError::Open {
            db: name.to_owned(),
            source,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(open_err)?
            .application_name("scalestack");
        let pool_options = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout);
        let pool = if lazy {
            pool_options.connect_lazy_with(options)
        } else {
            pool_options
                .min_connections(1)
                .connect_with(options)
                .await
                .map_err(open_err)?
        };
        Ok(Pool::Postgres(pool))
    }

    /// Applies pending migrations of `role`. Two processes opening a fresh
    /// database at the same moment may race (PostgreSQL serializes them with
    /// an advisory lock; SQLite may report busy): the loser retries and then
    /// finds them applied.
    pub(crate) async fn migrate(&self, name: &str, role: Role) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            let result = match (self, role) {
                (Pool::Sqlite(p), Role::Catalog) => SQLITE_CATALOG.run(p).await,
                (Pool::Sqlite(p), Role::Shard) => SQLITE_SHARD.run(p).await,
                (Pool::Postgres(p), Role::Catalog) => POSTGRES_CATALOG.run(p).await,
                (Pool::Postgres(p), Role::Shard) => POSTGRES_SHARD.run(p).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(db = %name, %error, attempt, "migration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(source) => {
                    return Err(StoreError::Migrate {
                        db: name.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        on_pool!(self, p => p.close().await);
    }
}

/// Starting a write transaction, the right way for each engine.
pub(crate) trait BeginWrite {
    /// The engine.
    type Db: sqlx::Database;
    /// Begins a transaction that will write.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        // IMMEDIATE takes the write lock up front: a deferred transaction
        // that upgrades later can fail with SQLITE_BUSY without waiting.
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}
