//! The admin listener: the gateway's own `/health` and `/metrics`.

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn health_reports_one_check_per_endpoint() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;

    let reply = get(gateway.admin, "/health").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    let report = reply.json();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["component"], "gateway");
    let names: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            format!("upstream.{}", a.addr),
            format!("upstream.{}", b.addr)
        ]
    );
    // The admin port serves the gateway, not the upstreams.
    assert_eq!(reply.upstream(), "");
}

#[tokio::test]
async fn metrics_expose_the_gateway_series() {
    let a = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[a.addr])).await;
    for _ in 0..3 {
        assert_eq!(get(gateway.addr, "/").await.status, 200);
    }
    // At least one health check has finished once the report shows a latency.
    eventually("a health check ran", || async {
        get(gateway.admin, "/health").await.json()["checks"][0]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0)
    })
    .await;

    let reply = get(gateway.admin, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = reply.text();
    let endpoint = format!("endpoint=\"{}\"", a.addr);
    let endpoint = endpoint.as_str();
    let requests = series(
        &text,
        "scalestack_gateway_requests_total",
        &[endpoint, "status_class=\"2xx\""],
    );
    assert_eq!(requests, Some(3.0), "{text}");
    for (name, labels) in [
        (
            "scalestack_gateway_request_duration_seconds_count",
            &[endpoint][..],
        ),
        ("scalestack_gateway_endpoint_healthy", &[endpoint]),
        (
            "scalestack_gateway_health_checks_total",
            &[endpoint, "result=\"ok\""],
        ),
        (
            "scalestack_http_requests_total",
            &["route=\"proxy\"", "method=\"GET\"", "status_class=\"2xx\""],
        ),
    ] {
        assert!(series(&text, name, labels).is_some(), "no {name} in {text}");
    }
    assert!(
        text.contains("# TYPE scalestack_gateway_active_connections gauge"),
        "{text}"
    );
    assert!(
        text.contains("# HELP scalestack_gateway_retries_total"),
        "{text}"
    );
}

#[tokio::test]
async fn other_admin_paths_are_404_json() {
    let a = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[a.addr])).await;
    get(gateway.admin, "/users/1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}
