//! The NATS JetStream backend: one stream per topic, durable pull consumers
//! per group and partition, a dead-letter stream and a retry-history bucket.
//!
//! Layout on the server, for prefix `P`, topic `T` and group `G`:
//!
//! - stream `P_T` with subjects `P.T.>`, limits retention capped by
//!   `queue.retention`, the partition count in its description, and a
//!   duplicate window on message ids (used when `queue.nats.dedupe_on_publish`
//!   puts them in `Nats-Msg-Id`; by default they go in `Scalestack-Id`). A message is deleted once every
//!   consumer of the stream has settled it, by the clean-up that follows
//!   settlements (every `queue.nats.clean_up_interval`, 1 s by default, one purge of the stream's settled
//!   prefix: [`JetStreamQueue::clean_up`]) rather than by interest
//!   retention, under which the server deletes each message on its last ack
//!   at a CPU cost as high as its delivery. Storage therefore holds settled
//!   messages up to a second longer, and an unsettled message (one waiting
//!   for a retry, say) keeps every message published after it, in any
//!   partition, until it is settled or `queue.retention` expires them.
//!   Streams created by older versions with interest retention keep it (the
//!   server cannot change a stream's retention); the clean-up is harmless
//!   there;
//! - partition `n` is subject `P.T.p.n`; group `G` reads it through the durable
//!   pull consumer `G-pn`. One process never holds two batches of a partition
//!   (it skips consumers whose batch is unsettled), and the consumer's
//!   unacknowledged window is the group's batch size, which bounds what
//!   several processes can hold of one partition: unlike the embedded queue,
//!   two processes may each hold part of a partition when batches are not full;
//! - dead letters that are redriven come back on `P.T.r.G`, read by consumer
//!   `G-r` of that group only;
//! - stream `P__dlq` holds dead letters (JSON) on subjects `P._dlq.T.G`;
//! - stream `P__retries` (subjects `P._retry.T.G.SEQ`, one message kept per
//!   subject) holds the failures of messages waiting for a retry, since a
//!   JetStream message cannot carry state between deliveries. It is a
//!   key-value store by hand: the client's own key-value API does not speak
//!   to nats-server 2.9.
//!
//! The server owns the time of deadlines and retry delays (`-NAK` with a
//! delay); publishing awaits acknowledgements in windows because the client
//! stalls with about 5,000 outstanding. This module must not be used for
//! anything but the queue's own subjects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderName;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use scalestack_config::{Config, NatsQueueConfig};
use tokio::sync::{Mutex, OnceCell};

use crate::dlq::{AttemptRecord, DeadLetter, DlqScope, DlqTarget};
use crate::metrics::{CLEANED, DUPLICATES, PUBLISHED};
use crate::{
    Backend, Delivery, Failure, GroupStats, Message, Published, QueueError, Token, TopicSpec,
    partition_of, validate_name,
};

/// Header carrying a message's partition key.
const KEY_HEADER: &str = "Scalestack-Key";
/// Header carrying the partition of a redriven message.
const PARTITION_HEADER: &str = "Scalestack-Partition";
/// JetStream's own header for duplicate detection.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header carrying a message's id when the server is not to dedupe it (and
/// the original id of a redriven message).
const ID_HEADER: &str = "Scalestack-Id";

/// Settings of a [`JetStreamQueue`].
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// The server and naming settings of `[queue.nats]`.
    pub nats: NatsQueueConfig,
    /// Time a consumer has to settle a delivery.
    pub ack_deadline: Duration,
    /// Longest time a message is kept.
    pub retention: Duration,
}

impl JetStreamOptions {
    /// Options for the server at `url` with the defaults of `[queue]`.
    pub fn new(url: &str) -> Self {
        let defaults = scalestack_config::QueueConfig::default();
        Self {
            nats: NatsQueueConfig {
                url: url.to_owned(),
                ..defaults.nats
            },
            ack_deadline: defaults.ack_deadline,
            retention: defaults.retention,
        }
    }

    /// Options from the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            nats: config.queue.nats.clone(),
            ack_deadline: config.queue.ack_deadline,
            retention: config.queue.retention,
        }
    }

    /// Returns the options with another subject prefix.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.nats.prefix = prefix.to_owned();
        self
    }

    /// Returns the options with the server's duplicate detection on publish
    /// turned on or off (see `NatsQueueConfig::dedupe_on_publish`).
    pub fn with_dedupe_on_publish(mut self, on: bool) -> Self {
        self.nats.dedupe_on_publish = on;
        self
    }

    /// Returns the options with another ack deadline.
    pub fn with_ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }
}

/// The JetStream queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStreamQueue {
    inner: Arc<Inner>,
}

/// One pull consumer of a group and what it reads.
#[derive(Debug, Clone)]
struct Source {
    consumer: PullConsumer,
    /// The partition, or `None` for the group's redrive subject.
    partition: Option<u32>,
}

/// A batch of one consumer: its partition (`None` for redrives), the
/// consumer and its messages.
type Batch = (Option<u32>, Arc<BusyKey>, Vec<jetstream::Message>);

