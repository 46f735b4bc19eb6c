//! Shared helpers: small real upstream servers, a gateway on free loopback
//! ports, and HTTP clients (a pooled one and a raw-bytes one).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scalestack_config::{GatewayConfig, HealthCheckConfig, PoolConfig};
use scalestack_gateway::{Gateway, GatewayError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// How long `eventually` waits before it declares that something never happened.
const PATIENCE: Duration = Duration::from_secs(10);

// === Upstreams ===

/// A real HTTP/1.1 server on loopback that echoes each request as JSON.
///
/// - `GET /health` answers 200 (503 while [`Upstream::set_sick`]) and is not
///   counted in [`Upstream::hits`];
/// - `/slow?ms=N` waits N ms before echoing;
/// - `/stream?ms=N` sends one chunk of body, waits N ms, then sends the rest;
/// - while [`Upstream::set_status`] is set, other requests get that status;
/// - a request with `x-want-hop-headers` gets hop-by-hop headers in its response;
/// - every response carries `x-upstream: <name>`.
pub(crate) struct Upstream {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    sick: AtomicBool,
    status: AtomicU16,
    delay_ms: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Upstream {
    /// Starts an upstream on a free port.
    pub(crate) async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let task = tokio::spawn(serve_upstream(listener, name, Arc::clone(&state)));
        Upstream {
            name,
            addr,
            state,
            task: Some(task),
        }
    }

    /// Stops it like a crash: the listener and every open connection close.
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Awaiting the aborted task guarantees that it was dropped, and
            // with it the listener and the connection tasks.
            let _ = task.await;
        }
    }

    /// Starts it again on the same port.
    pub(crate) async fn restart(&mut self) {
        assert!(self.task.is_none(), "restart of a running upstream");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let task = tokio::spawn(serve_upstream(listener, self.name, Arc::clone(&self.state)));
        self.task = Some(task);
    }

    /// Requests served, health checks excepted.
    pub(crate) fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Makes `/health` answer 503 (or 200 again).
    pub(crate) fn set_sick(&self, sick: bool) {
        self.state.sick.store(sick, Ordering::SeqCst);
    }

    /// Makes every request but `/health` wait `ms` before it is answered.
    pub(crate) fn set_delay(&self, ms: usize) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes every request but `/health` answer `status` (0: normal again).
    pub(crate) fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve_upstream(listener: TcpListener, name: &'static str, state: Arc<UpstreamState>) {
    // Connections live in this set so that aborting this task closes them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let service = service_fn(move |request| echo(name, Arc::clone(&state), request));
                connections.spawn(
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The body of an upstream's answer: whole, or two parts with a pause between.
pub(crate) enum TestBody {
    Full(Full<Bytes>),
    Paused {
        first: Option<Bytes>,
        pause: std::pin::Pin<Box<tokio::time::Sleep>>,
        rest: Option<Bytes>,
    },
}

impl hyper::body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        match self.get_mut() {
            TestBody::Full(full) => std::pin::Pin::new(full).poll_frame(cx),
            TestBody::Paused { first, pause, rest } => {
                if let Some(first) = first.take() {
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
                }
                if rest.is_none() {
                    return Poll::Ready(None);
                }
                match pause.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        Poll::Ready(rest.take().map(|r| Ok(hyper::body::Frame::data(r))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(full) => full.is_end_stream(),
            TestBody::Paused { .. } => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            TestBody::Full(full) => full.size_hint(),
            TestBody::Paused { .. } => hyper::body::SizeHint::default(),
        }
    }
}

fn query_ms(request: &Request<Incoming>) -> u64 {
    request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

async fn echo(
    name: &'static str,
    state: Arc<UpstreamState>,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    if request.uri().path() == "/health" {
        let sick = state.sick.load(Ordering::SeqCst);
        let status = if sick {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(
            reply(name, status, &json!({ "upstream": name, "health": !sick })).map(TestBody::Full),
        );
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = Decrement(&state.in_flight);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(query_ms(&request))).await;
    }
    if request.uri().path() == "/stream" {
        let ms = query_ms(&request);
        let mut response = Response::new(TestBody::Paused {
            first: Some(Bytes::from_static(b"first part;")),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(ms))),
            rest: Some(Bytes::from_static(b"second part")),
        });
        response
            .headers_mut()
            .insert("x-upstream", name.parse().unwrap());
        return Ok(response);
    }
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::from(v.to_str().unwrap_or("<binary>")))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::from(values));
    }
    let status = match state.status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).unwrap(),
    };
    let mut response = reply(
        name,
        status,
        &json!({
            "upstream": name,
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }),
    );
    if parts.headers.contains_key("x-want-hop-headers") {
        let h = response.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
    }
    Ok(response.map(TestBody::Full))
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reply(name: &'static str, status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// A server that accepts, reads a request head and hangs up without an
/// answer: the "other" upstream failure.
pub(crate) struct BrokenUpstream {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BrokenUpstream {
    pub(crate) async fn start() -> BrokenUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        BrokenUpstream {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BrokenUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === Gateway ===

/// The admin token of test gateways.
pub(crate) const TOKEN: &str = "test-token";

/// A gateway config for tests: free ports, two worker threads (so that
/// sharing between threads is exercised), fast health checks, one pool
/// `api` of `endpoints` serving every path.
pub(crate) fn config(endpoints: &[SocketAddr]) -> GatewayConfig {
    GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        admin_token: TOKEN.into(),
        threads: 2,
        max_request_body: 1024,
        health_check: HealthCheckConfig {
            path: "/health".into(),
            interval: Duration::from_millis(100),
            // Generous, so that a busy test machine does not fail checks.
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        },
        pools: vec![pool("api", endpoints)],
        ..GatewayConfig::default()
    }
}

/// A pool named `name` of `endpoints` with the test timeouts.
pub(crate) fn pool(name: &str, endpoints: &[SocketAddr]) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        endpoints: endpoints.iter().map(|e| e.to_string().into()).collect(),
        connect_timeout: Duration::from_secs(1),
        first_byte_timeout: Duration::from_secs(10),
        max_idle_per_endpoint: 16,
        ..PoolConfig::default()
    }
}

/// A gateway serving in a background task.
pub(crate) struct RunningGateway {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), GatewayError>>,
}

