//! The shared suite: every function here runs on both backends (see the
//! macro in `main.rs`). Each checks one promise of the queue model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalestack_queue::worker::GroupOptions;
use scalestack_queue::{
    Backend, BatchHandler, Delivery, DlqScope, DlqTarget, Failure, HandlerError, Message,
    QueueError, RetryPolicy, TopicSpec, Worker, partition_of,
};
use scalestack_resilience::{Backoff, Jitter};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{DEADLINE, Env, Observed, until};

/// Long enough for anything that should happen; tests fail, not hang.
const PATIENCE: Duration = Duration::from_secs(30);

fn message(id: &str, key: &str, body: &str) -> Message {
    Message::new(id, key, body.as_bytes().to_vec())
}

/// `n` messages over `keys` keys, round robin; the body is `key:index-in-key`.
fn numbered(n: usize, keys: usize) -> Vec<Message> {
    let mut next = vec![0usize; keys];
    (0..n)
        .map(|i| {
            let k = i % keys;
            let body = format!("k{k}:{}", next[k]);
            next[k] += 1;
            message(&format!("m{i}"), &format!("k{k}"), &body)
        })
        .collect()
}

fn failure(error: &str) -> Failure {
    Failure {
        error: error.into(),
        permanent: false,
        at_ms: 0,
    }
}

/// A worker running in the background until stopped.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), QueueError>>,
}

impl Running {
    fn start<B: Backend>(worker: Worker<B>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn options(topic: &str, group: &str, concurrency: usize, batch: usize) -> GroupOptions {
    let mut o = GroupOptions::new(topic, group);
    o.concurrency = concurrency;
    o.batch_size = batch;
    o.fetch_wait = Duration::from_millis(100);
    o
}

/// Records what a group processed; fails ids in `failing` (transiently, or
/// permanently when `permanent`) unless `fixed` is set.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Delivery>>,
    failing: Mutex<HashSet<String>>,
    permanent: AtomicBool,
    fixed: AtomicBool,
    attempts: Mutex<HashMap<String, u32>>,
    /// Batches in flight per partition, to catch two at once.
    in_flight: Mutex<HashMap<u32, u32>>,
    overlap: AtomicBool,
}

impl Recorder {
    fn ok_ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.message.id.clone())
            .collect()
    }

    fn attempts_of(&self, id: &str) -> u32 {
        self.attempts.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl BatchHandler for Recorder {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let partition = batch[0].partition;
        let same_partition = batch.iter().all(|d| d.partition == partition);
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let n = in_flight.entry(partition).or_default();
            if *n > 0 || !same_partition {
                self.overlap.store(true, Ordering::SeqCst);
            }
            *n += 1;
        }
        // Widen the window in which a second batch of the partition would overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut results = Vec::with_capacity(batch.len());
        for d in batch {
            *self
                .attempts
                .lock()
                .unwrap()
                .entry(d.message.id.clone())
                .or_default() += 1;
            let fails = self.failing.lock().unwrap().contains(&d.message.id)
                && !self.fixed.load(Ordering::SeqCst);
            if fails {
                results.push(Err(if self.permanent.load(Ordering::SeqCst) {
                    HandlerError::permanent(format!("cannot parse {}", d.message.id))
                } else {
                    HandlerError::transient(format!("mail server down for {}", d.message.id))
                }));
            } else {
                self.seen.lock().unwrap().push(d.clone());
                results.push(Ok(()));
            }
        }
        *self.in_flight.lock().unwrap().get_mut(&partition).unwrap() -= 1;
        results
    }
}

async fn lag<E: Env>(env: &E, topic: &str, group: &str) -> u64 {
    env.queue().group_stats(topic, group).await.unwrap().lag()
}

// === the suite ===

