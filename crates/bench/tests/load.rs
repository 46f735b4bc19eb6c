//! Runs the load generator against small in-test servers and checks the
//! report against what the servers saw. Nothing here asserts timings or
//! throughput: the machines are shared and noisy.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use scalestack_bench::{BenchError, BenchSpec, KeyDist, run};
use support::{BODY, Reply, Server};

/// The probe request sent before the load reaches the server but is not
/// counted in the report.
const PROBE: u64 = 1;

fn spec(url: String) -> BenchSpec {
    let mut spec = BenchSpec::new(url);
    spec.keys = "1..1000".parse().unwrap();
    spec.connections = 4;
    spec.threads = 2;
    spec.duration = Duration::from_millis(300);
    // Generous: a loaded CI machine must not turn into timeout errors.
    spec.timeout = Duration::from_secs(10);
    spec
}

#[test]
fn counts_exactly_the_requests_the_server_answered() {
    let server = Server::http(|_, _| Reply::ok());
    let report = run(&spec(server.url("/users/{id}"))).unwrap();

    assert!(report.requests > 0);
    assert_eq!(report.requests + PROBE, server.seen.requests());
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(200, report.requests)])
    );
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    assert_eq!(report.reconnects, 0);
    assert_eq!(report.latency.count, report.requests);
    assert!(
        report.latency.p50_us <= report.latency.p99_us
            && report.latency.p99_us <= report.latency.max_us
    );
    assert_eq!(report.body_bytes, report.requests * BODY.len() as u64);
    // One connection for the probe, then one per load connection, kept alive.
    assert_eq!(server.seen.connections(), 1 + 4);
    assert!(report.rps > 0.0 && report.elapsed_s > 0.0);
    assert_eq!(report.settings.threads, 2);
    assert!(report.client_cpu.is_some());
    assert!(report.target_cpu.is_none());
    let table = report.render_table();
    assert!(table.contains(&report.requests.to_string()), "{table}");
}

#[test]
fn status_counts_match_the_servers() {
    // Every third key is missing; the probe asks for key 1, which exists.
    let server = Server::http(|key, _| Reply {
        status: if key.is_some_and(|k| k % 3 == 0) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        },
        ..Reply::ok()
    });
    let mut spec = spec(server.url("/users/{id}"));
    spec.keys = "1..30".parse().unwrap();
    let report = run(&spec).unwrap();

    let mut served = server.seen.statuses();
    *served.get_mut(&200).unwrap() -= PROBE;
    served.retain(|_, n| *n > 0);
    assert_eq!(report.status_counts, served);
    assert_eq!(
        report.error_responses(),
        served.get(&404).copied().unwrap_or(0)
    );
    assert_eq!(report.status_counts.values().sum::<u64>(), report.requests);
}

#[test]
fn keys_stay_inside_the_range() {
    for dist in [KeyDist::Uniform, KeyDist::Zipf { exponent: 1.1 }] {
        let server = Server::http(|_, _| Reply::ok());
        let mut spec = spec(server.url("/items/{id}"));
        spec.keys = "500..=599".parse().unwrap();
        spec.dist = dist;
        let report = run(&spec).unwrap();
        assert!(report.requests > 0);
        let seen = &server.seen;
        assert_eq!(seen.keyless.load(Ordering::SeqCst), 0);
        let (min, max) = (
            seen.min_key.load(Ordering::SeqCst),
            seen.max_key.load(Ordering::SeqCst),
        );
        assert!(
            (500..=599).contains(&min) && (500..=599).contains(&max),
            "{dist}: keys {min}..={max}"
        );
    }
}

#[test]
fn unreachable_target_fails_with_a_clear_error() {
    let url = support::refused_url();
    let err = run(&spec(url.clone())).unwrap_err();
    let expected = format!(
        "cannot reach {}: connection refused",
        url.replace("{id}", "1")
    );
    assert_eq!(err.to_string(), expected);
    assert!(matches!(err, BenchError::Unreachable { .. }));
}

