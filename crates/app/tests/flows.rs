//! The flows of the seeds in process, over a real store, a real queue and the
//! real api router: what an order and a job become, the dead-letter path of
//! a poison message with its backoff checked on a controllable clock, and a
//! relay that crashes between publish and mark-sent (on a real nats-server).
//!
//! The relay is pumped by the tests (not run in the background), so that
//! each test decides when outbox rows reach the queue.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use scalestack_app::flows::relay::{Relay, message_of};
use scalestack_app::flows::{self, EFFECTS, Flows, Invalidator};
use scalestack_config::{Config, JitterKind, QueueBackendKind};
use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::jetstream::{JetStreamOptions, JetStreamQueue};
use scalestack_queue::metrics::RETRIES;
use scalestack_queue::{Backend, ManualClock, Worker};
use scalestack_store::{Consistency, DbId, ORDERS_TOPIC};
use scalestack_testkit::eventually;
use scalestack_testkit::nats::NatsServer;
use serde_json::Value;
use support::Api;
use tokio::sync::watch;

/// Longest wait for something the worker does in the background.
const PATIENCE: Duration = Duration::from_secs(30);

/// An api, a worker running every group of the flows on `B`, and a relay.
struct Flow<B: Backend> {
    api: Api,
    queue: Arc<B>,
    relay: Relay<B>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

/// Test settings: quick fetches, and a retry schedule of 1 s, 2 s, 4 s
/// without jitter over four attempts, so that the clock can step through it.
fn tune(config: &mut Config) {
    config.worker.consumer.fetch_wait = Duration::from_millis(100);
    config.worker.consumer.max_attempts = 4;
    config.worker.consumer.backoff_initial = Duration::from_secs(1);
    config.worker.consumer.backoff_max = Duration::from_secs(60);
    config.worker.consumer.jitter = JitterKind::None;
}

impl<B: Backend> Flow<B> {
    async fn start(api: Api, queue: B, clock: Option<ManualClock>) -> Self {
        let queue = Arc::new(queue);
        flows::ensure_topics(queue.as_ref(), api.config.queue.partitions)
            .await
            .unwrap();
        let flows = Flows::new(
            &api.config,
            api.store.clone(),
            Invalidator::none(&api.config),
        );
        let mut worker = Worker::from_config(queue.clone(), &api.config.worker);
        if let Some(clock) = clock {
            worker = worker.with_clock(Arc::new(clock));
        }
        let worker = flows.register(worker);
        let (stop, mut rx) = watch::channel(false);
        let worker = tokio::spawn(async move {
            let stopped = async move {
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            };
            worker.run(stopped).await.unwrap();
        });
        let relay = Relay::new(api.store.clone(), queue.clone(), &api.config.worker.relay);
        Self {
            api,
            queue,
            relay,
            stop,
            worker,
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.worker.await.unwrap();
    }

    fn sink(&self) -> std::path::PathBuf {
        self.api
            .config
            .worker
            .email
            .sink_path(&self.api.config.data_dir)
    }

    async fn json(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (status, value, _) = self.api.call(method, uri, body).await;
        (status, value)
    }

    /// Waits until GET `uri` answers 200 with a body that `ok` accepts.
    async fn until_get(&self, uri: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(PATIENCE, || async {
            let (status, body) = self.api.get(uri).await;
            (status == StatusCode::OK && ok(&body)).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("GET {uri} never became what the test waits for"))
    }
}

/// Email files in the sink, by name.
fn emails(sink: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sink)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The sum of a counter's series whose labels include every pair of `labels`.
fn counter(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = scalestack_telemetry::metrics::install("api", "api-test").render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn embedded(api: &Api, clock: &ManualClock) -> EmbeddedQueue {
    let mut options = EmbeddedOptions::from_config(&api.config).with_clock(Arc::new(clock.clone()));
    // Idle fetches look again soon: the manual clock wakes nobody.
    options.poll_interval = Duration::from_millis(10);
    EmbeddedQueue::open(options).await.unwrap()
}

async fn user_and_product(api: &Api, stock: i64) -> (i64, i64) {
    let (s, user) = api
        .post("/users", r#"{"email":"ada@example.com","name":"Ada"}"#)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    let (s, product) = api
        .post(
            "/products",
            &format!(r#"{{"name":"Lamp","price_cents":250,"stock":{stock}}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{product}");
    (
        user["id"].as_i64().unwrap(),
        product["id"].as_i64().unwrap(),
    )
}

async fn place(api: &Api, user: i64, product: i64, quantity: i64) -> i64 {
    let (s, order) = api
        .post(
            "/orders",
            &format!(r#"{{"user_id":{user},"product_id":{product},"quantity":{quantity}}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    order["id"].as_i64().unwrap()
}

// === an order's effects ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_gets_stock_email_and_analytics_and_a_rejection_takes_it_back() {
    let api = Api::with(tune).await;
    let clock = ManualClock::default();
    let queue = embedded(&api, &clock).await;
    let f = Flow::start(api, queue, Some(clock)).await;
    let (user, product) = user_and_product(&f.api, 3).await;
    let kept = place(&f.api, user, product, 2).await;
    let refused = place(&f.api, user, product, 2).await;
    assert_eq!(f.relay.drain().await.unwrap(), 2);

    // Inventory: the first order takes 2 of 3; the second finds 1 and is rejected.
    let first = f
        .until_get(&format!("/orders/{kept}"), |o| o["status"] != "placed")
        .await;
    assert_eq!(first["status"], "confirmed");
    let second = f
        .until_get(&format!("/orders/{refused}"), |o| o["status"] != "placed")
        .await;
    assert_eq!(second["status"], "rejected");
    let stock = f
        .api
        .store
        .get_product(product, Consistency::Primary)
        .await
        .unwrap()
        .unwrap()
        .stock;
    assert_eq!(stock, 1);

    // The rejection is an event of its own, written with the status change.
    assert_eq!(f.relay.drain().await.unwrap(), 1);
    let sales = f
        .until_get(&format!("/analytics/products/{product}"), |s| {
            s["rejected_orders"] == 1
        })
        .await;
    assert_eq!(sales["orders"], 1);
    assert_eq!(sales["units"], 2);
    assert_eq!(sales["revenue_cents"], 500);
    let summary = f
        .until_get(&format!("/analytics/users/{user}"), |s| {
            s["rejected_orders"] == 1
        })
        .await;
    assert_eq!(summary["orders"], 1);
    assert_eq!(summary["spend_cents"], 500);

    // Email: a confirmation per order, and a notice for the rejected one.
    let sink = f.sink();
    let expected = vec![
        format!("order-{kept}.eml"),
        format!("order-{refused}-rejected.eml"),
        format!("order-{refused}.eml"),
    ];
    let mut wanted = expected.clone();
    wanted.sort();
    assert!(
        eventually(PATIENCE, || async {
            (emails(&sink) == wanted).then_some(())
        })
        .await
        .is_some(),
        "emails: {:?}",
        emails(&sink)
    );
    let text = std::fs::read_to_string(sink.join(format!("order-{kept}.eml"))).unwrap();
    assert!(text.contains("To: \"Ada\" <ada@example.com>"), "{text}");
    assert!(
        text.contains(&format!("X-Scalestack-Order: {kept}")),
        "{text}"
    );

    // Unknown ids are 404s, bad ones 400s naming the id.
    let (s, body) = f
        .json(Method::GET, "/analytics/products/999999", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, body) = f.json(Method::GET, "/analytics/users/abc", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // A product that exists and has sold nothing reads as zeros.
    let (_, other) = user_and_product(&f.api, 1).await;
    let (s, body) = f
        .json(Method::GET, &format!("/analytics/products/{other}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        (body["orders"].as_i64(), body["updated_at"].is_null()),
        (Some(0), true)
    );
    f.shutdown().await;
}

// === jobs ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_accepted_at_once_and_report_their_state() {
    let api = Api::with(tune).await;
    let clock = ManualClock::default();
    let queue = embedded(&api, &clock).await;
    let f = Flow::start(api, queue, Some(clock)).await;

    // Validation names the field; nothing is queued for a refused request.
    for (body, field) in [
        (r#"{"to":"nobody","subject":"s","body":"b"}"#, "to"),
        (r#"{"to":"a@b.c","subject":"","body":"b"}"#, "subject"),
        (r#"{"to":"a@b.c","subject":"s","body":"  "}"#, "body"),
        (r#"{"to":"a@b.c","subject":"s"}"#, "body"),
        (r#"{"to":"a@b.c","subject":"s","body":"b","cc":"x"}"#, "cc"),
    ] {
        let (s, e) = f.json(Method::POST, "/emails", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} -> {e}");
        assert_eq!(e["error"]["field"], field, "{body} -> {e}");
    }
    for (body, field) in [
        (r#"{"report":"top_sellers"}"#, "report"),
        (r#"{"report":"top_products","limit":0}"#, "limit"),
        (r#"{"report":"top_products","limit":101}"#, "limit"),
    ] {
        let (s, e) = f.json(Method::POST, "/reports", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} -> {e}");
        assert_eq!(e["error"]["field"], field, "{body} -> {e}");
    }
    let (s, e) = f.json(Method::POST, "/emails", Some("not json")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    assert!(
        f.api
            .store
            .outbox_pending(DbId::Catalog, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let (s, job, headers) = f
        .api
        .call(
            Method::POST,
            "/emails",
            Some(r#"{"to":"grace@example.com","subject":"Hello","body":"Line one\nLine two"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/jobs/{id}"));
    assert_eq!(job["state"], "queued");
    assert_eq!(job["params"]["to"], "grace@example.com");
    let (s, report) = f
        .json(
            Method::POST,
            "/reports",
            Some(r#"{"report":"top_customers","limit":5}"#),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{report}");
    let report_id = report["id"].as_i64().unwrap();
    assert_eq!(f.api.get(&format!("/jobs/{id}")).await.1["state"], "queued");

    assert_eq!(f.relay.drain().await.unwrap(), 2);
    let done = f
        .until_get(&format!("/jobs/{id}"), |j| j["state"] == "done")
        .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["file"], format!("job-{id}.eml"));
    let text = std::fs::read_to_string(f.sink().join(format!("job-{id}.eml"))).unwrap();
    assert!(
        text.contains("Subject: Hello\r\n") && text.contains("Line two\r\n"),
        "{text}"
    );
    let report = f
        .until_get(&format!("/jobs/{report_id}"), |j| j["state"] == "done")
        .await;
    assert_eq!(report["result"]["report"], "top_customers");
    assert!(report["result"]["rows"].is_array(), "{report}");

    // A job a worker has started reads as running, with its attempt, and
    // without a result yet (the job is started here, not relayed).
    let (s, slow) = f
        .json(
            Method::POST,
            "/reports",
            Some(r#"{"report":"top_products"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{slow}");
    let slow_id = slow["id"].as_i64().unwrap();
    f.api.store.start_job(slow_id, 1).await.unwrap().unwrap();
    let (s, running) = f.json(Method::GET, &format!("/jobs/{slow_id}"), None).await;
    assert_eq!(s, StatusCode::OK, "{running}");
    assert_eq!(
        (running["state"].as_str(), running["attempts"].as_i64()),
        (Some("running"), Some(1)),
        "{running}"
    );
    assert_eq!(running["result"], Value::Null, "{running}");

    let (s, e) = f.json(Method::GET, "/jobs/424242", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let (s, e) = f.json(Method::GET, "/jobs/x", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    f.shutdown().await;
}

// === the dead-letter path ===

/// A mail sink that cannot be written (its directory is a file) makes the
/// order's email and an email job poison: each is tried four times with the
/// 1 s, 2 s, 4 s backoff, then dead-lettered (the job marked failed). The
/// clock is manual, so "not before its backoff" is checked exactly. Once the
/// sink is fixed, a redrive through the admin API delivers each email once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_on_schedule_and_redrive_delivers_it_once() {
    let api = Api::with(tune).await;
    let clock = ManualClock::default();
    let queue = embedded(&api, &clock).await;
    let f = Flow::start(api, queue, Some(clock.clone())).await;
    let sink = f.sink();
    std::fs::write(&sink, b"not a directory").unwrap();

    let (user, product) = user_and_product(&f.api, 10).await;
    let order = place(&f.api, user, product, 1).await;
    let (s, job) = f
        .json(
            Method::POST,
            "/emails",
            Some(r#"{"to":"grace@example.com","subject":"Hi","body":"Hello"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    // Retries handed back (nakked with their due time), email and jobs groups.
    let retries = || {
        counter(RETRIES, &[("topic", ORDERS_TOPIC), ("group", "email")])
            + counter(RETRIES, &[("topic", "jobs"), ("group", "jobs")])
    };
    let before = retries();
    f.relay.drain().await.unwrap();

    // Attempt n fails; attempt n+1 comes at exactly the backoff of attempt n.
    for attempt in 1..=4i64 {
        let job_attempts = || async {
            let (_, job) = f.api.get(&format!("/jobs/{job_id}")).await;
            job["attempts"].as_i64().unwrap_or(0)
        };
        assert!(
            eventually(PATIENCE, || async {
                (job_attempts().await >= attempt).then_some(())
            })
            .await
            .is_some(),
            "attempt {attempt} of the job never came"
        );
        if attempt == 4 {
            break;
        }
        // The clock moves only once both failures have been handed back
        // with their due time: the retries counter moves after each nak.
        let settled = eventually(PATIENCE, || async {
            (retries() - before >= 2.0 * attempt as f64).then_some(())
        })
        .await;
        assert!(settled.is_some(), "attempt {attempt} was never handed back");
        let (_, job) = f.api.get(&format!("/jobs/{job_id}")).await;
        assert_eq!(job["state"], "queued", "waiting for its retry: {job}");
        let delay = Duration::from_secs(1 << (attempt - 1));
        clock.advance(delay - Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            job_attempts().await,
            attempt,
            "attempt {} came before its backoff of {delay:?}",
            attempt + 1
        );
        assert_eq!(retries() - before, 2.0 * attempt as f64);
        clock.advance(Duration::from_millis(1));
    }

    // After the fourth attempt: both in the dead-letter queue, the job failed.
    let page = f
        .until_get("/admin/dlq", |p| {
            p["data"].as_array().is_some_and(|d| d.len() == 2)
        })
        .await;
    let failed = f
        .until_get(&format!("/jobs/{job_id}"), |j| j["state"] == "failed")
        .await;
    assert!(
        failed["error"].as_str().unwrap().contains("mail sink"),
        "{failed}"
    );
    let letters = page["data"].as_array().unwrap();
    let email = letters.iter().find(|l| l["group"] == "email").unwrap();
    let job_letter = letters.iter().find(|l| l["group"] == "jobs").unwrap();
    for letter in [email, job_letter] {
        assert_eq!(letter["attempts"], 4, "{letter}");
        assert_eq!(letter["permanent"], false, "{letter}");
        let history = letter["history"].as_array().unwrap();
        let backoff: Vec<Option<i64>> = history.iter().map(|h| h["retry_in_ms"].as_i64()).collect();
        assert_eq!(
            backoff,
            [Some(1_000), Some(2_000), Some(4_000), None],
            "{letter}"
        );
        let at: Vec<i64> = history
            .iter()
            .map(|h| h["at_ms"].as_i64().unwrap())
            .collect();
        let waited: Vec<i64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(waited, [1_000, 2_000, 4_000], "{letter}");
    }
    assert!(email["message_id"].as_str().unwrap().starts_with("shard-"));
    assert!(
        email["payload"]
            .as_str()
            .unwrap()
            .contains(&format!("\"id\":{order}"))
    );

    // Show, and the admin API's validation.
    let id = email["id"].as_i64().unwrap();
    let (s, shown) = f.json(Method::GET, &format!("/admin/dlq/{id}"), None).await;
    assert_eq!(
        (s, &shown["message_id"]),
        (StatusCode::OK, &email["message_id"])
    );
    let (s, e) = f.json(Method::GET, "/admin/dlq?group=a.b", None).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("group"))
    );
    let (s, e) = f.json(Method::GET, "/admin/dlq?after=x", None).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("after"))
    );
    let (s, e) = f.json(Method::DELETE, "/admin/dlq", None).await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("all"))
    );
    let (s, _) = f
        .json(Method::POST, "/admin/dlq/999999/redrive", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, page) = f
        .json(Method::GET, "/admin/dlq?topic=orders&limit=1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert!(
        page["next_after"].is_null(),
        "one letter of topic orders: {page}"
    );

    // Fixed: redrive both (one by scope, one by id); each email once.
    std::fs::remove_file(&sink).unwrap();
    let (s, n) = f
        .json(
            Method::POST,
            "/admin/dlq/redrive?topic=orders&group=email",
            None,
        )
        .await;
    assert_eq!((s, n["count"].as_i64()), (StatusCode::OK, Some(1)));
    let (s, n) = f
        .json(
            Method::POST,
            &format!("/admin/dlq/{}/redrive", job_letter["id"]),
            None,
        )
        .await;
    assert_eq!((s, n["count"].as_i64()), (StatusCode::OK, Some(1)));
    // The admin API's queue stamps redriven messages with the system clock;
    // move the worker's clock past it.
    clock.advance(Duration::from_secs(3_600));
    let done = f
        .until_get(&format!("/jobs/{job_id}"), |j| j["state"] == "done")
        .await;
    assert_eq!(done["error"], Value::Null);
    let wanted = vec![format!("job-{job_id}.eml"), format!("order-{order}.eml")];
    assert!(
        eventually(PATIENCE, || async {
            (emails(&sink) == wanted).then_some(())
        })
        .await
        .is_some(),
        "emails: {:?}",
        emails(&sink)
    );
    let (_, page) = f.json(Method::GET, "/admin/dlq", None).await;
    assert_eq!(page["data"], serde_json::json!([]));
    let (s, n) = f.json(Method::DELETE, "/admin/dlq?all=true", None).await;
    assert_eq!((s, n["count"].as_i64()), (StatusCode::OK, Some(0)));
    // The other groups were never held up by the poison email.
    let stock = f
        .api
        .store
        .get_product(product, Consistency::Primary)
        .await
        .unwrap()
        .unwrap()
        .stock;
    assert_eq!(stock, 9);
    f.shutdown().await;
}

// === a relay crash between publish and mark-sent ===

/// A relay publishes every row and dies before marking any sent. Its
/// successor publishes them again under the same ids; once the server's
/// duplicate window has passed, they reach the consumers, which recognise
/// every id and apply nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_a_crashed_relay_reach_the_consumers_and_are_ignored() {
    let server = NatsServer::start().unwrap();
    let api = Api::with(|c| {
        tune(c);
        c.queue.backend = QueueBackendKind::Nats;
        c.queue.nats.url = server.url();
        c.queue.nats.duplicate_window = Duration::from_millis(200);
        c.queue.partitions = 4;
    })
    .await;
    let queue = JetStreamQueue::connect(JetStreamOptions::from_config(&api.config))
        .await
        .unwrap();
    let f = Flow::start(api, queue, None).await;
    let (user, product) = user_and_product(&f.api, 1_000).await;
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(place(&f.api, user, product, 1 + i % 3).await);
    }
    let units: i64 = (0..20).map(|i| 1 + i % 3).sum();
    let duplicates = |group: &str| counter(EFFECTS, &[("group", group), ("outcome", "duplicate")]);
    let before: Vec<f64> = ["inventory", "email", "analytics"]
        .iter()
        .map(|g| duplicates(g))
        .collect();

    // The crashed relay: every row published, none marked sent.
    let mut published = 0;
    for db in f.api.store.outbox_databases() {
        let rows = f.api.store.outbox_pending(db, 1_000).await.unwrap();
        let messages: Vec<_> = rows.iter().map(message_of).collect();
        if !messages.is_empty() {
            f.queue.publish(ORDERS_TOPIC, &messages).await.unwrap();
            published += messages.len();
        }
    }
    assert_eq!(published, 20);
    let sink = f.sink();
    let summary = f
        .until_get(&format!("/analytics/users/{user}"), |s| s["orders"] == 20)
        .await;
    assert!(
        eventually(PATIENCE, || async {
            (emails(&sink).len() == 20).then_some(())
        })
        .await
        .is_some()
    );
    for order in &orders {
        f.until_get(&format!("/orders/{order}"), |o| o["status"] == "confirmed")
            .await;
    }

    // Its successor, after the server's duplicate window: the same ids again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.relay.drain().await.unwrap(), 20);
    for (group, before) in ["inventory", "email", "analytics"].iter().zip(&before) {
        assert!(
            eventually(PATIENCE, || async {
                (duplicates(group) - before >= 20.0).then_some(())
            })
            .await
            .is_some(),
            "group {group} saw {} duplicates",
            duplicates(group) - before
        );
    }
    // Exactly once in effect.
    let stock = f
        .api
        .store
        .get_product(product, Consistency::Primary)
        .await
        .unwrap()
        .unwrap()
        .stock;
    assert_eq!(stock, 1_000 - units);
    assert_eq!(emails(&sink).len(), 20);
    let (_, again) = f.api.get(&format!("/analytics/users/{user}")).await;
    assert_eq!(again["orders"], summary["orders"]);
    assert_eq!(again["spend_cents"], summary["spend_cents"]);
    assert_eq!(again["spend_cents"], units * 250);
    let (_, sales) = f.api.get(&format!("/analytics/products/{product}")).await;
    assert_eq!(
        (sales["orders"].as_i64(), sales["units"].as_i64()),
        (Some(20), Some(units))
    );
    for group in ["inventory", "email", "analytics"] {
        let stats = f.queue.group_stats(ORDERS_TOPIC, group).await.unwrap();
        assert_eq!(stats.lag(), 0, "{group}: {stats:?}");
    }
    f.shutdown().await;
}
