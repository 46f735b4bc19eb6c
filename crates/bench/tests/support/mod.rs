//! Small servers on `127.0.0.1:0` for the load generator to hit, each on its
//! own thread and runtime so that the blocking `scalestack_bench::run` can be
//! called from a plain `#[test]`. They count what they see, so tests can
//! compare the report with the server's side of the story.
//!
//! Shared by several test binaries; each uses a subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The response body of every reply.
pub(crate) const BODY: &[u8] = b"hello";

/// What the server does with one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    /// Close the connection after this response (`Connection: close`).
    pub(crate) close: bool,
    /// Wait this long before answering.
    pub(crate) delay: Duration,
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            close: false,
            delay: Duration::ZERO,
        }
    }
}

/// What a server saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) min_key: AtomicU64,
    pub(crate) max_key: AtomicU64,
    /// Requests whose path did not end in a number.
    pub(crate) keyless: AtomicU64,
    pub(crate) statuses: Mutex<BTreeMap<u16, u64>>,
    /// Every request answered, in order.
    pub(crate) log: Mutex<Vec<Logged>>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) body: String,
    pub(crate) version: http::Version,
}

impl Seen {
    fn new() -> Self {
        Self {
            min_key: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn statuses(&self) -> BTreeMap<u16, u64> {
        self.statuses.lock().unwrap().clone()
    }

    pub(crate) fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    fn key(&self, path: &str) -> Option<u64> {
        let key = path.rsplit('/').next().and_then(|k| k.parse::<u64>().ok());
        match key {
            Some(k) => {
                self.min_key.fetch_min(k, Ordering::SeqCst);
                self.max_key.fetch_max(k, Ordering::SeqCst);
            }
            None => {
                self.keyless.fetch_add(1, Ordering::SeqCst);
            }
        }
        key
    }
}

/// A running server; stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An HTTP/1.1 server (hyper) that answers every request with
    /// `reply(key, index of the request on its connection)`.
    pub(crate) fn http(reply: impl Fn(Option<u64>, u64) -> Reply + Send + Sync + 'static) -> Self {
        Self::hyper(reply, false)
    }

    /// The same over HTTP/2 with prior knowledge (h2c).
    pub(crate) fn h2(reply: impl Fn(Option<u64>, u64) -> Reply + Send + Sync + 'static) -> Self {
        Self::hyper(reply, true)
    }

    fn hyper(reply: impl Fn(Option<u64>, u64) -> Reply + Send + Sync + 'static, h2: bool) -> Self {
        let reply = Arc::new(reply);
        Self::spawn(move |stream, seen| {
            let reply = reply.clone();
            async move {
                let on_connection = Arc::new(AtomicU64::new(0));
                let service = service_fn(move |req: Request<Incoming>| {
                    let index = on_connection.fetch_add(1, Ordering::SeqCst);
                    let key = seen.key(req.uri().path());
                    let Reply {
                        status,
                        close,
                        delay,
                    } = reply(key, index);
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        // Counted when answered: a request the client gave
                        // up on before the answer is not counted.
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        *seen
                            .statuses
                            .lock()
                            .unwrap()
                            .entry(status.as_u16())
                            .or_default() += 1;
                        seen.log.lock().unwrap().push(Logged {
                            method: parts.method.to_string(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or_else(|| "/".into(), ToString::to_string),
                            idempotency_key: parts
                                .headers
                                .get("idempotency-key")
                                .map(|v| v.to_str().unwrap().to_owned()),
                            body: String::from_utf8_lossy(&body).into_owned(),
                            version: parts.version,
                        });
                        let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                        *response.status_mut() = status;
                        if close {
                            response
                                .headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        })
    }

    /// Accepts connections and never answers.
    pub(crate) fn silent() -> Self {
        Self::spawn(|mut stream, _seen| async move {
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
    }

    /// A hand-written HTTP/1.1 server that answers `per_connection`
    /// requests with 200 and then drops the connection without warning (no
    /// `Connection: close`), the way a crashing or recycling server does.
    pub(crate) fn abrupt(per_connection: u64) -> Self {
        Self::spawn(move |mut stream, seen| async move {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered = 0;
            while answered < per_connection {
                // Requests carry no body: each ends with an empty line.
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end + 4);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    seen.key(&path);
                    // One write, so that Nagle's algorithm does not hold back
                    // the body.
                    let mut response =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", BODY.len())
                            .into_bytes();
                    response.extend_from_slice(BODY);
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    *seen.statuses.lock().unwrap().entry(200).or_default() += 1;
                    answered += 1;
                    if answered == per_connection {
                        return;
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
        })
    }

    fn spawn<F, Fut>(on_connection: F) -> Self
    where
        F: Fn(tokio::net::TcpStream, Arc<Seen>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let seen = Arc::new(Seen::new());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (ready, addr) = std::sync::mpsc::channel();
        let seen_by_server = seen.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            seen_by_server.connections.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(on_connection(stream, seen_by_server.clone()));
                        }
                    }
                }
            });
        });
        let addr = addr.recv().unwrap();
        Self {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback URL where nothing listens: bind a port, then free it.
pub(crate) fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/users/{{id}}")
}
