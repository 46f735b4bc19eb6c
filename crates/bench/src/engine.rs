//! The closed-model load loop.
//!
//! One tokio task per connection. Each task owns a hyper HTTP/1.1 client
//! connection *and drives it itself* (rather than spawning the connection
//! future as a second task, as hyper's examples do): the request, the
//! response and the socket are then handled by one task on one thread,
//! without cross-task wake-ups, which keeps the generator's own CPU cost per
//! request low — on a 2-core machine it competes with the target for CPU.
//!
//! A task sends its next request as soon as the previous response is
//! complete, re-opens its connection when the target closes it or a request
//! fails, and stops starting requests at the deadline. A request in flight at
//! the deadline is allowed to finish and is counted.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use scalestack_telemetry::procfs;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};

use crate::cpu::{CpuTracker, CpuUsage};
use crate::keys::KeySampler;
use crate::progress::Progress;
use crate::report::{BenchReport, BenchSettings};
use crate::stats::{ConnStats, ErrorKind, LatencySummary, Live, Totals};
use crate::target::{RequestTemplate, Target};
use crate::{BenchError, BenchSpec};

/// How often the progress line is redrawn and the target CPU re-sampled.
const TICK: Duration = Duration::from_secs(1);

/// Back-off after a failed connect or a connection that died before its
/// first response, so that a dead target is not hammered in a busy loop.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// File descriptors a run needs besides one per connection: the runtime,
/// stdio, `/proc` reads, the probe, and some slack.
const SPARE_FDS: u64 = 64;

/// Makes sure the process may open a socket per connection.
///
/// The soft limit is commonly 1024 (a legacy of `select(2)`) while the hard
/// limit is far higher, so it is raised towards what the run needs, as Go's
/// runtime does at start-up; only if the hard limit is too low is the run
/// refused. Without this, connections beyond the limit would fail to connect
/// and the report would blame the target.
pub(crate) fn ensure_fd_limit(connections: usize) -> Result<(), BenchError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = (connections as u64).saturating_add(SPARE_FDS);
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return Ok(());
    };
    if soft >= need {
        return Ok(());
    }
    let raised = limit.maximum.map_or(need, |hard| hard.min(need));
    if raised > soft {
        // Failure is handled by reading the limit back below.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        );
    }
    match getrlimit(Resource::Nofile).current {
        Some(now) if now < need => Err(BenchError::InvalidSpec {
            field: "connections",
            reason: format!(
                "{connections} connections need about {need} open files, but this process may \
                 open only {now}; raise the limit (`ulimit -n`) or use fewer connections"
            ),
        }),
        _ => Ok(()),
    }
}

/// A validated spec, ready to run.
#[derive(Debug)]
pub(crate) struct Plan {
    target: Target,
    request: RequestTemplate,
    sampler: KeySampler,
    first_key: u64,
    connections: usize,
    duration: Duration,
    timeout: Duration,
    cpu_pids: Vec<u32>,
    progress: bool,
    settings: BenchSettings,
}

impl Plan {
    pub(crate) fn new(spec: &BenchSpec, threads: usize) -> Result<Self, BenchError> {
        spec.validate()?;
        let target = Target::parse(&spec.url)?;
        let request = RequestTemplate::new(spec, &target)?;
        let sampler = KeySampler::new(spec.keys, spec.dist)?;
        Ok(Self {
            target,
            request,
            sampler,
            first_key: spec.keys.first(),
            connections: spec.connections,
            duration: spec.duration,
            timeout: spec.timeout,
            cpu_pids: spec.cpu_pids.clone(),
            progress: spec.progress,
            settings: BenchSettings {
                url: spec.url.clone(),
                method: spec.method.to_string(),
                keys: spec.keys,
                dist: spec.dist,
                connections: spec.connections,
                threads,
                duration_s: spec.duration.as_secs_f64(),
                timeout_s: spec.timeout.as_secs_f64(),
            },
        })
    }
}

/// What every connection task shares, read-only.
#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    request: RequestTemplate,
    sampler: KeySampler,
    timeout: Duration,
    deadline: Instant,
    seed: u64,
    live: Option<Arc<Live>>,
}

