//! The queue's flows end to end, with the real `scalestack` binary.
//!
//! * 50,000 orders are relayed and consumed by two `scalestack worker`
//!   processes on a real nats-server while one of them is killed with
//!   SIGKILL every couple of seconds (and started again): every order's
//!   stock change, email and analytics update happens exactly once in
//!   effect, whatever the kills repeated.
//! * A worker process dies between its relay's publish and mark-sent (a
//!   failpoint); its successor publishes the rows again with the same ids and
//!   every group recognises them.
//! * `scalestack up`, embedded (the default) and with JetStream configured:
//!   an order through the gateway gets its three effects, an order without
//!   stock is rejected and drops the user's cached copy on the api, jobs
//!   answer 202 and report `done`, and the dead-letter queue is on the admin
//!   API and the CLI.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use scalestack_config::{Config, QueueBackendKind};
use scalestack_queue::{AnyQueue, Backend, DlqScope};
use scalestack_store::{
    Consistency, NewOrder, NewProduct, OrderPosition, Store, UserRecord, now_ms,
};
use scalestack_testkit::eventually;
use scalestack_testkit::http::Client;
use scalestack_testkit::nats::NatsServer;
use scalestack_testkit::ports::free_addr;
use scalestack_testkit::stack::{Stack, test_config};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_scalestack");

/// Orders of the kill test.
const ORDERS: usize = 50_000;
/// Users and products they are spread over.
const USERS: usize = 500;
const PRODUCTS: usize = 40;
/// Products with too little stock for their orders: some of their orders
/// are rejected, which makes events of their own.
const SCARCE: usize = 4;
const SCARCE_STOCK: i64 = 1_000;
const PLENTY: i64 = 1_000_000;
/// Time between two kills.
const KILL_EVERY: Duration = Duration::from_millis(2_000);
/// Longest the kill test waits for the groups to finish.
const PATIENCE: Duration = Duration::from_secs(150);

// === helpers ===

/// `.eml` files in `dir`, by name.
fn emails(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default()
}

