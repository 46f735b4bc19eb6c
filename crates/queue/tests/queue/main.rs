//! The queue's integration tests: one suite (`suite.rs`) run on the embedded
//! backend and on NATS JetStream (a real nats-server from testkit, shared by
//! the tests of this binary, each test on streams of its own), plus the crash
//! test that kills a consumer process with SIGKILL, the model test of the
//! embedded queue (`model.rs`), and the metrics check.

mod model;
mod suite;
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::jetstream::{JetStreamOptions, JetStreamQueue};
use scalestack_queue::worker::GroupOptions;
use scalestack_queue::{
    Backend, BatchHandler, Delivery, DlqScope, Failure, HandlerError, Message, TopicSpec, Worker,
};
use scalestack_testkit::nats::NatsServer;

use support::{EmbeddedEnv, until};

/// One `#[tokio::test]` per suite function and backend.
macro_rules! suite {
    ($backend:ident, $env:expr, [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::suite::$test($env.await).await;
                }
            )*
        }
    };
}

macro_rules! both {
    ([$($test:ident),* $(,)?]) => {
        suite!(embedded, crate::support::EmbeddedEnv::new(), [$($test),*]);
        suite!(jetstream, crate::support::NatsEnv::new(), [$($test),*]);
    };
}

both!([
    round_trip_keeps_id_key_payload_and_headers,
    order_per_key_with_concurrent_consumers,
    one_group_is_point_to_point,
    groups_on_one_topic_are_publish_subscribe,
    nak_with_delay_redelivers_after_the_delay,
    unacked_message_returns_after_the_deadline,
    extend_keeps_a_slow_delivery,
    poison_message_reaches_the_dlq_then_redrive_processes_it,
    permanent_error_skips_the_retries,
    dlq_operations_list_show_redrive_purge,
    bad_names_and_unknown_topics_are_errors,
    shutdown_finishes_the_batch_in_hand,
    a_panicking_handler_is_retried,
]);

// Publish-time duplicate detection: always in the embedded backend, on
// JetStream with `dedupe_on_publish`.
suite!(
    embedded_dedupe,
    crate::support::EmbeddedEnv::new(),
    [duplicate_ids_are_published_once]
);
suite!(
    jetstream_dedupe,
    crate::support::NatsEnv::with_dedupe_on_publish(true),
    [duplicate_ids_are_published_once]
);

/// Without publish-time duplicate detection (JetStream's default), a second
/// publish of an id is stored and delivered again, under the same id, so
/// that consumers can skip it by their own records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_without_publish_dedupe_delivers_duplicates_under_one_id() {
    let env = crate::support::NatsEnv::new().await;
    let q = support::Env::queue(&env);
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    let same = || Message::new("same", "k", "1");
    let first = q.publish("t", &[same()]).await.unwrap();
    let second = q.publish("t", &[same()]).await.unwrap();
    assert!(!first[0].duplicate && !second[0].duplicate);
    assert_ne!(first[0].seq, second[0].seq, "both publishes are stored");
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ids.len() < 2 && std::time::Instant::now() < deadline {
        let batch = q.fetch("t", "g", 10, Duration::from_secs(1)).await.unwrap();
        ids.extend(batch.iter().map(|d| d.message.id.clone()));
        q.ack(&batch).await.unwrap();
    }
    assert_eq!(ids, ["same", "same"]);
}

// === crash: SIGKILL of a consumer process ===

const PROBE: &str = env!("CARGO_BIN_EXE_scalestack-queue-probe");
const CRASH_MESSAGES: usize = 3_000;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn spawn_probe(backend_args: &[String], out: &Path) -> Child {
    Command::new(PROBE)
        .args(backend_args)
        .args(["--topic", "crash", "--group", "probe", "--batch", "50"])
        .args(["--pause-ms", "20", "--deadline-ms", "1000"])
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the probe consumer")
}

