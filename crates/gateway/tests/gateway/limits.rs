//! Request body limits and malformed requests.

use http::StatusCode;

use crate::support::*;

fn small_body_config(upstream: &Upstream) -> scalestack_config::GatewayConfig {
    let mut config = config(&[upstream.addr]);
    config.max_request_body = 16;
    config
}

fn assert_too_large(reply: &RawReply) {
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_before_the_upstream_sees_it() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&small_body_config(&upstream)).await;

    let request = b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Content-Length: 17\r\n\r\n0123456789abcdefg";
    assert_too_large(&raw(gateway.addr, request).await);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_chunked_body_growing_over_the_limit_gets_413() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&small_body_config(&upstream)).await;

    let request = b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n";
    assert_too_large(&raw(gateway.addr, request).await);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_passes() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&small_body_config(&upstream)).await;

    let request = b"PUT /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Content-Length: 16\r\n\r\n0123456789abcdef";
    let reply = raw(gateway.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["body"], "0123456789abcdef");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let reply = raw(gateway.addr, garbage).await;
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(garbage));
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(get(gateway.addr, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn connect_requests_are_refused_with_json() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    let reply = raw(
        gateway.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "method_not_allowed");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_json_and_never_forwarded() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    for (request, why) in [
        (
            &b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            "both Content-Length and Transfer-Encoding",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
            "more than one Content-Length",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\nabcd",
            "not a number",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "ending in chunked",
        ),
    ] {
        let reply = raw(gateway.addr, request).await;
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(request));
        assert_eq!(reply.header("connection"), Some("close"));
        let json = reply.json();
        assert_eq!(json["error"]["code"], "bad_request");
        assert!(json["error"]["message"].as_str().unwrap().contains(why), "{json}");
    }
    assert_eq!(upstream.hits(), 0, "nothing ambiguous reached the upstream");
}

#[tokio::test]
async fn requests_before_a_bad_one_on_the_connection_are_answered_in_order() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    let pipelined = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(pipelined).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut received),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&received);
    let first = text
        .find("HTTP/1.1 200")
        .expect("the first request was answered");
    let refused = text.find("HTTP/1.1 400").expect("the bad one was refused");
    assert!(first < refused, "{text}");
    assert!(text.contains("\"uri\":\"/first\""), "{text}");
    assert!(!text.contains("/hidden"), "{text}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn oversized_heads_get_431_json() {
    let upstream = Upstream::start("a").await;
    let mut config = config(&[upstream.addr]);
    config.client.max_header_bytes = 1024;
    config.client.max_headers = 8;
    let gateway = RunningGateway::start(&config).await;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let reply = raw(gateway.addr, big.as_bytes()).await;
    assert_eq!(reply.status, 431, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "header_too_large");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..9 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw(gateway.addr, many.as_bytes()).await;
    assert_eq!(reply.status, 431, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "too_many_headers");
    assert_eq!(upstream.hits(), 0);

    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(800)
    );
    assert_eq!(raw(gateway.addr, fits.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_gets_408_and_idle_connections_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start("a").await;
    let mut config = config(&[upstream.addr]);
    config.client.header_read_timeout = std::time::Duration::from_millis(300);
    let gateway = RunningGateway::start(&config).await;

    // Slowloris: a head that never ends.
    let mut slow = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut received),
    )
    .await
    .expect("the gateway closed the connection")
    .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");

    // An idle keep-alive connection is closed after the same time.
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    idle.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_request() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;
    let mut connection = KeepAlive::connect(gateway.addr).await;
    assert_eq!(connection.get("/before").await.unwrap().0, 200);
    // Idle past the parking delay: the gateway drops the connection's HTTP
    // session (and its buffers) but keeps the connection.
    eventually("a connection is parked", || async {
        let metrics = get(gateway.admin, "/metrics").await.text();
        series(&metrics, "scalestack_gateway_parked_connections", &[]).is_some_and(|n| n >= 1.0)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = connection.get("/after").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/after"), "{body}");
    assert_eq!(upstream.hits(), 2);
}
