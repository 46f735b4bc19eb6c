//! The cache tier end to end: the real `scalestack up` with two api
//! processes, talking to each other (UDP in the embedded stack, Redis
//! pub/sub with an L2) and to a real redis-server.
//!
//! * A write through one api instance is seen by the other, which had the
//!   old value (and a page of products holding it) cached; the time it took
//!   is printed, not asserted.
//! * Redis is killed with SIGKILL while clients load the stack through the
//!   gateway, then restarted: no client sees an error.
//! * An api process is killed with SIGKILL after acknowledging write-behind
//!   writes; the supervisor restarts it, it replays its log, and the other
//!   instance reads every write from the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use scalestack_config::{Config, L2Mode, WriteStrategy};
use scalestack_testkit::eventually;
use scalestack_testkit::http::Client;
use scalestack_testkit::redis::RedisServer;
use scalestack_testkit::stack::{Stack, process_alive, test_config};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_scalestack");

async fn send(c: &Client, method: Method, url: &str, body: Option<&str>, status: u16) -> Value {
    let r = c
        .send(method.clone(), url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert_eq!(r.status.as_u16(), status, "{method} {url} -> {}", r.text());
    r.json()
}

/// Sum of a Prometheus counter's series whose labels contain `labels`.
async fn counter(c: &Client, base: &str, name: &str, labels: &str) -> f64 {
    let text = c
        .get(&format!("{base}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `url` until `ready` accepts its JSON; returns how long that took.
async fn time_until(c: &Client, url: &str, ready: impl Fn(&Value) -> bool) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(url).await
            && ready(&r.json())
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn with_redis(config: &mut Config, redis: &RedisServer) {
    config.cache.l2.mode = L2Mode::Standalone;
    config.cache.l2.urls = vec![redis.url()];
    config.cache.invalidation.heartbeat = Duration::from_millis(200);
    config.cache.l2.breaker.open_for = Duration::from_millis(500);
}

fn seed(dir: &std::path::Path, config: &Config, users: u32) {
    let path = dir.join("seed.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let out = std::process::Command::new(EXE)
        .args(["seed", "--config", path.to_str().unwrap()])
        .args(["--users", &users.to_string(), "--products", "10", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_stack_invalidates_across_instances_and_replays_write_behind_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), 2);
    config.cache.users.strategy = WriteStrategy::WriteBehind;
    // Nothing is flushed before the kill: only the log can save the writes.
    config.cache.write_behind.flush_interval = Duration::from_secs(3600);
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    let c = Client::default();
    let (gw, api0, api1) = (stack.gateway_url(), stack.api_url(0), stack.api_url(1));

    // --- a write on api-0 drops api-1's cached copy (UDP between peers) ---
    let product = send(
        &c,
        Method::POST,
        &format!("{gw}/products"),
        Some(r#"{"name":"Lamp","price_cents":1999,"stock":5}"#),
        201,
    )
    .await;
    let pid = product["id"].as_i64().unwrap();
    for base in [&api0, &api1] {
        for path in [format!("/products/{pid}"), "/products".to_owned()] {
            for _ in 0..2 {
                send(&c, Method::GET, &format!("{base}{path}"), None, 200).await;
            }
        }
    }
    send(
        &c,
        Method::PATCH,
        &format!("{api0}/products/{pid}"),
        Some(r#"{"price_cents":2499}"#),
        200,
    )
    .await;
    let took = time_until(&c, &format!("{api1}/products/{pid}"), |v| {
        v["price_cents"] == 2499
    })
    .await
    .expect("api-1 never saw the new price");
    eprintln!("embedded: api-1 served the new price {took:?} after api-0 acknowledged the patch");
    // The page of products api-1 had cached was retired too.
    time_until(&c, &format!("{api1}/products"), |v| {
        v["data"][0]["price_cents"] == 2499
    })
    .await
    .expect("api-1 kept serving a retired page of products");
    let received = counter(
        &c,
        &api1,
        "scalestack_cache_invalidations_total",
        "direction=\"received\",transport=\"udp\"",
    )
    .await;
    assert!(received >= 1.0, "api-1 received no invalidation over UDP");

    // --- write-behind: acknowledged by api-0, then api-0 is SIGKILLed ---
    let mut users = Vec::new();
    for i in 0..20 {
        let u = send(
            &c,
            Method::POST,
            &format!("{gw}/users"),
            Some(&format!(r#"{{"email":"u{i}@example.com","name":"u{i}"}}"#)),
            201,
        )
        .await;
        users.push(u["id"].as_i64().unwrap());
    }
    let mut seen_at = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let patched = send(
            &c,
            Method::PATCH,
            &format!("{api0}/users/{id}"),
            Some(&format!(r#"{{"name":"renamed {i}"}}"#)),
            200,
        )
        .await;
        assert_eq!(patched["name"], format!("renamed {i}"));
        let seen = send(
            &c,
            Method::POST,
            &format!("{api0}/users/{id}/seen"),
            None,
            200,
        )
        .await;
        seen_at.push(seen["last_seen_at"].as_str().unwrap().to_owned());
    }
    // The store does not have them: api-1 (no L2 here) reads the old rows.
    let old = send(
        &c,
        Method::GET,
        &format!("{api1}/users/{}", users[0]),
        None,
        200,
    )
    .await;
    assert_eq!(
        old["name"], "u0",
        "flushed before the kill; the test proves nothing"
    );
    let old = send(
        &c,
        Method::GET,
        &format!("{api1}/users/{}/seen", users[0]),
        None,
        200,
    )
    .await;
    assert_eq!(old["last_seen_at"], Value::Null);

    let (victim, restarts) = stack.child("api-0").await.unwrap();
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let (new_pid, _) = eventually(Duration::from_secs(30), || async {
        stack
            .child("api-0")
            .await
            .filter(|(pid, r)| *pid != victim && *r > restarts)
    })
    .await
    .unwrap_or_else(|| panic!("api-0 was not restarted; log:\n{}", stack.log()));
    assert!(!process_alive(victim) && process_alive(new_pid));

    // The restarted api-0 replays its log and flushes it; api-1 then reads
    // every acknowledged write from the store.
    for (i, id) in users.iter().enumerate() {
        let name = format!("renamed {i}");
        let profile = time_until(&c, &format!("{api1}/users/{id}"), |v| v["name"] == name).await;
        assert!(
            profile.is_some(),
            "user {id}: the patch was lost; log:\n{}",
            stack.log()
        );
        let at = &seen_at[i];
        let seen = time_until(&c, &format!("{api1}/users/{id}/seen"), |v| {
            v["last_seen_at"] == *at
        })
        .await;
        assert!(seen.is_some(), "user {id}: last seen was lost");
    }
    for cache in ["users", "user_activity"] {
        let replayed = counter(
            &c,
            &api0,
            "scalestack_cache_write_behind_replayed_total",
            &format!("cache=\"{cache}\""),
        )
        .await;
        assert_eq!(replayed, 20.0, "{cache} entries replayed by the new api-0");
    }
    assert!(stack.stop().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_instances_invalidate_over_pubsub_and_survive_redis_dying_under_load() {
    let mut redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), 2);
    with_redis(&mut config, &redis);
    // A small L1, so that most reads reach Redis and its death matters.
    config.cache.l1_max_bytes = 16 * 1024;
    let users = 1000;
    seed(dir.path(), &config, users);
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    let c = Client::default();
    let (gw, api0, api1) = (stack.gateway_url(), stack.api_url(0), stack.api_url(1));

    // --- a patch through api-0 reaches api-1 over Redis pub/sub ---
    for base in [&api0, &api1] {
        send(&c, Method::GET, &format!("{base}/users/7"), None, 200).await;
    }
    send(
        &c,
        Method::PATCH,
        &format!("{api0}/users/7"),
        Some(r#"{"name":"Seven"}"#),
        200,
    )
    .await;
    let took = time_until(&c, &format!("{api1}/users/7"), |v| v["name"] == "Seven")
        .await
        .expect("api-1 never saw the patch");
    eprintln!("redis: api-1 served the patched user {took:?} after api-0 acknowledged it");
    let received = counter(
        &c,
        &api1,
        "scalestack_cache_invalidations_total",
        "direction=\"received\",transport=\"redis\"",
    )
    .await;
    assert!(received >= 1.0, "api-1 received no invalidation over Redis");
    assert!(
        redis.cli(&["DBSIZE"]).unwrap().trim() != "0",
        "the L2 holds entries"
    );

    // --- load through the gateway while Redis dies and comes back ---
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (c, gw, stop, ok) = (c.clone(), gw.clone(), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut x = w * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                // A small LCG spreads the keys over every user.
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let id = (x >> 33) % u64::from(users) + 1;
                match c.get(&format!("{gw}/users/{id}")).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{id}: {} {}", r.status, r.text())),
                    Err(e) => failures.push(format!("{id}: {e}")),
                }
            }
            failures
        }));
    }
    let served = |n: u64| {
        let ok = ok.clone();
        async move {
            let from = ok.load(Ordering::Relaxed);
            eventually(Duration::from_secs(30), || async {
                (ok.load(Ordering::Relaxed) >= from + n).then_some(())
            })
            .await
            .expect("the load stalled");
        }
    };
    served(300).await;
    redis.kill();
    served(1000).await;
    let opened = counter(
        &c,
        &api0,
        "scalestack_cache_l2_breaker_transitions_total",
        "to=\"open\"",
    )
    .await
        + counter(
            &c,
            &api1,
            "scalestack_cache_l2_breaker_transitions_total",
            "to=\"open\"",
        )
        .await;
    assert!(
        opened >= 1.0,
        "no breaker opened: the load did not reach Redis"
    );
    redis.restart().unwrap();
    let closed = eventually(Duration::from_secs(30), || async {
        let mut all = true;
        for base in [&api0, &api1] {
            let r = c.get(&format!("{base}/admin/cache")).await.ok()?;
            all &= r.json()["l2"]["breaker"] == "closed";
        }
        all.then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "the L2 breakers did not close after Redis came back"
    );
    served(300).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!(
        "{} requests, none failed, across the Redis outage",
        ok.load(Ordering::Relaxed)
    );
    assert!(stack.stop().await.unwrap().success());
}