/// Probes the target, runs the load and assembles the report.
pub(crate) async fn execute(plan: Plan) -> Result<BenchReport, BenchError> {
    let addr = probe(&plan).await?;
    let live = plan.progress.then(|| {
        // A few shards per worker keep the progress locks nearly uncontended.
        let shards = (plan.settings.threads * 4).clamp(1, plan.connections);
        Arc::new(Live::new(shards))
    });

    let client_before = procfs::self_stat().ok();
    let cpu = CpuTracker::start(&plan.cpu_pids);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        addr,
        request: plan.request,
        sampler: plan.sampler,
        timeout: plan.timeout,
        deadline: start + plan.duration,
        seed: rand::random(),
        live: live.clone(),
    });
    let tasks: Vec<_> = (0..plan.connections)
        .map(|id| tokio::spawn(connection(id, shared.clone())))
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let progress = live.map(|live| (Progress::new(start.into_std(), plan.duration), live));
    let monitor = tokio::spawn(monitor(cpu, progress, start, stopped));

    let mut totals = Totals::new();
    for task in tasks {
        match task.await {
            Ok(stats) => totals.merge(&stats),
            // A panic in a connection task is a bug in this crate; surface
            // it as the panic it is rather than as a wrong report.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("connection tasks are never cancelled: {e}"),
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    let cpu = match monitor.await {
        Ok(cpu) => cpu,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => unreachable!("the monitor is never cancelled: {e}"),
    };
    let requests = totals.requests();
    let target_cpu = cpu.finish(requests);
    let client_cpu = client_before
        .zip(procfs::self_stat().ok())
        .map(|(before, after)| {
            CpuUsage::new(
                vec![std::process::id()],
                1,
                after.cpu.saturating_sub(before.cpu),
                requests,
            )
        });

    let elapsed_s = elapsed.as_secs_f64();
    Ok(BenchReport {
        settings: plan.settings,
        elapsed_s,
        requests,
        rps: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        latency: LatencySummary::from_histogram(&totals.latency),
        status_counts: totals.statuses,
        errors: totals.errors,
        body_bytes: totals.body_bytes,
        reconnects: totals.reconnects,
        client_cpu,
        target_cpu,
    })
}

/// Samples target CPU and redraws the progress line every [`TICK`] until
/// told to stop; hands the CPU tracker back for the final reading.
async fn monitor(
    mut cpu: CpuTracker,
    mut progress: Option<(Progress, Arc<Live>)>,
    start: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> CpuTracker {
    let mut ticks = tokio::time::interval_at(start + TICK, TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                cpu.sample();
                if let Some((progress, live)) = &mut progress {
                    progress.tick(live);
                }
            }
        }
    }
    if let Some((mut progress, _)) = progress {
        progress.clear();
    }
    cpu
}

// === The probe ===

/// Resolves the target and sends one request before any load, so that a
/// wrong URL or a server that is not up fails fast with a clear message
/// instead of producing a report full of connect errors. Returns the address
/// that answered, which the load then uses without resolving again.
async fn probe(plan: &Plan) -> Result<SocketAddr, BenchError> {
    let url = plan.target.url_for(plan.first_key);
    let unreachable = |reason: String| BenchError::Unreachable {
        url: url.clone(),
        reason,
    };
    let (host, port) = plan.target.host_port();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unreachable(format!("cannot resolve `{host}`: {e}")))?
        .collect();
    let mut reason = format!("`{host}` resolves to no address");
    for addr in addrs {
        match probe_addr(addr, plan).await {
            Ok(()) => return Ok(addr),
            Err(why) => reason = why,
        }
    }
    Err(unreachable(reason))
}

async fn probe_addr(addr: SocketAddr, plan: &Plan) -> Result<(), String> {
    let mut conn = Conn::open(addr, plan.timeout)
        .await
        .map_err(|e| e.describe(plan.timeout))?;
    let request = plan.request.build(plan.first_key);
    match timeout(plan.timeout, conn.exchange(request)).await {
        Ok(Exchange::Done { .. }) => Ok(()),
        Ok(Exchange::NotSent(_)) => Err("the connection closed before the request was sent".into()),
        Ok(Exchange::Failed(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no response within {:?}", plan.timeout)),
    }
}

// === One connection ===

/// The load loop of connection `id`.
async fn connection(id: usize, shared: Arc<Shared>) -> ConnStats {
    let mut stats = ConnStats::new(shared.live.as_ref().map(|live| live.slot(id)));
    // Seeded per connection from one random run seed: independent streams,
    // and one place to make runs reproducible later.
    let mut rng = SmallRng::seed_from_u64(shared.seed.wrapping_add(id as u64));
    let mut conn: Option<Conn> = None;
    let mut opened = 0u64;
    let mut backoff = Backoff::default();
    // A request the connection closed on before writing it: it goes out
    // first on the next connection, so the key sequence is unaffected.
    let mut unsent: Option<Request<Full<Bytes>>> = None;

    while Instant::now() < shared.deadline {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            if let Some(old) = conn.take()
                && old.responses == 0
            {
                // It died before answering anything: the target is in
                // trouble, don't spin on it.
                backoff.failed();
            }
            if !backoff.wait(shared.deadline).await {
                break;
            }
            match Conn::open(shared.addr, shared.timeout).await {
                Ok(c) => {
                    stats.reconnects += u64::from(opened > 0);
                    opened += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::debug!(error = %e.describe(shared.timeout), "connect failed");
                    stats.error(ErrorKind::Connect);
                    backoff.failed();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };

        let request = unsent
            .take()
            .unwrap_or_else(|| shared.request.build(shared.sampler.sample(&mut rng)));
        let started = Instant::now();
        match timeout(shared.timeout, c.exchange(request)).await {
            Ok(Exchange::Done { status, body_bytes }) => {
                stats.response(status, started.elapsed(), body_bytes);
                c.responses += 1;
                backoff.reset();
            }
            Ok(Exchange::NotSent(request)) => {
                unsent = Some(*request);
                c.close();
            }
            Ok(Exchange::Failed(e)) => {
                tracing::debug!(error = %error_chain(&e), "request failed");
                stats.error(ErrorKind::Io);
                c.close();
            }
            Err(_) => {
                // The response may still arrive later and would be taken
                // for the next request's: the connection is unusable.
                stats.error(ErrorKind::Timeout);
                c.close();
            }
        }
    }
    stats
}

/// Exponential back-off between failing connection attempts.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn failed(&mut self) {
        self.next = Some(self.next.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX)));
    }

    fn reset(&mut self) {
        self.next = None;
    }

    /// Sleeps for the current back-off, but not past `deadline`; false if
    /// the deadline has passed.
    async fn wait(&self, deadline: Instant) -> bool {
        if let Some(d) = self.next {
            sleep(d.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Instant::now() < deadline
    }
}

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// An HTTP/1.1 client connection driven by the task that uses it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// hyper's connection state machine; `None` once it has finished (the
    /// target closed the connection, or it failed) or we gave up on it.
    driver: Option<Driver>,
    responses: u64,
}

