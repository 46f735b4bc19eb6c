//! Balancing through real upstreams: least connections under a slow
//! endpoint, consistent hashing on a header, and run-time weights and drain
//! (blue-green and canary). The distributions of every algorithm are unit
//! tests in `balance.rs`.

use http::{Request, StatusCode};
use http_body_util::Full;
use scalestack_config::{Algorithm, RequestKey};
use tokio::task::JoinSet;

use crate::support::*;

#[tokio::test]
async fn least_connections_sends_new_requests_away_from_a_slow_endpoint() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    slow.set_delay(400);
    let mut config = config(&[slow.addr, fast.addr]);
    config.pools[0].algorithm = Algorithm::LeastConnections;
    let gateway = RunningGateway::start(&config).await;

    // Four clients send ten requests each, one after another. Round robin
    // would send half of them (20) to the slow endpoint.
    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let addr = gateway.addr;
        clients.spawn(async move {
            let client = client();
            for i in 0..10 {
                let request = Request::get(format!("/item/{i}"))
                    .body(Full::default())
                    .unwrap();
                assert_eq!(send_with(&client, addr, request).await.status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(slow.hits() + fast.hits(), 40);
    // Ties (both idle) are shared in turn, and on a loaded machine the fast
    // endpoint is often busy too when the slow one frees up: a handful of
    // requests reach the slow endpoint, far from round robin's 20.
    assert!(
        slow.hits() <= 12,
        "the slow endpoint got {} of 40 requests",
        slow.hits()
    );
}

#[tokio::test]
async fn consistent_hashing_on_a_header_keeps_each_user_on_one_endpoint() {
    let upstreams = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let mut config = config(&addrs);
    config.pools[0].algorithm = Algorithm::ConsistentHash;
    config.pools[0].hash_key = RequestKey::Header("x-user-id".into());
    let gateway = RunningGateway::start(&config).await;

    let mut homes = std::collections::HashSet::new();
    for user in 0..30 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let request = Request::get("/profile")
                .header("x-user-id", user.to_string())
                .body(Full::default())
                .unwrap();
            seen.insert(send(gateway.addr, request).await.upstream().to_owned());
        }
        assert_eq!(seen.len(), 1, "user {user} went to {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "30 users all on {homes:?}");
}

#[tokio::test]
async fn weights_and_drain_move_traffic_at_run_time() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut config = config(&[blue.addr, green.addr]);
    config.pools[0].algorithm = Algorithm::WeightedRoundRobin;
    let gateway = RunningGateway::start(&config).await;
    let share = |n: usize| async move {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for _ in 0..n {
            *counts
                .entry(get(gateway.addr, "/").await.upstream().to_owned())
                .or_default() += 1;
        }
        counts
    };
    let set_weight = |endpoint: std::net::SocketAddr, weight: u32| async move {
        let reply = admin(
            gateway.admin,
            "PUT",
            &format!("/admin/pools/api/endpoints/{endpoint}/weight"),
            &format!("{{\"weight\": {weight}}}"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["weight"], weight);
    };

    // Blue-green: all of it to blue.
    set_weight(green.addr, 0).await;
    assert_eq!(share(10).await.get("blue"), Some(&10));
    // Canary: a quarter to green.
    set_weight(green.addr, 1).await;
    set_weight(blue.addr, 3).await;
    let counts = share(40).await;
    assert_eq!(
        (counts.get("blue"), counts.get("green")),
        (Some(&30), Some(&10))
    );
    // Drain blue: new requests go to green only; undrain brings it back.
    let reply = admin(
        gateway.admin,
        "POST",
        &format!("/admin/pools/api/endpoints/{}/drain", blue.addr),
        "",
    )
    .await;
    assert_eq!(reply.json()["drained"], true);
    assert_eq!(share(8).await.get("green"), Some(&8));
    admin(
        gateway.admin,
        "POST",
        &format!("/admin/pools/api/endpoints/{}/undrain", blue.addr),
        "",
    )
    .await;
    assert!(share(8).await.contains_key("blue"));

    let metrics = get(gateway.admin, "/metrics").await.text();
    let endpoint = format!("endpoint=\"{}\"", blue.addr);
    assert_eq!(
        series(&metrics, "scalestack_gateway_endpoint_weight", &[&endpoint]),
        Some(3.0)
    );
    assert_eq!(
        series(
            &metrics,
            "scalestack_gateway_endpoint_drained",
            &[&endpoint]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_drained_endpoint_finishes_its_requests_in_flight() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gateway = RunningGateway::start(&config(&[a.addr, b.addr])).await;
    // Round robin: the first request goes to a.
    let addr = gateway.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=300").await });
    eventually("the slow request reached a", || async { a.hits() == 1 }).await;
    admin(
        gateway.admin,
        "POST",
        &format!("/admin/pools/api/endpoints/{}/drain", a.addr),
        "",
    )
    .await;
    let view = endpoint_view(gateway.admin, "api", a.addr).await;
    assert_eq!(view["in_flight"], 1, "{view}");
    assert_eq!(view["available"], false, "{view}");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), "a");
    for _ in 0..4 {
        assert_eq!(get(gateway.addr, "/").await.upstream(), "b");
    }
}
