//! Dead, sick, stalled and broken upstreams.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn a_stopped_upstream_is_skipped_at_once_and_marked_down_by_traffic() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let mut config = config(&[a.addr, b.addr]);
    // Checks so rare that only the proxy's own connect failures can notice.
    config.health_check.interval = Duration::from_secs(3600);
    let gateway = RunningGateway::start(&config).await;
    for _ in 0..4 {
        assert_eq!(get(gateway.addr, "/warm").await.status, 200);
    }

    b.stop().await;
    for i in 0..10 {
        let reply = get(gateway.addr, &format!("/after/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.upstream(), "a");
    }
    assert_eq!(gateway.endpoint_status(b.addr).await, "fail");
    assert_eq!(gateway.endpoint_status(a.addr).await, "ok");

    let metrics = get(gateway.admin, "/metrics").await.text();
    let endpoint = format!("endpoint=\"{}\"", b.addr);
    let refused = series(
        &metrics,
        "scalestack_gateway_upstream_errors_total",
        &[&endpoint, "kind=\"connect\""],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");
    let healthy = series(
        &metrics,
        "scalestack_gateway_endpoint_healthy",
        &[&endpoint],
    );
    assert_eq!(healthy, Some(0.0), "{metrics}");
}

#[tokio::test]
async fn health_checks_take_a_dead_upstream_out_and_bring_it_back_after_restart() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;
    gateway.wait_for_endpoint(b.addr, "ok").await;

    // No client traffic: only the active checks can find out.
    b.stop().await;
    gateway.wait_for_endpoint(b.addr, "fail").await;
    // The report says why. (A check racing the listener's close may see a
    // reset first; the next one sees the refusal.)
    eventually("the report says the connection was refused", || async {
        let report = get(gateway.admin, "/health").await.json();
        let error = report["checks"][1]["error"].as_str().unwrap_or_default();
        error.contains("refused")
    })
    .await;
    for _ in 0..4 {
        assert_eq!(get(gateway.addr, "/").await.upstream(), "a");
    }

    b.restart().await;
    gateway.wait_for_endpoint(b.addr, "ok").await;
    let before = b.hits();
    for _ in 0..6 {
        assert_eq!(get(gateway.addr, "/").await.status, 200);
    }
    assert_eq!(b.hits() - before, 3, "b is back in the rotation");
}

#[tokio::test]
async fn a_failing_health_check_takes_an_upstream_out_of_rotation() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;

    b.set_sick(true);
    gateway.wait_for_endpoint(b.addr, "fail").await;
    let before = b.hits();
    for _ in 0..6 {
        assert_eq!(get(gateway.addr, "/").await.upstream(), "a");
    }
    assert_eq!(b.hits(), before);

    b.set_sick(false);
    gateway.wait_for_endpoint(b.addr, "ok").await;
}

#[tokio::test]
async fn every_upstream_down_gives_503_json() {
    let mut a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;
    a.stop().await;
    b.stop().await;

    // Whether the checks or the request itself find them dead first, the
    // answer is the same.
    let reply = get(gateway.addr, "/").await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_upstream");
    let reply = get(gateway.addr, "/").await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_upstream");

    let health = get(gateway.admin, "/health").await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.text()
    );
    assert_eq!(health.json()["status"], "fail");
}

#[tokio::test]
async fn an_upstream_stalling_past_request_timeout_gives_504_json() {
    let upstream = Upstream::start("a").await;
    let mut config = config(&[upstream.addr]);
    config.pools[0].first_byte_timeout = Duration::from_millis(200);
    let gateway = RunningGateway::start(&config).await;

    let reply = get(gateway.addr, "/slow?ms=60000").await;
    reply.assert_error(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout");
    // A slow answer says nothing about the next request: still in rotation.
    assert_eq!(gateway.endpoint_status(upstream.addr).await, "ok");
    assert_eq!(get(gateway.addr, "/fast").await.status, 200);
}

#[tokio::test]
async fn a_broken_upstream_gives_502_to_a_post_and_a_get_is_retried_elsewhere() {
    let broken = BrokenUpstream::start().await;
    let good = Upstream::start("good").await;
    let mut config = config(&[broken.addr, good.addr]);
    // Tolerant checks, so that the broken upstream stays in rotation.
    config.health_check.interval = Duration::from_secs(3600);
    config.health_check.fall = 100;
    let gateway = RunningGateway::start(&config).await;

    // GET is idempotent: a failure on the broken one is retried on the good one.
    for _ in 0..4 {
        let reply = get(gateway.addr, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.upstream(), "good");
    }
    assert!(broken.accepted() >= 2, "the broken upstream was tried");
    assert_eq!(good.hits(), 4);

    // POST may have been processed: it is not replayed, the client gets 502.
    let mut only_broken = config.clone();
    only_broken.pools[0].endpoints = vec![broken.addr.to_string().into()];
    let gateway = RunningGateway::start(&only_broken).await;
    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    send(gateway.addr, request)
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "bad_gateway");
    assert_eq!(gateway.endpoint_status(broken.addr).await, "ok");
}