pub(crate) async fn round_trip_keeps_id_key_payload_and_headers<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("events", 4, &["g"]))
        .await
        .unwrap();
    let sent = vec![
        message("a", "user-1", "{\"n\":1}").with_header("content-type", "application/json"),
        Message::new("b", "user-2", vec![0xffu8, 0x00, 0x7f]),
    ];
    let published = q.publish("events", &sent).await.unwrap();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].partition, partition_of("user-1", 4));
    assert!(published.iter().all(|p| !p.duplicate));
    assert_eq!(lag(&env, "events", "g").await, 2);

    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = q
            .fetch("events", "g", 10, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!batch.is_empty(), "messages were published but none came");
        q.ack(&batch).await.unwrap();
        got.extend(batch);
    }
    got.sort_by(|a, b| a.message.id.cmp(&b.message.id));
    for (d, m) in got.iter().zip(&sent) {
        assert_eq!(&d.message, m);
        assert_eq!(d.attempt, 1);
        assert_eq!(d.topic, "events");
        assert_eq!(d.group, "g");
        assert_eq!(d.partition, partition_of(&m.key, 4));
        assert!(d.published_at_ms > 0);
    }
    assert_eq!(lag(&env, "events", "g").await, 0);
    let empty = q
        .fetch("events", "g", 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(empty.is_empty(), "an acknowledged message came back");
}

pub(crate) async fn order_per_key_with_concurrent_consumers<E: Env>(env: E) {
    let q = Arc::new(env.queue().clone());
    q.ensure_topic(&TopicSpec::new("ordered", 4, &["g"]))
        .await
        .unwrap();
    let messages = numbered(400, 12);
    q.publish("ordered", &messages).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(options("ordered", "g", 4, 7), recorder.clone()),
    );
    assert!(
        until(PATIENCE, || async { recorder.ok_ids().len() >= 400 }).await,
        "only {} of 400 processed",
        recorder.ok_ids().len()
    );
    running.stop().await;

    assert!(
        !recorder.overlap.load(Ordering::SeqCst),
        "two batches of one partition were handled at once"
    );
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for d in recorder.seen.lock().unwrap().iter() {
        let body = String::from_utf8(d.message.payload.to_vec()).unwrap();
        let n: usize = body.split(':').nth(1).unwrap().parse().unwrap();
        by_key.entry(d.message.key.clone()).or_default().push(n);
    }
    assert_eq!(by_key.len(), 12);
    for (key, seen) in by_key {
        let expected: Vec<usize> = (0..seen.len()).collect();
        assert_eq!(seen, expected, "key {key} was processed out of order");
    }
}

pub(crate) async fn one_group_is_point_to_point<E: Env>(env: E) {
    let first = Arc::new(env.queue().clone());
    let second = Arc::new(env.second().await);
    first
        .ensure_topic(&TopicSpec::new("jobs", 8, &["workers"]))
        .await
        .unwrap();
    first.publish("jobs", &numbered(300, 50)).await.unwrap();
    let a = Arc::new(Recorder::default());
    let b = Arc::new(Recorder::default());
    let ra = Running::start(
        Worker::new(first.clone())
            .with_clock(env.clock())
            .group(options("jobs", "workers", 2, 5), a.clone()),
    );
    let rb = Running::start(
        Worker::new(second.clone())
            .with_clock(env.clock())
            .group(options("jobs", "workers", 2, 5), b.clone()),
    );
    assert!(
        until(PATIENCE, || async {
            a.ok_ids().len() + b.ok_ids().len() >= 300
        })
        .await
    );
    ra.stop().await;
    rb.stop().await;
    let mut all = a.ok_ids();
    all.extend(b.ok_ids());
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 300, "some message was never processed");
    assert_eq!(all.len(), 300, "a message went to two competing consumers");
    assert_eq!(lag(&env, "jobs", "workers").await, 0);
}

pub(crate) async fn groups_on_one_topic_are_publish_subscribe<E: Env>(env: E) {
    let q = Arc::new(env.queue().clone());
    q.ensure_topic(&TopicSpec::new("orders", 4, &["email", "analytics"]))
        .await
        .unwrap();
    q.publish("orders", &numbered(100, 10)).await.unwrap();
    let email = Arc::new(Recorder::default());
    let analytics = Arc::new(Recorder::default());
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(options("orders", "email", 2, 10), email.clone())
            .group(options("orders", "analytics", 2, 10), analytics.clone()),
    );
    assert!(
        until(PATIENCE, || async {
            email.ok_ids().len() >= 100 && analytics.ok_ids().len() >= 100
        })
        .await
    );
    running.stop().await;
    for recorder in [&email, &analytics] {
        let ids: HashSet<String> = recorder.ok_ids().into_iter().collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(recorder.ok_ids().len(), 100);
    }
}

