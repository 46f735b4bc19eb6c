//! The worker threads: one per core, each with its own listener on the
//! client address (SO_REUSEPORT, so the kernel spreads connections over
//! them), its own single-threaded runtime and its own upstream connections;
//! and the state they share.
//!
//! A request never leaves the thread whose listener accepted its
//! connection: no work stealing, no cross-thread wake-ups, no locks on the
//! way through. What the threads share (the routing table, endpoint state,
//! rate-limit counters) lives in [`Shared`].

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scalestack_resilience::LocalStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::body::{ResponseBody, ResponseBodyError};
use crate::guard::{
    GuardShared, Guarded, GuardedIo, Limits, PARK_AFTER, WARM_CONNECTIONS, WARM_PARK_AFTER,
    WARM_WITHIN,
};
use crate::observe::{self, ConnectionGuard, RouteMetrics};
use crate::proxy::{Client, Worker};
use crate::table::Table;

/// Longest wait for in-flight requests after shutdown begins.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (typically: out of file descriptors), so
/// that the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The number of header lines hyper's HTTP/1 server parses by default.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// How often a worker drops expired idle upstream connections.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What every worker thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    table: RwLock<(u64, Arc<Table>)>,
    /// The version of the current table; workers compare it on each request.
    pub(crate) version: AtomicU64,
    /// Rate-limit counters, shared by all threads.
    pub(crate) limits: LocalStore,
    /// The client limits new connections get.
    client: RwLock<Limits>,
    /// Requests answered before a route was chosen.
    pub(crate) unrouted: RouteMetrics,
}

impl Shared {
    pub(crate) fn new(table: Table, client: Limits) -> Self {
        Self {
            table: RwLock::new((1, Arc::new(table))),
            version: AtomicU64::new(1),
            limits: LocalStore::new(),
            client: RwLock::new(client),
            unrouted: RouteMetrics::new(observe::NONE, &[]),
        }
    }

    /// The current table and its version.
    pub(crate) fn current(&self) -> (u64, Arc<Table>) {
        let guard = self.table.read().unwrap_or_else(PoisonError::into_inner);
        (guard.0, Arc::clone(&guard.1))
    }

    /// Replaces the table (and the client limits of new connections).
    pub(crate) fn swap(&self, table: Table, client: Limits) -> u64 {
        let mut guard = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let version = guard.0 + 1;
        *guard = (version, Arc::new(table));
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = client;
        self.version.store(version, Ordering::Release);
        version
    }

    fn client_limits(&self) -> Limits {
        *self.client.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Binds `count` listeners on `addr` that share it through SO_REUSEPORT.
///
/// A fixed port is first bound once without the option, so that a port
/// taken by anyone else (even with SO_REUSEPORT) is an error rather than
/// traffic silently shared with a stranger.
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut addr = addr;
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        // Port 0: the others join the port the kernel gave the first.
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A worker thread that is running; resolves `done` when it has drained.
pub(crate) struct WorkerHandle {
    pub(crate) done: oneshot::Receiver<()>,
}

/// Starts worker `index` on `listener`; it serves until `shutdown` turns
/// true, then drains for at most [`DRAIN_TIMEOUT`].
pub(crate) fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<WorkerHandle> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("gateway-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, worker = index, "cannot start a worker runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run_worker(listener, shared, shutdown));
            // Dropping the set and the runtime ends whatever is left (idle
            // upstream connections) before the gateway reports it has stopped.
            drop(local);
            drop(runtime);
            let _ = done_tx.send(());
        })?;
    Ok(WorkerHandle { done })
}

async fn run_worker(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot register a listener with the worker runtime");
            return;
        }
    };
    let worker = Rc::new(Worker::new(shared));
    tokio::task::spawn_local(sweep(Rc::clone(&worker)));
    let conns = Rc::new(Conns::new());
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let served = serve_client(stream, peer, &worker, Ticket::enter(&conns));
                    tokio::task::spawn_local(served);
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    // Closing the listener first makes new connections fail at once
    // instead of waiting in the backlog for an answer that never comes.
    drop(listener);
    conns.stop.raise();
    tracing::debug!(
        connections = conns.drain.live.get(),
        "worker draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, conns.drain.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            connections = conns.drain.live.get(),
            "connections still open after the drain timeout; closing them"
        );
    }
}

