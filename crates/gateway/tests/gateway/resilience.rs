//! Retries, the retry budget, circuit breakers, outlier ejection and
//! timeouts, against real upstreams.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// A config whose only failure handling is retries (no breaker, no ejection),
/// so that each mechanism is tested on its own.
fn retries_only(endpoints: &[std::net::SocketAddr]) -> scalestack_config::GatewayConfig {
    let mut config = config(endpoints);
    config.pools[0].breaker.enabled = false;
    config.pools[0].outlier.consecutive_failures = 0;
    config
}

fn post(path: &str, idempotency_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::post(path);
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    request.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

#[tokio::test]
async fn a_503_is_retried_on_another_endpoint_only_when_that_is_safe() {
    let sick = Upstream::start("sick").await;
    let good = Upstream::start("good").await;
    sick.set_status(503);
    let gateway = RunningGateway::start(&retries_only(&[sick.addr, good.addr])).await;

    // GET is idempotent: whichever endpoint round robin picks, the answer is good's.
    for _ in 0..6 {
        let reply = get(gateway.addr, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.upstream(), "good");
    }
    assert!(sick.hits() >= 3, "the sick endpoint was tried");

    // A POST may have been acted on: the 503 goes back as the endpoint sent it.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = send(gateway.addr, post("/orders", None)).await;
        statuses.push((reply.status.as_u16(), reply.upstream().to_owned()));
    }
    assert!(statuses.contains(&(503, "sick".into())), "{statuses:?}");
    assert!(statuses.contains(&(200, "good".into())), "{statuses:?}");

    // With an Idempotency-Key the upstream promises to dedupe: retried.
    for i in 0..4 {
        let reply = send(gateway.addr, post("/orders", Some(&format!("key-{i}")))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["body"], "{}", "the body was replayed");
    }

    let metrics = get(gateway.admin, "/metrics").await.text();
    let endpoint = format!("endpoint=\"{}\"", sick.addr);
    assert!(
        series(
            &metrics,
            "scalestack_gateway_upstream_errors_total",
            &[&endpoint, "kind=\"status\""]
        )
        .is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
    assert!(
        series(
            &metrics,
            "scalestack_gateway_retries_total",
            &["pool=\"api\""]
        )
        .is_some()
    );
}

#[tokio::test]
async fn the_retry_budget_stops_an_outage_from_becoming_a_retry_storm() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_status(503);
    b.set_status(503);
    let mut config = retries_only(&[a.addr, b.addr]);
    // At most one retry per ten requests, nothing on top.
    config.pools[0].retry.budget_ratio = 0.1;
    config.pools[0].retry.budget_min_per_second = 0;
    config.pools[0].name = "budget".into();
    config.routes[0].pool = "budget".into();
    let gateway = RunningGateway::start(&config).await;

    for _ in 0..50 {
        let reply = get(gateway.addr, "/").await;
        assert_eq!(reply.status, 503, "the upstream's answer is passed on");
    }
    let attempts = a.hits() + b.hits();
    assert!(
        (50..=55).contains(&attempts),
        "50 requests made {attempts} attempts"
    );
    let metrics = get(gateway.admin, "/metrics").await.text();
    let exhausted = series(
        &metrics,
        "scalestack_gateway_retry_budget_exhausted_total",
        &["pool=\"budget\""],
    );
    assert!(exhausted.is_some_and(|n| n >= 45.0), "{metrics}");
}