pub(crate) async fn nak_with_delay_redelivers_after_the_delay<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    q.publish("t", &[message("x", "k", "body")]).await.unwrap();
    let first = q.fetch("t", "g", 1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 1);
    let delay = env.backoff_unit() * 3;
    q.nak(&first[0], delay, &failure("try later"))
        .await
        .unwrap();
    if env.controls_time() {
        env.advance(delay - Duration::from_millis(1)).await;
        let early = q
            .fetch("t", "g", 1, Duration::from_millis(30))
            .await
            .unwrap();
        assert!(early.is_empty(), "redelivered before its delay");
        env.advance(Duration::from_millis(1)).await;
    } else {
        env.advance(delay).await;
    }
    let again = q.fetch("t", "g", 1, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, "x");
    assert_eq!(again[0].attempt, 2);
    q.ack(&again).await.unwrap();
    assert_eq!(lag(&env, "t", "g").await, 0);
}

pub(crate) async fn unacked_message_returns_after_the_deadline<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    q.publish("t", &[message("x", "k", "body")]).await.unwrap();
    // A consumer takes the message and "crashes": it never settles it.
    let crashed = env.second().await;
    let taken = crashed
        .fetch("t", "g", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    drop(taken);
    drop(crashed);
    let other = q;
    if env.controls_time() {
        let early = other
            .fetch("t", "g", 1, Duration::from_millis(30))
            .await
            .unwrap();
        assert!(early.is_empty(), "delivered twice within the deadline");
    }
    env.advance(DEADLINE).await;
    let again = other.fetch("t", "g", 1, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1, "the unacked message never came back");
    assert_eq!(again[0].message.id, "x");
    assert_eq!(again[0].attempt, 2);
    other.ack(&again).await.unwrap();
    assert_eq!(lag(&env, "t", "g").await, 0);
}

pub(crate) async fn extend_keeps_a_slow_delivery<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    q.publish("t", &[message("x", "k", "body")]).await.unwrap();
    let taken = q.fetch("t", "g", 1, Duration::from_secs(5)).await.unwrap();
    for _ in 0..3 {
        env.advance(DEADLINE / 2).await;
        q.extend(&taken).await.unwrap();
    }
    // 1.5 deadlines have passed since the fetch, but the lease was extended.
    let other = env.second().await;
    let during = other
        .fetch("t", "g", 1, Duration::from_millis(30))
        .await
        .unwrap();
    assert!(
        during.is_empty(),
        "an extended delivery was handed out again"
    );
    q.ack(&taken).await.unwrap();
    assert_eq!(lag(&env, "t", "g").await, 0);
}