/// What the client connections of one worker share: one reference per
/// connection, so that a parked connection's task stays small.
struct Conns {
    drain: Drain,
    stop: Stop,
    /// Open client connections.
    active: metrics::Gauge,
    /// Parked client connections.
    parked: metrics::Gauge,
    /// HTTP sessions started.
    sessions: metrics::Counter,
    /// Warm connections of this worker (see [`WARM_CONNECTIONS`]).
    warm: std::cell::Cell<usize>,
    /// Warm client connections, all workers.
    warm_gauge: metrics::Gauge,
}

impl Conns {
    fn new() -> Self {
        Self {
            drain: Drain::default(),
            stop: Stop::default(),
            active: observe::active_connections(),
            parked: observe::parked_connections(),
            sessions: observe::client_sessions(),
            warm: std::cell::Cell::new(0),
            warm_gauge: observe::warm_connections(),
        }
    }

    /// Takes a warm slot if one is free.
    fn warm_up(&self) -> bool {
        let warm = self.warm.get();
        if warm >= WARM_CONNECTIONS {
            return false;
        }
        self.warm.set(warm + 1);
        self.warm_gauge.increment(1.0);
        true
    }

    /// Gives a warm slot back.
    fn cool_down(&self) {
        self.warm.set(self.warm.get() - 1);
        self.warm_gauge.decrement(1.0);
    }
}

/// The connections of one worker, counted so that shutdown can wait for them.
#[derive(Debug, Default)]
struct Drain {
    live: std::cell::Cell<usize>,
    none_left: tokio::sync::Notify,
}

/// One connection, counted in its worker's [`Drain`] and in the gauge of
/// open connections for as long as it lives.
struct Ticket {
    conns: Rc<Conns>,
    _open: ConnectionGuard,
}

impl Ticket {
    fn enter(conns: &Rc<Conns>) -> Ticket {
        conns.drain.live.set(conns.drain.live.get() + 1);
        Ticket {
            conns: Rc::clone(conns),
            _open: ConnectionGuard::open(&conns.active),
        }
    }
}

impl Drain {
    /// Resolves once no connection is left.
    async fn wait(&self) {
        while self.live.get() > 0 {
            self.none_left.notified().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let drain = &self.conns.drain;
        let left = drain.live.get() - 1;
        drain.live.set(left);
        if left == 0 {
            // A stored permit wakes the waiter even if it is not waiting yet.
            drain.none_left.notify_one();
        }
    }
}

/// Drops expired idle upstream connections, and those of endpoints that
/// left the configuration.
async fn sweep(worker: Rc<Worker>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let table = worker.table();
        let live: std::collections::HashSet<u64> = table.endpoints().map(|e| e.id).collect();
        worker
            .connections
            .sweep(Instant::now(), |id| live.contains(&id));
    }
}

/// The worker's signal to its client connections (in a session or parked)
/// that shutdown has begun.
///
/// A session checks the flag each time it is polled (a `Cell`, no atomics
/// and no lock) and registers its task's waker once, so that a request costs
/// nothing for it; a `watch` receiver polled alongside every session would
/// take a mutex on each poll, and its wait would make every connection's
/// task larger.
#[derive(Default)]
struct Stop {
    raised: std::cell::Cell<bool>,
    /// Wakers of the sessions waiting, keyed by slot: registering and
    /// leaving cost no hashing.
    waiting: RefCell<slab::Slab<std::task::Waker>>,
}

impl Stop {
    /// Raises the flag and wakes every session waiting on it.
    fn raise(&self) {
        self.raised.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// Resolves once the flag is raised.
    fn wait(&self) -> StopWait<'_> {
        StopWait {
            stop: self,
            id: None,
        }
    }
}

/// A session's wait for [`Stop`]; it deregisters when dropped.
struct StopWait<'a> {
    stop: &'a Stop,
    id: Option<usize>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.raised.get() {
            return Poll::Ready(());
        }
        if self.id.is_none() {
            // A session is polled by its connection's task only, whose
            // waker stays the same: registering it once is enough.
            let id = self.stop.waiting.borrow_mut().insert(cx.waker().clone());
            self.id = Some(id);
        }
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            // `raise` may have taken every waker already.
            self.stop.waiting.borrow_mut().try_remove(id);
        }
    }
}

