//! Publish and consume throughput of the queue, run by `cargo xtask bench
//! queue` (which starts the nats-server and renders the table); built with the
//! bench profile so that the measured code is optimised.
//!
//! Five rows by default (`--rows` picks others), each publishing
//! `--messages` messages of `--payload` bytes and then consuming and
//! acknowledging all of them:
//!
//! - `raw async-nats` (`raw`): the client used directly on one stream and one
//!   durable pull consumer (publish acks awaited in windows, a pulling message
//!   stream, one ack per message): the anchor;
//! - `raw async-nats + message ids` (`raw-ids`): the same with a
//!   `Nats-Msg-Id` header on every publish: what the server's duplicate
//!   detection costs; `raw-key` and `raw-key-ids` add a header the server
//!   does not interpret, to tell the cost of headers from that of ids;
//! - `scalestack nats` (`nats`): the JetStream backend through the worker
//!   runtime, with its defaults (no duplicate detection on publish); its
//!   topic stream has the same (limits) retention as the raw stream, and its
//!   CPU is measured until the backend's clean-up has deleted every settled
//!   message (the consume rate stops, like the raw rows', at the last ack);
//! - `scalestack nats, dedupe on publish` (`nats-dedupe`): the same with
//!   `queue.nats.dedupe_on_publish`;
//! - `scalestack embedded` (`embedded`): the SQLite backend through the
//!   worker runtime.
//!
//! Each row prints one JSON line; CPU is this process's plus, for the NATS
//! rows, the server's (utime + stime from /proc) per message, in all and
//! split by phase (publish, consume, clean-up), with the mean batch and the
//! clean-up's delay after the last ack for the worker rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::jetstream::{JetStreamOptions, JetStreamQueue};
use scalestack_queue::worker::GroupOptions;
use scalestack_queue::{Backend, BatchHandler, Delivery, HandlerError, Message, TopicSpec, Worker};
use scalestack_telemetry::procfs;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Args {
    nats_url: String,
    nats_pid: Option<u32>,
    dir: std::path::PathBuf,
    messages: usize,
    payload: usize,
    batch: usize,
    partitions: u32,
    concurrency: usize,
    window: usize,
    /// Rows to run, in this order, among `raw`, `raw-ids`, `nats`, `embedded`.
    rows: Vec<String>,
    /// Runs of the rows, alternating (raw, ours, raw, ours ...).
    repeat: usize,
}

fn parse() -> Result<Args, Error> {
    let mut args = Args {
        nats_url: String::new(),
        nats_pid: None,
        dir: std::env::temp_dir(),
        messages: 100_000,
        payload: 256,
        batch: 100,
        partitions: 8,
        concurrency: 8,
        window: 1_000,
        rows: ["raw", "raw-ids", "nats", "nats-dedupe", "embedded"]
            .map(String::from)
            .to_vec(),
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench to harness-less targets.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nats-url" => args.nats_url = value,
            "--nats-pid" => args.nats_pid = Some(value.parse()?),
            "--dir" => args.dir = value.into(),
            "--messages" => args.messages = value.parse()?,
            "--payload" => args.payload = value.parse()?,
            "--batch" => args.batch = value.parse()?,
            "--partitions" => args.partitions = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--window" => args.window = value.parse()?,
            "--rows" => args.rows = value.split(',').map(str::to_owned).collect(),
            "--repeat" => args.repeat = value.parse::<usize>()?.max(1),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if args.nats_url.is_empty() {
        return Err("--nats-url is required".into());
    }
    Ok(args)
}

/// CPU time so far of this process and, with `with_server`, of the server.
fn cpu(args: &Args, with_server: bool) -> Cpu {
    let own = procfs::self_stat().map(|s| s.cpu).unwrap_or_default();
    let server = match (with_server, args.nats_pid) {
        (true, Some(pid)) => procfs::stat(pid).map(|s| s.cpu).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    Cpu { own, server }
}

/// CPU time of this process and of the server.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    own: Duration,
    server: Duration,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            own: self.own.saturating_sub(earlier.own),
            server: self.server.saturating_sub(earlier.server),
        }
    }
}

struct Row {
    name: &'static str,
    publish: Duration,
    consume: Duration,
    cpu: Cpu,
    /// CPU of the publish phase alone (the rest is the consume phase's).
    publish_cpu: Cpu,
    /// Batches handed to the handler (worker rows only).
    batches: Option<u64>,
    /// Time from the last ack to the deletion of every acknowledged message
    /// (JetStream worker rows only).
    cleanup: Option<Duration>,
    /// CPU until the last ack, when the row measures on after it.
    consume_cpu: Option<Cpu>,
}

