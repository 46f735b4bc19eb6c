//! Real PostgreSQL servers for tests and benchmarks: a primary with streaming
//! replicas on free loopback ports, each in a data directory of its own.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every
//! server program (`initdb`, `postgres`, `pg_basebackup`, `pg_ctl`) runs
//! through `runuser` as an unprivileged user ([`PG_USER`], created with
//! `useradd` if missing) that owns the data directories. Replicas are copies
//! made with `pg_basebackup -R`, so they stream from the primary at once.
//!
//! Every server runs under a small `sh` wrapper whose standard input is a pipe
//! held by this process: when the test process ends, even by SIGKILL, the
//! pipe closes and the wrapper stops its server, so no server outlives its
//! test binary. Clusters are started with blocking calls so that one cluster
//! can be shared (in a `static`) by the tests of one binary, which each run
//! on a runtime of their own; the helpers that talk SQL are async and open a
//! connection per call for the same reason.
//!
//! Nothing here may be used by the product: tests, benches and xtask only.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::ports::free_port;

/// The unprivileged user that owns the data directories and runs the servers
/// when the tests run as root.
pub const PG_USER: &str = "scalestack-pg";

/// The superuser role of every test cluster (trust authentication on loopback).
pub const SUPERUSER: &str = "postgres";

/// Errors of starting or driving a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The PostgreSQL server programs were not found.
    #[error(
        "PostgreSQL server programs not found (looked for {0}); install the Debian package `postgresql`"
    )]
    NotInstalled(String),
    /// A program failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and output, or the start error.
        detail: String,
    },
    /// A server did not become ready in time.
    #[error("PostgreSQL on port {port} was not ready within {waited:?}; log:\n{log}")]
    NotReady {
        /// Its port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The server's log.
        log: String,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An SQL helper failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Number of streaming replicas.
    pub replicas: usize,
    /// Whether commits wait for the disk (`fsync`, `synchronous_commit`).
    /// Tests turn this off for speed; benchmarks keep PostgreSQL's defaults.
    pub durable: bool,
    /// `max_connections` of every server.
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            durable: false,
            max_connections: 300,
        }
    }
}

/// Directory of the PostgreSQL server programs (`/usr/lib/postgresql/N/bin`).
pub fn bin_dir() -> Result<PathBuf, PgError> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| PgError::NotInstalled(root.join("*/bin/postgres").display().to_string()))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}

/// Runs `cmd` to completion, failing with its output.
fn run(cmd: &mut Command) -> Result<String, PgError> {
    let output = cmd.output().map_err(|e| PgError::Command {
        command: describe(cmd),
        detail: e.to_string(),
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(PgError::Command {
            command: describe(cmd),
            detail: format!("{}: {text}", output.status),
        })
    }
}

/// A command that runs `program` as the server user (directly when not root).
fn as_pg_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Creates [`PG_USER`] when running as root and it does not exist yet.
fn ensure_user() -> Result<(), PgError> {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if *checked || !is_root() {
        return Ok(());
    }
    let exists = Command::new("id")
        .args(["-u", PG_USER])
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        // Another test binary may create it at the same moment; accept that.
        let result = run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_USER,
        ]));
        let exists_now = Command::new("id")
            .args(["-u", PG_USER])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists_now {
            result?;
        }
    }
    *checked = true;
    Ok(())
}

/// Gives `path` (recursively) to the server user.
fn chown_to_pg_user(path: &Path) -> Result<(), PgError> {
    if is_root() {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_USER}:"))
            .arg(path))?;
    }
    Ok(())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// One running server: the wrapper process whose stdin keeps it alive.
#[derive(Debug)]
struct Running {
    wrapper: Child,
    stdin: Option<ChildStdin>,
}

impl Running {
    /// Closes the wrapper's stdin: it stops the server at once (SIGQUIT,
    /// PostgreSQL's immediate shutdown) and exits.
    fn stop_now(mut self) {
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }
}

/// One PostgreSQL server of a cluster.
#[derive(Debug)]
pub struct PgServer {
    /// Its loopback port.
    pub port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    running: Mutex<Option<Running>>,
    /// Wrappers of earlier runs (after a stop and start): kept until drop so
    /// that closing their stdin cannot touch the current server.
    retired: Mutex<Vec<Running>>,
}

