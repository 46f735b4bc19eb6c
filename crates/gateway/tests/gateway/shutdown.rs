//! Graceful shutdown.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn an_in_flight_request_finishes_during_shutdown() {
    let upstream = Upstream::start("a").await;
    let mut gateway = RunningGateway::start(&config(&[upstream.addr])).await;
    let addr = gateway.addr;

    let in_flight = tokio::spawn(async move { get(addr, "/slow?ms=300").await });
    eventually("the slow request reached the upstream", || async {
        upstream.hits() == 1
    })
    .await;
    gateway.begin_shutdown();

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["uri"], "/slow?ms=300");
    gateway.stop().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after serve returns"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_on_shutdown() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("\"upstream\"") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first response");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));

    // The connection is idle and kept alive; shutdown must close it rather
    // than wait for the drain timeout.
    gateway.stop().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "still open: {read:?}");
}
