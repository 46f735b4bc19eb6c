//! A real `nats-server` with JetStream for tests and benchmarks, on a free
//! loopback port with its own store directory.
//!
//! The server can be killed with SIGKILL and restarted on the same port and
//! store directory (JetStream recovers its file store), which is what crash
//! tests need; it is stopped on drop. Like the Redis servers of
//! [`crate::redis`], it runs under a small `sh` guard holding a pipe from the
//! test process, so a test process that dies without running destructors
//! takes its server with it.
//!
//! The program comes from Debian's `nats-server` package (`cargo xtask test`
//! installs it). This module must not be used by the product.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::guarded::Guarded;

/// How long a server may take to accept connections with JetStream on.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The guard: starts nats-server with the given arguments, prints its pid,
/// and kills it when its standard input reaches end-of-file.
/// A `nats-server -js` on a free loopback port.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    process: Option<Guarded>,
    _tmp: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port, storing in a new
    /// temporary directory.
    pub fn start() -> Result<NatsServer, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("create a temporary directory: {e}"))?;
        let mut server = NatsServer {
            port: crate::ports::free_port(),
            dir: tmp.path().to_owned(),
            process: None,
            _tmp: tmp,
        };
        server.spawn()?;
        Ok(server)
    }

    /// A server shared by every caller while any of them holds it: tests of
    /// one binary that keep to their own streams (their own prefix or topic
    /// names) share one process. Tests that kill or restart the server must
    /// use [`NatsServer::start`].
    pub fn shared() -> Result<Arc<NatsServer>, String> {
        static SHARED: Mutex<Weak<NatsServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(NatsServer::start()?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let store = self.dir.join("jetstream");
        let log = self.dir.join("nats.log");
        let args = [
            "--addr".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--jetstream".to_owned(),
            "--store_dir".to_owned(),
            store.display().to_string(),
            "--log".to_owned(),
            log.display().to_string(),
        ];
        let guarded = Guarded::spawn("nats-server", &args)?;
        let pid = guarded.pid;
        self.process = Some(guarded);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if jetstream_ready(self.port) {
                return Ok(());
            }
            if !crate::stack::process_alive(pid) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                self.kill();
                return Err(format!(
                    "nats-server exited at start (is Debian's nats-server installed? \
                     `cargo xtask test` installs it); log:\n{log}"
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "nats-server on port {} did not offer JetStream within {START_TIMEOUT:?}",
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

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The directory of its JetStream store and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Kills the server with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server on `port` greets with an INFO line that offers JetStream.
fn jetstream_ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(64 * 1024));
    reader.read_line(&mut line).is_ok()
        && line.starts_with("INFO ")
        && line.contains("\"jetstream\":true")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn have_nats() -> bool {
        Command::new("sh")
            .args(["-c", "command -v nats-server"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn starts_kills_and_restarts_on_the_same_port() {
        assert!(
            have_nats(),
            "nats-server is missing: run `cargo xtask test` or apt-get install nats-server"
        );
        let mut server = NatsServer::start().unwrap();
        assert!(jetstream_ready(server.port()));
        let first = server.pid().unwrap();
        server.kill();
        assert!(!jetstream_ready(server.port()));
        server.restart().unwrap();
        assert!(jetstream_ready(server.port()));
        assert_ne!(server.pid().unwrap(), first);
        let port = server.port();
        drop(server);
        assert!(!jetstream_ready(port));
    }
}