/// What settles a JetStream delivery: the message (its reply subject is the
/// ack subject) and its consumer, named once per batch rather than parsed
/// from the reply subject at every settlement.
#[derive(Debug, Clone)]
pub(crate) struct NatsToken {
    message: jetstream::Message,
    consumer: Arc<BusyKey>,
}

/// The batch feed of one (topic, group) in this process: one task per
/// consumer keeps a pull stream open (the server pushes as messages arrive,
/// so an idle group costs only heartbeats), gathers what is ready into a
/// batch once the consumer's previous batch is settled, and queues it for
/// the fetches of the worker's consume loops.
#[derive(Debug)]
struct Dispatcher {
    batches: Mutex<tokio::sync::mpsc::Receiver<Batch>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Messages the feeds hold but never handed out come back to the
        // group after the ack deadline.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A (topic, group) pair.
type GroupKey = (String, String);

/// The clean-up of one topic in this process.
#[derive(Debug, Default)]
struct CleanUp {
    /// A task is waiting to clean the topic up, or doing it.
    running: bool,
    /// Messages were settled since that task last started its clean-up.
    dirty: bool,
}
/// A (stream, consumer) pair.
type BusyKey = (String, String);

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    options: JetStreamOptions,
    /// Partition counts of known topics.
    topics: std::sync::Mutex<HashMap<String, u32>>,
    /// The consumers of each (topic, group).
    sources: Mutex<HashMap<GroupKey, Arc<Vec<Source>>>>,
    /// The batch feeds of each (topic, group) this process consumes.
    dispatchers: Mutex<HashMap<GroupKey, Arc<Dispatcher>>>,
    /// Consumers with a batch in this process's hands: deliveries not yet
    /// settled and when they were fetched. A fetch skips them, so that this
    /// process never works on two batches of one partition at once.
    busy: std::sync::Mutex<HashMap<BusyKey, (usize, std::time::Instant)>>,
    /// Wakes the feeds waiting for a batch of theirs to be settled.
    settled: tokio::sync::Notify,
    /// Clean-ups of topics, by topic.
    clean_ups: std::sync::Mutex<HashMap<String, CleanUp>>,
    dlq: OnceCell<stream::Stream>,
    retries: OnceCell<stream::Stream>,
}