#[tokio::test]
async fn a_breaker_opens_on_failures_shows_it_and_closes_after_its_probes() {
    let flaky = Upstream::start("flaky").await;
    let good = Upstream::start("good").await;
    flaky.set_status(503);
    let mut config = config(&[flaky.addr, good.addr]);
    let pool = &mut config.pools[0];
    pool.outlier.consecutive_failures = 0;
    pool.retry.attempts = 0;
    pool.breaker.consecutive_failures = 3;
    pool.breaker.open_for = Duration::from_millis(300);
    pool.breaker.half_open_probes = 1;
    let gateway = RunningGateway::start(&config).await;

    // Round robin alternates: three failures of flaky open its breaker.
    for _ in 0..6 {
        get(gateway.addr, "/").await;
    }
    let view = endpoint_view(gateway.admin, "api", flaky.addr).await;
    assert_eq!(view["breaker"], "open", "{view}");
    let metrics = get(gateway.admin, "/metrics").await.text();
    let endpoint = format!("endpoint=\"{}\"", flaky.addr);
    assert_eq!(
        series(&metrics, "scalestack_gateway_breaker_state", &[&endpoint]),
        Some(1.0),
        "{metrics}"
    );
    // While it is open, nothing reaches it.
    let before = flaky.hits();
    for _ in 0..4 {
        assert_eq!(get(gateway.addr, "/").await.upstream(), "good");
    }
    assert_eq!(flaky.hits(), before);

    // It recovers; after open_for a probe goes through and closes the breaker.
    flaky.set_status(0);
    eventually("the breaker closes again", || async {
        get(gateway.addr, "/").await;
        endpoint_view(gateway.admin, "api", flaky.addr).await["breaker"] == "closed"
    })
    .await;
    let metrics = get(gateway.admin, "/metrics").await.text();
    for to in ["open", "half_open", "closed"] {
        let label = format!("to=\"{to}\"");
        assert!(
            series(
                &metrics,
                "scalestack_gateway_breaker_transitions_total",
                &[&endpoint, &label]
            )
            .is_some_and(|n| n >= 1.0),
            "no transition to {to}: {metrics}"
        );
    }
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_ejected() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.set_status(502);
    let mut config = config(&[bad.addr, good.addr]);
    config.pools[0].breaker.enabled = false;
    config.pools[0].retry.attempts = 0;
    config.pools[0].outlier.consecutive_failures = 2;
    config.pools[0].outlier.base_ejection = Duration::from_secs(3600);
    config.pools[0].outlier.max_ejection = Duration::from_secs(3600);
    let gateway = RunningGateway::start(&config).await;

    for _ in 0..4 {
        get(gateway.addr, "/").await;
    }
    let view = endpoint_view(gateway.admin, "api", bad.addr).await;
    assert!(view["ejected_for_ms"].as_u64().unwrap() > 0, "{view}");
    assert_eq!(view["available"], false);
    let before = bad.hits();
    for _ in 0..6 {
        assert_eq!(get(gateway.addr, "/").await.upstream(), "good");
    }
    assert_eq!(bad.hits(), before);
    let metrics = get(gateway.admin, "/metrics").await.text();
    let endpoint = format!("endpoint=\"{}\"", bad.addr);
    assert_eq!(
        series(&metrics, "scalestack_gateway_ejections_total", &[&endpoint]),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_total_timeout_cuts_off_a_response_that_streams_too_long() {
    let upstream = Upstream::start("a").await;
    let mut config = config(&[upstream.addr]);
    config.pools[0].total_timeout = Duration::from_millis(200);
    let gateway = RunningGateway::start(&config).await;

    let request = Request::get(format!("http://{}/stream?ms=60000", gateway.addr))
        .body(Full::default())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the head arrived in time"
    );
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the body was cut off: {body:?}");
    // A quick response is unaffected.
    assert_eq!(
        get(gateway.addr, "/stream?ms=0").await.text(),
        "first part;second part"
    );
}

#[tokio::test]
async fn a_connect_that_takes_too_long_counts_as_a_connect_failure() {
    // A listener with a backlog of zero that never accepts: once its queue
    // is full, the kernel drops further SYNs and a connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let stuck: std::net::TcpListener = socket.into();
    let stuck_addr = stuck.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let filler =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        filler.set_nonblocking(true).unwrap();
        let _ = filler.connect(&stuck_addr.into());
        fillers.push(filler);
    }
    let good = Upstream::start("good").await;
    let mut config = config(&[stuck_addr, good.addr]);
    config.pools[0].connect_timeout = Duration::from_millis(200);
    config.health_check.interval = Duration::from_secs(3600);
    let gateway = RunningGateway::start(&config).await;

    for _ in 0..4 {
        let reply = get(gateway.addr, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.upstream(), "good");
    }
    let view = endpoint_view(gateway.admin, "api", stuck_addr).await;
    assert_eq!(view["healthy"], false, "{view}");
    assert!(
        view["last_check"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{view}"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_body_too_large_to_keep_is_streamed_and_not_replayed() {
    let sick = Upstream::start("sick").await;
    let good = Upstream::start("good").await;
    sick.set_status(503);
    let mut config = retries_only(&[sick.addr, good.addr]);
    config.max_request_body = 4096;
    config.pools[0].retry.max_replay_body = 16;
    let gateway = RunningGateway::start(&config).await;

    let request = |body: &'static [u8]| {
        Request::put("/doc")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    // Small enough to keep: a 503 is retried on good, with the same body.
    for _ in 0..2 {
        let reply = send(gateway.addr, request(b"small body")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["body"], "small body");
    }
    // Too large to keep: it went out streamed and cannot be sent again, so
    // the 503 of whichever endpoint got it first is the answer.
    let large: &'static [u8] = b"a body of more than sixteen bytes";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = send(gateway.addr, request(large)).await;
        if reply.status == 200 {
            assert_eq!(
                reply.json()["body"],
                String::from_utf8_lossy(large).as_ref()
            );
        }
        statuses.push(reply.status.as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}