/// A poison message is retried with the configured backoff, then goes to the
/// dead-letter queue with its history; once the handler is fixed, a redrive
/// processes it exactly once.
pub(crate) async fn poison_message_reaches_the_dlq_then_redrive_processes_it<E: Env>(env: E) {
    let q = Arc::new(Observed::new(env.queue().clone()));
    q.ensure_topic(&TopicSpec::new("mail", 2, &["email"]))
        .await
        .unwrap();
    let unit = env.backoff_unit();
    let recorder = Arc::new(Recorder::default());
    recorder.failing.lock().unwrap().insert("poison".into());
    let mut o = options("mail", "email", 2, 10);
    o.retry = RetryPolicy {
        max_attempts: 4,
        backoff: Backoff::new(unit, unit * 100).with_jitter(Jitter::None),
    };
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(o, recorder.clone()),
    );
    let mut batch = numbered(20, 5);
    batch.insert(7, message("poison", "k1", "{\"to\":\"nobody\"}"));
    q.publish("mail", &batch).await.unwrap();

    // Attempt n fails; the next comes only after the backoff of attempt n.
    for attempt in 1..=4u32 {
        assert!(
            until(PATIENCE, || async {
                recorder.attempts_of("poison") >= attempt
            })
            .await,
            "attempt {attempt} never came"
        );
        if attempt < 4 {
            // The clock may move only once the nak has fixed the due time.
            assert!(
                until(PATIENCE, || async { q.naks() >= attempt }).await,
                "attempt {attempt} was never nakked"
            );
            let delay = unit * 2u32.pow(attempt - 1);
            if env.controls_time() {
                env.advance(delay - Duration::from_millis(1)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    recorder.attempts_of("poison"),
                    attempt,
                    "attempt {} came before its backoff of {delay:?}",
                    attempt + 1
                );
                env.advance(Duration::from_millis(1)).await;
            } else {
                env.advance(delay).await;
            }
        }
    }
    let scope = DlqScope::group("mail", "email");
    assert!(
        until(PATIENCE, || async {
            q.dlq_depth(&scope).await.unwrap() == 1
        })
        .await
    );
    assert!(until(PATIENCE, || async { recorder.ok_ids().len() >= 20 }).await);
    assert_eq!(recorder.attempts_of("poison"), 4);

    let letters = q.dlq_list(&scope, 0, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.message_id, "poison");
    assert_eq!(letter.key, "k1");
    assert_eq!(letter.payload.as_deref(), Some("{\"to\":\"nobody\"}"));
    assert_eq!(letter.attempts, 4);
    assert!(!letter.permanent);
    assert_eq!(letter.error, "mail server down for poison");
    let delays: Vec<Option<u64>> = letter.history.iter().map(|h| h.retry_in_ms).collect();
    let ms = unit.as_millis() as u64;
    assert_eq!(delays, [Some(ms), Some(2 * ms), Some(4 * ms), None]);
    assert_eq!(
        letter.history.iter().map(|h| h.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for pair in letter.history.windows(2) {
        let waited = (pair[1].at_ms - pair[0].at_ms) as u64;
        let backoff = pair[0].retry_in_ms.unwrap();
        if env.controls_time() {
            assert_eq!(waited, backoff, "history: {:?}", letter.history);
        } else {
            assert!(waited >= backoff, "history: {:?}", letter.history);
        }
    }
    assert_eq!(q.dlq_get(letter.id).await.unwrap().as_ref(), Some(letter));
    assert_eq!(lag(&env, "mail", "email").await, 0);

    // Fixed: the redriven message is processed once, as a first attempt.
    recorder.fixed.store(true, Ordering::SeqCst);
    assert_eq!(q.dlq_redrive(&DlqTarget::One(letter.id)).await.unwrap(), 1);
    assert!(
        until(PATIENCE, || async {
            recorder.ok_ids().contains(&"poison".to_owned())
        })
        .await,
        "the redriven message was never processed"
    );
    running.stop().await;
    let poison: Vec<Delivery> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.message.id == "poison")
        .cloned()
        .collect();
    assert_eq!(poison.len(), 1);
    assert_eq!(poison[0].attempt, 1);
    assert_eq!(poison[0].message.key, "k1");
    assert_eq!(poison[0].partition, partition_of("k1", 2));
    assert_eq!(q.dlq_depth(&scope).await.unwrap(), 0);
    assert_eq!(lag(&env, "mail", "email").await, 0);
}

pub(crate) async fn permanent_error_skips_the_retries<E: Env>(env: E) {
    let q = Arc::new(env.queue().clone());
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    recorder.failing.lock().unwrap().insert("bad".into());
    recorder.permanent.store(true, Ordering::SeqCst);
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(options("t", "g", 1, 10), recorder.clone()),
    );
    q.publish(
        "t",
        &[message("bad", "k", "garbage"), message("good", "k", "{}")],
    )
    .await
    .unwrap();
    let scope = DlqScope::group("t", "g");
    assert!(
        until(PATIENCE, || async {
            q.dlq_depth(&scope).await.unwrap() == 1 && recorder.ok_ids().len() == 1
        })
        .await
    );
    running.stop().await;
    let letter = q.dlq_list(&scope, 0, 10).await.unwrap().remove(0);
    assert!(letter.permanent);
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.history.len(), 1);
    assert_eq!(recorder.attempts_of("bad"), 1);
}

