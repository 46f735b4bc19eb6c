//! The open model, scenarios, HTTP/2 and the reports, against small
//! in-test servers. Nothing here asserts that anything was fast: the only
//! time-based assertions are lower bounds that a server's own deliberate
//! delay guarantees, which a slow machine can only make larger.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use scalestack_bench::{BenchError, BenchSpec, Load, Protocol, Scenario, Stage, run};
use support::{Reply, Server};

/// The probe request sent before the load reaches the server but is not
/// counted in the report.
const PROBE: u64 = 1;

fn spec(url: String) -> BenchSpec {
    let mut spec = BenchSpec::new(url);
    spec.keys = "1..1000".parse().unwrap();
    spec.connections = 4;
    spec.threads = 2;
    spec.duration = Duration::from_millis(500);
    // Generous: a loaded CI machine must not turn into timeout errors.
    spec.timeout = Duration::from_secs(10);
    spec
}

#[test]
fn a_fixed_rate_sends_exactly_the_schedule_and_accounts_for_every_request() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    spec.load = Load::Rate(200.0);
    let report = run(&spec).unwrap();

    let open = report
        .open
        .as_ref()
        .expect("an open-model run reports its schedule");
    assert_eq!(open.scheduled, 100, "200 req/s for 0.5 s");
    assert!((open.target_rps - 200.0).abs() < 1e-9);
    // Every scheduled request was either sent or counted as dropped.
    assert_eq!(open.sent + open.dropped, open.scheduled, "{open:?}");
    assert_eq!(report.requests + report.errors.total(), open.sent);
    assert_eq!(report.requests + PROBE, server.seen.requests());
    assert_eq!(report.settings.model, "open");
    // From the due time is never less than from the send.
    let uncorrected = report.latency_uncorrected.expect("open model");
    assert!(report.latency.p50_us >= uncorrected.p50_us);
    assert!(report.latency.max_us >= uncorrected.max_us);
    assert!(!report.spectrum_uncorrected.is_empty());
    let table = report.render_table();
    assert!(
        table.contains("from send (uncorrected)") && table.contains("dropped"),
        "{table}"
    );
}

#[test]
fn a_stall_shows_in_the_corrected_latency_and_not_in_the_uncorrected() {
    // One connection, 100 req/s; the fifth request stalls 300 ms, so about
    // 30 requests come due while the only connection is busy.
    let server = Server::http(|_, index| Reply {
        delay: if index == 4 {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        },
        ..Reply::ok()
    });
    let mut spec = spec(server.url("/users/{id}"));
    spec.connections = 1;
    spec.threads = 1;
    spec.duration = Duration::from_secs(1);
    spec.load = Load::Rate(100.0);
    let report = run(&spec).unwrap();

    let open = report.open.as_ref().unwrap();
    // The requests that waited behind the stall were sent late...
    assert!(open.late >= 10, "{open:?}");
    assert!(open.send_lag.max_us >= 200_000, "{open:?}");
    // ...and their waiting counts: at least a tenth of the requests waited
    // 100 ms or more, which only the corrected figure shows.
    assert!(report.latency.p90_us >= 100_000, "{:?}", report.latency);
    let uncorrected = report.latency_uncorrected.unwrap();
    assert!(report.latency.p90_us > uncorrected.p90_us, "{report:?}");
    assert!(uncorrected.max_us >= 300_000, "the stalled request itself");
}

#[test]
fn stages_ramp_and_hold() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    // 0 → 200 over 1 s is 100 requests, then 100 req/s for 0.5 s is 50.
    spec.load = Load::Stages(Stage::parse_list("0..200/1s, 100/500ms").unwrap());
    let report = run(&spec).unwrap();
    let open = report.open.as_ref().unwrap();
    assert_eq!(open.scheduled, 150);
    assert_eq!(open.sent + open.dropped, 150);
    assert!((report.settings.duration_s - 1.5).abs() < 1e-9);
    assert_eq!(report.settings.stages.len(), 2);
    // One row per second, the last one partial; the target follows the ramp.
    assert!(!report.timeline.is_empty());
    let first = report.timeline[0];
    assert!(
        first.target_rps.is_some_and(|t| (t - 100.0).abs() < 10.0),
        "{first:?}"
    );
}

