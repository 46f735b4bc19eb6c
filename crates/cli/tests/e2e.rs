//! End to end: the real `scalestack` binary runs the whole stack as separate
//! processes; every endpoint is exercised through the gateway; an api
//! instance is killed with SIGKILL and the stack heals; Ctrl-C stops it all;
//! a second `up` on the same data keeps the data.

use std::time::{Duration, Instant};

use scalestack_testkit::http::Client;
use scalestack_testkit::stack::{Stack, process_alive, test_config};
use scalestack_testkit::{eventually, ports};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_scalestack");

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXE)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

async fn expect(
    client: &Client,
    method: http::Method,
    url: &str,
    body: Option<&str>,
    status: u16,
) -> Value {
    let r = client
        .send(method.clone(), url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert_eq!(
        r.status.as_u16(),
        status,
        "{method} {url} {body:?} -> {}",
        r.text()
    );
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_serves_heals_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), 2);
    let stack = Stack::start(EXE.as_ref(), config.clone(), dir.path(), &[])
        .await
        .unwrap();
    let c = Client::default();
    let gw = stack.gateway_url();
    use http::Method as M;

    // --- every endpoint through the gateway ---
    let user = expect(
        &c,
        M::POST,
        &format!("{gw}/users"),
        Some(r#"{"email":"ada@example.com","name":"Ada"}"#),
        201,
    )
    .await;
    let uid = user["id"].as_i64().unwrap();
    assert_eq!(
        expect(&c, M::GET, &format!("{gw}/users/{uid}"), None, 200).await,
        user
    );
    assert_eq!(
        expect(
            &c,
            M::GET,
            &format!("{gw}/users/{uid}?fields=email"),
            None,
            200
        )
        .await,
        json!({"email": "ada@example.com"})
    );
    let patched = expect(
        &c,
        M::PATCH,
        &format!("{gw}/users/{uid}"),
        Some(r#"{"name":"Ada L."}"#),
        200,
    )
    .await;
    assert_eq!(patched["name"], "Ada L.");

    let product = expect(
        &c,
        M::POST,
        &format!("{gw}/products"),
        Some(r#"{"name":"Lamp","price_cents":1999,"stock":5}"#),
        201,
    )
    .await;
    let pid = product["id"].as_i64().unwrap();
    assert_eq!(
        expect(
            &c,
            M::GET,
            &format!("{gw}/products/{pid}?fields=name,stock"),
            None,
            200
        )
        .await,
        json!({"name": "Lamp", "stock": 5})
    );
    let list = expect(&c, M::GET, &format!("{gw}/products?limit=10"), None, 200).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let order_body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":2}}"#);
    let order = expect(&c, M::POST, &format!("{gw}/orders"), Some(&order_body), 201).await;
    assert_eq!(order["total_cents"], 3998);
    let oid = order["id"].as_i64().unwrap();
    assert_eq!(
        expect(&c, M::GET, &format!("{gw}/orders/{oid}"), None, 200).await,
        order
    );
    let orders = expect(
        &c,
        M::GET,
        &format!("{gw}/users/{uid}/orders?limit=5&fields=id"),
        None,
        200,
    )
    .await;
    assert_eq!(orders, json!({"data": [{"id": oid}], "next_cursor": null}));

    // --- bad input through the gateway ---
    let e = expect(
        &c,
        M::POST,
        &format!("{gw}/orders"),
        Some(r#"{"user_id":1,"product_id":1,"quantity":"x"}"#),
        400,
    )
    .await;
    assert_eq!(e["error"]["field"], "quantity");
    let e = expect(&c, M::POST, &format!("{gw}/users"), Some("{not json"), 400).await;
    assert_eq!(e["error"]["code"], "malformed_json");
    expect(&c, M::GET, &format!("{gw}/users/987654"), None, 404).await;
    let e = expect(
        &c,
        M::GET,
        &format!("{gw}/users/{uid}?fields=id,height"),
        None,
        400,
    )
    .await;
    assert!(e["error"]["message"].as_str().unwrap().contains("height"));

    // --- health and metrics of every process ---
    for url in [
        stack.api_url(0),
        stack.api_url(1),
        stack.worker_url(),
        stack.gateway_admin_url(),
        stack.supervisor_url(),
    ] {
        let health = expect(&c, M::GET, &format!("{url}/health"), None, 200).await;
        assert_eq!(health["status"], "ok", "{url}: {health}");
        let metrics = c.get(&format!("{url}/metrics")).await.unwrap();
        assert_eq!(metrics.status, 200);
        assert!(
            metrics.text().contains("process_cpu_seconds_total"),
            "{url}"
        );
    }
    let api_metrics = c
        .get(&format!("{}/metrics", stack.api_url(0)))
        .await
        .unwrap()
        .text()
        + &c.get(&format!("{}/metrics", stack.api_url(1)))
            .await
            .unwrap()
            .text();
    assert!(api_metrics.contains("scalestack_http_requests_total"));
    assert!(api_metrics.contains("scalestack_http_request_duration_seconds_bucket"));
    assert!(api_metrics.contains("scalestack_cache_requests_total"));
    assert!(api_metrics.contains("result=\"hit\"") || api_metrics.contains("result=\"miss\""));
    let gw_metrics = c
        .get(&format!("{}/metrics", stack.gateway_admin_url()))
        .await
        .unwrap()
        .text();
    assert!(gw_metrics.contains("scalestack_gateway_requests_total"));

    // --- both api instances take traffic (round robin) ---
    let before: Vec<u64> = futures_counts(&c, &stack).await;
    for _ in 0..20 {
        expect(&c, M::GET, &format!("{gw}/users/{uid}"), None, 200).await;
    }
    let after: Vec<u64> = futures_counts(&c, &stack).await;
    for i in 0..2 {
        assert!(
            after[i] >= before[i] + 8,
            "api-{i} served {} of 20",
            after[i] - before[i]
        );
    }

    // --- kill -9 one api instance: the gateway keeps answering ---
    let (victim, restarts) = stack.child("api-0").await.unwrap();
    assert_eq!(restarts, 0);
    assert!(process_alive(victim));
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let killed_at = Instant::now();
    let interval = config.gateway.health_check.interval;
    let mut late_failures = Vec::new();
    let mut total = 0;
    while killed_at.elapsed() < interval * 4 {
        let r = c.get(&format!("{gw}/users/{uid}")).await;
        total += 1;
        let ok = matches!(&r, Ok(r) if r.status == 200);
        if !ok && killed_at.elapsed() > interval {
            late_failures.push(format!(
                "{:?}: {:?}",
                killed_at.elapsed(),
                r.map(|r| r.status)
            ));
        }
    }
    assert!(total > 10);
    assert!(
        late_failures.is_empty(),
        "requests failed after one health interval: {late_failures:?}"
    );

    // --- the supervisor brings it back ---
    let (new_pid, restarts) = eventually(Duration::from_secs(20), || async {
        stack.child("api-0").await.filter(|(pid, _)| *pid != victim)
    })
    .await
    .unwrap_or_else(|| panic!("api-0 was not restarted; log:\n{}", stack.log()));
    assert_eq!(restarts, 1);
    assert!(process_alive(new_pid));
    let healthy = eventually(Duration::from_secs(20), || async {
        let r = c
            .get(&format!("{}/health", stack.gateway_admin_url()))
            .await
            .ok()?;
        let all_ok = r.json()["checks"]
            .as_array()?
            .iter()
            .all(|ch| ch["status"] == "ok");
        all_ok.then_some(())
    })
    .await;
    assert!(healthy.is_some(), "the gateway did not take api-0 back");
    assert!(
        stack.log().contains("child died; restarting"),
        "the restart is logged"
    );

    // --- Ctrl-C stops every child ---
    let pids: Vec<u32> = stack.children().await["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 4);
    let status = stack.stop().await.unwrap();
    assert!(status.success(), "up exited with {status}");
    for pid in pids {
        assert!(
            !process_alive(pid),
            "child {pid} still running after up exited"
        );
    }

    // --- a second `up` on the same data keeps it ---
    let config = scalestack_testkit::stack::test_config(dir.path(), 1);
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    let again = expect(
        &c,
        M::GET,
        &format!("{}/users/{uid}", stack.gateway_url()),
        None,
        200,
    )
    .await;
    assert_eq!(again["name"], "Ada L.");
    expect(
        &c,
        M::GET,
        &format!("{}/orders/{oid}", stack.gateway_url()),
        None,
        200,
    )
    .await;
    assert!(stack.stop().await.unwrap().success());
}

/// Requests served by each api instance so far (from their own metrics).
async fn futures_counts(c: &Client, stack: &Stack) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..2 {
        let text = c
            .get(&format!("{}/metrics", stack.api_url(i)))
            .await
            .unwrap()
            .text();
        let n: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("scalestack_http_requests_total{")
                    && l.contains("route=\"/users/{id}\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        out.push(n as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_fills_the_store_and_bench_drives_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), 2);
    let config_path = dir.path().join("seed.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let out = run(&[
        "seed",
        "--config",
        config_path.to_str().unwrap(),
        "--users",
        "5000",
        "--products",
        "300",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("seeded users 1..=5000 and 300 products"),
        "{printed}"
    );

    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    let c = Client::default();
    let u = c
        .get(&format!("{}/users/4321", stack.gateway_url()))
        .await
        .unwrap();
    assert_eq!(u.json()["email"], "user4321@example.com");
    let p = c
        .get(&format!("{}/products/300", stack.gateway_url()))
        .await
        .unwrap();
    assert_eq!(p.status, 200);

    let url = format!("{}/users/{{id}}", stack.gateway_url());
    let json_path = dir.path().join("bench.json");
    let supervisor = stack.pid().to_string();
    let bench = tokio::task::spawn_blocking(move || {
        run(&[
            "bench",
            "--url",
            &url,
            "--keys",
            "1..5000",
            "--dist",
            "zipf:1.1",
            "--connections",
            "4",
            "--duration",
            "1s",
            "--threads",
            "1",
            "--quiet",
            "--cpu-pid",
            &supervisor,
            "--json",
            json_path.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    for needle in ["p50", "p99", "p99.9", "max", "200"] {
        assert!(table.contains(needle), "missing {needle}:\n{table}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
            .unwrap();
    assert!(report["requests"].as_u64().unwrap() > 0);
    assert_eq!(
        report["status_counts"]["200"], report["requests"],
        "{report}"
    );
    assert!(
        report["target_cpu"]["us_per_request"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(stack.stop().await.unwrap().success());
}

#[tokio::test]
async fn a_port_in_use_is_named_with_its_component() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), 1);
    // The kernel picks the squatter's port: re-binding a port that
    // `free_consecutive` has just probed can fail for a moment while another
    // test thread's fork (before its exec) still holds the probe's socket.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.gateway.listen = squatter.local_addr().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let out = run(&["up", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let port = config.gateway.listen.port().to_string();
    assert!(
        err.contains("gateway") && err.contains(&port) && err.contains("gateway.listen"),
        "{err}"
    );

    // The same for a single api process started by hand.
    let mut config = test_config(dir.path(), 1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.api.listen = taken.local_addr().unwrap();
    std::fs::write(&path, config.to_toml()).unwrap();
    let out = run(&["api", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api-0") && err.contains(&config.api.listen.port().to_string()),
        "{err}"
    );
}

#[test]
fn invalid_config_names_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        ("[api]\ninstances = 0\n", "`api.instances` = 0"),
        ("[api]\ninstances = \"two\"\n", "api.instances"),
        ("[gateway]\nlisten = \"nowhere\"\n", "gateway.listen"),
        ("[cache.users]\nttl = \"forever\"\n", "cache.users.ttl"),
        ("[store]\nshardz = 3\n", "shardz"),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, text).unwrap();
        for cmd in ["check", "up"] {
            let out = if cmd == "check" {
                run(&["config", "check", path.to_str().unwrap()])
            } else {
                run(&["up", "--config", path.to_str().unwrap()])
            };
            assert!(!out.status.success(), "{cmd} accepted {text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{cmd} {text:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let out = run(&["up", "--config", "/nonexistent/file.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.toml"));
}

#[test]
fn config_default_documents_every_key_and_parses_back() {
    let out = run(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# Number of api processes `scalestack up` starts.\ninstances = 2"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &text).unwrap();
    let out = run(&["config", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_refuses_bad_input_before_sending_load() {
    let port = ports::free_port();
    let url = format!("http://127.0.0.1:{port}/users/{{id}}");
    let out = run(&["bench", "--url", &url, "--duration", "1s", "--quiet"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["bench", "--url", &url, "--keys", "10..1", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("10..1"));
    let out = run(&["bench", "--url", &url, "--dist", "zipf:-1", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("zipf"));
}

#[test]
fn bench_refuses_impossible_rates_and_bad_scenarios_before_connecting() {
    // Nothing listens there: an error about the input proves that the
    // input was checked before any connection was tried.
    let port = ports::free_port();
    let url = format!("http://127.0.0.1:{port}/users/{{id}}");
    let stderr = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = stderr(run(&["bench", "--url", &url, "--rate", "0", "--quiet"]));
    assert!(
        err.contains("greater than 0") && !err.contains("cannot reach"),
        "{err}"
    );
    let err = stderr(run(&["bench", "--url", &url, "--rate", "1e12", "--quiet"]));
    assert!(err.contains("impossible"), "{err}");
    let err = stderr(run(&[
        "bench", "--url", &url, "--stages", "0..10/0s", "--quiet",
    ]));
    assert!(err.contains("0..10/0s"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("mix.toml");
    std::fs::write(
        &scenario,
        "[[request]]\npath = \"/users/{id}\"\nwieght = 3\n",
    )
    .unwrap();
    let err = stderr(run(&[
        "bench",
        "--url",
        &url,
        "--scenario",
        scenario.to_str().unwrap(),
    ]));
    assert!(
        err.contains("request[0]") && err.contains("wieght"),
        "{err}"
    );
}

/// A minimal HTTP/1.1 server on a thread: `ok` to every request, keep-alive.
fn tiny_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(reply).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    format!("http://{addr}/users/{{id}}")
}

#[test]
fn bench_reports_compare_and_calibrate_a_plan() {
    let url = tiny_server();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let ok = |out: std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let open = ok(run(&[
        "bench",
        "--url",
        &url,
        "--rate",
        "200",
        "--duration",
        "1s",
        "--connections",
        "4",
        "--threads",
        "1",
        "--quiet",
        "--json",
        &path("a.json"),
        "--html",
        &path("a.html"),
    ]));
    assert!(
        open.contains("from send (uncorrected)") && open.contains("% of target"),
        "{open}"
    );
    let html = std::fs::read_to_string(path("a.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Percentile spectrum"));
    ok(run(&[
        "bench",
        "--url",
        &url,
        "--duration",
        "1s",
        "--connections",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--json",
        &path("b.json"),
    ]));
    let compared = ok(run(&["bench", "compare", &path("a.json"), &path("b.json")]));
    assert!(
        compared.contains("req/s") && compared.contains("latency p99 ms"),
        "{compared}"
    );

    let plan = ok(run(&[
        "plan",
        "--from",
        &path("b.json"),
        "--format",
        "markdown",
    ]));
    assert!(
        plan.contains("Calibrated from") && plan.contains("api_rps_per_server"),
        "{plan}"
    );
    assert!(plan.contains("### Monthly cost"), "{plan}");
    let seed = ok(run(&["plan"]));
    assert!(
        seed.contains("API servers          150") && seed.contains("300"),
        "{seed}"
    );
    let fit = ok(run(&[
        "plan", "fit", "1:1000", "2:1900", "4:3400", "8:5000",
    ]));
    assert!(
        fit.contains("σ (contention)") && fit.contains("R²"),
        "{fit}"
    );
    let cache = ok(run(&[
        "plan",
        "cache",
        "--requests",
        "20000",
        "--capacity",
        "100,1000",
    ]));
    assert!(
        cache.contains("tinylfu") && cache.contains("lru") && cache.contains("ttl"),
        "{cache}"
    );
    let queue = ok(run(&[
        "plan",
        "queue",
        "--arrival",
        "1000000",
        "--service",
        "1ms",
    ]));
    assert!(
        queue.contains("unbounded") && queue.contains("1,0"),
        "{queue}"
    );
    let err = run(&["plan", "--read-ratio", "2"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("`read_ratio` = 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stop_when_the_supervisor_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    // Ports for two api instances, a config asking for one, and the flag
    // asking for two: the flag wins.
    let mut config = test_config(dir.path(), 2);
    config.api.instances = 1;
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &["--api-instances", "2"])
        .await
        .unwrap();
    let pids: Vec<u32> = stack.children().await["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| ch["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 4, "api-0, api-1, worker, gateway");
    std::process::Command::new("kill")
        .args(["-9", &stack.pid().to_string()])
        .status()
        .unwrap();
    let gone = eventually(Duration::from_secs(15), || {
        let pids = pids.clone();
        async move { pids.iter().all(|p| !process_alive(*p)).then_some(()) }
    })
    .await;
    assert!(
        gone.is_some(),
        "children outlived a SIGKILLed supervisor; log:\n{}",
        stack.log()
    );
}
