//! The store's one error type, and how a caller tells a failure that may pass
//! (overload, a lost connection) from one that will not.

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
        /// Database name, e.g. `shard-2` or `shard-2/replica-0`.
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
    /// The data set does not match the configuration.
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
        /// Database and node, e.g. `shard-1/replica-0`.
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
    /// A user was to be created in a region the shard map does not have.
    #[error("unknown region {region:?}; known regions: {known}")]
    UnknownRegion {
        /// The region asked for.
        region: String,
        /// The regions of the shard map, comma-separated (empty unless the map is geographic).
        known: String,
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
            StoreError::Query { source, .. } | StoreError::Open { source, .. } => {
                is_transient(source)
            }
            _ => false,
        }
    }
}

/// SQLSTATE classes and codes of PostgreSQL that a retry may cure.
fn transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 57P01-03: shutting down or starting up;
    // 40001: serialization failure (also a query cancelled on a replica by
    // a conflict with recovery); 40P01: deadlock; 53300: too many connections.
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
        )
}

/// Whether `error` is a temporary failure (see [`StoreError::is_transient`]).
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            match code.parse::<i32>() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), possibly extended.
                Ok(n) if code.len() <= 4 => matches!(n & 0xff, 5 | 6),
                _ => transient_sqlstate(&code),
            }
        }
        _ => false,
    }
}

/// Whether `error` says the node itself cannot serve (rather than that the
/// query is wrong): a read that fails so on a replica is retried on the primary
/// and the replica leaves the rotation.
pub(crate) fn node_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.len() == 5 && transient_sqlstate(&code)),
        _ => false,
    }
}
