//! Running the load: threads, lanes, the open model's pacer, the monitor.
//!
//! The generator is shared-nothing per thread, like wrk: each load thread
//! runs its own single-threaded tokio runtime and owns a fixed share of the
//! connections, its own statistics and (open model) its own share of the
//! schedule. A request is rendered, sent, read and counted by one task on
//! one thread, with no cross-thread wake-ups and no locks on the hot path —
//! on a 2-core machine the generator competes with the target for CPU, so
//! its cost per request is part of the measurement's honesty.
//!
//! A *lane* is one request in flight: an HTTP/1.1 connection, or one stream
//! of an HTTP/2 connection. Closed model: a lane sends its next request as
//! soon as the previous one completes. Open model: a per-thread pacer
//! releases requests at their due times and idle lanes take them in order; a
//! request that finds every lane busy waits, and its latency still counts
//! from its due time.
//!
//! The calling thread is the monitor: once per second it merges the
//! threads' ticks into the timeline, redraws the progress line and samples
//! the CPU time of the processes under test.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use scalestack_telemetry::procfs;
use tokio::sync::Notify;
use tokio::time::{MissedTickBehavior, timeout};

use crate::cpu::{CpuTracker, CpuUsage};
use crate::h1;
use crate::h2;
use crate::progress::Progress;
use crate::report::{self, BenchReport, BenchSettings};
use crate::schedule::{Pacer, Schedule};
use crate::stats::{ErrorKind, ThreadStats, Tick, Timeline, Totals};
use crate::target::{KindSource, Mix, RequestKind, Target};
use crate::template::Vars;
use crate::{BenchError, BenchSpec, Protocol};

/// How often the timeline gets a row, the progress line is redrawn and the
/// target CPU re-sampled.
const TICK: Duration = Duration::from_secs(1);

/// A request sent more than this after its due time counts as late.
pub(crate) const LATE_AFTER: Duration = Duration::from_millis(1);

/// Back-off after a failed connect or a connection that died before its
/// first response, so that a dead target is not hammered in a busy loop.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// File descriptors a run needs besides one per connection: the runtimes,
/// timers, stdio, `/proc` reads, the probe, and some slack.
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
    kinds: Vec<RequestKind>,
    mix: Mix,
    schedule: Option<Schedule>,
    protocol: Protocol,
    connections: usize,
    threads: usize,
    duration: Duration,
    timeout: Duration,
    cpu_pids: Vec<u32>,
    progress: bool,
    seed: u64,
    settings: BenchSettings,
}

impl Plan {
    pub(crate) fn new(spec: &BenchSpec, threads: usize) -> Result<Self, BenchError> {
        spec.validate()?;
        let mut url = spec.url.clone();
        if url.trim().is_empty()
            && let Some(scenario_url) = spec.scenario.as_ref().and_then(|s| s.url.clone())
        {
            url = scenario_url;
        }
        let target = Target::parse(&url)?;
        if let Some(scenario) = &spec.scenario {
            scenario.check().map_err(|reason| BenchError::InvalidSpec {
                field: "scenario",
                reason,
            })?;
        }
        let kinds: Vec<RequestKind> = KindSource::from_spec(spec, &target)
            .iter()
            .enumerate()
            .map(|(i, s)| RequestKind::compile(i, s, &target, spec.scenario.is_some()))
            .collect::<Result<_, _>>()?;
        let mix = Mix::new(&kinds);
        let stages = spec.load.stages(spec.duration);
        let schedule = spec.load.is_open().then(|| Schedule::new(&stages));
        let threads = threads.clamp(1, spec.connections);
        let seed = spec.seed.unwrap_or_else(rand::random);
        let duration = spec.total_duration();
        let settings = BenchSettings {
            url,
            method: if spec.scenario.is_some() {
                "MIX".into()
            } else {
                spec.method.to_string()
            },
            keys: spec.keys,
            dist: spec.dist,
            connections: spec.connections,
            threads,
            duration_s: duration.as_secs_f64(),
            timeout_s: spec.timeout.as_secs_f64(),
            model: if spec.load.is_open() {
                "open".into()
            } else {
                "closed".into()
            },
            stages,
            protocol: spec.protocol,
            seed,
        };
        Ok(Self {
            target,
            kinds,
            mix,
            schedule,
            protocol: spec.protocol,
            connections: spec.connections,
            threads,
            duration,
            timeout: spec.timeout,
            cpu_pids: spec.cpu_pids.clone(),
            progress: spec.progress,
            seed,
            settings,
        })
    }
}

