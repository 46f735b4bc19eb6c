//! Shared helpers: small real upstream servers, a gateway on free loopback
//! ports, and HTTP clients (a pooled one and a raw-bytes one).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use scalestack_config::{GatewayConfig, HealthCheckConfig, UpstreamConfig};
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

async fn echo(
    name: &'static str,
    state: Arc<UpstreamState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/health" {
        let sick = state.sick.load(Ordering::SeqCst);
        let status = if sick {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(reply(
            name,
            status,
            &json!({ "upstream": name, "health": !sick }),
        ));
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() == "/slow" {
        let ms = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
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
    let mut response = reply(
        name,
        StatusCode::OK,
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
    Ok(response)
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

/// A gateway config for tests: free ports, fast health checks.
pub(crate) fn config(endpoints: &[SocketAddr]) -> GatewayConfig {
    GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        threads: 0,
        max_request_body: 1024,
        upstream: UpstreamConfig {
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 16,
        },
        health_check: HealthCheckConfig {
            path: "/health".into(),
            interval: Duration::from_millis(100),
            // Generous, so that a busy test machine does not fail checks.
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        },
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
        let gateway = Gateway::bind(config).await.unwrap();
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

    /// The state (`ok`/`fail`) of `endpoint` in the admin `/health` report.
    pub(crate) async fn endpoint_status(&self, endpoint: SocketAddr) -> String {
        let report = get(self.admin, "/health").await.json();
        let name = format!("upstream.{endpoint}");
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

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` (its URI a path) to `addr`.
pub(crate) async fn send(addr: SocketAddr, mut request: Request<Full<Bytes>>) -> Reply {
    let path = request.uri().path_and_query().unwrap().as_str().to_owned();
    *request.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
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
    assert!(read.is_ok(), "no end of response within {PATIENCE:?}");
    parse_raw(&received)
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
