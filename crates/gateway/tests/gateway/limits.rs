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