impl Row {
    fn print(&self, args: &Args) {
        let n = args.messages as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        println!(
            "{}",
            serde_json::json!({
                "name": self.name,
                "messages": args.messages,
                "publish_per_s": n / self.publish.as_secs_f64(),
                "consume_per_s": n / self.consume.as_secs_f64(),
                "cpu_us_per_msg": us(self.cpu.own + self.cpu.server),
                "client_cpu_us_per_msg": us(self.cpu.own),
                "server_cpu_us_per_msg": us(self.cpu.server),
                "publish_cpu_us_per_msg": us(self.publish_cpu.own + self.publish_cpu.server),
                "publish_server_cpu_us_per_msg": us(self.publish_cpu.server),
                "consume_cpu_us_per_msg": us(
                    (self.cpu.own + self.cpu.server)
                        .saturating_sub(self.publish_cpu.own + self.publish_cpu.server)
                ),
                "mean_batch": self.batches.map(|b| n / b.max(1) as f64),
                "cleanup_ms": self.cleanup.map(|d| d.as_secs_f64() * 1e3),
                "cleanup_cpu_us_per_msg": self.consume_cpu.map(|c| us(
                    (self.cpu.own + self.cpu.server).saturating_sub(c.own + c.server)
                )),
            })
        );
    }
}

fn messages(args: &Args) -> Vec<Message> {
    let body = vec![b'x'; args.payload];
    (0..args.messages)
        .map(|i| Message::new(format!("m{i}"), format!("key-{}", i % 1_000), body.clone()))
        .collect()
}

/// Headers the raw client sends with each publish.
#[derive(Clone, Copy, PartialEq)]
enum RawHeaders {
    /// None: a plain `PUB`.
    None,
    /// A `Nats-Msg-Id`, which makes the server track duplicates.
    Ids,
    /// One header the server does not interpret (as a partition key).
    Key,
    /// Both.
    KeyAndIds,
}

/// The raw client, publishing with `headers`.
async fn raw(args: &Args, headers_of: RawHeaders) -> Result<Row, Error> {
    let client = async_nats::connect(&args.nats_url).await?;
    let js = jetstream::new(client.clone());
    let mut stream = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            ..Default::default()
        })
        .await?;
    let mut consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let body = bytes::Bytes::from(vec![b'x'; args.payload]);
    let cpu0 = cpu(args, true);
    let start = Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        let n = args.window.min(args.messages - sent);
        let mut acks = Vec::with_capacity(n);
        for i in 0..n {
            let subject = format!("raw.{}", (sent + i) % args.partitions as usize);
            let ack = if headers_of == RawHeaders::None {
                js.publish(subject, body.clone()).await?
            } else {
                let mut headers = async_nats::HeaderMap::new();
                if matches!(headers_of, RawHeaders::Key | RawHeaders::KeyAndIds) {
                    headers.insert("Scalestack-Key", format!("k{}", (sent + i) % 1000).as_str());
                }
                if matches!(headers_of, RawHeaders::Ids | RawHeaders::KeyAndIds) {
                    headers.insert("Nats-Msg-Id", format!("m{}", sent + i).as_str());
                }
                js.publish_with_headers(subject, headers, body.clone())
                    .await?
            };
            acks.push(ack);
        }
        for ack in acks {
            ack.await?;
        }
        sent += n;
    }
    let publish = start.elapsed();
    let publish_cpu = cpu(args, true) - cpu0;
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await?;
    let mut got = 0;
    while got < args.messages {
        let message = messages.next().await.ok_or("the raw stream ended")??;
        message.ack().await?;
        got += 1;
    }
    // Done when the server has every ack, as for the worker rows below.
    loop {
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let consume = start.elapsed();
    let row = Row {
        name: match headers_of {
            RawHeaders::None => "raw async-nats",
            RawHeaders::Ids => "raw async-nats + message ids",
            RawHeaders::Key => "raw async-nats + key header",
            RawHeaders::KeyAndIds => "raw async-nats + key header + message ids",
        },
        publish,
        consume,
        cpu: cpu(args, true) - cpu0,
        publish_cpu,
        batches: None,
        cleanup: None,
        consume_cpu: None,
    };
    drop(messages);
    stream.info().await?;
    js.delete_stream("RAW").await?;
    Ok(row)
}

/// Counts what it is handed, acknowledges everything and says when it has
/// seen `target` messages.
struct Count {
    batches: AtomicU64,
    seen: AtomicU64,
    target: u64,
    done: tokio::sync::Notify,
}