impl PgServer {
    fn spawn(&self) -> Result<(), PgError> {
        // `read` returns when our end of the pipe closes (we dropped it, or
        // the test process died); then the server is stopped immediately.
        let script = r#"
            "$1" -D "$2" >>"$3" 2>&1 &
            pid=$!
            read _ignored
            kill -QUIT "$pid" 2>/dev/null
            wait "$pid"
        "#;
        let mut cmd = as_pg_user("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(self.bin.join("postgres"))
            .arg(&self.data_dir)
            .arg(&self.log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut wrapper = cmd.spawn().map_err(|e| PgError::Command {
            command: describe(&cmd),
            detail: e.to_string(),
        })?;
        let stdin = wrapper.stdin.take();
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running { wrapper, stdin });
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let start = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", SUPERUSER, "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(PgError::NotReady {
                    port: self.port,
                    waited: timeout,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `postgres://` URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Whether the server runs (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stops the server cleanly (fast shutdown) and waits until it is gone.
    pub fn stop(&self) -> Result<(), PgError> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(running) = running else {
            return Ok(());
        };
        let result = run(as_pg_user(self.bin.join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir));
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(running);
        result.map(drop)
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn start(&self) -> Result<(), PgError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn()
    }

    /// Opens a connection to database `db` of this server.
    pub async fn connect(&self, db: &str) -> Result<PgConnection, PgError> {
        PgConnection::connect(&self.url(db))
            .await
            .map_err(|source| PgError::Sql {
                what: format!("connect to {}", self.url(db)),
                source,
            })
    }

    async fn execute(&self, db: &str, sql: &str) -> Result<(), PgError> {
        let mut conn = self.connect(db).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .map_err(|source| PgError::Sql {
                what: format!("run `{sql}` on port {}", self.port),
                source,
            })?;
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(running) = running {
            running.stop_now();
        }
        for old in self
            .retired
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            old.stop_now();
        }
    }
}

/// A primary with streaming replicas.
#[derive(Debug)]
pub struct PgCluster {
    /// The primary.
    pub primary: PgServer,
    /// The replicas, streaming from the primary.
    pub replicas: Vec<PgServer>,
    // Declared after the servers: the directories are removed after the
    // servers stopped.
    _dir: tempfile::TempDir,
    /// Removes the directory when this process ends without dropping the
    /// cluster (a cluster in a `static`, or a killed test).
    _janitor: Option<Running>,
}

/// Starts a process that removes `dir` once our end of its stdin closes:
/// when the cluster is dropped, or when this process ends in any way. The
/// servers stop at the same moment, so it retries for a few seconds while
/// they exit.
fn janitor(dir: &Path) -> Option<Running> {
    let script = r#"
        read _ignored
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            sleep 0.5
            rm -rf "$1" 2>/dev/null
            [ -e "$1" ] || exit 0
        done
    "#;
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = wrapper.stdin.take();
    Some(Running { wrapper, stdin })
}

fn write_settings(data_dir: &Path, lines: &[String]) -> Result<(), PgError> {
    let path = data_dir.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    writeln!(file, "\n# scalestack testkit\n{}", lines.join("\n"))
        .map_err(io_err(format!("write {}", path.display())))
}

impl PgCluster {
    /// Starts a primary and `replicas` streaming replicas with the test
    /// settings (not durable).
    pub fn start(replicas: usize) -> Result<PgCluster, PgError> {
        Self::start_with(&PgOptions {
            replicas,
            ..PgOptions::default()
        })
    }

    /// Starts a cluster with `options`. Blocks until every server accepts
    /// connections.
    pub fn start_with(options: &PgOptions) -> Result<PgCluster, PgError> {
        let bin = bin_dir()?;
        ensure_user()?;
        let dir = tempfile::Builder::new()
            .prefix("scalestack-pg-")
            .tempdir()
            .map_err(io_err("create a temporary directory"))?;
        chown_to_pg_user(dir.path())?;

        let primary = PgServer {
            port: free_port(),
            data_dir: dir.path().join("primary"),
            log: dir.path().join("primary.log"),
            bin: bin.clone(),
            running: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
        };
        run(as_pg_user(bin.join("initdb"))
            .arg("-D")
            .arg(&primary.data_dir)
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]))?;
        let mut settings = vec![
            format!("port = {}", primary.port),
            "listen_addresses = '127.0.0.1'".to_owned(),
            // No Unix socket: the default socket directory belongs to the
            // Debian cluster and is not ours to write.
            "unix_socket_directories = ''".to_owned(),
            format!("max_connections = {}", options.max_connections),
            "wal_level = replica".to_owned(),
            "max_wal_senders = 16".to_owned(),
            "hot_standby = on".to_owned(),
            "hot_standby_feedback = on".to_owned(),
            // Replicas whose replay is paused keep reading WAL; keep enough
            // of it that they can catch up afterwards.
            "wal_keep_size = '128MB'".to_owned(),
            "shared_buffers = '64MB'".to_owned(),
        ];
        if !options.durable {
            settings.extend([
                "fsync = off".to_owned(),
                "synchronous_commit = off".to_owned(),
                "full_page_writes = off".to_owned(),
            ]);
        }
        write_settings(&primary.data_dir, &settings)?;
        let primary_log = primary.log.clone();
        std::fs::write(&primary_log, b"").map_err(io_err("create the log"))?;
        chown_to_pg_user(&primary_log)?;
        primary.spawn()?;

        let janitor = janitor(dir.path());
        let mut cluster = PgCluster {
            primary,
            replicas: Vec::new(),
            _dir: dir,
            _janitor: janitor,
        };
        for i in 0..options.replicas {
            cluster.add_replica(i)?;
        }
        Ok(cluster)
    }

    fn add_replica(&mut self, i: usize) -> Result<(), PgError> {
        let base = self
            .primary
            .data_dir
            .parent()
            .expect("data directories live in the cluster directory")
            .to_owned();
        let bin = self.primary.bin.clone();
        let replica = PgServer {
            port: free_port(),
            data_dir: base.join(format!("replica-{i}")),
            log: base.join(format!("replica-{i}.log")),
            bin: bin.clone(),
            running: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
        };
        run(as_pg_user(bin.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &self.primary.port.to_string()])
            .args(["-U", SUPERUSER, "-X", "stream", "-R", "--no-sync", "-D"])
            .arg(&replica.data_dir))?;
        // The copy carries the primary's settings; only the port differs.
        write_settings(&replica.data_dir, &[format!("port = {}", replica.port)])?;
        std::fs::write(&replica.log, b"").map_err(io_err("create the log"))?;
        chown_to_pg_user(&replica.log)?;
        replica.spawn()?;
        self.replicas.push(replica);
        Ok(())
    }