impl JetStreamQueue {
    /// Connects to the server; streams and consumers are created by
    /// [`Backend::ensure_topic`].
    pub async fn connect(options: JetStreamOptions) -> Result<Self, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(options.nats.request_timeout)
            .request_timeout(Some(options.nats.request_timeout))
            .connect(options.nats.url.as_str())
            .await
            .map_err(|e| QueueError::nats("connect", e))?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                options,
                topics: std::sync::Mutex::new(HashMap::new()),
                sources: Mutex::new(HashMap::new()),
                dispatchers: Mutex::new(HashMap::new()),
                busy: std::sync::Mutex::new(HashMap::new()),
                settled: tokio::sync::Notify::new(),
                clean_ups: std::sync::Mutex::new(HashMap::new()),
                dlq: OnceCell::new(),
                retries: OnceCell::new(),
            }),
        })
    }

    /// The connection, for callers that publish raw NATS messages beside the
    /// queue (the benchmark's baseline).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    fn prefix(&self) -> &str {
        &self.inner.options.nats.prefix
    }

    /// Deletes the messages of `topic` that every consumer of its stream
    /// has acknowledged (or dead-lettered) and returns how many. Runs by
    /// itself about once a second while messages are being settled; callers
    /// need it only to reclaim space at once.
    ///
    /// A topic's stream uses limits retention (kept up to the retention
    /// age), so the server does not delete a message on its last ack, which
    /// cost it as much CPU as the delivery. Instead this deletes the stream's
    /// prefix below the lowest sequence any consumer still needs, in one
    /// request: per consumer, the first sequence after its ack floor while
    /// it has unacknowledged messages, else the first message of its subject
    /// it has not been delivered. A message waiting for a retry (or in a
    /// batch in hand) therefore keeps the messages after it until it is
    /// settled or the retention age removes them.
    pub async fn clean_up(&self, topic: &str) -> Result<u64, QueueError> {
        validate_name("topic", topic)?;
        let stream = self.topic_stream(topic).await?;
        let state = stream
            .get_info()
            .await
            .map_err(|e| QueueError::nats("read stream", e))?
            .state;
        if state.messages == 0 {
            return Ok(0);
        }
        // Messages published from now on come after `state.last_sequence`.
        let mut keep_from = state.last_sequence + 1;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| QueueError::nats("list consumers", e))?;
            let needed = if info.num_ack_pending > 0 {
                // Everything up to the ack floor is acknowledged; what
                // follows may be in flight or waiting for a retry.
                info.ack_floor.stream_sequence + 1
            } else if info.delivered.stream_sequence >= state.last_sequence {
                state.last_sequence + 1
            } else if info.config.filter_subject.is_empty() {
                info.delivered.stream_sequence + 1
            } else {
                // Every delivered message is acknowledged: the consumer
                // needs the next message of its subject, if any.
                match stream
                    .get_first_raw_message_by_subject(
                        &info.config.filter_subject,
                        info.delivered.stream_sequence + 1,
                    )
                    .await
                {
                    Ok(message) => message.sequence,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        state.last_sequence + 1
                    }
                    Err(e) => return Err(QueueError::nats("read stream", e)),
                }
            };
            keep_from = keep_from.min(needed);
            if keep_from <= state.first_sequence {
                return Ok(0);
            }
        }
        let purged = stream
            .purge()
            .sequence(keep_from)
            .await
            .map_err(|e| QueueError::nats("clean up stream", e))?
            .purged;
        if purged > 0 {
            metrics::counter!(CLEANED, "topic" => topic.to_owned()).increment(purged);
        }
        Ok(purged)
    }

    /// Notes that messages of `topic` were settled: a clean-up follows
    /// within `queue.nats.clean_up_interval`, and then one every interval while messages
    /// keep being settled.
    fn schedule_clean_up(&self, topic: &str) {
        let mut clean_ups = self.inner.clean_ups.lock().unwrap();
        let state = match clean_ups.get_mut(topic) {
            Some(state) => state,
            None => clean_ups.entry(topic.to_owned()).or_default(),
        };
        state.dirty = true;
        if state.running {
            return;
        }
        state.running = true;
        drop(clean_ups);
        let every = self.inner.options.nats.clean_up_interval;
        tokio::spawn(clean_up_loop(
            Arc::downgrade(&self.inner),
            topic.to_owned(),
            every,
        ));
    }

    /// The stream of `topic`, without asking the server for its info.
    async fn topic_stream(&self, topic: &str) -> Result<stream::Stream<()>, QueueError> {
        self.inner
            .js
            .get_stream_no_info(self.stream_name(topic))
            .await
            .map_err(|e| QueueError::nats("read stream", e))
    }

    fn stream_name(&self, topic: &str) -> String {
        format!("{}_{topic}", self.prefix())
    }

    fn partition_subject(&self, topic: &str, partition: u32) -> String {
        format!("{}.{topic}.p.{partition}", self.prefix())
    }

    fn redrive_subject(&self, topic: &str, group: &str) -> String {
        format!("{}.{topic}.r.{group}", self.prefix())
    }

    fn dlq_subject(&self, topic: Option<&str>, group: Option<&str>) -> String {
        format!(
            "{}._dlq.{}.{}",
            self.prefix(),
            topic.unwrap_or("*"),
            group.unwrap_or("*")
        )
    }

    /// Partitions of `topic`, from the cache or the stream's description.
    async fn partitions(&self, topic: &str) -> Result<u32, QueueError> {
        if let Some(n) = self.inner.topics.lock().unwrap().get(topic) {
            return Ok(*n);
        }
        validate_name("topic", topic)?;
        let mut stream = match self.inner.js.get_stream(self.stream_name(topic)).await {
            Ok(stream) => stream,
            Err(e) => {
                return Err(match e.kind() {
                    GetStreamErrorKind::JetStream(inner)
                        if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        QueueError::UnknownTopic(topic.to_owned())
                    }
                    _ => QueueError::nats("read stream", e),
                });
            }
        };
        let info = stream
            .info()
            .await
            .map_err(|e| QueueError::nats("read stream", e))?;
        let n = parse_partitions(info.config.description.as_deref()).ok_or_else(|| {
            QueueError::Decode {
                what: "stream description",
                message: format!("stream {} names no partition count", info.config.name),
            }
        })?;
        self.inner
            .topics
            .lock()
            .unwrap()
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The consumers of a group, from the cache or the server.
    async fn sources(&self, topic: &str, group: &str) -> Result<Arc<Vec<Source>>, QueueError> {
        let key = (topic.to_owned(), group.to_owned());
        let mut cache = self.inner.sources.lock().await;
        if let Some(sources) = cache.get(&key) {
            return Ok(sources.clone());
        }
        let partitions = self.partitions(topic).await?;
        let stream = self.topic_stream(topic).await?;
        let mut sources = Vec::with_capacity(partitions as usize + 1);
        let names = (0..partitions)
            .map(|p| (format!("{group}-p{p}"), Some(p)))
            .chain(std::iter::once((format!("{group}-r"), None)));
        for (name, partition) in names {
            let consumer: PullConsumer = stream.get_consumer(&name).await.map_err(|e| {
                // The client boxes this error; the server's code is in its text.
                if e.to_string().contains("consumer not found") {
                    QueueError::UnknownGroup {
                        topic: topic.to_owned(),
                        group: group.to_owned(),
                    }
                } else {
                    QueueError::nats("read consumer", e)
                }
            })?;
            sources.push(Source {
                consumer,
                partition,
            });
        }
        let sources = Arc::new(sources);
        cache.insert(key, sources.clone());
        Ok(sources)
    }

    /// The batch feed of a group, started on first use.
    async fn dispatcher(
        &self,
        topic: &str,
        group: &str,
        max: usize,
    ) -> Result<Arc<Dispatcher>, QueueError> {
        let key = (topic.to_owned(), group.to_owned());
        let mut dispatchers = self.inner.dispatchers.lock().await;
        if let Some(d) = dispatchers.get(&key) {
            return Ok(d.clone());
        }
        let sources = self.sources(topic, group).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(sources.len());
        let mut tasks = Vec::with_capacity(sources.len());
        for source in sources.iter() {
            let messages = source
                .consumer
                .stream()
                .max_messages_per_batch(max)
                .messages()
                .await
                .map_err(|e| QueueError::nats("open consumer stream", e))?;
            tasks.push(tokio::spawn(feed(
                Arc::downgrade(&self.inner),
                source.clone(),
                messages,
                max,
                tx.clone(),
            )));
        }
        let dispatcher = Arc::new(Dispatcher {
            batches: Mutex::new(rx),
            tasks,
        });
        dispatchers.insert(key, dispatcher.clone());
        Ok(dispatcher)
    }

    fn consumer_config(&self, name: &str, filter: String, window: i64) -> pull::Config {
        pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.inner.options.ack_deadline,
            // The worker runtime decides when to give up (dead letter), so
            // the server never stops redelivering on its own.
            max_deliver: -1,
            max_ack_pending: window,
            ..Default::default()
        }
    }

    /// Makes every consumer of a group hold at most `window` unacknowledged
    /// messages (see [`Backend::prepare_group`]).
    async fn set_window(&self, topic: &str, group: &str, window: usize) -> Result<(), QueueError> {
        let sources = self.sources(topic, group).await?;
        let stream = self.topic_stream(topic).await?;
        let mut changed = false;
        for source in sources.iter() {
            let info = source.consumer.cached_info();
            if info.config.max_ack_pending == window as i64 {
                continue;
            }
            changed = true;
            let name = info.name.clone();
            let filter = info.config.filter_subject.clone();
            stream
                .update_consumer(self.consumer_config(&name, filter, window as i64))
                .await
                .map_err(|e| QueueError::nats("update consumer", e))?;
        }
        if !changed {
            return Ok(());
        }
        // Re-read the consumers so that their cached settings are current.
        self.inner
            .sources
            .lock()
            .await
            .remove(&(topic.to_owned(), group.to_owned()));
        Ok(())
    }

    async fn dlq_stream(&self) -> Result<&stream::Stream, QueueError> {
        self.inner
            .dlq
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: format!("{}__dlq", self.prefix()),
                    subjects: vec![format!("{}._dlq.>", self.prefix())],
                    description: Some("scalestack dead letters".into()),
                    retention: RetentionPolicy::Limits,
                    storage: StorageType::File,
                    num_replicas: self.inner.options.nats.replicas,
                    duplicate_window: self.inner.options.nats.duplicate_window,
                    ..Default::default()
                };
                self.inner
                    .js
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| QueueError::nats("create dead-letter stream", e))
            })
            .await
    }

    async fn retries(&self) -> Result<&stream::Stream, QueueError> {
        self.inner
            .retries
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: format!("{}__retries", self.prefix()),
                    subjects: vec![format!("{}._retry.>", self.prefix())],
                    description: Some("scalestack retry histories".into()),
                    max_messages_per_subject: 1,
                    max_age: self.inner.options.retention,
                    storage: StorageType::File,
                    num_replicas: self.inner.options.nats.replicas,
                    ..Default::default()
                };
                self.inner
                    .js
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| QueueError::nats("create retry stream", e))
            })
            .await
    }

    fn retry_subject(&self, delivery: &Delivery) -> String {
        format!(
            "{}._retry.{}.{}.{}",
            self.prefix(),
            delivery.topic,
            delivery.group,
            delivery.seq
        )
    }

    async fn history(&self, delivery: &Delivery) -> Result<Vec<AttemptRecord>, QueueError> {
        if delivery.attempt <= 1 {
            return Ok(Vec::new());
        }
        let retries = self.retries().await?;
        match retries
            .get_last_raw_message_by_subject(&self.retry_subject(delivery))
            .await
        {
            Ok(message) => {
                serde_json::from_slice(&message.payload).map_err(|e| QueueError::Decode {
                    what: "retry history",
                    message: e.to_string(),
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Vec::new()),
            Err(e) => Err(QueueError::nats("read retry history", e)),
        }
    }

    async fn save_history(
        &self,
        delivery: &Delivery,
        history: &[AttemptRecord],
    ) -> Result<(), QueueError> {
        self.retries().await?;
        let value = serde_json::to_vec(history).expect("records serialize");
        self.inner
            .js
            .publish(self.retry_subject(delivery), Bytes::from(value))
            .await
            .map_err(|e| QueueError::nats("write retry history", e))?
            .await
            .map_err(|e| QueueError::nats("write retry history", e))?;
        Ok(())
    }

    async fn forget_history(&self, delivery: &Delivery) {
        if delivery.attempt <= 1 {
            return;
        }
        let result = match self.retries().await {
            Ok(retries) => retries
                .purge()
                .filter(self.retry_subject(delivery))
                .await
                .map(|_| ())
                .map_err(|e| QueueError::nats("purge retry history", e)),
            Err(e) => Err(e),
        };
        // The stream's max age removes a history that could not be purged.
        if let Err(error) = result {
            tracing::debug!(%error, "cannot purge a retry history");
        }
    }

    /// Whether this process holds an unsettled batch of `consumer`. A batch
    /// older than the ack deadline no longer counts: the server has handed
    /// its messages out again by then.
    fn is_busy(inner: &Inner, key: &BusyKey) -> bool {
        let mut busy = inner.busy.lock().unwrap();
        match busy.get(key) {
            Some((_, since)) if since.elapsed() < inner.options.ack_deadline => true,
            Some(_) => {
                busy.remove(key);
                false
            }
            None => false,
        }
    }

    fn mark_busy(inner: &Inner, key: &BusyKey, count: usize) {
        inner
            .busy
            .lock()
            .unwrap()
            .insert(key.clone(), (count, std::time::Instant::now()));
    }

    /// Counts settled deliveries off their consumers' batches.
    fn settled(&self, deliveries: &[Delivery]) {
        let mut busy = self.inner.busy.lock().unwrap();
        // A batch holds one consumer's deliveries: count them per run.
        let mut run: Option<(&Arc<BusyKey>, usize)> = None;
        let mut settle = |key: &BusyKey, count: usize| {
            if let Some((left, _)) = busy.get_mut(key) {
                *left = left.saturating_sub(count);
                if *left == 0 {
                    busy.remove(key);
                }
            }
        };
        for delivery in deliveries {
            let Token::Nats(token) = &delivery.token else {
                continue;
            };
            match &mut run {
                Some((key, count)) if Arc::ptr_eq(key, &token.consumer) => *count += 1,
                _ => {
                    if let Some((key, count)) = run {
                        settle(key, count);
                    }
                    run = Some((&token.consumer, 1));
                }
            }
        }
        if let Some((key, count)) = run {
            settle(key, count);
        }
        drop(busy);
        self.inner.settled.notify_waiters();
    }

    fn nats_token(delivery: &Delivery) -> Result<&NatsToken, QueueError> {
        match &delivery.token {
            Token::Nats(token) => Ok(token),
            Token::Embedded(_) => Err(QueueError::InvalidArgument(
                "an embedded delivery cannot be settled on JetStream".into(),
            )),
        }
    }

    fn nats_message(delivery: &Delivery) -> Result<&jetstream::Message, QueueError> {
        Self::nats_token(delivery).map(|token| &token.message)
    }

    /// A delivery from a JetStream message of `source`.
    fn delivery(
        &self,
        topic: &str,
        group: &str,
        partitions: u32,
        source_partition: Option<u32>,
        consumer: &Arc<BusyKey>,
        message: jetstream::Message,
    ) -> Result<Delivery, QueueError> {
        let info = message.info().map_err(|e| QueueError::Decode {
            what: "JetStream reply subject",
            message: e.to_string(),
        })?;
        let seq = info.stream_sequence;
        let attempt = info.delivered.max(1) as u32;
        let published_at_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
        let mut headers = BTreeMap::new();
        let mut id = String::new();
        let mut key = String::new();
        let mut partition = source_partition;
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                let Some(value) = values.first() else {
                    continue;
                };
                let value = value.as_str().to_owned();
                match name.as_ref() {
                    MSG_ID_HEADER => id = value,
                    KEY_HEADER => key = value,
                    PARTITION_HEADER => partition = value.parse().ok(),
                    other => {
                        headers.insert(other.to_owned(), value);
                    }
                }
            }
        }
        // The id is in a header of ours when the server does not dedupe
        // publishes, and in a redrive, whose Nats-Msg-Id dedupes the redrive
        // itself.
        if let Some(original) = headers.remove(ID_HEADER) {
            id = original;
        }
        let partition = partition.unwrap_or_else(|| partition_of(&key, partitions));
        Ok(Delivery {
            topic: topic.to_owned(),
            group: group.to_owned(),
            partition,
            seq,
            message: Message {
                id,
                key,
                payload: message.payload.clone(),
                headers,
            },
            published_at_ms,
            attempt,
            token: Token::Nats(Box::new(NatsToken {
                message,
                consumer: consumer.clone(),
            })),
        })
    }

    fn publish_headers(message: &Message) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        // A static name: no allocation and no validation per message.
        headers.insert(HeaderName::from_static(KEY_HEADER), message.key.as_str());
        headers
    }

    /// Decodes a dead letter stored at `seq` of the dead-letter stream.
    fn decode_letter(seq: u64, payload: &[u8]) -> Result<DeadLetter, QueueError> {
        let mut letter: DeadLetter =
            serde_json::from_slice(payload).map_err(|e| QueueError::Decode {
                what: "dead letter",
                message: e.to_string(),
            })?;
        letter.id = seq;
        Ok(letter)
    }

    /// Acknowledges `message` and waits for the server's reply. A request
    /// through the client's shared reply subscription, where the client's
    /// `double_ack` subscribes and unsubscribes an inbox for every call.
    async fn confirmed_ack(&self, message: &jetstream::Message) -> Result<(), QueueError> {
        let Some(reply) = message.reply.clone() else {
            return Err(QueueError::nats("ack", "not a JetStream message"));
        };
        self.inner
            .client
            .request(reply, Bytes::from_static(b"+ACK"))
            .await
            .map_err(|e| QueueError::nats("ack", e))?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), QueueError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| QueueError::nats("flush", e))
    }
}

