//! The real stack: `scalestack up` started from the built binary, on free
//! ports, with its data in a directory the test owns.
//!
//! The supervisor's output goes to a log file next to the data, so that a
//! failing test can show what the processes said.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use scalestack_config::Config;

use crate::http::Client;
use crate::ports::free_consecutive;

/// A configuration for a test stack in `dir`: every port free, health checks
/// fast so that failover happens within a test's patience.
pub fn test_config(dir: &Path, api_instances: u16) -> Config {
    // gateway, gateway admin, worker, supervisor, then the api instances.
    let base = free_consecutive(4 + api_instances);
    let addr = |offset: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, base + offset));
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.gateway.listen = addr(0);
    config.gateway.admin_listen = addr(1);
    config.worker.listen = addr(2);
    config.supervisor.listen = addr(3);
    config.api.listen = addr(4);
    config.api.instances = api_instances;
    config.gateway.health_check.interval = Duration::from_millis(250);
    config.gateway.health_check.timeout = Duration::from_millis(200);
    config.supervisor.restart_backoff_initial = Duration::from_millis(100);
    config.log.level = "info".into();
    config
}

/// A running `scalestack up`.
#[derive(Debug)]
pub struct Stack {
    /// The configuration it runs with.
    pub config: Config,
    /// Where its config file and log live.
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    client: Client,
}

impl Stack {
    /// Writes `config` to `dir/config.toml`, starts `exe up --config` with
    /// `extra_args`, and waits until the supervisor reports every child running.
    pub async fn start(
        exe: &Path,
        config: Config,
        dir: &Path,
        extra_args: &[&str],
    ) -> Result<Stack, String> {
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config.to_toml()).map_err(|e| format!("write config: {e}"))?;
        let log = dir.join(format!(
            "up-{}.log",
            std::process::id() as u64 * 1000 + log_seq()
        ));
        let out = std::fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("up")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
        let mut stack = Stack {
            config,
            dir: dir.to_owned(),
            child: Some(child),
            log,
            client: Client::new(Duration::from_secs(5)),
        };
        stack.wait_ready(Duration::from_secs(60)).await?;
        Ok(stack)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.supervisor_url());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "scalestack up exited early ({status}); log:\n{}",
                    self.log()
                ));
            }
            if let Ok(r) = self.client.get(&url).await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the stack was not ready within {timeout:?}; log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the stack printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id of the supervisor.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Base URL of the gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.config.gateway.listen)
    }

    /// Base URL of the gateway's admin listener.
    pub fn gateway_admin_url(&self) -> String {
        format!("http://{}", self.config.gateway.admin_listen)
    }

    /// Base URL of api instance `i`.
    pub fn api_url(&self, i: u16) -> String {
        format!("http://{}", self.config.api.instance_addr(i))
    }

    /// Base URL of the worker.
    pub fn worker_url(&self) -> String {
        format!("http://{}", self.config.worker.listen)
    }

    /// Base URL of the supervisor's status endpoints.
    pub fn supervisor_url(&self) -> String {
        format!("http://{}", self.config.supervisor.listen)
    }

    /// The supervisor's report of its children.
    pub async fn children(&self) -> serde_json::Value {
        match self
            .client
            .get(&format!("{}/health", self.supervisor_url()))
            .await
        {
            Ok(r) => r.json(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// `(pid, restarts)` of a child while it runs.
    pub async fn child(&self, name: &str) -> Option<(u32, u64)> {
        let report = self.children().await;
        let child = report["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?
            .clone();
        if child["state"] != "running" {
            return None;
        }
        Some((child["pid"].as_u64()? as u32, child["restarts"].as_u64()?))
    }

    /// Sends SIGINT (Ctrl-C) and waits for `up` to exit.
    pub async fn stop(mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("already stopped")?;
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            kill_process(pid, Signal::INT).map_err(|e| e.to_string())?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "scalestack up did not exit within 30 s of SIGINT; log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Killing the supervisor is enough: its children see end-of-file on
        // stdin and stop themselves.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Whether process `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