#[test]
fn impossible_rates_and_bad_scenarios_fail_before_any_connection() {
    let server = Server::http(|_, _| Reply::ok());
    for load in [
        Load::Rate(0.0),
        Load::Rate(f64::INFINITY),
        Load::Rate(1e9),
        Load::Stages(vec![]),
    ] {
        let mut spec = spec(server.url("/users/{id}"));
        spec.load = load.clone();
        let err = run(&spec).unwrap_err();
        assert!(
            matches!(err, BenchError::InvalidSpec { field: "load", .. }),
            "{load:?}: {err}"
        );
    }
    let mut spec = spec(server.url("/"));
    spec.scenario =
        Some(Scenario::from_toml("[[request]]\npath = '/users/{user}'\n", "s.toml").unwrap());
    let err = run(&spec).unwrap_err().to_string();
    assert!(err.contains("unknown placeholder `{user}`"), "{err}");
    assert_eq!(server.seen.connections(), 0, "no load, not even the probe");
}

const SHOP: &str = r#"
[[request]]
name = "get user"
weight = 80
path = "/users/{id}"
keys = "1..100"

[[request]]
name = "get product"
weight = 15
path = "/products/{id}"
keys = "500..599"
dist = "hotspot:90/10"

[[request]]
name = "place order"
weight = 5
method = "POST"
path = "/orders"
headers = { "Idempotency-Key" = "{uuid}", "Content-Type" = "application/json" }
body = '{"user_id": {id}, "product_id": {rand:1..10}, "quantity": 1}'
keys = "1..100"
expect = [201]
"#;

#[test]
fn a_scenario_sends_its_mix_with_fresh_idempotency_keys_and_checks_statuses() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/"));
    spec.scenario = Some(Scenario::from_toml(SHOP, "shop.toml").unwrap());
    // A fixed rate fixes the sample size (1,000 requests), so the shares
    // below are many standard deviations inside their bounds however slow
    // the machine.
    spec.load = Load::Rate(1000.0);
    spec.connections = 8;
    spec.duration = Duration::from_secs(1);
    spec.seed = Some(11);
    let report = run(&spec).unwrap();

    let log = server.seen.log();
    // The probe is the first request type with its first key.
    assert_eq!(log[0].path, "/users/1");
    let load = &log[1..];
    assert_eq!(load.len() as u64, report.requests);
    let share = |prefix: &str| {
        load.iter().filter(|r| r.path.starts_with(prefix)).count() as f64 / load.len() as f64
    };
    assert!(load.len() >= 900, "{} requests", load.len());
    assert!(
        (share("/users/") - 0.80).abs() < 0.08,
        "{}",
        share("/users/")
    );
    assert!(
        (share("/products/") - 0.15).abs() < 0.06,
        "{}",
        share("/products/")
    );
    let orders: Vec<_> = load.iter().filter(|r| r.method == "POST").collect();
    assert!(!orders.is_empty());
    let keys: BTreeSet<&str> = orders
        .iter()
        .map(|r| r.idempotency_key.as_deref().expect("every order has a key"))
        .collect();
    assert_eq!(
        keys.len(),
        orders.len(),
        "a fresh Idempotency-Key per request"
    );
    for order in &orders {
        let body: serde_json::Value = serde_json::from_str(&order.body).unwrap();
        assert!(
            (1..=100).contains(&body["user_id"].as_u64().unwrap()),
            "{}",
            order.body
        );
        assert!(
            (1..=10).contains(&body["product_id"].as_u64().unwrap()),
            "{}",
            order.body
        );
    }
    for product in load.iter().filter(|r| r.path.starts_with("/products/")) {
        let id: u64 = product.path["/products/".len()..].parse().unwrap();
        assert!((500..=599).contains(&id));
    }

    // Per request type: the server answered 200 where 201 was expected.
    assert_eq!(report.kinds.len(), 3);
    let order_kind = report
        .kinds
        .iter()
        .find(|k| k.name == "place order")
        .unwrap();
    assert_eq!(order_kind.requests, orders.len() as u64);
    assert_eq!(order_kind.unexpected, order_kind.requests);
    assert_eq!(order_kind.expect, "201");
    assert_eq!(report.unexpected, order_kind.unexpected);
    assert_eq!(report.error_responses(), order_kind.unexpected);
    assert_eq!(
        report.kinds.iter().map(|k| k.requests).sum::<u64>(),
        report.requests
    );
    let table = report.render_table();
    assert!(
        table.contains("place order") && table.contains("get product"),
        "{table}"
    );
}