/// Feeds the batches of one consumer into its group's queue of batches.
async fn feed(
    inner: std::sync::Weak<Inner>,
    source: Source,
    mut messages: pull::Stream,
    max: usize,
    batches: tokio::sync::mpsc::Sender<Batch>,
) {
    let (stream_name, consumer_name) = {
        let info = source.consumer.cached_info();
        (info.stream_name.clone(), info.name.clone())
    };
    let key = Arc::new((stream_name.clone(), consumer_name.clone()));
    loop {
        // One batch of a partition at a time in this process: wait until
        // the previous one is settled (or its deadline has passed).
        loop {
            let Some(inner) = inner.upgrade() else { return };
            let settled = inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if !JetStreamQueue::is_busy(&inner, &key) {
                break;
            }
            // Holding `inner` here delays its drop by at most `recheck`.
            let recheck = inner.options.ack_deadline / 4;
            let _ = tokio::time::timeout(recheck, settled).await;
        }
        let first = match messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                // Missed heartbeats and server restarts surface here; the
                // stream re-issues its pull requests by itself.
                tracing::debug!(%error, consumer = %consumer_name, "consumer stream error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            None => return,
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                _ => break,
            }
        }
        {
            let Some(inner) = inner.upgrade() else { return };
            JetStreamQueue::mark_busy(&inner, &key, batch.len());
        }
        if batches
            .send((source.partition, key.clone(), batch))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Cleans `topic` up `every` interval while messages of it are
/// being settled in this process, then stops. A failed clean-up is tried
/// again at the next interval, a few times; after that the next settlement
/// starts over, and the retention age is the backstop.
async fn clean_up_loop(inner: std::sync::Weak<Inner>, topic: String, every: Duration) {
    const TRIES: u32 = 5;
    let mut failures = 0;
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Some(state) = inner.clean_ups.lock().unwrap().get_mut(&topic) {
            state.dirty = false;
        }
        let queue = JetStreamQueue { inner };
        let failed = match queue.clean_up(&topic).await {
            Ok(_) => {
                failures = 0;
                false
            }
            Err(error) => {
                failures += 1;
                if failures != TRIES {
                    tracing::debug!(%error, %topic, "cannot clean up a topic");
                } else {
                    tracing::warn!(%error, %topic, "cannot clean up a topic; giving up until \
                        the next settlement (settled messages stay until then or their max age)");
                }
                failures < TRIES
            }
        };
        let mut clean_ups = queue.inner.clean_ups.lock().unwrap();
        let Some(state) = clean_ups.get_mut(&topic) else {
            return;
        };
        if !state.dirty && !failed {
            state.running = false;
            return;
        }
    }
}