pub(crate) async fn dlq_operations_list_show_redrive_purge<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("a", 1, &["g1", "g2"]))
        .await
        .unwrap();
    q.ensure_topic(&TopicSpec::new("b", 1, &["g1"]))
        .await
        .unwrap();
    q.publish("a", &[message("a1", "k", "1"), message("a2", "k", "2")])
        .await
        .unwrap();
    q.publish("b", &[message("b1", "k", "3")]).await.unwrap();
    // Dead-letter everything of (a, g1) and (b, g1) by hand.
    for (topic, n) in [("a", 2), ("b", 1)] {
        let got = q
            .fetch(topic, "g1", 10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), n);
        for d in &got {
            q.dead_letter(
                d,
                &Failure {
                    error: format!("no {}", d.message.id),
                    permanent: true,
                    at_ms: 1,
                },
            )
            .await
            .unwrap();
        }
    }
    assert_eq!(q.dlq_depth(&DlqScope::all()).await.unwrap(), 3);
    assert_eq!(q.dlq_depth(&DlqScope::group("a", "g1")).await.unwrap(), 2);
    assert_eq!(q.dlq_depth(&DlqScope::group("a", "g2")).await.unwrap(), 0);
    let by_group = DlqScope {
        topic: None,
        group: Some("g1".into()),
    };
    assert_eq!(q.dlq_depth(&by_group).await.unwrap(), 3);

    // Listing pages by id.
    let all = q.dlq_list(&DlqScope::all(), 0, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let page = q.dlq_list(&DlqScope::all(), all[0].id, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);
    let of_a = q
        .dlq_list(&DlqScope::group("a", "g1"), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        of_a.iter()
            .map(|l| l.message_id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(of_a[0].error, "no a1");
    assert!(q.dlq_get(u64::MAX / 2).await.unwrap().is_none());

    // Purge one, then redrive the rest of (a, g1): only g1 gets it again.
    assert_eq!(q.dlq_purge(&DlqTarget::One(of_a[0].id)).await.unwrap(), 1);
    assert_eq!(q.dlq_purge(&DlqTarget::One(of_a[0].id)).await.unwrap(), 0);
    let redriven = q
        .dlq_redrive(&DlqTarget::All(DlqScope::group("a", "g1")))
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    let again = q.fetch("a", "g1", 10, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, "a2");
    assert_eq!(again[0].message.payload.as_ref(), b"2");
    q.ack(&again).await.unwrap();
    // g2 still has exactly its own two original messages, not the redrive.
    let mut g2 = Vec::new();
    while g2.len() < 2 {
        let got = q.fetch("a", "g2", 10, PATIENCE).await.unwrap();
        assert!(!got.is_empty());
        q.ack(&got).await.unwrap();
        g2.extend(got.into_iter().map(|d| d.message.id));
    }
    let extra = q
        .fetch("a", "g2", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        extra.is_empty(),
        "a redrive reached another group: {extra:?}"
    );
    assert_eq!(g2, ["a1", "a2"]);

    // Purge a whole scope.
    assert_eq!(
        q.dlq_purge(&DlqTarget::All(DlqScope::all())).await.unwrap(),
        1
    );
    assert_eq!(q.dlq_depth(&DlqScope::all()).await.unwrap(), 0);
}

pub(crate) async fn duplicate_ids_are_published_once<E: Env>(env: E) {
    let q = env.queue();
    q.ensure_topic(&TopicSpec::new("t", 2, &["g"]))
        .await
        .unwrap();
    let first = q.publish("t", &[message("same", "k", "1")]).await.unwrap();
    let second = q
        .publish(
            "t",
            &[message("same", "k", "1"), message("other", "k", "2")],
        )
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(second[0].duplicate);
    assert_eq!(second[0].seq, first[0].seq);
    assert!(!second[1].duplicate);
    assert_eq!(lag(&env, "t", "g").await, 2);
}

pub(crate) async fn bad_names_and_unknown_topics_are_errors<E: Env>(env: E) {
    let q = env.queue();
    let err = q
        .ensure_topic(&TopicSpec::new("a.b", 1, &["g"]))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidName { .. }), "{err}");
    let err = q
        .ensure_topic(&TopicSpec::new("t", 0, &["g"]))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidArgument(_)), "{err}");
    let err = q
        .publish("nope", &[message("x", "k", "")])
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::UnknownTopic(_)), "{err}");
    q.ensure_topic(&TopicSpec::new("t", 3, &["g"]))
        .await
        .unwrap();
    // Idempotent with the same partitions; refused with others.
    q.ensure_topic(&TopicSpec::new("t", 3, &["g", "h"]))
        .await
        .unwrap();
    let err = q
        .ensure_topic(&TopicSpec::new("t", 4, &["g"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::PartitionMismatch {
                existing: 3,
                requested: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = q
        .fetch("t", "missing", 1, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::UnknownGroup { .. }), "{err}");
    // A worker with a group that does not exist fails at once.
    let err = Worker::new(Arc::new(q.clone()))
        .group(options("t", "missing", 1, 1), Arc::new(Recorder::default()))
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::UnknownGroup { .. }), "{err}");
}