/// The future that serves one client connection to its end.
///
/// hyper serves the connection in sessions: one lasts while requests keep
/// coming; when the connection has been idle for [`PARK_AFTER`], the guard
/// ends the session without closing the socket, and the connection waits,
/// parked, with none of hyper's buffers, until the client sends again (or the
/// header read timeout, or shutdown, closes it).
///
/// The future is the connection's whole task, and a parked connection is
/// little more than its task: it keeps only what every session needs (the
/// guarded socket, the proxy's per-connection state, its ticket); hyper's
/// settings are rebuilt for each session from the guard's limits, and the
/// client's address is looked up again if an error is to be logged.
fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    worker: &Rc<Worker>,
    ticket: Ticket,
) -> impl Future<Output = ()> + 'static {
    // Responses are written as soon as they are ready; Nagle would hold
    // back the last segment of each one.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let limits = worker.shared.client_limits();
    let guard = Rc::new(GuardShared::default());
    let client = Rc::new(Client::new(Rc::clone(worker), peer.ip(), Rc::clone(&guard)));
    let io = Rc::new(RefCell::new(
        Guarded::new(stream, limits, guard).park_after(PARK_AFTER),
    ));
    async move {
        let conns = &ticket.conns;
        // Whether this connection holds one of the worker's warm slots.
        let mut warm = false;
        loop {
            if conns.stop.raised.get() {
                break;
            }
            conns.sessions.increment(1);
            // Boxed, so that a parked connection's task keeps no room for
            // it; hyper's settings are a temporary, gone before the first await.
            let limits = io.borrow().limits();
            let mut session = Box::pin(
                session_builder(limits)
                    .serve_connection(TokioIo::new(GuardedIo(Rc::clone(&io))), service(&client)),
            );
            let ended = {
                let mut stopping = std::pin::pin!(conns.stop.wait());
                let mut stopped = false;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(ended) = session.as_mut().poll(cx) {
                        return Poll::Ready(ended);
                    }
                    if !stopped && stopping.as_mut().poll(cx).is_ready() {
                        // Finish the request in flight (if any), then close:
                        // hyper answers it with `Connection: close`.
                        stopped = true;
                        session.as_mut().graceful_shutdown();
                        return session.as_mut().poll(cx);
                    }
                    io.borrow_mut().poll_idle(cx);
                    Poll::Pending
                })
                .await
            };
            drop(session);
            if let Err(error) = ended {
                // Clients that hang up or time out are routine, not errors of ours.
                tracing::debug!(
                    %error,
                    peer = ?io.borrow().peer_addr().ok(),
                    "client connection ended with an error"
                );
                break;
            }
            if !io.borrow().is_parking() || conns.stop.raised.get() {
                break;
            }
            if warm {
                // Idle past the longer delay: no longer a busy client.
                warm = false;
                conns.cool_down();
                io.borrow_mut().set_park_after(PARK_AFTER);
            }
            client.release_idle_state();
            conns.parked.increment(1.0);
            // Parked: until the client sends, the header read timeout runs
            // out (on the guard's own timer) or shutdown begins. Nothing is
            // kept for the wait but the registration with `stop`.
            let woke = {
                let mut stopping = std::pin::pin!(conns.stop.wait());
                std::future::poll_fn(|cx| {
                    let mut guarded = io.borrow_mut();
                    if let Poll::Ready(ready) = guarded.poll_read_ready(cx) {
                        return Poll::Ready(ready.is_ok());
                    }
                    if guarded.poll_parked(cx).is_ready() || stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    Poll::Pending
                })
                .await
            };
            conns.parked.decrement(1.0);
            if !woke {
                break;
            }
            let mut guarded = io.borrow_mut();
            guarded.unpark();
            // Back soon after going idle: a busy client pausing between
            // requests, which would otherwise pay for a session each time.
            if guarded.idle_for() < WARM_WITHIN && conns.warm_up() {
                warm = true;
                guarded.set_park_after(WARM_PARK_AFTER);
            }
        }
        if warm {
            conns.cool_down();
        }
        drop(ticket);
    }
}

