//! Real `redis-server` processes for tests and benchmarks: one standalone
//! server ([`RedisServer`]) or a Redis Cluster of several masters
//! ([`RedisCluster`]), on free loopback ports, each in a temporary directory.
//!
//! Servers can be killed (SIGKILL), restarted on the same port, paused
//! (SIGSTOP, to imitate a server that hangs) and resumed, which is what the
//! outage tests need. Everything is stopped on drop. Each server runs under a
//! small `sh` guard that holds a pipe from the test process: if the test
//! process dies without running destructors (SIGKILL, abort), the pipe closes
//! and the guard kills its server, so no `redis-server` outlives its test.
//!
//! The programs come from Debian's `redis-server` and `redis-tools` packages
//! (`cargo xtask test` installs them). Persistence is off: a restarted server
//! starts empty, like a cache node that lost its memory.
//!
//! This module must not be used by the product; only tests, benches and xtask.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rand::RngExt;
use rustix::process::{Pid, Signal, kill_process};

use crate::guarded::Guarded;

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The guard: starts redis-server with the given arguments, prints its pid,
/// and kills it when its standard input reaches end-of-file.
/// A standalone `redis-server` on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    process: Option<Guarded>,
    _tmp: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server on a free port in a new temporary directory.
    pub fn start() -> Result<RedisServer, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("create a temporary directory: {e}"))?;
        let dir = tmp.path().to_owned();
        let mut server = RedisServer {
            port: crate::ports::free_port(),
            dir,
            extra_args: Vec::new(),
            process: None,
            _tmp: Some(tmp),
        };
        server.spawn()?;
        Ok(server)
    }

    /// A server shared by every caller while any of them holds it: tests of
    /// one binary that only read and write keys (under their own prefixes)
    /// share one process instead of starting one each. Tests that kill,
    /// pause or restart a server must use [`RedisServer::start`].
    pub fn shared() -> Result<Arc<RedisServer>, String> {
        static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(RedisServer::start()?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }

    fn with_args(port: u16, dir: &Path, extra_args: Vec<String>) -> Result<RedisServer, String> {
        let mut server = RedisServer {
            port,
            dir: dir.to_owned(),
            extra_args,
            process: None,
            _tmp: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("create {}: {e}", self.dir.display()))?;
        let log = self.dir.join("redis.log");
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.display().to_string(),
            "--logfile",
            &log.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        let guarded = Guarded::spawn("redis-server", &args)?;
        let pid = guarded.pid;
        self.process = Some(guarded);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if !crate::stack::process_alive(pid) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                self.kill();
                return Err(format!(
                    "redis-server exited at start (is Debian's redis-server installed? \
                     `cargo xtask test` installs it); log:\n{log}"
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Process id of the server while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Kills the server with SIGKILL (no shutdown, connections reset) and
    /// waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port (empty: nothing persisted).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Stops the server with SIGSTOP: connections stay open but nothing is
    /// answered, like a server stuck in a long command or a network stall.
    pub fn pause(&self) -> Result<(), String> {
        self.signal(Signal::STOP)
    }

    /// Continues a paused server.
    pub fn resume(&self) -> Result<(), String> {
        self.signal(Signal::CONT)
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = self.pid().ok_or("redis-server is not running")?;
        let pid = Pid::from_raw(pid as i32).ok_or("invalid pid")?;
        kill_process(pid, signal).map_err(|e| format!("signal redis-server: {e}"))
    }

    /// Runs one command through `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` servers (no replicas) on free ports.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` servers in cluster mode, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: u16) -> Result<RedisCluster, String> {
        if masters < 3 {
            return Err(format!(
                "a Redis Cluster needs at least 3 masters, not {masters}"
            ));
        }
        let tmp = tempfile::tempdir().map_err(|e| format!("create a temporary directory: {e}"))?;
        let base = free_cluster_ports(masters);
        let mut nodes = Vec::new();
        for i in 0..masters {
            let port = base + i;
            let dir = tmp.path().join(format!("node-{port}"));
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(RedisServer::with_args(port, &dir, args)?);
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = create.iter().map(String::as_str).collect();
        redis_cli(nodes[0].port, &args)?;
        let cluster = RedisCluster { nodes, _tmp: tmp };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn wait_ok(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let all_ok = self.nodes.iter().all(|n| {
                n.cli(&["cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not reach cluster_state:ok within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://` URLs of every node, for a cluster client's seed list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Total keys held by all nodes (`DBSIZE` summed).
    pub fn dbsize(&self) -> Result<u64, String> {
        let mut total = 0;
        for n in &self.nodes {
            let out = n.cli(&["dbsize"])?;
            total += out
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("DBSIZE answered {out:?}"))?;
        }
        Ok(total)
    }
}

/// A base port with `n` consecutive free ports and their cluster bus ports
/// (port + 10000) free as well; kept below 22000 so the bus ports stay below
/// the kernel's ephemeral range.
fn free_cluster_ports(n: u16) -> u16 {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let first = rng.random_range(10_000..22_000 - n);
        if (first..first + n).all(|p| bindable(p) && bindable(p + 10_000)) {
            return first;
        }
    }
    panic!("no {n} free ports with free cluster bus ports on 127.0.0.1");
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// Whether a server on `port` answers PING.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "run redis-cli (Debian package redis-tools; `cargo xtask test` installs it): {e}"
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || stdout.starts_with("ERR") || stdout.contains("[ERR]") {
        return Err(format!(
            "redis-cli {} failed: {stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_dies_and_restarts_on_its_port() {
        let mut server = RedisServer::start().unwrap();
        assert_eq!(server.cli(&["set", "k", "v"]).unwrap().trim(), "OK");
        let port = server.port();
        server.kill();
        assert!(!ping(port));
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert!(
            server.cli(&["get", "k"]).unwrap().trim().is_empty(),
            "nothing persisted"
        );
    }

    #[test]
    fn a_paused_server_does_not_answer() {
        let server = RedisServer::start().unwrap();
        server.pause().unwrap();
        assert!(!ping(server.port()));
        server.resume().unwrap();
        assert!(ping(server.port()));
    }

    #[test]
    fn a_dropped_server_is_gone() {
        let server = RedisServer::start().unwrap();
        let pid = server.pid().unwrap();
        drop(server);
        assert!(!crate::stack::process_alive(pid));
    }

    #[test]
    fn a_cluster_covers_every_slot() {
        let cluster = RedisCluster::start(3).unwrap();
        assert_eq!(cluster.len(), 3);
        let info = cluster.node(1).cli(&["cluster", "info"]).unwrap();
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        // Keys spread over the masters: -c follows MOVED redirections.
        for i in 0..30 {
            cluster
                .node(0)
                .cli(&["-c", "set", &format!("key-{i}"), "v"])
                .unwrap();
        }
        assert_eq!(cluster.dbsize().unwrap(), 30);
        assert!(
            cluster
                .node(0)
                .cli(&["dbsize"])
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
                < 30
        );
    }
}