/// Why a connection could not be opened.
#[derive(Debug)]
enum ConnectError {
    Io(std::io::Error),
    Timeout,
    Handshake(hyper::Error),
}

impl ConnectError {
    /// Short, lower-case text for messages: `connection refused`.
    fn describe(&self, limit: Duration) -> String {
        match self {
            Self::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".into()
            }
            Self::Io(e) => e.to_string(),
            Self::Timeout => format!("connect timed out after {limit:?}"),
            Self::Handshake(e) => error_chain(e),
        }
    }
}

/// How one request went.
enum Exchange {
    /// A complete response: status and body read to the end.
    Done { status: u16, body_bytes: u64 },
    /// The connection was closed before the request was written; it can be
    /// sent on a new connection as is. Boxed: this is the rare path, and
    /// it keeps every other outcome small.
    NotSent(Box<Request<Full<Bytes>>>),
    /// The request was (perhaps partly) sent and failed.
    Failed(hyper::Error),
}

impl Conn {
    async fn open(addr: SocketAddr, limit: Duration) -> Result<Self, ConnectError> {
        let stream = timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Io)?;
        // Requests are small single writes; waiting for Nagle would add
        // up to 40 ms to every latency.
        stream.set_nodelay(true).map_err(ConnectError::Io)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(Self {
            sender,
            driver: Some(driver),
            responses: 0,
        })
    }

    fn is_closed(&self) -> bool {
        self.driver.is_none()
    }

    /// Drops the connection (closing the socket).
    fn close(&mut self) {
        self.driver = None;
    }

    /// Sends `request` and reads the whole response.
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Exchange {
        let Self { sender, driver, .. } = self;
        drive(driver, async move {
            // After a response, the connection needs a moment (driven
            // below) to become ready for the next request.
            if sender.ready().await.is_err() {
                return Exchange::NotSent(Box::new(request));
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => {
                    return match e.take_message() {
                        Some(request) => Exchange::NotSent(Box::new(request)),
                        None => Exchange::Failed(e.into_error()),
                    };
                }
            };
            let status = response.status().as_u16();
            match read_body(response.into_body()).await {
                Ok(body_bytes) => Exchange::Done { status, body_bytes },
                Err(e) => Exchange::Failed(e),
            }
        })
        .await
    }
}

/// Reads a body to its end, counting but not keeping the bytes.
async fn read_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok(bytes)
}

/// Runs `fut` to completion while polling the connection's driver, so that
/// the request is written and the response read by this same task.
///
/// When the driver finishes it is dropped at once: hyper then fails whatever
/// `fut` is still waiting for (readiness, the response, the rest of the
/// body), so `fut` always completes and never hangs on a dead connection.
async fn drive<F: Future>(driver: &mut Option<Driver>, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(d) = driver
            && let Poll::Ready(result) = Pin::new(d).poll(cx)
        {
            if let Err(e) = result {
                tracing::debug!(error = %error_chain(&e), "connection failed");
            }
            *driver = None;
            return fut.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// An error with its causes, `outer: inner: root`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next, None);
        b.failed();
        assert_eq!(b.next, Some(BACKOFF_MIN));
        b.failed();
        assert_eq!(b.next, Some(BACKOFF_MIN * 2));
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.next, Some(BACKOFF_MAX));
        b.reset();
        assert_eq!(b.next, None);
    }

    #[test]
    fn fd_limit_is_fine_for_few_connections_and_refuses_absurd_counts() {
        ensure_fd_limit(16).unwrap();
        match ensure_fd_limit(100_000_000) {
            Err(BenchError::InvalidSpec {
                field: "connections",
                reason,
            }) => {
                assert!(reason.contains("ulimit -n"), "{reason}");
            }
            other => panic!("expected the limit to be too low, got {other:?}"),
        }
    }

    #[test]
    fn error_chains_name_every_cause() {
        let inner = std::io::Error::other("root cause");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(error_chain(&outer), "wrapped: root cause");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