    /// URL of database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        self.primary.url(db)
    }

    /// URLs of database `db` on every replica.
    pub fn replica_urls(&self, db: &str) -> Vec<String> {
        self.replicas.iter().map(|r| r.url(db)).collect()
    }

    /// Creates database `name` on the primary and waits until every running
    /// replica has it.
    pub async fn create_database(&self, name: &str) -> Result<(), PgError> {
        self.primary
            .execute("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await?;
        for replica in self.replicas.iter().filter(|r| r.is_running()) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match replica.connect(name).await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        break;
                    }
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(())
    }

    /// A fresh database name, unique in this process: `prefix_N`.
    pub fn unique_name(prefix: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        format!("{prefix}_{}", SEQ.fetch_add(1, Ordering::Relaxed))
    }

    /// Pauses WAL replay on replica `i`: it keeps receiving WAL but shows
    /// no new commits, which is real, controllable replication lag.
    pub async fn pause_replay(&self, i: usize) -> Result<(), PgError> {
        self.replicas[i]
            .execute("postgres", "SELECT pg_wal_replay_pause()")
            .await
    }

    /// Resumes WAL replay on replica `i`.
    pub async fn resume_replay(&self, i: usize) -> Result<(), PgError> {
        self.replicas[i]
            .execute("postgres", "SELECT pg_wal_replay_resume()")
            .await
    }

    /// Waits until replica `i` has replayed everything the primary has
    /// written so far.
    pub async fn wait_caught_up(&self, i: usize, timeout: Duration) -> Result<(), PgError> {
        let sql_err = |what: &str| {
            let what = what.to_owned();
            move |source| PgError::Sql { what, source }
        };
        let mut primary = self.primary.connect("postgres").await?;
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut primary)
            .await
            .map_err(sql_err("read the primary's WAL position"))?;
        let _ = primary.close().await;
        let mut replica = self.replicas[i].connect("postgres").await?;
        let deadline = Instant::now() + timeout;
        loop {
            let behind: bool =
                sqlx::query_scalar("SELECT COALESCE(pg_last_wal_replay_lsn() < $1::pg_lsn, true)")
                    .bind(&target)
                    .fetch_one(&mut replica)
                    .await
                    .map_err(sql_err("read the replica's replay position"))?;
            if !behind {
                let _ = replica.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgError::NotReady {
                    port: self.replicas[i].port,
                    waited: timeout,
                    log: format!("replica {i} did not replay up to {target}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
