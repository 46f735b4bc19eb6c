//! Rate limits through the gateway: every algorithm admits its limit over a
//! window within ±1 % under concurrent clients on several worker threads;
//! headers on every limited response; several tiers and keys at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use scalestack_config::{GatewayConfig, RateLimitAlgorithm, RateLimitConfig, RequestKey};
use tokio::task::JoinSet;

use crate::support::*;

fn tier(name: &str, algorithm: RateLimitAlgorithm, key: RequestKey, limit: u64) -> RateLimitConfig {
    RateLimitConfig {
        name: name.into(),
        algorithm,
        key,
        limit,
        // Far longer than a test: the window does not move while it runs,
        // so the count is exact, not a matter of timing.
        window: Duration::from_secs(3600),
        burst: 0,
    }
}

fn limited(upstream: &Upstream, tiers: Vec<RateLimitConfig>) -> GatewayConfig {
    let mut config = config(&[upstream.addr]);
    config.routes[0].rate_limits = tiers.iter().map(|t| t.name.clone()).collect();
    config.rate_limits = tiers;
    config
}

/// Asserts the rate-limit headers of a response of a limited route.
fn assert_limit_headers(reply: &Reply, limit: u64) {
    assert_eq!(
        reply.headers["x-ratelimit-limit"],
        limit.to_string().as_str()
    );
    let remaining: u64 = reply.headers["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= limit);
    let reset: u64 = reply.headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // At most two windows away (a sliding counter forgets a request only
    // when the window after its own has passed).
    assert!(
        reset >= now && reset <= now + 7201,
        "reset {reset} now {now}"
    );
}

#[tokio::test]
async fn every_algorithm_admits_its_limit_within_one_percent_under_concurrent_clients() {
    let limit = 300;
    let attempts = 450;
    for (name, algorithm) in [
        ("tb", RateLimitAlgorithm::TokenBucket),
        ("swl", RateLimitAlgorithm::SlidingWindowLog),
        ("swc", RateLimitAlgorithm::SlidingWindowCounter),
        ("fw", RateLimitAlgorithm::FixedWindow),
    ] {
        let upstream = Upstream::start("a").await;
        let tier_name = format!("concurrent-{name}");
        let gateway = RunningGateway::start(&limited(
            &upstream,
            vec![tier(&tier_name, algorithm, RequestKey::Route, limit)],
        ))
        .await;
        // Sixteen clients, each on its own connections (spread over both
        // worker threads), share one route-wide budget.
        let sent = Arc::new(AtomicUsize::new(0));
        let mut clients = JoinSet::new();
        for _ in 0..16 {
            let (sent, addr) = (Arc::clone(&sent), gateway.addr);
            clients.spawn(async move {
                let client = client();
                let (mut ok, mut refused) = (0u64, 0u64);
                while sent.fetch_add(1, Ordering::SeqCst) < attempts {
                    let reply = send_with(
                        &client,
                        addr,
                        Request::get("/").body(Full::default()).unwrap(),
                    )
                    .await;
                    assert_limit_headers(&reply, limit);
                    match reply.status {
                        StatusCode::OK => ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert!(reply.headers.contains_key("retry-after"));
                            assert_eq!(reply.json()["error"]["code"], "rate_limited");
                            refused += 1;
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, refused)
            });
        }
        let (mut ok, mut refused) = (0, 0);
        while let Some(done) = clients.join_next().await {
            let (o, r) = done.unwrap();
            ok += o;
            refused += r;
        }
        assert_eq!(ok + refused, attempts as u64);
        let tolerance = limit / 100;
        assert!(
            ok.abs_diff(limit) <= tolerance,
            "{algorithm:?}: {ok} admitted of {attempts} with a limit of {limit}"
        );
        assert_eq!(
            upstream.hits() as u64,
            ok,
            "only admitted requests reach the upstream"
        );
        let metrics = get(gateway.admin, "/metrics").await.text();
        let label = format!("tier=\"{tier_name}\"");
        assert_eq!(
            series(
                &metrics,
                "scalestack_gateway_rate_limited_total",
                &["route=\"default\"", &label]
            ),
            Some(refused as f64),
            "{algorithm:?}"
        );
    }
}

#[tokio::test]
async fn several_tiers_and_keys_apply_at_once() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&limited(
        &upstream,
        vec![
            tier(
                "per-user",
                RateLimitAlgorithm::FixedWindow,
                RequestKey::Header("x-user-id".into()),
                3,
            ),
            tier(
                "per-key",
                RateLimitAlgorithm::TokenBucket,
                RequestKey::Header("x-api-key".into()),
                100,
            ),
            tier(
                "per-ip",
                RateLimitAlgorithm::SlidingWindowCounter,
                RequestKey::ClientIp,
                5,
            ),
        ],
    ))
    .await;
    let call = |user: Option<&'static str>| async move {
        let mut request = Request::get("/").header("x-api-key", "k1");
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        send(gateway.addr, request.body(Full::default()).unwrap()).await
    };

    // User A: three pass, the fourth is over the per-user tier.
    for i in 0..3 {
        let reply = call(Some("alice")).await;
        assert_eq!(reply.status, 200, "request {i}");
    }
    let refused = call(Some("alice")).await;
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(refused.headers["x-ratelimit-limit"], "3");
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");

    // User B has a budget of its own, but the address has 5 in all.
    let reply = call(Some("bob")).await;
    assert_eq!(reply.status, 200);
    // The tightest tier is advertised: per-ip has one left.
    assert_eq!(reply.headers["x-ratelimit-remaining"], "1");
    assert_eq!(reply.headers["x-ratelimit-limit"], "5");
    assert_eq!(call(Some("bob")).await.status, 200);
    let over_ip = call(Some("bob")).await;
    over_ip.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(over_ip.headers["x-ratelimit-limit"], "5");
    // Without a user id the per-user tier does not apply; per-ip still does.
    call(None)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test]
async fn an_unlimited_route_has_no_rate_limit_headers() {
    let upstream = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[upstream.addr])).await;
    let reply = get(gateway.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("x-ratelimit-limit"));
}