impl BatchHandler for Count {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let seen = self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
        if seen >= self.target {
            self.done.notify_one();
        }
        vec![Ok(()); batch.len()]
    }
}

/// Runs a row through the worker runtime. With `streams` (JetStream: a
/// context and the queue's prefix), CPU is measured until the topic's stream
/// is empty, so that it includes deleting the acknowledged messages.
async fn through_worker<B: Backend>(
    name: &'static str,
    queue: B,
    args: &Args,
    with_server: bool,
    streams: Option<(jetstream::Context, &str)>,
) -> Result<Row, Error> {
    let queue = Arc::new(queue);
    let topic = format!("bench{:08x}", rand::random::<u32>());
    queue
        .ensure_topic(&TopicSpec::new(&topic, args.partitions, &["g"]))
        .await?;
    // Set up before the clock starts, as the raw rows create their consumer.
    queue.prepare_group(&topic, "g", args.batch).await?;
    let all = messages(args);
    let cpu0 = cpu(args, with_server);
    let start = Instant::now();
    // Publish in the chunks an outbox relay would use.
    for chunk in all.chunks(args.window) {
        queue.publish(&topic, chunk).await?;
    }
    let publish = start.elapsed();
    let publish_cpu = cpu(args, with_server) - cpu0;

    let count = Arc::new(Count {
        batches: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        target: args.messages as u64,
        done: tokio::sync::Notify::new(),
    });
    let mut options = GroupOptions::new(&topic, "g");
    options.batch_size = args.batch;
    options.concurrency = args.concurrency;
    options.fetch_wait = Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let worker = tokio::spawn(
        Worker::new(queue.clone())
            .with_stats_interval(Duration::from_secs(3600))
            .group(options, count.clone())
            .run(async move {
                let _ = stopped.await;
            }),
    );
    count.done.notified().await;
    // The last batch is counted before it is acknowledged: wait for the acks,
    // as the raw rows do.
    while queue.group_stats(&topic, "g").await?.lag() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let consume = start.elapsed();
    let consume_cpu = cpu(args, with_server) - cpu0;
    let mut cleanup = None;
    if let Some((js, prefix)) = &streams {
        let stream = js.get_stream_no_info(format!("{prefix}_{topic}")).await?;
        // Polled less often than the lag: the clean-up runs about once a
        // second, and the polls' own CPU would be counted.
        while stream.get_info().await?.state.messages > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cleanup = Some(start.elapsed() - consume);
    }
    let cpu = cpu(args, with_server) - cpu0;
    let _ = stop.send(());
    worker.await??;
    Ok(Row {
        name,
        publish,
        consume,
        cpu,
        publish_cpu,
        batches: Some(count.batches.load(Ordering::Relaxed)),
        cleanup,
        consume_cpu: Some(consume_cpu),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args = parse()?;
    let prefix = format!("bench{:08x}", rand::random::<u32>());
    let nats =
        JetStreamQueue::connect(JetStreamOptions::new(&args.nats_url).with_prefix(&prefix)).await?;
    let nats_dedupe = JetStreamQueue::connect(
        JetStreamOptions::new(&args.nats_url)
            .with_prefix(&prefix)
            .with_dedupe_on_publish(true),
    )
    .await?;
    let path = args.dir.join(format!("{prefix}.db"));
    let embedded = EmbeddedQueue::open(EmbeddedOptions::new(&path)).await?;
    for _ in 0..args.repeat {
        for row in &args.rows {
            let row = match row.as_str() {
                "raw" => raw(&args, RawHeaders::None).await?,
                "raw-ids" => raw(&args, RawHeaders::Ids).await?,
                "raw-key" => raw(&args, RawHeaders::Key).await?,
                "raw-key-ids" => raw(&args, RawHeaders::KeyAndIds).await?,
                "nats" => {
                    let js = jetstream::new(nats.client().clone());
                    through_worker(
                        "scalestack nats",
                        nats.clone(),
                        &args,
                        true,
                        Some((js, &prefix)),
                    )
                    .await?
                }
                "nats-dedupe" => {
                    let js = jetstream::new(nats_dedupe.client().clone());
                    through_worker(
                        "scalestack nats, dedupe on publish",
                        nats_dedupe.clone(),
                        &args,
                        true,
                        Some((js, &prefix)),
                    )
                    .await?
                }
                "embedded" => {
                    through_worker("scalestack embedded", embedded.clone(), &args, false, None)
                        .await?
                }
                other => return Err(format!("unknown row {other}").into()),
            };
            row.print(&args);
        }
    }
    embedded.close().await;
    Ok(())
}
