//! The upstream side of the wire, byte by byte: response framings the
//! gateway must read correctly (chunked, until close, bodiless, after 1xx,
//! long bodies), upstreams that close pooled connections, and answers that
//! break the protocol.
//!
//! The upstream here is a real TCP server that writes scripted bytes, so
//! that each framing is exactly what the test says, not what an HTTP library
//! chooses to send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::*;

/// A body long enough to be read in many pieces.
const LONG: usize = 1 << 20;

/// What the scripted upstream does after one answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection (without saying so in the answer).
    Close,
}

/// A TCP server that answers each request head (its body, if any, is read
/// by `Content-Length`) with the bytes `script` returns for the request's
/// method and path.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Scripted {
    async fn start(script: fn(&str, &str) -> (Vec<u8>, After)) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script));
            }
        });
        Scripted {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, script: fn(&str, &str) -> (Vec<u8>, After)) {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
        let length = content_length(&head).unwrap_or(0);
        while seen.len() < end + 4 + length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen.drain(..end + 4 + length);
        let mut words = head.split(' ');
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        let (answer, after) = script(&method, &path);
        // Written in pieces, so that the gateway has to wait for more.
        for piece in answer.chunks(64 * 1024) {
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if after == After::Close {
            return;
        }
    }
}

fn framings(method: &str, path: &str) -> (Vec<u8>, After) {
    let keep = After::KeepOpen;
    match (method, path) {
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
            keep,
        ),
        (_, "/until-close") => (
            b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nthe body ends when the connection does"
                .to_vec(),
            After::Close,
        ),
        ("HEAD", "/head") => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
            keep,
        ),
        (_, "/no-content") => (
            b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec(),
            keep,
        ),
        (_, "/early-hints") => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"
                .to_vec(),
            keep,
        ),
        (_, "/long") => {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {LONG}\r\n\r\n").into_bytes();
            answer.extend((0..LONG).map(|i| b'a' + (i % 26) as u8));
            (answer, keep)
        }
        (_, "/long-chunked") => {
            let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for i in 0..LONG / 4096 {
                answer.extend_from_slice(b"1000\r\n");
                answer.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 4096));
                answer.extend_from_slice(b"\r\n");
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            (answer, keep)
        }
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            keep,
        ),
    }
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole() {
    let upstream = Scripted::start(framings).await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;
    let client = client();

    let chunked = send_with(
        &client,
        gateway.addr,
        Request::get("/chunked").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.text(), "hello world");
    assert_eq!(chunked.headers["x-kind"], "chunked");

    let until_close = get(gateway.addr, "/until-close").await;
    assert_eq!(until_close.text(), "the body ends when the connection does");
    assert_eq!(until_close.headers["x-kind"], "close");

    let head = send_with(
        &client,
        gateway.addr,
        Request::head("/head").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "10");
    assert!(head.body.is_empty());

    let none = send_with(
        &client,
        gateway.addr,
        Request::get("/no-content").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);
    assert!(none.body.is_empty());
    assert_eq!(none.headers["x-kind"], "none");

    let created = send_with(
        &client,
        gateway.addr,
        Request::post("/early-hints")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.text(), "created");
    assert!(
        !created.headers.contains_key("link"),
        "1xx heads are not passed on"
    );

    for path in ["/long", "/long-chunked"] {
        let long = send_with(
            &client,
            gateway.addr,
            Request::get(path).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(long.status, 200, "{path}");
        assert_eq!(long.body.len(), LONG, "{path}");
        assert!(long.body.iter().all(u8::is_ascii_lowercase), "{path}");
    }

    // Connections whose framing allows it were reused: far fewer than one
    // per request, and the close-delimited one was not handed back.
    for _ in 0..20 {
        assert_eq!(
            send_with(
                &client,
                gateway.addr,
                Request::get("/").body(Full::default()).unwrap()
            )
            .await
            .text(),
            "ok"
        );
    }
    assert!(
        upstream.accepted() < 10,
        "{} connections for 27 requests",
        upstream.accepted()
    );
}

fn one_answer_per_connection(_method: &str, _path: &str) -> (Vec<u8>, After) {
    // Keep-alive by default (HTTP/1.1, no `Connection: close`), yet the
    // upstream hangs up after each answer, as servers with short keep-alive
    // timeouts do.
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        After::Close,
    )
}

#[tokio::test]
async fn pooled_connections_the_upstream_closed_are_not_used_again() {
    let upstream = Scripted::start(one_answer_per_connection).await;
    let mut config = config(&[upstream.addr]);
    config.threads = 1;
    let gateway = RunningGateway::start(&config).await;
    let mut client = KeepAlive::connect(gateway.addr).await;

    for i in 0..20 {
        assert_eq!(
            client.get(&format!("/{i}")).await,
            Ok((200, "ok".to_owned()))
        );
    }
    // A POST is never sent twice, so it must not meet a closed connection either.
    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let reply = send(gateway.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(upstream.accepted() >= 21, "a connection per answer");
}

fn broken_answers(_method: &str, path: &str) -> (Vec<u8>, After) {
    let answer: &[u8] = match path {
        "/not-http" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "/gzip-coded" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
    };
    (answer.to_vec(), After::Close)
}

#[tokio::test]
async fn answers_that_break_the_protocol_get_502_json_or_a_cut_response() {
    let upstream = Scripted::start(broken_answers).await;
    let mut config = config(&[upstream.addr]);
    // One bad answer must not take the only endpoint out for the next case.
    config.pools[0].outlier.consecutive_failures = 1000;
    config.pools[0].breaker.enabled = false;
    config.health_check.interval = std::time::Duration::from_secs(3600);
    config.health_check.fall = 100;
    let gateway = RunningGateway::start(&config).await;

    for path in [
        "/not-http",
        "/bad-length",
        "/two-lengths",
        "/gzip-coded",
        "/switch",
    ] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        send(gateway.addr, request)
            .await
            .assert_error(StatusCode::BAD_GATEWAY, "bad_gateway");
    }

    // The head promised 100 bytes and the connection closed after 10: the
    // client's connection ends without the response ever being complete
    // (hyper may not even have flushed the head by then).
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /truncated HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&received);
    if let Some((head, body)) = text.split_once("\r\n\r\n") {
        assert!(head.starts_with("HTTP/1.1 200"), "{text}");
        assert!(body.len() < 100, "{text}");
    }
}