#[test]
fn http2_multiplexes_streams_over_few_connections() {
    let server = Server::h2(|key, _| Reply {
        status: if key.is_some_and(|k| k % 2 == 0) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        },
        ..Reply::ok()
    });
    let mut spec = spec(server.url("/users/{id}"));
    spec.protocol = Protocol::Http2 { streams: 8 };
    spec.connections = 2;
    let report = run(&spec).unwrap();

    assert!(report.requests > 0);
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    assert_eq!(report.requests + PROBE, server.seen.requests());
    // The probe's connection, then exactly one per configured connection.
    assert_eq!(server.seen.connections(), PROBE + 2);
    assert!(
        server
            .seen
            .log()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2)
    );
    let mut served = server.seen.statuses();
    *served.get_mut(&200).unwrap() -= PROBE;
    served.retain(|_, n| *n > 0);
    assert_eq!(report.status_counts, served);
    assert_eq!(
        report.body_bytes,
        report.requests * support::BODY.len() as u64
    );
}

#[test]
fn http2_open_model_keeps_the_books() {
    let server = Server::h2(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    spec.protocol = Protocol::Http2 { streams: 4 };
    spec.connections = 1;
    spec.load = Load::Rate(100.0);
    let report = run(&spec).unwrap();
    let open = report.open.as_ref().unwrap();
    assert_eq!(open.scheduled, 50);
    assert_eq!(open.sent + open.dropped, open.scheduled);
    assert_eq!(report.requests + PROBE, server.seen.requests());
}

#[test]
fn reports_render_as_html_and_compare_with_each_other() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    spec.duration = Duration::from_millis(1_300);
    spec.load = Load::Rate(100.0);
    let a = run(&spec).unwrap();
    spec.load = Load::Closed;
    let b = run(&spec).unwrap();

    assert!(a.timeline.len() >= 2, "{:?}", a.timeline);
    let page = scalestack_bench::render_html(&a);
    assert_eq!(page.matches("<svg").count(), 4);
    assert!(page.contains("target/s"));
    let json = serde_json::to_string(&a).unwrap();
    let back: scalestack_bench::BenchReport = serde_json::from_str(&json).unwrap();
    let text = scalestack_bench::compare(&back, &b);
    assert!(
        text.contains("req/s") && text.contains("latency p99 ms"),
        "{text}"
    );
    assert!(
        text.contains("open model") && text.contains("closed model"),
        "{text}"
    );
}

#[test]
fn the_same_seed_draws_the_same_keys() {
    let keys = |seed| {
        let server = Server::http(|_, _| Reply::ok());
        let mut spec = spec(server.url("/users/{id}"));
        spec.connections = 1;
        spec.threads = 1;
        spec.seed = Some(seed);
        spec.load = Load::Rate(100.0);
        spec.duration = Duration::from_millis(200);
        run(&spec).unwrap();
        let log = server.seen.log();
        log[1..].iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    };
    let (a, b, c) = (keys(7), keys(7), keys(8));
    // A loaded machine may drop the last due request or two; the first
    // ten are always sent.
    assert!(a.len() >= 10 && b.len() >= 10 && c.len() >= 10);
    assert_eq!(a[..10], b[..10]);
    assert_ne!(a[..10], c[..10]);
}