/// hyper's service for one session of `client`'s connection.
fn service(
    client: &Rc<Client>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<ClientBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<ClientBody>, Infallible>>,
> {
    let client = Rc::clone(client);
    service_fn(move |request| {
        let client = Rc::clone(&client);
        async move {
            let response = client.serve(request).await;
            let done = Rc::clone(&client.guard);
            Ok::<_, Infallible>(response.map(|body| ClientBody { body, done }))
        }
    })
}

/// hyper's settings for one session on a connection with `limits`.
fn session_builder(limits: Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        // A client that stops sending (or whose body framing broke, which the
        // guard turns into an end of stream) still gets its answer.
        .half_close(true)
        // The guard enforces the header timeout with one timer per connection.
        .header_read_timeout(None)
        // hyper's buffer must hold any head the guard accepts.
        .max_buf_size((limits.max_header_bytes + 8192).max(64 * 1024));
    // The guard refuses heads with more than `max_headers` lines before
    // hyper sees them, so hyper's own limit only has to be at least that.
    // Its default keeps its parse arrays on the stack; any explicit limit
    // moves them to the heap, two allocations for every request.
    if limits.max_headers > HYPER_DEFAULT_MAX_HEADERS {
        http.max_headers(limits.max_headers);
    }
    http
}

/// A response body that tells the connection's guard when it is done, so
/// that the header timeout only runs while no request is being answered.
struct ClientBody {
    body: ResponseBody,
    done: Rc<GuardShared>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.done.response_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked connection is little more than its task, whose size is that
    /// of this future (10,000 idle clients hold 10,000 of them): it must not
    /// keep a copy of itself, hyper's settings or the session's state.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let mut config = scalestack_config::GatewayConfig::default();
        config.pools[0].endpoints = vec!["127.0.0.1:1".into()];
        let table = Table::build(&config, None).unwrap();
        let limits = crate::control::client_limits(&config);
        let worker = Rc::new(Worker::new(Arc::new(Shared::new(table, limits))));
        let conns = Rc::new(Conns::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let served = serve_client(stream, peer, &worker, Ticket::enter(&conns));
        assert_eq!(conns.drain.live.get(), 1);
        let size = std::mem::size_of_val(&served);
        eprintln!("serve_client's future: {size} bytes");
        assert!(size <= 160, "serve_client's future takes {size} bytes");
        drop(served);
        drop(client);
        assert_eq!(conns.drain.live.get(), 0, "the ticket goes with the future");
    }

    /// Sends one request on `client` and reads its whole response.
    async fn exchange(client: &mut TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    /// A client that comes back soon after being parked takes a warm slot
    /// and keeps its session over longer pauses; one idle past the longer
    /// delay gives the slot back, and one that comes back late gets none.
    #[tokio::test]
    async fn a_client_back_soon_after_parking_is_kept_warm() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut config = scalestack_config::GatewayConfig::default();
                config.pools[0].endpoints = vec!["127.0.0.1:1".into()];
                let table = Table::build(&config, None).unwrap();
                let limits = crate::control::client_limits(&config);
                let worker = Rc::new(Worker::new(Arc::new(Shared::new(table, limits))));
                let conns = Rc::new(Conns::new());
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let mut client = TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap();
                let (stream, peer) = listener.accept().await.unwrap();
                tokio::task::spawn_local(serve_client(
                    stream,
                    peer,
                    &worker,
                    Ticket::enter(&conns),
                ));
                let pause = PARK_AFTER * 6;
                assert!(exchange(&mut client).await.starts_with("HTTP/1.1 "));
                assert_eq!(conns.warm.get(), 0, "a new connection is not warm");
                tokio::time::sleep(pause).await;
                exchange(&mut client).await;
                assert_eq!(conns.warm.get(), 1, "back {pause:?} after going idle");
                // Warm: the same pause no longer parks it.
                tokio::time::sleep(pause).await;
                assert_eq!(conns.warm.get(), 1, "parked within the warm delay");
                exchange(&mut client).await;
                // Idle past the warm delay: parked, and the slot given back.
                tokio::time::sleep(WARM_PARK_AFTER + pause).await;
                assert_eq!(conns.warm.get(), 0, "idle past the warm delay");
                exchange(&mut client).await;
                assert_eq!(conns.warm.get(), 0, "back too late to be warm");
                drop(client);
                tokio::time::timeout(Duration::from_secs(5), conns.drain.wait())
                    .await
                    .expect("the connection ends with its client");
            })
            .await;
    }

    /// Warm slots are bounded per worker.
    #[test]
    fn warm_slots_run_out() {
        let conns = Conns::new();
        for _ in 0..WARM_CONNECTIONS {
            assert!(conns.warm_up());
        }
        assert!(!conns.warm_up(), "one slot more than the bound");
        conns.cool_down();
        assert!(conns.warm_up(), "a slot given back is free again");
    }
}