#[test]
fn a_target_that_never_answers_fails_the_probe_and_gets_no_load() {
    let server = Server::silent();
    let mut spec = spec(server.url("/users/{id}"));
    spec.timeout = Duration::from_millis(200);
    spec.connections = 8;
    let err = run(&spec).unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("no response within"), "{err}");
    // Only the probe's connection: none of the 8 load connections opened.
    assert_eq!(server.seen.connections(), 1);
}

#[test]
fn connection_close_leads_to_reconnects_not_errors() {
    // Every response says `Connection: close`.
    let server = Server::http(|_, _| Reply {
        close: true,
        ..Reply::ok()
    });
    let mut spec = spec(server.url("/users/{id}"));
    spec.connections = 2;
    let report = run(&spec).unwrap();

    assert!(report.requests > 0);
    assert_eq!(report.requests + PROBE, server.seen.requests());
    assert_eq!(report.errors.total(), 0, "{:?}", report.errors);
    // Each connection carried exactly one request; all but the first two
    // were re-opened.
    assert_eq!(report.reconnects + 2, report.requests);
    assert_eq!(server.seen.connections(), PROBE + 2 + report.reconnects);
}

#[test]
fn slow_responses_count_as_timeouts_and_the_run_still_ends() {
    // A connection's first request is answered at once (so the probe
    // passes); later ones far after the timeout.
    let server = Server::http(|_, index| Reply {
        delay: if index == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(60)
        },
        ..Reply::ok()
    });
    let mut spec = spec(server.url("/users/{id}"));
    spec.connections = 2;
    spec.timeout = Duration::from_millis(100);
    let report = run(&spec).unwrap();

    assert!(report.errors.timeout >= 1, "{report:?}");
    assert_eq!(
        report.errors.connect + report.errors.io,
        0,
        "{:?}",
        report.errors
    );
    // Every connection answered exactly its first request, and a connection
    // is only replaced after a timeout.
    assert_eq!(report.requests, 2 + report.reconnects);
    assert!(report.reconnects <= report.errors.timeout);
    assert_eq!(report.latency.count, report.requests);
}

#[test]
fn abruptly_closed_connections_are_reopened_and_the_run_completes() {
    let server = Server::abrupt(3);
    let mut spec = spec(server.url("/users/{id}"));
    spec.connections = 2;
    let report = run(&spec).unwrap();

    assert!(report.requests > 0);
    // Every answer the server wrote was read; requests lost with a dropped
    // connection show up as I/O errors, not as responses.
    assert_eq!(report.requests + PROBE, server.seen.requests());
    assert!(
        report.reconnects > 0 || report.requests <= 2 * 3,
        "{report:?}"
    );
    assert_eq!(
        report.errors.connect + report.errors.timeout,
        0,
        "{:?}",
        report.errors
    );
}

#[test]
fn cpu_of_the_given_process_trees_is_reported() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    let me = std::process::id();
    spec.cpu_pids = vec![me];
    let report = run(&spec).unwrap();

    let cpu = report.target_cpu.as_ref().expect("cpu_pids were given");
    assert_eq!(cpu.pids, vec![me]);
    assert!(cpu.processes >= 1);
    let per_request = cpu.us_per_request.expect("requests were made");
    assert!(per_request.is_finite() && per_request >= 0.0);
    assert!(report.render_table().contains("targets"));
}

#[test]
fn progress_line_runs_alongside_the_load() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/users/{id}"));
    // Long enough for one progress tick.
    spec.duration = Duration::from_millis(1_200);
    spec.progress = true;
    let report = run(&spec).unwrap();
    assert_eq!(report.requests + PROBE, server.seen.requests());
}

#[test]
fn bodies_and_headers_are_sent() {
    let server = Server::http(|_, _| Reply::ok());
    let mut spec = spec(server.url("/orders?user={id}"));
    spec.method = http::Method::POST;
    spec.body = Some(bytes::Bytes::from_static(b"{\"qty\":1}"));
    spec.headers.push((
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    ));
    let report = run(&spec).unwrap();
    assert_eq!(report.settings.method, "POST");
    assert_eq!(report.requests + PROBE, server.seen.requests());
    assert_eq!(report.errors.total(), 0);
}