impl RunningGateway {
    pub(crate) async fn start(config: &GatewayConfig) -> RunningGateway {
        Self::start_with(config, None).await
    }

    /// Starts a gateway that reloads from `source` on SIGHUP and empty reload calls.
    pub(crate) async fn start_with(
        config: &GatewayConfig,
        source: Option<scalestack_gateway::ReloadSource>,
    ) -> RunningGateway {
        let mut gateway = Gateway::bind(config).await.unwrap();
        if let Some(source) = source {
            gateway = gateway.with_reload_source(source);
        }
        let addr = gateway.local_addr();
        let admin = gateway.admin_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = rx.await;
        }));
        RunningGateway {
            addr,
            admin,
            shutdown: Some(tx),
            task,
        }
    }

    /// Signals shutdown without waiting for it.
    pub(crate) fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and returns what `serve` returned.
    pub(crate) async fn stop(mut self) -> Result<(), GatewayError> {
        self.begin_shutdown();
        (&mut self.task).await.unwrap()
    }

    /// The state (`ok`/`fail`) of `endpoint` of pool `api` in the admin `/health` report.
    pub(crate) async fn endpoint_status(&self, endpoint: SocketAddr) -> String {
        let report = get(self.admin, "/health").await.json();
        let name = format!("upstream.api.{endpoint}");
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no check {name} in {report}"))["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until the admin report shows `endpoint` as `status`.
    pub(crate) async fn wait_for_endpoint(&self, endpoint: SocketAddr, status: &str) {
        eventually(&format!("{endpoint} reported {status}"), || async {
            self.endpoint_status(endpoint).await == status
        })
        .await;
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === Clients ===

/// A response, fully read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The upstream that answered (`x-upstream`), or "" for the gateway itself.
    pub(crate) fn upstream(&self) -> &str {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a gateway-made JSON error with `status` and `code`.
    pub(crate) fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].is_string(), "{json}");
    }
}

/// A pooled keep-alive HTTP client.
pub(crate) type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A new client (its own connections).
pub(crate) fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` (its URI a path) to `addr`.
pub(crate) async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    send_with(&client(), addr, request).await
}

/// Sends `request` (its URI a path) to `addr` with `client`.
pub(crate) async fn send_with(
    client: &TestClient,
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
) -> Reply {
    try_send_with(client, addr, request_to(addr, &mut request))
        .await
        .unwrap_or_else(|error| panic!("request failed: {error}"))
}

fn request_to(addr: SocketAddr, request: &mut Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let path = request.uri().path_and_query().unwrap().as_str().to_owned();
    let mut out = Request::new(request.body().clone());
    *out.method_mut() = request.method().clone();
    *out.headers_mut() = request.headers().clone();
    *out.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    out
}

/// Sends a request whose URI is already absolute; errors are returned.
pub(crate) async fn try_send_with(
    client: &TestClient,
    _addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An admin API call with the test token.
pub(crate) async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send(addr, request).await
}

/// The admin API's view of `endpoint` in `pool`.
pub(crate) async fn endpoint_view(
    admin_addr: SocketAddr,
    pool: &str,
    endpoint: SocketAddr,
) -> Value {
    let reply = admin(admin_addr, "GET", &format!("/admin/pools/{pool}"), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let view = reply.json();
    view["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint.to_string().as_str())
        .unwrap_or_else(|| panic!("no {endpoint} in {view}"))
        .clone()
}

/// `GET path` on `addr`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

/// A response read off the wire by [`raw`].
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) status: u16,
    /// Header names lower-cased, in order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl RawReply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Writes `request` bytes as they are and reads the response until the
/// server closes the connection (so send `Connection: close`).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    parse_raw(&read_until_closed(&mut stream).await)
}

/// Everything `stream` receives until the other side closes it; panics if
/// that takes longer than [`PATIENCE`].
pub(crate) async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            // A reset after the response (the server closed with unread
            // request bytes) still leaves the response in `received`.
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after {PATIENCE:?}"
    );
    received
}

fn parse_raw(bytes: &[u8]) -> RawReply {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The `Content-Length` of a message head given as text, if it has one.
pub(crate) fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// One keep-alive connection that sends requests one after another, so
/// that a test can tell whether the gateway ever dropped it.
pub(crate) struct KeepAlive {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl KeepAlive {
    pub(crate) async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    /// `GET path` on this connection: the status and body, or why it failed.
    pub(crate) async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_string();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad head {head:?}"))?;
                let length = content_length(&head)
                    .ok_or_else(|| format!("no content-length in {head:?}"))?;
                let total = end + 4 + length;
                if self.buffer.len() >= total {
                    let body = String::from_utf8_lossy(&self.buffer[end + 4..total]).to_string();
                    self.buffer.drain(..total);
                    return Ok((status, body));
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the gateway closed the connection".into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

// === Waiting and metrics ===

/// Polls `check` until it holds; panics after [`PATIENCE`]. The deadline
/// only turns a hang into a failure; nothing here measures time.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the first series `name{..}` whose labels include every one
/// of `labels` (`key="value"`), in Prometheus text.
pub(crate) fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
