//! Fixtures of the store suite: a store configuration on each engine.
//!
//! SQLite fixtures live in a temporary data directory (four shards, the
//! embedded default). PostgreSQL fixtures get fresh databases on two clusters
//! that the whole test binary shares, each a primary with one streaming
//! replica: the catalog and shard 0 on the first, shard 1 on the second, so
//! every suite test runs on 2 shards × (primary + 1 replica).

// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::time::Duration;

use scalestack_config::{Backend, Config, ReplicaSetConfig};
use scalestack_store::Store;
use scalestack_testkit::postgres::PgCluster;
use sqlx::Connection as _;

/// The two clusters every PostgreSQL fixture of this binary uses.
pub struct SharedPg {
    pub a: PgCluster,
    pub b: PgCluster,
}

static SHARED: OnceLock<SharedPg> = OnceLock::new();

/// Starts the shared clusters (once per test binary, in parallel).
pub fn shared_pg() -> &'static SharedPg {
    SHARED.get_or_init(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| PgCluster::start(1));
            let b = s.spawn(|| PgCluster::start(1));
            SharedPg {
                a: a.join().unwrap().expect("start PostgreSQL cluster a"),
                b: b.join().unwrap().expect("start PostgreSQL cluster b"),
            }
        })
    })
}

/// A store configuration on one engine, with what the tests need to look
/// behind the store's back.
pub struct Fixture {
    pub config: Config,
    pub pg: Option<&'static SharedPg>,
    prefix: String,
    _dir: tempfile::TempDir,
}

/// Settings that make replica routing react quickly in tests.
pub fn quick_replicas(config: &mut Config) {
    config.store.replica_check_interval = Duration::from_millis(100);
    config.store.replica_check_timeout = Duration::from_secs(1);
}

impl Fixture {
    /// Four SQLite shards and a catalog in a temporary data directory.
    pub fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            config: Config {
                data_dir: dir.path().to_owned(),
                ..Config::default()
            },
            pg: None,
            prefix: String::new(),
            _dir: dir,
        }
    }

    /// Fresh databases on the shared clusters: the catalog and shard 0 on
    /// cluster a, shard 1 on cluster b, each with its replica.
    pub async fn postgres() -> Fixture {
        let pg = tokio::task::spawn_blocking(shared_pg).await.unwrap();
        let prefix = PgCluster::unique_name("suite");
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        quick_replicas(&mut config);
        let catalog = format!("{prefix}_catalog");
        let s0 = format!("{prefix}_s0");
        let s1 = format!("{prefix}_s1");
        futures::future::try_join3(
            pg.a.create_database(&catalog),
            pg.a.create_database(&s0),
            pg.b.create_database(&s1),
        )
        .await
        .unwrap();
        config.store.catalog =
            ReplicaSetConfig::postgres(pg.a.primary_url(&catalog), pg.a.replica_urls(&catalog));
        config.store.shards = vec![
            ReplicaSetConfig::postgres(pg.a.primary_url(&s0), pg.a.replica_urls(&s0)),
            ReplicaSetConfig::postgres(pg.b.primary_url(&s1), pg.b.replica_urls(&s1)),
        ];
        config.validate().unwrap();
        Fixture {
            config,
            pg: Some(pg),
            prefix,
            _dir: dir,
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.config).await.unwrap()
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// The configuration with one more shard (a new file or database).
    pub async fn with_extra_shard(&self) -> Config {
        let mut config = self.config.clone();
        let n = config.store.shards.len();
        match self.pg {
            None => config
                .store
                .shards
                .push(ReplicaSetConfig::sqlite(&format!("shard-{n}.db"))),
            Some(pg) => {
                let db = format!("{}_s{n}", self.prefix);
                pg.b.create_database(&db).await.unwrap();
                config.store.shards.push(ReplicaSetConfig::postgres(
                    pg.b.primary_url(&db),
                    pg.b.replica_urls(&db),
                ));
            }
        }
        config
    }

    /// Waits until every replica has replayed everything written so far.
    pub async fn settle(&self) {
        if let Some(pg) = self.pg {
            for cluster in [&pg.a, &pg.b] {
                cluster
                    .wait_caught_up(0, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
        }
    }

    /// Rows of `table` on the primary of shard `i`, counted behind the store's back.
    pub async fn count_rows(&self, shard: usize, table: &str) -> i64 {
        count_rows(
            &self.config,
            &self.config.store.shards[shard].primary,
            table,
        )
        .await
    }
}

/// Rows of `table` in the database at `url`.
pub async fn count_rows(config: &Config, url: &str, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => {
            let path = config.resolve_sqlite_path(url).unwrap();
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
            let _ = conn.close().await;
            n
        }
        _ => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
            let _ = conn.close().await;
            n
        }
    }
}