/// Publishes, then kills the consumer process with SIGKILL several times
/// while it works, then lets a last one finish: every message must have
/// been handled at least once, and nothing may be left unacknowledged.
async fn killed_consumers_lose_nothing<B: Backend>(queue: B, backend_args: Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen.txt");
    queue
        .ensure_topic(&TopicSpec::new("crash", 4, &["probe"]))
        .await
        .unwrap();
    let messages: Vec<Message> = (0..CRASH_MESSAGES)
        .map(|i| Message::new(format!("c{i}"), format!("user-{}", i % 97), format!("{i}")))
        .collect();
    queue.publish("crash", &messages).await.unwrap();

    for round in 0..4 {
        let before = lines(&out).len();
        let mut child = spawn_probe(&backend_args, &out);
        // Kill it once it is visibly working, at a random point of a batch.
        let working = until(Duration::from_secs(30), || async {
            lines(&out).len() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 60)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(working, "round {round}: the probe handled nothing");
    }
    let left = queue.group_stats("crash", "probe").await.unwrap().lag();
    assert!(left > 0, "every message was done before the kills");

    let mut last = spawn_probe(&backend_args, &out);
    let drained = until(Duration::from_secs(60), || async {
        queue.group_stats("crash", "probe").await.unwrap().lag() == 0
    })
    .await;
    last.kill().unwrap();
    last.wait().unwrap();
    assert!(drained, "messages were left after the kills");

    let seen = lines(&out);
    let distinct: HashSet<&String> = seen.iter().collect();
    let missing: Vec<String> = (0..CRASH_MESSAGES)
        .map(|i| format!("c{i}"))
        .filter(|id| !distinct.contains(id))
        .collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");
    assert_eq!(distinct.len(), CRASH_MESSAGES);
    assert_eq!(queue.dlq_depth(&DlqScope::all()).await.unwrap(), 0);
    eprintln!(
        "crash test: {} handlings of {CRASH_MESSAGES} messages ({} redelivered after kills)",
        seen.len(),
        seen.len() - CRASH_MESSAGES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_killed_consumers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let queue = EmbeddedQueue::open(EmbeddedOptions::new(&path))
        .await
        .unwrap();
    let args = vec![
        "--backend".into(),
        "embedded".into(),
        "--path".into(),
        path.display().to_string(),
    ];
    killed_consumers_lose_nothing(queue, args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_killed_consumers_lose_nothing() {
    let server = NatsServer::shared().unwrap();
    let prefix = format!("crash{:08x}", rand::random::<u32>());
    let queue = JetStreamQueue::connect(
        JetStreamOptions::new(&server.url())
            .with_prefix(&prefix)
            .with_ack_deadline(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let args = vec![
        "--backend".into(),
        "nats".into(),
        "--url".into(),
        server.url(),
        "--prefix".into(),
        prefix,
    ];
    killed_consumers_lose_nothing(queue, args).await;
}

/// JetStream keeps published and unacknowledged messages across a SIGKILL
/// of the server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_keeps_messages_across_a_server_kill() {
    let mut server = NatsServer::start().unwrap();
    let options = JetStreamOptions::new(&server.url()).with_prefix("restart");
    let queue = JetStreamQueue::connect(options.clone()).await.unwrap();
    queue
        .ensure_topic(&TopicSpec::new("t", 2, &["g"]))
        .await
        .unwrap();
    let messages: Vec<Message> = (0..100)
        .map(|i| Message::new(format!("m{i}"), format!("k{}", i % 7), "x"))
        .collect();
    queue.publish("t", &messages).await.unwrap();
    drop(queue);
    server.restart().unwrap();
    let queue = JetStreamQueue::connect(options).await.unwrap();
    let mut ids = HashSet::new();
    while ids.len() < 100 {
        let batch = queue
            .fetch("t", "g", 50, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "only {} messages survived", ids.len());
        queue.ack(&batch).await.unwrap();
        ids.extend(batch.into_iter().map(|d| d.message.id));
    }
    assert_eq!(queue.group_stats("t", "g").await.unwrap().lag(), 0);
}

/// A JetStream topic keeps a message until every group has settled it, then
/// the clean-up deletes it: limits retention plus consumer-driven deletion
/// stands in for interest retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cleans_up_what_every_group_settled() {
    let metrics = scalestack_telemetry::metrics::install("test", "queue");
    let server = NatsServer::shared().unwrap();
    let prefix = format!("clean{:08x}", rand::random::<u32>());
    let mut options = JetStreamOptions::new(&server.url()).with_prefix(&prefix);
    options.nats.clean_up_interval = Duration::from_millis(200);
    let queue = JetStreamQueue::connect(options).await.unwrap();
    queue
        .ensure_topic(&TopicSpec::new("swept", 2, &["a", "b"]))
        .await
        .unwrap();
    let messages: Vec<Message> = (0..20)
        .map(|i| Message::new(format!("m{i}"), format!("k{}", i % 5), "x"))
        .collect();
    queue.publish("swept", &messages).await.unwrap();
    let js = async_nats::jetstream::new(queue.client().clone());
    let stream = js
        .get_stream_no_info(format!("{prefix}_swept"))
        .await
        .unwrap();
    let stored = || async { stream.get_info().await.unwrap().state.messages };

    // Group a settles everything: group b still needs every message.
    let mut done = 0;
    while done < 20 {
        let batch = queue
            .fetch("swept", "a", 50, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "group a got {done} of 20");
        done += batch.len();
        queue.ack(&batch).await.unwrap();
    }
    assert_eq!(queue.clean_up("swept").await.unwrap(), 0);
    assert_eq!(stored().await, 20);

    // Group b acknowledges all but one message, which waits for a retry:
    // it must survive every clean-up until it is settled.
    let mut held = None;
    let mut done = 0;
    while done < 20 {
        let batch = queue
            .fetch("swept", "b", 50, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "group b got {done} of 20");
        done += batch.len();
        let (first, rest) = batch.split_first().unwrap();
        if held.is_none() {
            let failure = Failure {
                error: "later".into(),
                permanent: false,
                at_ms: 0,
            };
            queue
                .nak(first, Duration::from_millis(300), &failure)
                .await
                .unwrap();
            held = Some(first.clone());
            queue.ack(rest).await.unwrap();
        } else {
            queue.ack(&batch).await.unwrap();
        }
    }
    let held = held.unwrap();
    queue.clean_up("swept").await.unwrap();
    assert!(stored().await >= 1);
    assert!(
        stream.get_raw_message(held.seq).await.is_ok(),
        "the message waiting for its retry was deleted"
    );

    let again = queue
        .fetch("swept", "b", 50, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, held.message.id);
    assert_eq!(again[0].attempt, 2);
    queue.ack(&again).await.unwrap();
    // The clean-up that follows settlements empties the stream by itself.
    let emptied = until(Duration::from_secs(15), || async { stored().await == 0 }).await;
    assert!(emptied, "{} messages left", stored().await);
    assert_eq!(queue.group_stats("swept", "a").await.unwrap().lag(), 0);
    assert_eq!(queue.group_stats("swept", "b").await.unwrap().lag(), 0);
    // Every message was purged once, by hand or by the clean-up loop, and
    // counted (the topic is this test's alone).
    let text = metrics.render();
    let cleaned = text
        .lines()
        .find(|l| l.starts_with("scalestack_queue_cleaned_total{") && l.contains("topic=\"swept\""))
        .unwrap_or_else(|| panic!("no clean-up counter for the topic:\n{text}"));
    assert!(cleaned.ends_with(" 20"), "{cleaned}");
}

// === metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_exports_lag_latency_retries_dlq_depth_and_throughput() {
    struct FailSome;
    impl BatchHandler for FailSome {
        async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
            batch
                .iter()
                .map(|d| match d.message.id.as_str() {
                    "bad" => Err(HandlerError::permanent("malformed")),
                    "flaky" if d.attempt == 1 => Err(HandlerError::transient("busy")),
                    _ => Ok(()),
                })
                .collect()
        }
    }
    let metrics = scalestack_telemetry::metrics::install("test", "queue");
    let env = EmbeddedEnv::new().await;
    let q = Arc::new(support::Env::queue(&env).clone());
    q.ensure_topic(&TopicSpec::new("metered", 2, &["mg"]))
        .await
        .unwrap();
    q.publish(
        "metered",
        &[
            Message::new("ok", "a", "1"),
            Message::new("bad", "b", "2"),
            Message::new("flaky", "c", "3"),
        ],
    )
    .await
    .unwrap();
    let mut o = GroupOptions::new("metered", "mg");
    o.fetch_wait = Duration::from_millis(50);
    o.retry.backoff = scalestack_resilience::Backoff::new(Duration::ZERO, Duration::ZERO);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(q.clone())
        .with_clock(support::Env::clock(&env))
        .with_stats_interval(Duration::from_millis(20))
        .group(o, FailSome);
    let task = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let rendered = |text: &str, needle: &str| {
        text.lines()
            .any(|l| l.contains(needle) && l.contains("group=\"mg\""))
    };
    let done = until(Duration::from_secs(30), || async {
        let text = metrics.render();
        rendered(&text, "scalestack_queue_dlq_depth{")
            && text.lines().any(|l| {
                l.starts_with("scalestack_queue_consumer_lag{")
                    && l.contains("group=\"mg\"")
                    && l.ends_with(" 0")
            })
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let text = metrics.render();
    assert!(done, "lag never reached 0:\n{text}");
    for needle in [
        "scalestack_queue_settled_total{",
        "scalestack_queue_retries_total{",
        "scalestack_queue_dead_lettered_total{",
        "scalestack_queue_processing_seconds",
        "scalestack_queue_end_to_end_seconds",
        "scalestack_queue_batch_size",
        "scalestack_queue_dlq_depth{",
    ] {
        assert!(rendered(&text, needle), "{needle} missing:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("scalestack_queue_dlq_depth{")
                && l.contains("group=\"mg\"")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("scalestack_queue_settled_total{")
                && l.contains("group=\"mg\"")
                && l.contains("outcome=\"ack\"")
                && l.ends_with(" 2")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("scalestack_queue_published_total{")
                && l.contains("topic=\"metered\"")),
        "{text}"
    );
}
