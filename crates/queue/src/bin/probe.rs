//! `scalestack-queue-probe`: a minimal consumer process for crash tests and
//! for looking at a queue by hand.
//!
//! It runs one consumer group with the real worker runtime and appends the id
//! of every message it handles to a file (one per line, written and synced
//! before the message is acknowledged), until it is stopped or killed. The
//! durability tests kill it with SIGKILL mid-batch, start it again, and check
//! that every message was handled at least once and none is left.
//!
//! ```text
//! scalestack-queue-probe --backend embedded --path data/queue.db \
//!     --topic orders --group probe --out seen.txt [--deadline-ms 1000] [--batch 50] [--pause-ms 0]
//! scalestack-queue-probe --backend nats --url nats://127.0.0.1:4222 --prefix scalestack ...
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::jetstream::{JetStreamOptions, JetStreamQueue};
use scalestack_queue::worker::GroupOptions;
use scalestack_queue::{Backend, BatchHandler, Delivery, HandlerError, Worker};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Appends handled ids to a file.
struct Record {
    file: Mutex<std::fs::File>,
    /// Time a batch "works" before it is recorded, so that a kill usually
    /// lands on a batch in hand, delivered and not yet recorded.
    pause: Duration,
}

impl BatchHandler for Record {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut text = String::new();
        for d in batch {
            text.push_str(&d.message.id);
            text.push('\n');
        }
        // The "work" comes first: a kill during it must not lose the batch.
        tokio::time::sleep(self.pause).await;
        let written = {
            let mut file = self.file.lock().unwrap();
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
        };
        match written {
            Ok(()) => vec![Ok(()); batch.len()],
            Err(e) => vec![Err(HandlerError::transient(e)); batch.len()],
        }
    }
}

fn args() -> Result<HashMap<String, String>, Error> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("expected --FLAG VALUE, got {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

async fn run<B: Backend>(
    queue: B,
    topic: &str,
    group: &str,
    batch: usize,
    pause: Duration,
    out: PathBuf,
) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .map_err(|e| format!("open {}: {e}", out.display()))?;
    let mut options = GroupOptions::new(topic, group);
    options.batch_size = batch;
    options.concurrency = 2;
    options.fetch_wait = Duration::from_millis(200);
    let handler = Record {
        file: Mutex::new(file),
        pause,
    };
    Worker::new(Arc::new(queue))
        .group(options, handler)
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = args()?;
    let get = |name: &str| {
        args.get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required"))
    };
    let topic = get("topic")?;
    let group = get("group")?;
    let out = PathBuf::from(get("out")?);
    let deadline = Duration::from_millis(
        args.get("deadline-ms")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(1_000),
    );
    let pause = Duration::from_millis(
        args.get("pause-ms")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(0),
    );
    let batch: usize = args
        .get("batch")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(50);
    match get("backend")?.as_str() {
        "embedded" => {
            let options = EmbeddedOptions::new(get("path")?).with_ack_deadline(deadline);
            run(
                EmbeddedQueue::open(options).await?,
                &topic,
                &group,
                batch,
                pause,
                out,
            )
            .await
        }
        "nats" => {
            let options = JetStreamOptions::new(&get("url")?)
                .with_prefix(&get("prefix")?)
                .with_ack_deadline(deadline);
            run(
                JetStreamQueue::connect(options).await?,
                &topic,
                &group,
                batch,
                pause,
                out,
            )
            .await
        }
        other => Err(format!("--backend must be embedded or nats, not {other:?}").into()),
    }
}
