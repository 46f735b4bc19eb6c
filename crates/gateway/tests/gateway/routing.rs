//! Routes: host, path prefix and method choose the pool.

use http::{Request, StatusCode};
use http_body_util::Full;
use scalestack_config::RouteConfig;

use crate::support::*;

fn route(name: &str, prefix: &str, methods: &[&str], hosts: &[&str], pool: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        path_prefix: prefix.into(),
        methods: methods.iter().map(|m| (*m).into()).collect(),
        hosts: hosts.iter().map(|h| (*h).into()).collect(),
        pool: pool.into(),
        rate_limits: Vec::new(),
    }
}

#[tokio::test]
async fn paths_hosts_and_methods_send_requests_to_their_pools() {
    let users = Upstream::start("users").await;
    let orders = Upstream::start("orders").await;
    let rest = Upstream::start("rest").await;
    let mut config = config(&[rest.addr]);
    config.pools = vec![
        pool("users", &[users.addr]),
        pool("orders", &[orders.addr]),
        pool("rest", &[rest.addr]),
    ];
    config.routes = vec![
        route("users-read", "/users", &["GET", "HEAD"], &[], "users"),
        route("shop-orders", "/orders", &[], &["shop.example"], "orders"),
        route("everything-else", "/", &[], &[], "rest"),
    ];
    let gateway = RunningGateway::start(&config).await;

    let request = |method: &str, path: &str, host: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::default())
            .unwrap()
    };
    for (method, path, host, expected) in [
        ("GET", "/users/42", "any.example", "users"),
        ("GET", "/users", "any.example", "users"),
        ("POST", "/users", "any.example", "rest"),
        ("GET", "/usersx", "any.example", "rest"),
        ("POST", "/orders/9", "shop.example", "orders"),
        ("POST", "/orders/9", "SHOP.example:8080", "orders"),
        ("POST", "/orders/9", "other.example", "rest"),
        ("GET", "/", "any.example", "rest"),
    ] {
        let reply = send(gateway.addr, request(method, path, host)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{method} {path}: {}",
            reply.text()
        );
        assert_eq!(reply.upstream(), expected, "{method} {host}{path}");
    }
    assert_eq!(users.hits(), 2);
    assert_eq!(orders.hits(), 2);

    let metrics = get(gateway.admin, "/metrics").await.text();
    for route in ["users-read", "shop-orders", "everything-else"] {
        let label = format!("route=\"{route}\"");
        assert!(
            series(&metrics, "scalestack_http_requests_total", &[&label]).is_some(),
            "no series for {route}"
        );
    }
    let endpoint = format!("endpoint=\"{}\"", orders.addr);
    assert_eq!(
        series(
            &metrics,
            "scalestack_gateway_requests_total",
            &["pool=\"orders\"", &endpoint, "status_class=\"2xx\""]
        ),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_no_route_serves_gets_404_json_and_reaches_no_upstream() {
    let api = Upstream::start("api").await;
    let mut config = config(&[api.addr]);
    config.routes = vec![route("api-only", "/api", &[], &[], "api")];
    let gateway = RunningGateway::start(&config).await;

    get(gateway.addr, "/elsewhere")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no_route");
    assert_eq!(get(gateway.addr, "/api/x").await.upstream(), "api");
    assert_eq!(api.hits(), 1);
}
