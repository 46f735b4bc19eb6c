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
            format!("upstream.api.{}", a.addr),
            format!("upstream.api.{}", b.addr)
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
            &[
                "route=\"default\"",
                "method=\"GET\"",
                "status_class=\"2xx\"",
            ],
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

#[tokio::test]
async fn the_admin_api_needs_the_token_and_is_off_without_one() {
    let a = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[a.addr])).await;

    let reply = get(gateway.admin, "/admin/pools").await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    let wrong = http::Request::get("/admin/pools")
        .header("authorization", "Bearer nope")
        .body(http_body_util::Full::default())
        .unwrap();
    send(gateway.admin, wrong)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        admin(gateway.admin, "GET", "/admin/pools", "").await.status,
        200
    );

    let mut off = config(&[a.addr]);
    off.admin_token = String::new();
    let gateway = RunningGateway::start(&off).await;
    admin(gateway.admin, "GET", "/admin/pools", "")
        .await
        .assert_error(StatusCode::FORBIDDEN, "admin_disabled");
    // Health and metrics stay open.
    assert_eq!(get(gateway.admin, "/health").await.status, 200);
    assert_eq!(get(gateway.admin, "/metrics").await.status, 200);
}

#[tokio::test]
async fn pools_show_every_endpoint_with_health_breaker_and_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;
    b.set_sick(true);
    gateway.wait_for_endpoint(b.addr, "fail").await;

    let reply = admin(gateway.admin, "GET", "/admin/pools", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pools = reply.json();
    let pool = &pools["pools"][0];
    assert_eq!(pool["name"], "api");
    assert_eq!(pool["algorithm"], "round_robin");
    let a_view = &pool["endpoints"][0];
    assert_eq!(a_view["address"], a.addr.to_string().as_str());
    assert_eq!(a_view["healthy"], true);
    assert_eq!(a_view["breaker"], "closed");
    assert_eq!(a_view["weight"], 1);
    assert_eq!(a_view["in_flight"], 0);
    assert_eq!(a_view["available"], true);
    let b_view = &pool["endpoints"][1];
    assert_eq!(b_view["healthy"], false);
    assert_eq!(b_view["available"], false);
    assert!(
        b_view["last_check"]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{b_view}"
    );

    let routes = admin(gateway.admin, "GET", "/admin/routes", "")
        .await
        .json();
    assert_eq!(routes["routes"][0]["name"], "default");
    assert_eq!(routes["routes"][0]["pool"], "api");
}

#[tokio::test]
async fn admin_mistakes_get_json_errors_naming_the_field() {
    let a = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[a.addr])).await;

    let reply = admin(gateway.admin, "GET", "/admin/pools/nope", "").await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(reply.json()["error"]["field"], "pool");
    let path = "/admin/pools/api/endpoints/10.9.9.9:1/drain";
    let reply = admin(gateway.admin, "POST", path, "").await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(reply.json()["error"]["field"], "endpoint");
    let weight = format!("/admin/pools/api/endpoints/{}/weight", a.addr);
    for body in [
        "",
        "{\"weight\": -1}",
        "{\"weight\": 10001}",
        "not json",
        "{\"w\": 1}",
    ] {
        let reply = admin(gateway.admin, "PUT", &weight, body).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_weight");
        assert_eq!(reply.json()["error"]["field"], "weight", "{body}");
    }
    admin(gateway.admin, "DELETE", "/admin/pools", "")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // The endpoint is as it was.
    assert_eq!(
        endpoint_view(gateway.admin, "api", a.addr).await["weight"],
        1
    );
}