/// Probes the target, runs the load and assembles the report.
pub(crate) fn execute(plan: Plan) -> Result<BenchReport, BenchError> {
    let probe_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let addr = probe_runtime.block_on(probe(&plan))?;
    drop(probe_runtime);

    let plan = Arc::new(plan);
    let client_before = procfs::self_stat().ok();
    let mut cpu = CpuTracker::start(&plan.cpu_pids);
    let (ticks, ticks_received) = mpsc::channel::<Tick>();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(plan.threads);
    for index in 0..plan.threads {
        let plan = plan.clone();
        let ticks = ticks.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || load_thread(index, &plan, addr, start, &ticks))
            .map_err(BenchError::Runtime)?;
        handles.push(handle);
    }
    drop(ticks);

    // === The monitor ===
    let mut timeline = Timeline::new(plan.threads, plan.schedule.clone());
    let mut progress = plan
        .progress
        .then(|| Progress::new(plan.duration, plan.schedule.is_some()));
    let mut next_sample = start + TICK;
    loop {
        let wait = next_sample.saturating_duration_since(Instant::now());
        match ticks_received.recv_timeout(wait) {
            Ok(tick) => {
                if let (Some(row), Some(progress)) = (timeline.add(&tick), progress.as_mut()) {
                    progress.row(&row);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                cpu.sample();
                next_sample += TICK;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut totals = Totals::new(plan.kinds.len(), plan.schedule.is_some());
    for handle in handles {
        match handle.join() {
            Ok(Ok(stats)) => totals.merge(&stats),
            Ok(Err(e)) => return Err(e),
            // A panic in a load thread is a bug in this crate; surface it as
            // the panic it is rather than as a wrong report.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress.as_mut() {
        progress.clear();
    }
    let overall = totals.overall();
    let requests = overall.responses();
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
    Ok(report::assemble(report::Parts {
        settings: plan.settings.clone(),
        kinds: &plan.kinds,
        schedule: plan.schedule.as_ref(),
        duration: plan.duration,
        elapsed,
        totals: &totals,
        overall: &overall,
        timeline: timeline.finish(),
        client_cpu,
        target_cpu,
    }))
}

// === The probe ===

/// Resolves the target and sends one request before any load, so that a
/// wrong URL or a server that is not up fails fast with a clear message
/// instead of producing a report full of connect errors. Returns the address
/// that answered, which the load then uses without resolving again.
async fn probe(plan: &Plan) -> Result<SocketAddr, BenchError> {
    let kind = &plan.kinds[0];
    let mut vars = Vars::new(kind.first_key, 0);
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let mut wire = Vec::new();
    kind.render_h1(&mut wire, &mut Vec::new(), &mut vars, &mut rng);
    let path =
        String::from_utf8_lossy(wire.split(|&b| b == b' ').nth(1).unwrap_or_default()).into_owned();
    let unreachable = |reason: String| BenchError::Unreachable {
        url: format!("{}{path}", plan.target.origin()),
        reason,
    };
    let (host, port) = plan.target.host_port();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| unreachable(format!("cannot resolve `{host}`: {e}")))?
        .collect();
    let mut reason = format!("`{host}` resolves to no address");
    for addr in addrs {
        let result = match plan.protocol {
            Protocol::Http1 => probe_h1(addr, plan.timeout, &wire, kind.head_only).await,
            Protocol::Http2 { .. } => {
                let request = kind.build_h2(&mut Vars::new(kind.first_key, 0), &mut rng);
                probe_h2(addr, plan.timeout, request).await
            }
        };
        match result {
            Ok(()) => return Ok(addr),
            Err(why) => reason = why,
        }
    }
    Err(unreachable(reason))
}

async fn probe_h1(
    addr: SocketAddr,
    limit: Duration,
    wire: &[u8],
    head_only: bool,
) -> Result<(), String> {
    let mut conn = h1::Conn::open(addr, limit)
        .await
        .map_err(|e| e.describe(limit))?;
    match timeout(limit, conn.exchange(wire, head_only)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no response within {limit:?}")),
    }
}

async fn probe_h2(
    addr: SocketAddr,
    limit: Duration,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<(), String> {
    let (mut sender, driver) = h2::open(addr, limit).await?;
    let driver = tokio::spawn(driver);
    let result = match timeout(limit, h2::exchange(&mut sender, request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no response within {limit:?}")),
    };
    driver.abort();
    result
}

// === One load thread ===

/// What every lane of one thread shares.
struct Ctx {
    plan: Arc<Plan>,
    addr: SocketAddr,
    index: usize,
    start: Instant,
    deadline: Instant,
    stats: RefCell<ThreadStats>,
    /// Requests sent by this thread, for `{seq}`.
    seq: Cell<u64>,
    slots: Option<Slots>,
    /// One per lane, checked by the thread's watchdog.
    watches: RefCell<Vec<Rc<Watch>>>,
}

// === Timeouts without a timer per request ===

/// A lane's request timeout, enforced by the thread's [`watchdog`].
///
/// `tokio::time::timeout` registers and removes a timer-wheel entry for
/// every request; callgrind put that at about an eighth of the generator's
/// instructions per request. Instead each lane stamps the start of its
/// request here and one watchdog per thread sweeps the stamps a few times
/// per timeout, failing the requests that overran. A request times out
/// between `timeout` and `timeout × 1.1` (or 100 ms more, whichever is less).
#[derive(Debug, Default)]
struct Watch {
    since: Cell<Option<Instant>>,
    expired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Watch {
    fn arm(&self, at: Instant) {
        self.expired.set(false);
        self.since.set(Some(at));
    }

    fn disarm(&self) {
        self.since.set(None);
    }

    /// Runs `fut` until it completes (`Some`) or the watchdog fails it
    /// (`None`).
    async fn run<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.expired.get() {
                return Poll::Ready(None);
            }
            let mut waker = self.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// Fails the requests of this thread's lanes that overran the timeout.
async fn watchdog(ctx: Rc<Ctx>) {
    let limit = ctx.plan.timeout;
    let period = (limit / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        for watch in ctx.watches.borrow().iter() {
            if watch
                .since
                .get()
                .is_some_and(|at| now.saturating_duration_since(at) >= limit)
            {
                watch.since.set(None);
                watch.expired.set(true);
                if let Some(waker) = watch.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
    }
}

impl Ctx {
    fn watch(&self) -> Rc<Watch> {
        let watch = Rc::new(Watch::default());
        self.watches.borrow_mut().push(watch.clone());
        watch
    }
}

/// The open model's hand-over between the pacer and the lanes: requests
/// `taken..released` are due and waiting for a lane.
struct Slots {
    released: Cell<u64>,
    taken: Cell<u64>,
    done: Cell<bool>,
    notify: Notify,
}

/// What a lane does next.
enum Next {
    /// Closed model: send now (it is this instant).
    Now(Instant),
    /// Open model: send the request due at this instant.
    Due(Instant),
    /// The run is over.
    Stop,
}

impl Ctx {
    /// The global index of this thread's `j`-th request of the schedule:
    /// threads interleave, so together they follow the schedule exactly.
    fn global(&self, j: u64) -> u64 {
        self.index as u64 + self.plan.threads as u64 * j
    }

    fn due_at(&self, j: u64) -> Option<Instant> {
        let schedule = self.plan.schedule.as_ref()?;
        let secs = schedule.due(self.global(j))?;
        Some(self.start + Duration::from_secs_f64(secs))
    }

    async fn next(&self) -> Next {
        let Some(slots) = &self.slots else {
            let now = Instant::now();
            return if now < self.deadline {
                Next::Now(now)
            } else {
                Next::Stop
            };
        };
        loop {
            let notified = slots.notify.notified();
            if Instant::now() >= self.deadline {
                return Next::Stop;
            }
            let taken = slots.taken.get();
            if taken < slots.released.get() {
                slots.taken.set(taken + 1);
                return match self.due_at(taken) {
                    Some(at) => Next::Due(at),
                    None => Next::Stop,
                };
            }
            if slots.done.get() {
                return Next::Stop;
            }
            notified.await;
        }
    }

    fn next_seq(&self) -> u64 {
        let n = self.seq.get();
        self.seq.set(n + 1);
        n * self.plan.threads as u64 + self.index as u64 + 1
    }
}

fn load_thread(
    index: usize,
    plan: &Arc<Plan>,
    addr: SocketAddr,
    start: Instant,
    ticks: &mpsc::Sender<Tick>,
) -> Result<ThreadStats, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    let stats = local.block_on(
        &runtime,
        thread_main(index, plan.clone(), addr, start, ticks.clone()),
    );
    Ok(stats)
}

async fn thread_main(
    index: usize,
    plan: Arc<Plan>,
    addr: SocketAddr,
    start: Instant,
    ticks: mpsc::Sender<Tick>,
) -> ThreadStats {
    let open = plan.schedule.is_some();
    let ctx = Rc::new(Ctx {
        addr,
        index,
        start,
        deadline: start + plan.duration,
        stats: RefCell::new(ThreadStats::new(plan.kinds.len(), open)),
        seq: Cell::new(0),
        watches: RefCell::new(Vec::new()),
        slots: open.then(|| Slots {
            released: Cell::new(0),
            taken: Cell::new(0),
            done: Cell::new(false),
            notify: Notify::new(),
        }),
        plan,
    });
    let tick_index = Rc::new(Cell::new(0u32));
    let ticker = tokio::task::spawn_local(ticker(ctx.clone(), ticks.clone(), tick_index.clone()));
    let pacer = open.then(|| tokio::task::spawn_local(pacer(ctx.clone())));
    let watchdog = tokio::task::spawn_local(watchdog(ctx.clone()));

    // This thread's connections: every `threads`-th, starting at `index`.
    let mut lanes = tokio::task::JoinSet::new();
    let mut lane = 0usize;
    for _conn in (index..ctx.plan.connections).step_by(ctx.plan.threads) {
        match ctx.plan.protocol {
            Protocol::Http1 => {
                lanes.spawn_local(h1_lane(ctx.clone(), lane));
                lane += 1;
            }
            Protocol::Http2 { streams } => {
                let shared = h2::Shared::new(addr, ctx.plan.timeout);
                for _ in 0..streams {
                    lanes.spawn_local(h2_lane(ctx.clone(), lane, shared.clone()));
                    lane += 1;
                }
            }
        }
    }
    while let Some(result) = lanes.join_next().await {
        if let Err(e) = result
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    ticker.abort();
    watchdog.abort();
    if let Some(pacer) = pacer {
        pacer.abort();
    }
    let mut stats = ctx.stats.borrow_mut();
    if let (Some(slots), Some(schedule)) = (&ctx.slots, &ctx.plan.schedule) {
        // This thread's share of the schedule (every `threads`-th request
        // from `index`) that no lane took before the end: released and left
        // waiting, or never released because the pacer fell behind.
        let (all, threads, index) = (schedule.requests(), ctx.plan.threads as u64, index as u64);
        let mine = if all > index {
            (all - index).div_ceil(threads)
        } else {
            0
        };
        stats.dropped = mine.saturating_sub(slots.taken.get());
    }
    // The last, partial interval.
    let _ = ticks.send(Tick {
        index: tick_index.get(),
        at_s: start.elapsed().as_secs_f64(),
        interval: stats.take_interval(),
    });
    stats.clone()
}

/// Hands this thread's figures to the monitor once per second.
async fn ticker(ctx: Rc<Ctx>, ticks: mpsc::Sender<Tick>, index: Rc<Cell<u32>>) {
    let mut interval = tokio::time::interval_at((ctx.start + TICK).into(), TICK);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let tick = Tick {
            index: index.get(),
            at_s: ctx.start.elapsed().as_secs_f64(),
            interval: ctx.stats.borrow_mut().take_interval(),
        };
        index.set(index.get() + 1);
        if ticks.send(tick).is_err() {
            return;
        }
    }
}

/// Releases this thread's requests at their due times.
async fn pacer(ctx: Rc<Ctx>) {
    let Some(slots) = &ctx.slots else { return };
    let mut pacer = Pacer::new();
    let mut j = 0u64;
    while let Some(at) = ctx.due_at(j).filter(|at| *at < ctx.deadline) {
        pacer.sleep_until(at).await;
        slots.released.set(slots.released.get() + 1);
        slots.notify.notify_one();
        j += 1;
    }
    pacer.sleep_until(ctx.deadline).await;
    slots.done.set(true);
    slots.notify.notify_waiters();
}

/// Sends one rendered request of `kind` and records the outcome.
fn record_h1(
    ctx: &Ctx,
    kind: usize,
    due: Option<Instant>,
    sent_at: Instant,
    outcome: Option<Result<h1::Response, h1::Error>>,
) -> bool {
    let done = Instant::now();
    let mut stats = ctx.stats.borrow_mut();
    match outcome {
        Some(Ok(r)) => {
            let expected = ctx.plan.kinds[kind].expect.accepts(r.status);
            let from = due.unwrap_or(sent_at);
            stats.response(
                kind,
                r.status,
                expected,
                done - from,
                done - sent_at,
                r.body_bytes,
            );
            true
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "request failed");
            stats.error(kind, ErrorKind::Io);
            false
        }
        None => {
            stats.error(kind, ErrorKind::Timeout);
            false
        }
    }
}

/// One HTTP/1.1 connection's load loop.
async fn h1_lane(ctx: Rc<Ctx>, lane: usize) {
    let plan = ctx.plan.clone();
    let mut rng = SmallRng::seed_from_u64(lane_seed(plan.seed, ctx.index, lane));
    let mut conn: Option<h1::Conn> = None;
    let mut opened = 0u64;
    let mut backoff = Backoff::default();
    let mut wire = Vec::with_capacity(512);
    let mut scratch = Vec::new();
    let watch = ctx.watch();
    loop {
        let (due, mut now) = match ctx.next().await {
            Next::Stop => break,
            Next::Now(now) => (None, Some(now)),
            Next::Due(at) => (Some(at), None),
        };
        let kind_index = plan.mix.pick(&mut rng);
        let kind = &plan.kinds[kind_index];
        let mut vars = Vars::new(kind.sampler.sample(&mut rng), ctx.next_seq());
        kind.render_h1(&mut wire, &mut scratch, &mut vars, &mut rng);

        if conn.as_ref().is_none_or(|c| !c.is_reusable()) {
            if let Some(old) = conn.take()
                && old.responses == 0
            {
                // It died before answering anything: the target is in
                // trouble, don't spin on it.
                backoff.failed();
            }
            if !backoff.wait(ctx.deadline).await && due.is_none() {
                break;
            }
            now = None;
            match h1::Conn::open(ctx.addr, plan.timeout).await {
                Ok(c) => {
                    ctx.stats.borrow_mut().reconnects += u64::from(opened > 0);
                    opened += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::debug!(error = %e.describe(plan.timeout), "connect failed");
                    ctx.stats.borrow_mut().error(kind_index, ErrorKind::Connect);
                    backoff.failed();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // The closed model's clock reading from `next` is a few hundred
        // nanoseconds old (rendering); reusing it saves a clock read per
        // request. After a connect it is stale, so read the clock again.
        let sent_at = now.unwrap_or_else(Instant::now);
        ctx.stats.borrow_mut().sent(
            due.map(|at| sent_at.saturating_duration_since(at)),
            LATE_AFTER,
        );
        watch.arm(sent_at);
        let outcome = watch.run(c.exchange(&wire, kind.head_only)).await;
        watch.disarm();
        if record_h1(&ctx, kind_index, due, sent_at, outcome) {
            backoff.reset();
        }
    }
}

/// One HTTP/2 stream's load loop on a shared connection.
async fn h2_lane(ctx: Rc<Ctx>, lane: usize, conn: Rc<h2::Shared>) {
    let plan = ctx.plan.clone();
    let mut rng = SmallRng::seed_from_u64(lane_seed(plan.seed, ctx.index, lane));
    let mut backoff = Backoff::default();
    let watch = ctx.watch();
    loop {
        let due = match ctx.next().await {
            Next::Stop => break,
            Next::Now(_) => None,
            Next::Due(at) => Some(at),
        };
        let kind_index = plan.mix.pick(&mut rng);
        let kind = &plan.kinds[kind_index];
        let mut vars = Vars::new(kind.sampler.sample(&mut rng), ctx.next_seq());
        let request = kind.build_h2(&mut vars, &mut rng);
        if !backoff.wait(ctx.deadline).await && due.is_none() {
            break;
        }
        let mut sender = match conn.sender().await {
            h2::Got::Sender(sender) => sender,
            h2::Got::Failed(reason) => {
                tracing::debug!(%reason, "HTTP/2 connect failed");
                ctx.stats.borrow_mut().error(kind_index, ErrorKind::Connect);
                backoff.failed();
                continue;
            }
        };
        let sent_at = Instant::now();
        ctx.stats.borrow_mut().sent(
            due.map(|at| sent_at.saturating_duration_since(at)),
            LATE_AFTER,
        );
        watch.arm(sent_at);
        let outcome = watch.run(h2::exchange(&mut sender, request)).await;
        watch.disarm();
        let done = Instant::now();
        let mut stats = ctx.stats.borrow_mut();
        match outcome {
            Some(Ok((status, body_bytes))) => {
                let expected = kind.expect.accepts(status);
                let from = due.unwrap_or(sent_at);
                stats.response(
                    kind_index,
                    status,
                    expected,
                    done - from,
                    done - sent_at,
                    body_bytes,
                );
                backoff.reset();
            }
            Some(Err(e)) => {
                tracing::debug!(error = %error_chain(&e), "request failed");
                stats.error(kind_index, ErrorKind::Io);
            }
            None => stats.error(kind_index, ErrorKind::Timeout),
        }
    }
}

/// Independent random streams per lane from one run seed.
fn lane_seed(seed: u64, thread: usize, lane: usize) -> u64 {
    seed ^ ((thread as u64) << 32 | lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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
            tokio::time::sleep(d.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Instant::now() < deadline
    }
}

/// An error with its causes, `outer: inner: root`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

    #[test]
    fn lane_seeds_differ() {
        let seeds: std::collections::BTreeSet<u64> = (0..4)
            .flat_map(|t| (0..64).map(move |l| lane_seed(7, t, l)))
            .collect();
        assert_eq!(seeds.len(), 256);
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
