//! Child processes: spawning, output forwarding, restarts with backoff and
//! graceful termination.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use scalestack_config::{CONFIG_ENV, Config};
use scalestack_resilience::Backoff;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use scalestack_telemetry::logging::{COLOR_ENV, use_color};

use crate::signal::SUPERVISED_ENV;
use crate::status::{ChildState, ChildStatus, Statuses};
use crate::{CHILD_UP, RESTARTS, START_POLL, SupervisorError, probe};

/// What kind of process a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Api,
    Worker,
    Gateway,
}

/// How to start one child and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct ChildSpec {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    /// Arguments after the binary, e.g. `api --instance 0`.
    pub(crate) args: Vec<String>,
    /// Where it serves, for the banner.
    pub(crate) url: String,
    /// Where its `/health` answers.
    pub(crate) health: SocketAddr,
}

struct Control {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The running children and their supervision tasks.
pub(crate) struct Supervised {
    config: Arc<Config>,
    exe: PathBuf,
    /// The resolved config every child reads from [`CONFIG_ENV`].
    toml: Arc<str>,
    statuses: Statuses,
    controls: Mutex<HashMap<String, Control>>,
}

impl Supervised {
    pub(crate) fn new(config: Arc<Config>, exe: PathBuf, specs: &[ChildSpec]) -> Self {
        let toml = config.to_toml().into();
        let statuses = specs
            .iter()
            .map(|s| ChildStatus::pending(&s.name))
            .collect();
        Self {
            config,
            exe,
            toml,
            statuses: Arc::new(Mutex::new(statuses)),
            controls: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn statuses(&self) -> Statuses {
        self.statuses.clone()
    }

    /// `(name, pid)` of every running child.
    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        let statuses = self.statuses.lock().expect("status lock");
        statuses
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.pid?)))
            .collect()
    }

    fn status_of(&self, name: &str) -> Option<ChildStatus> {
        let statuses = self.statuses.lock().expect("status lock");
        statuses.iter().find(|s| s.name == name).cloned()
    }

    /// Starts the children and waits until each answers `/health` with 200.
    pub(crate) async fn start_all(&self, specs: &[&ChildSpec]) -> Result<(), SupervisorError> {
        for spec in specs {
            // Fail fast if the binary cannot be started at all.
            let child = spawn(&self.exe, spec, &self.toml)?;
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(supervise(
                (*spec).clone(),
                child,
                self.exe.clone(),
                self.toml.clone(),
                self.config.clone(),
                self.statuses.clone(),
                stop_rx,
            ));
            self.controls
                .lock()
                .expect("control lock")
                .insert(spec.name.clone(), Control { stop, task });
        }
        for spec in specs {
            self.wait_healthy(spec).await?;
        }
        Ok(())
    }

    /// Waits until the child's task reports it healthy (see [`supervise`]).
    async fn wait_healthy(&self, spec: &ChildSpec) -> Result<(), SupervisorError> {
        let deadline = Instant::now() + self.config.supervisor.start_timeout;
        loop {
            let status = self.status_of(&spec.name);
            if let Some(status) = &status {
                if status.restarts > 0 {
                    return Err(SupervisorError::StartFailed {
                        child: spec.name.clone(),
                        reason: format!(
                            "it exited during start-up ({}); its output is above",
                            status
                                .last_exit
                                .clone()
                                .unwrap_or_else(|| "unknown cause".into())
                        ),
                    });
                }
                if status.state == ChildState::Running {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(SupervisorError::StartFailed {
                    child: spec.name.clone(),
                    reason: format!(
                        "http://{}/health did not answer 200 within {}",
                        spec.health,
                        humanize(self.config.supervisor.start_timeout)
                    ),
                });
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Stops the gateway first (no new requests), then every other child.
    pub(crate) async fn stop_all(&self, specs: &[ChildSpec]) {
        let (gateway, rest): (Vec<&ChildSpec>, Vec<&ChildSpec>) =
            specs.iter().partition(|s| s.kind == Kind::Gateway);
        self.stop(&gateway).await;
        self.stop(&rest).await;
    }

    async fn stop(&self, specs: &[&ChildSpec]) {
        let controls: Vec<Control> = {
            let mut map = self.controls.lock().expect("control lock");
            specs.iter().filter_map(|s| map.remove(&s.name)).collect()
        };
        for c in &controls {
            let _ = c.stop.send(true);
        }
        for c in controls {
            let _ = c.task.await;
        }
    }
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Starts one child process of `exe` with the resolved config in its environment.
fn spawn(exe: &PathBuf, spec: &ChildSpec, toml: &str) -> Result<Child, SupervisorError> {
    let mut child = Command::new(exe)
        .args(&spec.args)
        .env(CONFIG_ENV, toml)
        .env(SUPERVISED_ENV, "1")
        .env(COLOR_ENV, if use_color() { "1" } else { "0" })
        // The child watches stdin: end-of-file means the supervisor is gone.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: Ctrl-C reaches only the supervisor, which then
        // stops the children in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SupervisorError::Spawn {
            child: spec.name.clone(),
            exe: exe.display().to_string(),
            source,
        })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(spec.name.clone(), out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(spec.name.clone(), err));
    }
    Ok(child)
}

/// Copies a child's output to ours, line by line, prefixed with its name.
async fn forward(name: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{name:>9} | {line}");
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => "signal 9 (SIGKILL)".into(),
        (None, Some(15)) => "signal 15 (SIGTERM)".into(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown".into(),
    }
}

fn update(statuses: &Statuses, name: &str, f: impl FnOnce(&mut ChildStatus)) {
    let mut all = statuses.lock().expect("status lock");
    if let Some(s) = all.iter_mut().find(|s| s.name == name) {
        f(s);
    }
}

/// Watches one child: restarts it with backoff whenever it dies, until told
/// to stop; then terminates it gracefully.
async fn supervise(
    spec: ChildSpec,
    first: Child,
    exe: PathBuf,
    toml: Arc<str>,
    config: Arc<Config>,
    statuses: Statuses,
    mut stop: watch::Receiver<bool>,
) {
    let sv = &config.supervisor;
    let backoff = Backoff::new(sv.restart_backoff_initial, sv.restart_backoff_max);
    let up = metrics::gauge!(CHILD_UP, "child" => spec.name.clone());
    let restarts = metrics::counter!(RESTARTS, "child" => spec.name.clone());
    let mut attempt = 0u32;
    let mut next = Some(first);
    loop {
        let mut child = match next.take() {
            Some(child) => child,
            None => match spawn(&exe, &spec, &toml) {
                Ok(child) => child,
                Err(error) => {
                    tracing::error!(%error, child = %spec.name, "cannot restart");
                    let delay = backoff.delay_random(attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        _ = stop.changed() => return,
                    }
                }
            },
        };
        // `Child::wait` closes stdin first; hold it apart so that the child
        // sees end-of-file only when this process is gone.
        let _stdin = child.stdin.take();
        let started = Instant::now();
        let pid = child.id();
        update(&statuses, &spec.name, |s| {
            s.state = ChildState::Starting;
            s.pid = pid;
            s.started = Some(started);
        });
        up.set(1.0);
        let healthy = became_healthy(&spec, sv.start_timeout);
        tokio::pin!(healthy);
        let mut reported_healthy = false;

        loop {
            tokio::select! {
                () = &mut healthy, if !reported_healthy => {
                    reported_healthy = true;
                    update(&statuses, &spec.name, |s| s.state = ChildState::Running);
                }
                exit = child.wait() => {
                    up.set(0.0);
                    let how = exit.map(describe_exit).unwrap_or_else(|e| e.to_string());
                    if started.elapsed() >= sv.stable_after {
                        attempt = 0;
                    }
                    let delay = backoff.delay_random(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        child = %spec.name,
                        exit = %how,
                        restart_in_ms = delay.as_millis() as u64,
                        "child died; restarting"
                    );
                    update(&statuses, &spec.name, |s| {
                        s.state = ChildState::Backoff;
                        s.pid = None;
                        s.last_exit = Some(how);
                        s.restarts += 1;
                    });
                    restarts.increment(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {
                            update(&statuses, &spec.name, |s| s.state = ChildState::Stopped);
                            return;
                        }
                    }
                    break;
                }
                _ = stop.changed() => {
                    let how = terminate(&spec.name, &mut child, sv.shutdown_timeout).await;
                    up.set(0.0);
                    update(&statuses, &spec.name, |s| {
                        s.state = ChildState::Stopped;
                        s.pid = None;
                        s.last_exit = Some(how);
                    });
                    return;
                }
            }
        }
    }
}

/// Resolves once the child answers `/health` with 200; never, if it does
/// not within `timeout` (it then stays `starting`, and says so in a log line).
async fn became_healthy(spec: &ChildSpec, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(200) = probe::status(spec.health, "/health", Duration::from_secs(1)).await {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(child = %spec.name, health = %spec.health, "not healthy within the start timeout");
            return std::future::pending().await;
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`.
async fn terminate(name: &str, child: &mut Child, grace: Duration) -> String {
    if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => {
            tracing::info!(child = %name, exit = %describe_exit(status), "stopped");
            describe_exit(status)
        }
        _ => {
            tracing::warn!(child = %name, grace_ms = grace.as_millis() as u64, "did not stop in time; killing");
            let _ = child.kill().await;
            "killed after the shutdown timeout".into()
        }
    }
}
