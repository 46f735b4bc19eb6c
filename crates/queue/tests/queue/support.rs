//! What the shared suite needs from a backend under test: the backend, a
//! second handle on the same queue (another "process"), and a way to let time
//! pass, which is a step of the manual clock on the embedded queue and a real
//! wait on JetStream, whose server keeps the time.

use std::sync::Arc;
use std::time::Duration;

use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::jetstream::{JetStreamOptions, JetStreamQueue};
use scalestack_queue::{
    Backend, Clock, DeadLetter, Delivery, DlqScope, DlqTarget, Failure, GroupStats, ManualClock,
    Message, Published, QueueError, SystemClock, TopicSpec,
};
use scalestack_testkit::nats::NatsServer;

/// A backend under test.
pub(crate) trait Env: Send + Sync + 'static {
    /// The backend type.
    type Q: Backend + Clone;

    /// The queue.
    fn queue(&self) -> &Self::Q;

    /// Another handle on the same queue, as another process would open it.
    fn second(&self) -> impl Future<Output = Self::Q> + Send;

    /// The clock the worker runtime should use.
    fn clock(&self) -> Arc<dyn Clock>;

    /// Lets `by` pass for the queue's deadlines and delays.
    fn advance(&self, by: Duration) -> impl Future<Output = ()> + Send;

    /// True when time moves only through [`Env::advance`], so that "not yet
    /// due" can be checked exactly.
    fn controls_time(&self) -> bool;

    /// The backoff unit of the retry tests: long on a manual clock (it costs
    /// nothing), short on a real one.
    fn backoff_unit(&self) -> Duration;
}

/// The ack deadline of every backend under test.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);

// === embedded ===

pub(crate) struct EmbeddedEnv {
    queue: EmbeddedQueue,
    clock: ManualClock,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl EmbeddedEnv {
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let clock = ManualClock::default();
        let queue = EmbeddedQueue::open(Self::options(&path, &clock))
            .await
            .unwrap();
        Self {
            queue,
            clock,
            path,
            _dir: dir,
        }
    }

    fn options(path: &std::path::Path, clock: &ManualClock) -> EmbeddedOptions {
        let mut options = EmbeddedOptions::new(path)
            .with_clock(Arc::new(clock.clone()))
            .with_ack_deadline(DEADLINE);
        // Idle fetches look again soon: the manual clock wakes nobody.
        options.poll_interval = Duration::from_millis(10);
        options
    }
}

impl Env for EmbeddedEnv {
    type Q = EmbeddedQueue;

    fn queue(&self) -> &EmbeddedQueue {
        &self.queue
    }

    async fn second(&self) -> EmbeddedQueue {
        EmbeddedQueue::open(Self::options(&self.path, &self.clock))
            .await
            .unwrap()
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clock.clone())
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn controls_time(&self) -> bool {
        true
    }

    fn backoff_unit(&self) -> Duration {
        Duration::from_secs(1)
    }
}

// === JetStream ===

pub(crate) struct NatsEnv {
    queue: JetStreamQueue,
    options: JetStreamOptions,
    _server: Arc<NatsServer>,
}

impl NatsEnv {
    pub(crate) async fn new() -> Self {
        Self::with_dedupe_on_publish(false).await
    }

    /// With the server dropping publishes of ids it saw (`Nats-Msg-Id`).
    pub(crate) async fn with_dedupe_on_publish(on: bool) -> Self {
        let server = NatsServer::shared().unwrap();
        // Every test has its own prefix, hence its own streams and consumers.
        let prefix = format!("t{:08x}", rand::random::<u32>());
        let options = JetStreamOptions::new(&server.url())
            .with_prefix(&prefix)
            .with_ack_deadline(DEADLINE)
            .with_dedupe_on_publish(on);
        let queue = JetStreamQueue::connect(options.clone()).await.unwrap();
        Self {
            queue,
            options,
            _server: server,
        }
    }
}

impl Env for NatsEnv {
    type Q = JetStreamQueue;

    fn queue(&self) -> &JetStreamQueue {
        &self.queue
    }

    async fn second(&self) -> JetStreamQueue {
        JetStreamQueue::connect(self.options.clone()).await.unwrap()
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn controls_time(&self) -> bool {
        false
    }

    fn backoff_unit(&self) -> Duration {
        Duration::from_millis(100)
    }
}

/// Polls `probe` until it is true, for at most `patience`; false if never.
pub(crate) async fn until<F, Fut>(patience: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    scalestack_testkit::eventually(patience, || {
        let fut = probe();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_some()
}

// === an observing wrapper ===

/// A backend that counts the settlements going through it, so that a test
/// can wait until a nak happened before it moves the clock.
#[derive(Clone)]
pub(crate) struct Observed<B> {
    inner: B,
    naks: Arc<std::sync::atomic::AtomicU32>,
}

impl<B: Backend + Clone> Observed<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            naks: Arc::default(),
        }
    }

    pub(crate) fn naks(&self) -> u32 {
        self.naks.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<B: Backend + Clone> Backend for Observed<B> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn ack_deadline(&self) -> Duration {
        self.inner.ack_deadline()
    }
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), QueueError> {
        self.inner.ensure_topic(spec).await
    }
    async fn prepare_group(&self, t: &str, g: &str, n: usize) -> Result<(), QueueError> {
        self.inner.prepare_group(t, g, n).await
    }
    async fn publish(&self, t: &str, m: &[Message]) -> Result<Vec<Published>, QueueError> {
        self.inner.publish(t, m).await
    }
    async fn fetch(
        &self,
        t: &str,
        g: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.fetch(t, g, max, wait).await
    }
    async fn ack(&self, d: &[Delivery]) -> Result<(), QueueError> {
        self.inner.ack(d).await
    }
    async fn nak(&self, d: &Delivery, delay: Duration, f: &Failure) -> Result<(), QueueError> {
        let result = self.inner.nak(d, delay, f).await;
        self.naks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        result
    }
    async fn extend(&self, d: &[Delivery]) -> Result<(), QueueError> {
        self.inner.extend(d).await
    }
    async fn dead_letter(&self, d: &Delivery, f: &Failure) -> Result<(), QueueError> {
        self.inner.dead_letter(d, f).await
    }
    async fn group_stats(&self, t: &str, g: &str) -> Result<GroupStats, QueueError> {
        self.inner.group_stats(t, g).await
    }
    async fn dlq_list(
        &self,
        s: &DlqScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dlq_list(s, after, limit).await
    }
    async fn dlq_get(&self, id: u64) -> Result<Option<DeadLetter>, QueueError> {
        self.inner.dlq_get(id).await
    }
    async fn dlq_depth(&self, s: &DlqScope) -> Result<u64, QueueError> {
        self.inner.dlq_depth(s).await
    }
    async fn dlq_redrive(&self, t: &DlqTarget) -> Result<u64, QueueError> {
        self.inner.dlq_redrive(t).await
    }
    async fn dlq_purge(&self, t: &DlqTarget) -> Result<u64, QueueError> {
        self.inner.dlq_purge(t).await
    }
}