/// One `scalestack worker` process with `env` added, its output appended to
/// `log`.
fn spawn_worker(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = out.try_clone().unwrap();
    Command::new(EXE)
        .arg("worker")
        .arg("--config")
        .arg(config)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn write_config(dir: &Path, name: &str, config: &Config) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

/// Every order of the store, by id.
async fn all_orders(store: &Store) -> HashMap<i64, scalestack_store::OrderRecord> {
    let mut out = HashMap::new();
    let mut after = None;
    loop {
        let page = store
            .list_orders(&Default::default(), after, 5_000, Consistency::Primary)
            .await
            .unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(OrderPosition::of(last));
        for o in page {
            out.insert(o.id, o);
        }
    }
}

/// Whether the outboxes are relayed and the three groups have nothing left.
async fn finished(store: &Store, queue: &AnyQueue) -> bool {
    for db in store.outbox_databases() {
        match store.outbox_lag(db).await {
            Ok(lag) if lag.unsent == 0 => {}
            _ => return false,
        }
    }
    for group in ["inventory", "email", "analytics"] {
        match queue.group_stats("orders", group).await {
            Ok(stats) if stats.lag() == 0 => {}
            _ => return false,
        }
    }
    true
}

/// A configuration for worker processes on `nats`, with the data in `dir`.
fn nats_config(dir: &Path, nats: &NatsServer) -> Config {
    let mut config = test_config(dir, 1);
    config.queue.backend = QueueBackendKind::Nats;
    config.queue.nats.url = nats.url();
    config.queue.partitions = 4;
    // A killed worker's deliveries come back soon.
    config.queue.ack_deadline = Duration::from_secs(2);
    config.worker.consumer.fetch_wait = Duration::from_millis(100);
    config.worker.consumer.batch_size = 250;
    config.worker.consumer.backoff_initial = Duration::from_millis(200);
    config.worker.consumer.backoff_max = Duration::from_secs(2);
    config.worker.relay.batch_size = 2_000;
    config.log.level = "warn".into();
    config
}

/// Writes `orders` orders of `users` users over `PRODUCTS` products (the
/// first `SCARCE` of them short of stock) with their outbox rows, in bulk.
/// Returns every product's initial stock.
async fn load(store: &Store, users: usize, orders: usize) -> HashMap<i64, i64> {
    let ids = store.reserve_user_ids(users as i64).await.unwrap();
    let now = now_ms();
    let users: Vec<UserRecord> = ids
        .map(|id| UserRecord {
            id,
            email: format!("user{id}@example.com"),
            name: format!("User {id}"),
            created_at: now,
            updated_at: now,
        })
        .collect();
    store.insert_users(&users).await.unwrap();
    let products: Vec<NewProduct> = (0..PRODUCTS)
        .map(|i| NewProduct {
            name: format!("Product {i}"),
            description: String::new(),
            price_cents: 100 + i as i64,
            stock: if i < SCARCE { SCARCE_STOCK } else { PLENTY },
        })
        .collect();
    store.insert_products(&products).await.unwrap();
    let catalog = store
        .list_products(None, 1_000, Consistency::Primary)
        .await
        .unwrap();
    assert_eq!(catalog.len(), PRODUCTS);
    let price: HashMap<i64, i64> = catalog.iter().map(|p| (p.id, p.price_cents)).collect();
    let product_ids: Vec<i64> = catalog.iter().map(|p| p.id).collect();
    let new_orders: Vec<NewOrder> = (0..orders)
        .map(|i| {
            let product_id = product_ids[(i * 7 + i / 3) % PRODUCTS];
            NewOrder {
                user_id: users[(i * 13) % users.len()].id,
                product_id,
                quantity: 1 + (i as i64 % 3),
                unit_price_cents: price[&product_id],
            }
        })
        .collect();
    for chunk in new_orders.chunks(10_000) {
        store.insert_orders(chunk).await.unwrap();
    }
    catalog.iter().map(|p| (p.id, p.stock)).collect()
}

/// Checks that every one of `expected` orders had each effect exactly once:
/// settled, its stock taken once (or refused), its emails written once, and
/// the analytics read model counting it once. Returns how many were rejected.
async fn check_exactly_once(
    store: &Store,
    initial: &HashMap<i64, i64>,
    sink: &Path,
    expected: usize,
) -> usize {
    let orders = all_orders(store).await;
    assert_eq!(orders.len(), expected);
    let mut confirmed_units: BTreeMap<i64, i64> = BTreeMap::new();
    let mut by_product: BTreeMap<i64, (i64, i64, i64, i64)> = BTreeMap::new();
    let mut by_user: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    let mut expected_emails = HashSet::new();
    for o in orders.values() {
        expected_emails.insert(format!("order-{}.eml", o.id));
        let p = by_product.entry(o.product_id).or_default();
        let u = by_user.entry(o.user_id).or_default();
        match o.status.as_str() {
            "confirmed" => {
                *confirmed_units.entry(o.product_id).or_default() += o.quantity;
                p.0 += 1;
                p.1 += o.quantity;
                p.2 += o.total_cents;
                u.0 += 1;
                u.1 += o.total_cents;
            }
            "rejected" => {
                expected_emails.insert(format!("order-{}-rejected.eml", o.id));
                p.3 += 1;
                u.2 += 1;
            }
            other => panic!("order {} is still {other}", o.id),
        }
    }
    let rejected: i64 = by_product.values().map(|p| p.3).sum();
    for (id, before) in initial {
        let stock = store
            .get_product(*id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap()
            .stock;
        let taken = confirmed_units.get(id).copied().unwrap_or(0);
        assert_eq!(
            stock,
            before - taken,
            "product {id}: stock taken more or less than once"
        );
        assert!(stock >= 0, "product {id} oversold: {stock}");
    }
    for (product, (n, units, revenue, refused)) in &by_product {
        let sales = store
            .product_sales(*product, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                sales.orders,
                sales.units,
                sales.revenue_cents,
                sales.rejected_orders
            ),
            (*n, *units, *revenue, *refused),
            "analytics of product {product}"
        );
    }
    for (user, (n, spend, refused)) in &by_user {
        let summary = store
            .user_summary(*user, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (summary.orders, summary.spend_cents, summary.rejected_orders),
            (*n, *spend, *refused),
            "analytics of user {user}"
        );
    }
    let written = emails(sink);
    let missing: Vec<_> = expected_emails.difference(&written).take(5).collect();
    let extra: Vec<_> = written.difference(&expected_emails).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "emails missing {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(written.len(), expected + rejected as usize);
    rejected as usize
}

// === 50,000 orders, workers killed with SIGKILL ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_orders_take_effect_once_while_workers_are_killed() {
    let started = Instant::now();
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = nats_config(dir.path(), &nats);
    let sink = config.worker.email.sink_path(&config.data_dir);
    let store = Store::open(&config).await.unwrap();
    let initial = load(&store, USERS, ORDERS).await;
    eprintln!("{ORDERS} orders written in {:?}", started.elapsed());

    // --- two workers; one of them killed every KILL_EVERY ---
    let configs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let mut c = config.clone();
            c.worker.listen = free_addr();
            write_config(dir.path(), &format!("worker-{i}.toml"), &c)
        })
        .collect();
    let log = dir.path().join("workers.log");
    let queue = AnyQueue::open(&config).await.unwrap();
    let mut workers: Vec<Child> = configs.iter().map(|c| spawn_worker(c, &log, &[])).collect();
    let mut kills = 0;
    let mut kills_with_work_left = 0;
    let mut next_kill = Instant::now() + KILL_EVERY;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if finished(&store, &queue).await {
            break;
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if let Ok(Some(status)) = w.try_wait() {
                panic!(
                    "worker {i} exited by itself ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        if Instant::now() >= next_kill {
            let victim = kills % workers.len();
            workers[victim].kill().unwrap();
            workers[victim].wait().unwrap();
            kills += 1;
            if !finished(&store, &queue).await {
                kills_with_work_left += 1;
            }
            workers[victim] = spawn_worker(&configs[victim], &log, &[]);
            next_kill = Instant::now() + KILL_EVERY;
        }
        assert!(
            Instant::now() < deadline,
            "the groups did not finish within {PATIENCE:?} ({kills} kills); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let processed_in = started.elapsed();
    for mut w in workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    eprintln!("done after {processed_in:?}, {kills} kills ({kills_with_work_left} mid-work)");
    assert!(
        kills_with_work_left >= 3,
        "only {kills_with_work_left} kills hit the workers while they had work: \
         the test proves too little"
    );

    // --- every effect exactly once ---
    let rejected = check_exactly_once(&store, &initial, &sink, ORDERS).await;
    assert!(rejected > 0, "the scarce products rejected nothing");
    assert_eq!(queue.dlq_depth(&DlqScope::all()).await.unwrap(), 0);
    eprintln!(
        "{ORDERS} orders ({rejected} rejected) checked after {:?}",
        started.elapsed()
    );
    store.close().await;
}

// === a relay that dies between publish and mark-sent ===

/// A worker process dies at the failpoint right after its relay's publish
/// was acknowledged and before the rows are marked sent (exit status 86).
/// The next worker publishes those rows again under the same ids, past the
/// server's duplicate window, so the copies reach every group: each group
/// counts them as duplicates, and every effect is still there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_mark_sent_is_ignored_the_second_time() {
    const N: usize = 600;
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = nats_config(dir.path(), &nats);
    config.queue.nats.duplicate_window = Duration::from_millis(200);
    let sink = config.worker.email.sink_path(&config.data_dir);
    let store = Store::open(&config).await.unwrap();
    let initial = load(&store, 50, N).await;
    let path = write_config(dir.path(), "worker.toml", &config);
    let log = dir.path().join("worker.log");
    let marker = dir.path().join("failpoint-fired");
    let armed = format!("relay-after-publish=exit-once:{}", marker.display());

    let mut first = spawn_worker(&path, &log, &[("SCALESTACK_FAILPOINTS", &armed)]);
    let status = first.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(86),
        "the worker did not stop at the failpoint; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut unsent = 0;
    for db in store.outbox_databases() {
        unsent += store.outbox_lag(db).await.unwrap().unsent;
    }
    assert!(unsent > 0, "the crashed relay marked everything sent");

    // Past the duplicate window, the same rows again: the queue takes them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut second = spawn_worker(&path, &log, &[("SCALESTACK_FAILPOINTS", &armed)]);
    let queue = AnyQueue::open(&config).await.unwrap();
    let done = eventually(Duration::from_secs(60), || async {
        finished(&store, &queue).await.then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the second worker did not finish; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let c = Client::default();
    let base = format!("http://{}", config.worker.listen);
    for group in ["inventory", "email", "analytics"] {
        let labels = format!(r#"group="{group}",outcome="duplicate""#);
        let seen = eventually(Duration::from_secs(10), || async {
            let n = counter(&c, &base, "scalestack_flow_effects_total", &labels).await;
            (n >= 1.0).then_some(n)
        })
        .await;
        assert!(
            seen.is_some(),
            "group {group} never saw a re-published order"
        );
    }
    second.kill().unwrap();
    second.wait().unwrap();
    check_exactly_once(&store, &initial, &sink, N).await;
    store.close().await;
}

// === the flow in `scalestack up` ===

async fn send(c: &Client, method: Method, url: &str, body: Option<&str>, status: u16) -> Value {
    let r = c
        .send(method.clone(), url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert_eq!(r.status.as_u16(), status, "{method} {url} -> {}", r.text());
    r.json()
}

/// Sum of a Prometheus counter's series whose lines contain `labels`.
async fn counter(c: &Client, base: &str, name: &str, labels: &str) -> f64 {
    let text = c
        .get(&format!("{base}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GETs `url` until `ok` accepts its JSON.
async fn until(c: &Client, url: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(30), || async {
        let r = c.get(url).await.ok()?;
        let body = r.json();
        (r.status == 200 && ok(&body)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("GET {url} never became what the test waits for"))
}

/// Drives the flows through a running stack: an order's three effects, a
/// rejection that drops the user's cached copy on the api, jobs, the DLQ.
async fn the_flows_work_in(stack: &Stack, config_path: &Path) {
    let c = Client::default();
    let (gw, api0) = (stack.gateway_url(), stack.api_url(0));
    let sink = stack.config.worker.email.sink_path(&stack.config.data_dir);

    let user = send(
        &c,
        Method::POST,
        &format!("{gw}/users"),
        Some(r#"{"email":"ada@example.com","name":"Ada"}"#),
        201,
    )
    .await;
    let uid = user["id"].as_i64().unwrap();
    let product = send(
        &c,
        Method::POST,
        &format!("{gw}/products"),
        Some(r#"{"name":"Lamp","price_cents":1999,"stock":2}"#),
        201,
    )
    .await;
    let pid = product["id"].as_i64().unwrap();

    // An order: stock taken, confirmation emailed, analytics counted.
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":2}}"#);
    let kept = send(&c, Method::POST, &format!("{gw}/orders"), Some(&body), 201).await;
    let kept = kept["id"].as_i64().unwrap();
    until(&c, &format!("{gw}/orders/{kept}"), |o| {
        o["status"] == "confirmed"
    })
    .await;
    until(&c, &format!("{gw}/analytics/products/{pid}"), |s| {
        s["orders"] == 1 && s["units"] == 2 && s["revenue_cents"] == 3998
    })
    .await;
    until(&c, &format!("{gw}/analytics/users/{uid}"), |s| {
        s["orders"] == 1 && s["spend_cents"] == 3998
    })
    .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            emails(&sink)
                .contains(&format!("order-{kept}.eml"))
                .then_some(())
        })
        .await
        .is_some(),
        "no confirmation in {}",
        sink.display()
    );

    // The user is cached on api-0 (one load, then hits).
    let loads = || {
        counter(
            &c,
            &api0,
            "scalestack_cache_loads_total",
            r#"cache="users""#,
        )
    };
    send(&c, Method::GET, &format!("{api0}/users/{uid}"), None, 200).await;
    let warm = loads().await;
    for _ in 0..3 {
        send(&c, Method::GET, &format!("{api0}/users/{uid}"), None, 200).await;
    }
    assert_eq!(loads().await, warm, "the user is not served from the cache");

    // An order without stock: rejected, and the user's copy dropped.
    let body = format!(r#"{{"user_id":{uid},"product_id":{pid},"quantity":1}}"#);
    let refused = send(&c, Method::POST, &format!("{gw}/orders"), Some(&body), 201).await;
    let refused = refused["id"].as_i64().unwrap();
    until(&c, &format!("{gw}/orders/{refused}"), |o| {
        o["status"] == "rejected"
    })
    .await;
    let reloaded = eventually(Duration::from_secs(10), || async {
        send(&c, Method::GET, &format!("{api0}/users/{uid}"), None, 200).await;
        (loads().await > warm).then_some(())
    })
    .await;
    assert!(
        reloaded.is_some(),
        "the rejection did not drop the user's cached copy"
    );
    until(&c, &format!("{gw}/analytics/users/{uid}"), |s| {
        s["rejected_orders"] == 1 && s["orders"] == 1
    })
    .await;

    // Jobs: 202 with a Location, then done.
    let r = c
        .send(
            Method::POST,
            &format!("{gw}/emails"),
            Some(r#"{"to":"grace@example.com","subject":"Hi","body":"Hello"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let job = r.json();
    assert_eq!(location, format!("/jobs/{}", job["id"]));
    let done = until(&c, &format!("{gw}{location}"), |j| j["state"] == "done").await;
    assert!(
        emails(&sink).contains(done["result"]["file"].as_str().unwrap()),
        "{done}"
    );
    let r = c
        .send(
            Method::POST,
            &format!("{gw}/reports"),
            Some(r#"{"report":"top_products","limit":3}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let report = until(&c, &format!("{gw}{location}"), |j| j["state"] == "done").await;
    assert_eq!(report["result"]["rows"][0]["product_id"], pid, "{report}");

    // A poison job: the sink is a file, so the job fails both attempts and
    // goes to the dead-letter queue, seen on the admin API and the CLI; the
    // CLI redrives it once the sink is back.
    let parked = sink.with_extension("parked");
    std::fs::rename(&sink, &parked).unwrap();
    std::fs::write(&sink, b"not a directory").unwrap();
    let r = c
        .send(
            Method::POST,
            &format!("{gw}/emails"),
            Some(r#"{"to":"poison@example.com","subject":"Hi","body":"Hello"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let failed = until(&c, &format!("{gw}{location}"), |j| j["state"] == "failed").await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    let page = until(&c, &format!("{api0}/admin/dlq?group=jobs"), |p| {
        p["data"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    let letter = &page["data"][0];
    assert_eq!(letter["attempts"], 2, "{letter}");
    let dlq = |args: &[&str]| {
        let out = Command::new(EXE)
            .arg("dlq")
            .arg("--config")
            .arg(config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dlq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = dlq(&["list", "--json"]);
    let listed: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], letter["id"]);
    let id = letter["id"].to_string();
    let shown: Value = serde_json::from_str(&dlq(&["show", &id])).unwrap();
    assert!(
        shown["error"].as_str().unwrap().contains("mail sink"),
        "{shown}"
    );
    std::fs::remove_file(&sink).unwrap();
    std::fs::rename(&parked, &sink).unwrap();
    assert!(dlq(&["redrive", &id]).contains("redrove 1"));
    let redriven = until(&c, &format!("{gw}{location}"), |j| j["state"] == "done").await;
    assert!(
        emails(&sink).contains(redriven["result"]["file"].as_str().unwrap()),
        "{redriven}"
    );
    assert!(dlq(&["list"]).contains("no dead letters"));

    // The worker's metrics: effects, lag per group, relay.
    let worker = stack.worker_url();
    assert!(
        counter(
            &c,
            &worker,
            "scalestack_flow_effects_total",
            r#"outcome="applied""#
        )
        .await
            >= 6.0
    );
    let text = c.get(&format!("{worker}/metrics")).await.unwrap().text();
    for series in [
        "scalestack_queue_consumer_lag{",
        "scalestack_queue_processing_seconds",
        "scalestack_queue_retries_total{",
        "scalestack_queue_dlq_depth{",
        "scalestack_queue_settled_total{",
        "scalestack_relay_published_total{",
    ] {
        assert!(text.contains(series), "no {series} in the worker's metrics");
    }
}

/// A stack whose failed attempts are retried twice, quickly.
fn stack_config(dir: &Path) -> Config {
    let mut config = test_config(dir, 2);
    config.worker.consumer.max_attempts = 2;
    config.worker.consumer.backoff_initial = Duration::from_millis(100);
    config.worker.consumer.backoff_max = Duration::from_secs(1);
    config.worker.consumer.fetch_wait = Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flows_work_in_the_embedded_stack() {
    let dir = tempfile::tempdir().unwrap();
    let config = stack_config(dir.path());
    assert_eq!(config.queue.backend, QueueBackendKind::Embedded);
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    the_flows_work_in(&stack, &dir.path().join("config.toml")).await;
    stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flows_work_in_a_stack_on_jetstream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = stack_config(dir.path());
    config.queue.backend = QueueBackendKind::Nats;
    config.queue.nats.url = nats.url();
    let stack = Stack::start(EXE.as_ref(), config, dir.path(), &[])
        .await
        .unwrap();
    the_flows_work_in(&stack, &dir.path().join("config.toml")).await;
    stack.stop().await.unwrap();
}