/// The description of a topic's stream, which records its partition count.
fn describe_partitions(partitions: u32) -> String {
    format!("scalestack topic; partitions={partitions}")
}

fn parse_partitions(description: Option<&str>) -> Option<u32> {
    description?
        .split("partitions=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Backend for JetStreamQueue {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn ack_deadline(&self) -> Duration {
        self.inner.options.ack_deadline
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), QueueError> {
        spec.validate()?;
        let options = &self.inner.options;
        let config = stream::Config {
            name: self.stream_name(&spec.name),
            subjects: vec![format!("{}.{}.>", self.prefix(), spec.name)],
            description: Some(describe_partitions(spec.partitions)),
            // Not interest retention: see `clean_up`.
            retention: RetentionPolicy::Limits,
            max_age: options.retention,
            duplicate_window: options.nats.duplicate_window,
            storage: StorageType::File,
            num_replicas: options.nats.replicas,
            ..Default::default()
        };
        let mut stream = self
            .inner
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| QueueError::nats("create stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| QueueError::nats("read stream", e))?;
        let existing = parse_partitions(info.config.description.as_deref());
        if existing != Some(spec.partitions) {
            return Err(QueueError::PartitionMismatch {
                topic: spec.name.clone(),
                existing: existing.unwrap_or(0),
                requested: spec.partitions,
            });
        }
        for group in &spec.groups {
            let names = (0..spec.partitions)
                .map(|p| {
                    (
                        format!("{group}-p{p}"),
                        self.partition_subject(&spec.name, p),
                    )
                })
                .chain(std::iter::once((
                    format!("{group}-r"),
                    self.redrive_subject(&spec.name, group),
                )));
            for (name, filter) in names {
                // The window starts at the default batch size; the worker
                // runtime sets its own with `set_window`.
                let window = scalestack_config::ConsumerConfig::default().batch_size as i64;
                let config = self.consumer_config(&name, filter, window);
                if stream.get_consumer::<pull::Config>(&name).await.is_err() {
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(|e| QueueError::nats("create consumer", e))?;
                }
            }
        }
        self.inner
            .topics
            .lock()
            .unwrap()
            .insert(spec.name.clone(), spec.partitions);
        Ok(())
    }

    async fn prepare_group(
        &self,
        topic: &str,
        group: &str,
        batch_size: usize,
    ) -> Result<(), QueueError> {
        self.set_window(topic, group, batch_size).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: &[Message],
    ) -> Result<Vec<Published>, QueueError> {
        let partitions = self.partitions(topic).await?;
        let window = self.inner.options.nats.publish_window.max(1);
        let mut out = Vec::with_capacity(messages.len());
        let mut duplicates = 0u64;
        // Each partition's subject is formatted once per call; a clone of
        // it is a reference count.
        let mut subjects: Vec<Option<Subject>> = vec![None; partitions as usize];
        // With `Nats-Msg-Id` the server dedupes within its window.
        let id_header = if self.inner.options.nats.dedupe_on_publish {
            MSG_ID_HEADER
        } else {
            ID_HEADER
        };
        for chunk in messages.chunks(window) {
            let mut pending = Vec::with_capacity(chunk.len());
            for message in chunk {
                let partition = partition_of(&message.key, partitions);
                let mut headers = Self::publish_headers(message);
                headers.insert(HeaderName::from_static(id_header), message.id.as_str());
                let subject = subjects[partition as usize]
                    .get_or_insert_with(|| self.partition_subject(topic, partition).into())
                    .clone();
                let ack = self
                    .inner
                    .js
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await
                    .map_err(|e| QueueError::nats("publish", e))?;
                pending.push((partition, ack));
            }
            // Awaiting the window's acks before sending more keeps the
            // number outstanding bounded.
            for (partition, ack) in pending {
                let ack = ack.await.map_err(|e| QueueError::nats("publish ack", e))?;
                if ack.duplicate {
                    duplicates += 1;
                }
                out.push(Published {
                    partition,
                    seq: ack.sequence,
                    duplicate: ack.duplicate,
                });
            }
        }
        let labels = [("topic", topic.to_owned()), ("backend", "nats".to_owned())];
        metrics::counter!(PUBLISHED, &labels).increment(messages.len() as u64 - duplicates);
        if duplicates > 0 {
            metrics::counter!(DUPLICATES, &labels).increment(duplicates);
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Err(QueueError::InvalidArgument(
                "fetch needs max of at least 1".into(),
            ));
        }
        let partitions = self.partitions(topic).await?;
        let dispatcher = self.dispatcher(topic, group, max).await?;
        let received = tokio::time::timeout(wait, async {
            let mut batches = dispatcher.batches.lock().await;
            batches.recv().await
        })
        .await;
        let (partition, consumer, messages) = match received {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(Some(batch)) => batch,
            Ok(None) => {
                return Err(QueueError::nats(
                    "fetch",
                    "the consumer feeds of this group stopped",
                ));
            }
        };
        messages
            .into_iter()
            .map(|m| self.delivery(topic, group, partitions, partition, &consumer, m))
            .collect()
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        // Plain acks need no reply; the last one of each consumer waits for
        // the server's confirmation, which it sends after processing every
        // earlier ack of that consumer (they are handled in order). So when
        // this returns, the whole batch is acknowledged on the server.
        let tokens = deliveries
            .iter()
            .map(Self::nats_token)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, token) in tokens.iter().enumerate() {
            // A batch holds one consumer's messages, so this stops at once
            // but for the last one.
            let last = !tokens[i + 1..].iter().any(|t| t.consumer == token.consumer);
            if last {
                self.confirmed_ack(&token.message).await?;
            } else {
                token
                    .message
                    .ack()
                    .await
                    .map_err(|e| QueueError::nats("ack", e))?;
            }
        }
        self.settled(deliveries);
        let mut topic = None;
        for delivery in deliveries {
            if topic != Some(delivery.topic.as_str()) {
                topic = Some(delivery.topic.as_str());
                self.schedule_clean_up(&delivery.topic);
            }
            self.forget_history(delivery).await;
        }
        Ok(())
    }

    async fn nak(
        &self,
        delivery: &Delivery,
        delay: Duration,
        failure: &Failure,
    ) -> Result<(), QueueError> {
        let message = Self::nats_message(delivery)?;
        let mut history = self.history(delivery).await?;
        history.push(AttemptRecord {
            attempt: delivery.attempt,
            at_ms: failure.at_ms,
            error: failure.error.clone(),
            retry_in_ms: Some(delay.as_millis() as u64),
        });
        self.save_history(delivery, &history).await?;
        message
            .double_ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| QueueError::nats("nak", e))?;
        self.settled(std::slice::from_ref(delivery));
        Ok(())
    }

    async fn extend(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        for delivery in deliveries {
            Self::nats_message(delivery)?
                .ack_with(AckKind::Progress)
                .await
                .map_err(|e| QueueError::nats("extend", e))?;
        }
        self.flush().await
    }

    async fn dead_letter(&self, delivery: &Delivery, failure: &Failure) -> Result<(), QueueError> {
        let message = Self::nats_message(delivery)?;
        let history = self.history(delivery).await?;
        let letter = DeadLetter::from_delivery(0, delivery, failure, history);
        // The stream must exist before the publish, or nothing would store it.
        self.dlq_stream().await?;
        let mut headers = HeaderMap::new();
        // A crash between this publish and the ack below redelivers the
        // message, which fails again; the same id makes the second dead
        // letter a duplicate the server drops.
        headers.insert(
            MSG_ID_HEADER,
            format!("{}:{}:{}", delivery.topic, delivery.group, delivery.seq).as_str(),
        );
        let body = serde_json::to_vec(&letter).expect("dead letters serialize");
        self.inner
            .js
            .publish_with_headers(
                self.dlq_subject(Some(&delivery.topic), Some(&delivery.group)),
                headers,
                Bytes::from(body),
            )
            .await
            .map_err(|e| QueueError::nats("publish dead letter", e))?
            .await
            .map_err(|e| QueueError::nats("publish dead letter ack", e))?;
        message
            .double_ack()
            .await
            .map_err(|e| QueueError::nats("ack dead letter", e))?;
        self.settled(std::slice::from_ref(delivery));
        self.schedule_clean_up(&delivery.topic);
        self.forget_history(delivery).await;
        Ok(())
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats, QueueError> {
        validate_name("group", group)?;
        let sources = self.sources(topic, group).await?;
        let mut stats = GroupStats::default();
        for source in sources.iter() {
            let info = source
                .consumer
                .get_info()
                .await
                .map_err(|e| QueueError::nats("read consumer", e))?;
            stats.undelivered += info.num_pending;
            stats.unacked += info.num_ack_pending as u64;
        }
        Ok(stats)
    }

    async fn dlq_list(
        &self,
        scope: &DlqScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        scope.validate()?;
        let dlq = self.dlq_stream().await?;
        let filter = self.dlq_subject(scope.topic.as_deref(), scope.group.as_deref());
        let mut out = Vec::new();
        let mut next = after + 1;
        while out.len() < limit {
            match dlq.get_first_raw_message_by_subject(&filter, next).await {
                Ok(message) => {
                    out.push(Self::decode_letter(message.sequence, &message.payload)?);
                    next = message.sequence + 1;
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(QueueError::nats("list dead letters", e)),
            }
        }
        Ok(out)
    }

    async fn dlq_get(&self, id: u64) -> Result<Option<DeadLetter>, QueueError> {
        let dlq = self.dlq_stream().await?;
        match dlq.get_raw_message(id).await {
            Ok(message) => Ok(Some(Self::decode_letter(
                message.sequence,
                &message.payload,
            )?)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(QueueError::nats("read dead letter", e)),
        }
    }

    async fn dlq_depth(&self, scope: &DlqScope) -> Result<u64, QueueError> {
        scope.validate()?;
        let dlq = self.dlq_stream().await?;
        let filter = self.dlq_subject(scope.topic.as_deref(), scope.group.as_deref());
        let mut subjects = dlq
            .info_with_subjects(&filter)
            .await
            .map_err(|e| QueueError::nats("count dead letters", e))?;
        let mut total = 0u64;
        while let Some(item) = subjects.next().await {
            let (_, count) = item.map_err(|e| QueueError::nats("count dead letters", e))?;
            total += count as u64;
        }
        Ok(total)
    }

    async fn dlq_redrive(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        let letters = match target {
            DlqTarget::One(id) => self.dlq_get(*id).await?.into_iter().collect(),
            DlqTarget::All(scope) => self.dlq_list(scope, 0, usize::MAX).await?,
        };
        let dlq = self.dlq_stream().await?;
        let mut redriven = 0;
        for letter in letters {
            let message = letter.message()?;
            let mut headers = Self::publish_headers(&message);
            headers.insert(ID_HEADER, message.id.as_str());
            headers.insert(PARTITION_HEADER, letter.partition.to_string().as_str());
            // Redriving the same dead letter twice (a crash before the delete
            // below) is one redrive: the id names the dead letter.
            headers.insert(MSG_ID_HEADER, format!("redrive:{}", letter.id).as_str());
            self.inner
                .js
                .publish_with_headers(
                    self.redrive_subject(&letter.topic, &letter.group),
                    headers,
                    message.payload.clone(),
                )
                .await
                .map_err(|e| QueueError::nats("redrive", e))?
                .await
                .map_err(|e| QueueError::nats("redrive ack", e))?;
            if dlq
                .delete_message(letter.id)
                .await
                .map_err(|e| QueueError::nats("delete redriven letter", e))?
            {
                redriven += 1;
            }
        }
        Ok(redriven)
    }

    async fn dlq_purge(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        let dlq = self.dlq_stream().await?;
        match target {
            DlqTarget::One(id) => {
                if self.dlq_get(*id).await?.is_none() {
                    return Ok(0);
                }
                let deleted = dlq
                    .delete_message(*id)
                    .await
                    .map_err(|e| QueueError::nats("purge dead letter", e))?;
                Ok(u64::from(deleted))
            }
            DlqTarget::All(scope) => {
                scope.validate()?;
                let filter = self.dlq_subject(scope.topic.as_deref(), scope.group.as_deref());
                let result = dlq
                    .purge()
                    .filter(filter)
                    .await
                    .map_err(|e| QueueError::nats("purge dead letters", e))?;
                Ok(result.purged)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_count_round_trips_through_the_description() {
        assert_eq!(parse_partitions(Some(&describe_partitions(16))), Some(16));
        assert_eq!(parse_partitions(Some("something else")), None);
        assert_eq!(parse_partitions(None), None);
    }
}
