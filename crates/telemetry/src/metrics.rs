//! The process-wide metrics recorder and its Prometheus text exposition.
//!
//! Components record through the `metrics` facade (`counter!`, `histogram!`,
//! `gauge!`); [`install`] sets the recorder once per process with the labels
//! that tell processes apart (`component`, `instance`), and [`Metrics::render`]
//! produces the `/metrics` body, with the standard `process_*` series appended.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::procfs;

/// Bucket bounds (seconds) of every `*_seconds` histogram: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Counter of HTTP requests served, by `route`, `method` and `status_class`.
pub const HTTP_REQUESTS: &str = "scalestack_http_requests_total";
/// Histogram of HTTP request durations in seconds, by `route` and `method`.
pub const HTTP_DURATION: &str = "scalestack_http_request_duration_seconds";

/// The installed recorder of this process.
#[derive(Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Installs the process's recorder, labelling every series with `component`
/// (gateway, api, worker, ...) and `instance` (e.g. `api-1`).
///
/// Only the first call installs; later calls (in tests, several services share
/// one process) return the same recorder.
pub fn install(component: &str, instance: &str) -> &'static Metrics {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .add_global_label("component", component)
            .add_global_label("instance", instance)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        describe_http();
        spawn_upkeep(handle.clone());
        Metrics { handle }
    })
}

/// How often histogram samples are drained into their buckets.
///
/// Histograms hold raw samples until drained: at 20,000 requests a second
/// and two histograms per request, five seconds' worth is 200,000 samples
/// drained in one burst, on a thread that competes with the request path
/// for the same cores. A second's worth keeps each drain short and the
/// memory held by waiting samples small.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Drains histogram samples even when nobody scrapes.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread");
    }
}

fn describe_http() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route, method and status class."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time from request head to response head, by route and method."
    );
}

impl Metrics {
    /// The Prometheus text exposition of every series of this process.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        append_process_metrics(&mut text);
        text
    }
}

/// Appends the conventional `process_*` series of the Prometheus client libraries.
fn append_process_metrics(out: &mut String) {
    let Ok(stat) = procfs::self_stat() else {
        return;
    };
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total {}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes {}\n\
         # HELP process_threads Number of OS threads.\n\
         # TYPE process_threads gauge\n\
         process_threads {}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\n\
         process_open_fds {}\n",
        stat.cpu.as_secs_f64(),
        stat.rss_bytes,
        stat.threads,
        fds,
    );
}

/// `2xx`, `4xx`, ... for a status code: the label that keeps cardinality low.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Records one served HTTP request.
///
/// `route` must be a template (`/users/{id}`), never a raw path, so that the
/// number of series stays bounded.
pub fn record_http(route: &str, method: &str, status: u16, elapsed: Duration) {
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.to_owned(),
        "method" => method.to_owned(),
        "status_class" => status_class(status),
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_owned())
        .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn renders_recorded_series_with_global_labels() {
        let metrics = install("test", "test-0");
        record_http("/users/{id}", "GET", 200, Duration::from_millis(3));
        record_http("/users/{id}", "GET", 404, Duration::from_millis(1));
        let text = metrics.render();
        assert!(
            text.contains("# TYPE scalestack_http_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("status_class=\"2xx\""), "{text}");
        assert!(text.contains("component=\"test\""), "{text}");
        assert!(
            text.contains("scalestack_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
