//! What reaches the upstream, and how requests are spread.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_three_upstreams() {
    let upstreams = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let gateway = RunningGateway::start(&config(&addrs)).await;

    for i in 0..30 {
        let reply = get(gateway.addr, &format!("/items/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let hits: Vec<_> = upstreams.iter().map(Upstream::hits).collect();
    assert_eq!(hits, [10, 10, 10]);
}

#[tokio::test]
async fn method_path_query_body_and_forwarding_headers_reach_the_upstream() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    let body = "hello upstream";
    let request = format!(
        "PATCH /items/7?color=red&size=2 HTTP/1.1\r\n\
         Host: shop.example\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         Connection: close, X-Hop-Secret\r\n\
         X-Hop-Secret: s3cret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         X-Custom: kept\r\n\
         X-Want-Hop-Headers: 1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = raw(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let seen = reply.json();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["uri"], "/items/7?color=red&size=2");
    assert_eq!(seen["body"], body);
    let headers = &seen["headers"];
    assert_eq!(headers["host"][0], "shop.example", "Host is preserved");
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-custom"][0], "kept");
    assert_eq!(headers["content-length"][0], body.len().to_string());
    for hop in [
        "connection",
        "x-hop-secret",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(
            headers.get(hop).is_none(),
            "{hop} reached the upstream: {headers}"
        );
    }

    // Hop-by-hop headers of the response stop at the gateway too.
    assert_eq!(reply.header("x-kept"), Some("yes"));
    assert_eq!(reply.header("x-resp-hop"), None);
    assert_eq!(reply.header("keep-alive"), None);
}

#[tokio::test]
async fn a_chunked_body_is_buffered_and_forwarded_with_a_length() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    let request = b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        6\r\nhello \r\n7\r\nchunked\r\n0\r\n\r\n";
    let reply = raw(gateway.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.json();
    assert_eq!(seen["body"], "hello chunked");
    assert_eq!(seen["headers"]["content-length"][0], "13");
    assert!(seen["headers"].get("transfer-encoding").is_none(), "{seen}");
}

#[tokio::test]
async fn health_and_metrics_paths_of_the_client_port_belong_to_the_upstreams() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    for path in ["/health", "/metrics"] {
        let reply = get(gateway.addr, path).await;
        assert_eq!(reply.upstream(), "a", "{path} was not proxied");
    }
}

#[tokio::test]
async fn every_request_gets_its_own_answer() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;

    for i in 0..5 {
        let request = Request::post(format!("/echo/{i}"))
            .body(Full::new(Bytes::from(format!("body {i}"))))
            .unwrap();
        let reply = send(gateway.addr, request).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], format!("body {i}"));
    }
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test]
async fn upstream_connections_are_reused_and_closed_after_their_idle_timeout() {
    let upstream = Upstream::start("a").await;
    let mut config = config(&[upstream.addr]);
    config.threads = 1;
    config.pools[0].idle_timeout = std::time::Duration::from_millis(200);
    let gateway = RunningGateway::start(&config).await;

    let client = client();
    for i in 0..10 {
        let request = Request::get(format!("/again/{i}"))
            .body(Full::default())
            .unwrap();
        assert_eq!(send_with(&client, gateway.addr, request).await.status, 200);
    }
    let endpoint = format!("endpoint=\"{}\"", upstream.addr);
    let open = || async {
        let metrics = get(gateway.admin, "/metrics").await.text();
        series(
            &metrics,
            "scalestack_gateway_upstream_connections",
            &[&endpoint],
        )
    };
    assert_eq!(
        open().await,
        Some(1.0),
        "ten requests in a row share one connection"
    );
    eventually("the idle upstream connection is closed", || async {
        open().await == Some(0.0)
    })
    .await;
    // The next request opens a new one.
    assert_eq!(get(gateway.addr, "/after").await.status, 200);
}