/// Shutdown lets the batch in hand finish and settles it.
pub(crate) async fn shutdown_finishes_the_batch_in_hand<E: Env>(env: E) {
    struct Slow {
        started: tokio::sync::Notify,
        release: tokio::sync::Semaphore,
        done: AtomicU32,
    }
    impl BatchHandler for Slow {
        async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
            self.started.notify_one();
            let _permit = self.release.acquire().await.unwrap();
            self.done.fetch_add(batch.len() as u32, Ordering::SeqCst);
            vec![Ok(()); batch.len()]
        }
    }
    let q = Arc::new(env.queue().clone());
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    q.publish("t", &numbered(3, 1)).await.unwrap();
    let slow = Arc::new(Slow {
        started: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
        done: AtomicU32::new(0),
    });
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(options("t", "g", 1, 10), slow.clone()),
    );
    slow.started.notified().await;
    // Ask to stop while the handler is blocked, then let it finish.
    let _ = running.stop.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!running.task.is_finished(), "stopped with a batch in hand");
    slow.release.add_permits(1);
    running.task.await.unwrap().unwrap();
    assert_eq!(slow.done.load(Ordering::SeqCst), 3);
    assert_eq!(lag(&env, "t", "g").await, 0);
}

/// A handler that panics does not kill its loop: the batch is retried.
pub(crate) async fn a_panicking_handler_is_retried<E: Env>(env: E) {
    struct Panics(AtomicU32);
    impl BatchHandler for Panics {
        async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first call panics");
            }
            vec![Ok(()); batch.len()]
        }
    }
    let q = Arc::new(Observed::new(env.queue().clone()));
    q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
        .await
        .unwrap();
    q.publish("t", &[message("x", "k", "")]).await.unwrap();
    let handler = Arc::new(Panics(AtomicU32::new(0)));
    let mut o = options("t", "g", 1, 1);
    o.retry.backoff =
        Backoff::new(env.backoff_unit(), env.backoff_unit()).with_jitter(Jitter::None);
    let running = Running::start(
        Worker::new(q.clone())
            .with_clock(env.clock())
            .group(o, handler.clone()),
    );
    assert!(until(PATIENCE, || async { q.naks() >= 1 }).await);
    env.advance(env.backoff_unit()).await;
    assert!(
        until(PATIENCE, || async { lag(&env, "t", "g").await == 0 }).await,
        "the message of the panicked batch was not processed again"
    );
    running.stop().await;
    assert_eq!(handler.0.load(Ordering::SeqCst), 2);
}
