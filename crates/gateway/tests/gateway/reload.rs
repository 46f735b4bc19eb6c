//! Reloading routes and pools: under load without dropping a connection or
//! a request, refusing a bad configuration, and on SIGHUP.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use scalestack_config::{Config, GatewayConfig};
use tokio::task::JoinSet;

use crate::support::*;

fn as_toml(gateway: &GatewayConfig) -> String {
    Config {
        gateway: gateway.clone(),
        ..Config::default()
    }
    .to_toml()
}

#[tokio::test]
async fn a_reload_under_load_drops_no_connection_and_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let first = config(&[a.addr]);
    let gateway = RunningGateway::start(&first).await;

    // Eight clients, each on one keep-alive connection for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for c in 0..8 {
        let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), gateway.addr);
        clients.spawn(async move {
            let mut connection = KeepAlive::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = connection
                    .get(&format!("/client/{c}/{n}"))
                    .await
                    .unwrap_or_else(|e| panic!("client {c}, request {n}: {e}"));
                assert_eq!(status, 200, "client {c}, request {n}: {body}");
                n += 1;
                served.fetch_add(1, Ordering::SeqCst);
            }
            n
        });
    }

    let only_b = config(&[b.addr]);
    let both = config(&[a.addr, b.addr]);
    for (round, next) in [&only_b, &both, &first, &only_b, &both, &first]
        .into_iter()
        .enumerate()
    {
        let before = served.load(Ordering::SeqCst);
        eventually("traffic flows between reloads", || async {
            served.load(Ordering::SeqCst) >= before + 50
        })
        .await;
        let reply = admin(gateway.admin, "POST", "/admin/reload", &as_toml(next)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "reload {round}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["pools"], 1);
        if round == 0 {
            eventually("the new pool takes the traffic", || async { b.hits() > 0 }).await;
        }
    }
    let before = served.load(Ordering::SeqCst);
    eventually("traffic flows after the last reload", || async {
        served.load(Ordering::SeqCst) >= before + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = clients.join_next().await {
        let requests = done.unwrap();
        assert!(requests > 10, "a client sent only {requests} requests");
    }
    assert!(a.hits() > 0 && b.hits() > 0);

    let metrics = get(gateway.admin, "/metrics").await.text();
    assert!(
        series(
            &metrics,
            "scalestack_gateway_reloads_total",
            &["result=\"ok\""]
        )
        .is_some_and(|n| n >= 6.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_configuration_is_refused_and_the_running_one_stays() {
    let a = Upstream::start("a").await;
    let gateway = RunningGateway::start(&config(&[a.addr])).await;

    let mut bad = config(&[a.addr]);
    bad.routes[0].pool = "missing".into();
    let reply = admin(gateway.admin, "POST", "/admin/reload", &as_toml(&bad)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let json = reply.json();
    assert_eq!(json["error"]["code"], "invalid_config");
    assert_eq!(json["error"]["field"], "gateway.routes[0].pool", "{json}");

    let reply = admin(
        gateway.admin,
        "POST",
        "/admin/reload",
        "[gateway]\nlisten_to = 1\n",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("listen_to"), "{}", reply.text());

    // Without a reload source, an empty reload call has nothing to read.
    let reply = admin(gateway.admin, "POST", "/admin/reload", "").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    assert_eq!(get(gateway.addr, "/").await.upstream(), "a");
}

#[tokio::test]
async fn sighup_reloads_from_the_source() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let current = Arc::new(Mutex::new(config(&[a.addr])));
    let source = {
        let current = Arc::clone(&current);
        Arc::new(move || Ok(current.lock().unwrap().clone())) as scalestack_gateway::ReloadSource
    };
    let start = current.lock().unwrap().clone();
    let gateway = RunningGateway::start_with(&start, Some(source)).await;
    assert_eq!(get(gateway.addr, "/").await.upstream(), "a");

    *current.lock().unwrap() = config(&[b.addr]);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("SIGHUP switched the pool to b", || async {
        get(gateway.addr, "/").await.upstream() == "b"
    })
    .await;

    // An empty reload call reads the source too.
    *current.lock().unwrap() = config(&[a.addr]);
    let reply = admin(gateway.admin, "POST", "/admin/reload", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The swap is done when the call returns: the next request sees it.
    assert_eq!(get(gateway.addr, "/").await.upstream(), "a");
}
