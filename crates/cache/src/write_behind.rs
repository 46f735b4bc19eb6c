//! Write-behind: a write is acknowledged once it is in the cache and in a
//! durable log on local disk; a background flusher hands the latest value of
//! every written key to the store in batches, through the caller's
//! [`BatchWriter`]. A process killed after acknowledging loses nothing: on the
//! next start the log is replayed and flushed.
//!
//! The log of one resource is a directory of numbered segment files. Records
//! are `[len u32][crc32 u32][id_len u32][id][value]` (little endian, id and
//! value in MessagePack). One dedicated thread appends: it takes every write
//! waiting in its queue, writes them with one `write` and one `fdatasync`
//! (group commit), and only then marks them pending and acknowledges them, so
//! a sync costs one disk flush per group rather than per write.
//!
//! A flush seals the active segment (new writes go to a new one), snapshots
//! the pending map (the newest value per key: bursts on one key coalesce into
//! one store write), writes it in batches of `max_batch`, and deletes the
//! sealed segments only after every batch succeeded. A failed batch keeps
//! everything for the next attempt. Because a crash between a store write and
//! the segment's deletion replays the same values again, batch writers must
//! be idempotent (an upsert of the latest value is).
//!
//! Reads of a key with a pending write return the pending value first, so
//! this instance reads its own writes even if L1 evicted the entry before the
//! flush. Other instances see the value through L2 (if any) at once, and
//! through the store after the flush, when the flusher broadcasts an
//! invalidation of the flushed keys.
//!
//! A torn record at the end of the newest segment (a kill during an append
//! that was therefore never acknowledged) is cut off at replay. Damage
//! anywhere else stops the open with an error naming the file and offset,
//! because guessing would lose acknowledged writes.
//!
//! This module owns the log format, the append thread and the flusher; it
//! never talks to a store itself.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::bus::Event;
use crate::cache::Inner;
use crate::codec::Codec;
use crate::key::Id;
use crate::metrics::{WB_COMMITS, WB_FLUSHED, WB_FLUSHES, WB_PENDING, WB_REPLAYED};

/// An error a batch writer may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes batches of write-behind entries to the store.
///
/// Implementations must be idempotent: after a crash, a batch that reached
/// the store may be written again. Each entry is the newest value of its id.
pub trait BatchWriter<V>: Send + Sync + 'static {
    /// Writes every entry; an error keeps them all for a later attempt.
    fn write_batch<'a>(&'a self, batch: &'a [(Id, Arc<V>)]) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// Why the write-behind log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum WriteBehindError {
    /// Reading or writing the log failed.
    #[error("write-behind log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process holds the log's lock.
    #[error("write-behind log {path} is in use by another process")]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// A record other than the newest one is damaged.
    #[error("write-behind log {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The value could not be serialized.
    #[error("cannot encode a value for the write-behind log: {0}")]
    Encode(String),
    /// The log is shut down.
    #[error("the write-behind log is closed")]
    Closed,
    /// A flush could not write to the store; the entries stay pending.
    #[error("write-behind flush failed: {0}")]
    Flush(String),
}

/// Settings of one resource's log.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) dir: PathBuf,
    pub(crate) flush_interval: Duration,
    pub(crate) max_batch: usize,
    pub(crate) fsync: bool,
}

struct PendingValue<V> {
    seq: u64,
    value: Arc<V>,
}

type PendingMap<V> = Arc<Mutex<HashMap<Id, PendingValue<V>>>>;

enum Cmd<V> {
    Append {
        id: Id,
        value: Arc<V>,
        record: Vec<u8>,
        ack: oneshot::Sender<Result<(), String>>,
    },
    Rotate {
        reply: oneshot::Sender<Result<Option<PathBuf>, String>>,
    },
    /// Syncs the active segment: proves that the append thread runs and the
    /// disk accepts writes (the health check).
    Sync {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The write-behind log and flusher of one resource.
pub(crate) struct WriteBehind<V> {
    core: Arc<Core<V>>,
}

struct Core<V> {
    resource: &'static str,
    dir: PathBuf,
    tx: mpsc::UnboundedSender<Cmd<V>>,
    pending: PendingMap<V>,
    flush_now: Notify,
    /// Sealed segments not yet covered by a successful flush; the lock also
    /// makes flushes run one at a time.
    sealed: tokio::sync::Mutex<Vec<PathBuf>>,
    writer: Arc<dyn BatchWriter<V>>,
    codec: Codec<V>,
    max_batch: usize,
    inner: Weak<Inner>,
    /// Held for the log's lifetime: the advisory lock on `LOCK`.
    _lock: File,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WriteBehindError + '_ {
    move |source| WriteBehindError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_name(n: u64) -> String {
    format!("{n:020}.log")
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

fn encode_record(id: &Id, value: &[u8]) -> Vec<u8> {
    let id_bytes = rmp_serde::to_vec(id).expect("ids always serialize");
    let mut payload = Vec::with_capacity(4 + id_bytes.len() + value.len());
    payload.extend_from_slice(&(id_bytes.len() as u32).to_le_bytes());
    payload.extend_from_slice(&id_bytes);
    payload.extend_from_slice(value);
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// What a segment holds: its whole records (id, encoded value), the length
/// of the valid prefix, and why the rest (if any) is invalid.
type Segment<'a> = (Vec<(Id, &'a [u8])>, usize, Option<String>);

/// Reads every whole record of a segment.
fn read_segment(data: &[u8]) -> Segment<'_> {
    let mut records = Vec::new();
    let mut off = 0usize;
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    while off < data.len() {
        if data.len() - off < 8 {
            return (records, off, Some("truncated record header".into()));
        }
        let len = u32_at(off) as usize;
        let crc = u32_at(off + 4);
        let Some(payload) = data.get(off + 8..off + 8 + len) else {
            return (records, off, Some("truncated record".into()));
        };
        if crc32fast::hash(payload) != crc {
            return (records, off, Some("checksum mismatch".into()));
        }
        let parsed = (payload.len() >= 4)
            .then(|| u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize)
            .and_then(|id_len| {
                let id_bytes = payload.get(4..4 + id_len)?;
                let id: Id = rmp_serde::from_slice(id_bytes).ok()?;
                Some((id, &payload[4 + id_len..]))
            });
        let Some(record) = parsed else {
            return (records, off, Some("malformed record".into()));
        };
        records.push(record);
        off += 8 + len;
    }
    (records, off, None)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl<V: Send + Sync + 'static> WriteBehind<V> {
    /// Opens (or creates) the log of `resource` under `opts.dir`, replays what
    /// an earlier process left, and starts the append thread and the flusher.
    pub(crate) async fn open(
        resource: &'static str,
        opts: Options,
        codec: Codec<V>,
        writer: Arc<dyn BatchWriter<V>>,
        inner: Weak<Inner>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(WriteBehind<V>, tokio::task::JoinHandle<()>), WriteBehindError> {
        let dir = opts.dir.join(resource);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WriteBehindError::Locked { path: dir });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }

        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment_number(&p).map(|n| (n, p)))
            .collect();
        segments.sort();

        let mut replayed: HashMap<Id, Arc<V>> = HashMap::new();
        let mut records = 0u64;
        for (i, (_, path)) in segments.iter().enumerate() {
            let data = std::fs::read(path).map_err(io_error(path))?;
            let (entries, valid, damage) = read_segment(&data);
            for (offset_hint, (id, bytes)) in entries.into_iter().enumerate() {
                let value = (codec.decode)(bytes).map_err(|reason| WriteBehindError::Corrupt {
                    path: path.clone(),
                    offset: offset_hint as u64,
                    reason: format!("record {offset_hint} does not decode: {reason}"),
                })?;
                replayed.insert(id, Arc::new(value));
                records += 1;
            }
            if let Some(reason) = damage {
                if i + 1 < segments.len() {
                    return Err(WriteBehindError::Corrupt {
                        path: path.clone(),
                        offset: valid as u64,
                        reason,
                    });
                }
                // The newest segment ends in a record that was being written
                // when the process died; it was never acknowledged.
                tracing::warn!(
                    path = %path.display(),
                    offset = valid,
                    %reason,
                    "cutting a torn record off the write-behind log"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                f.set_len(valid as u64).map_err(io_error(path))?;
                f.sync_all().map_err(io_error(path))?;
            }
        }
        if records > 0 {
            tracing::info!(
                resource,
                records,
                keys = replayed.len(),
                "replayed the write-behind log"
            );
            metrics::counter!(WB_REPLAYED, "cache" => resource).increment(replayed.len() as u64);
        }

        let next = segments.last().map_or(0, |(n, _)| n + 1);
        let active_path = dir.join(segment_name(next));
        let active = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&active_path)
            .map_err(io_error(&active_path))?;
        sync_dir(&dir).map_err(io_error(&dir))?;

        let pending: PendingMap<V> = Arc::new(Mutex::new(
            replayed
                .into_iter()
                .enumerate()
                .map(|(i, (id, value))| {
                    (
                        id,
                        PendingValue {
                            seq: i as u64 + 1,
                            value,
                        },
                    )
                })
                .collect(),
        ));
        let first_seq = pending.lock().map(|p| p.len() as u64).unwrap_or(0);

        let (tx, rx) = mpsc::unbounded_channel();
        let appender = Appender {
            resource,
            dir: dir.clone(),
            file: active,
            path: active_path,
            len: 0,
            next_segment: next + 1,
            fsync: opts.fsync,
            pending: pending.clone(),
            seq: first_seq,
        };
        std::thread::Builder::new()
            .name(format!("cache-wal-{resource}"))
            .spawn(move || appender.run(rx))
            .map_err(io_error(&dir))?;

        let core = Arc::new(Core {
            resource,
            dir,
            tx,
            pending,
            flush_now: Notify::new(),
            sealed: tokio::sync::Mutex::new(segments.into_iter().map(|(_, p)| p).collect()),
            writer,
            codec,
            max_batch: opts.max_batch.max(1),
            inner,
            _lock: lock,
        });
        core.update_gauge();
        let task = tokio::spawn(flusher(core.clone(), opts.flush_interval, shutdown));
        if core.pending_len() > 0 {
            core.flush_now.notify_one();
        }
        Ok((WriteBehind { core }, task))
    }

    /// Appends a write durably; returns once it is in the log and pending.
    pub(crate) async fn append(&self, id: Id, value: Arc<V>) -> Result<(), WriteBehindError> {
        let core = &self.core;
        let bytes = (core.codec.encode)(&value).map_err(WriteBehindError::Encode)?;
        let record = encode_record(&id, &bytes);
        let (ack, acked) = oneshot::channel();
        core.tx
            .send(Cmd::Append {
                id,
                value,
                record,
                ack,
            })
            .map_err(|_| WriteBehindError::Closed)?;
        acked
            .await
            .map_err(|_| WriteBehindError::Closed)?
            .map_err(|e| WriteBehindError::Io {
                path: core.dir.clone(),
                source: std::io::Error::other(e),
            })?;
        if core.pending_len() >= core.max_batch {
            core.flush_now.notify_one();
        }
        core.update_gauge();
        Ok(())
    }

    /// The pending (acknowledged, not yet flushed) value of `id`.
    pub(crate) fn pending_value(&self, id: &Id) -> Option<Arc<V>> {
        let pending = self.core.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get(id).map(|p| p.value.clone())
    }

    /// Entries waiting for the store.
    pub(crate) fn pending_len(&self) -> usize {
        self.core.pending_len()
    }

    /// Flushes now; returns how many entries reached the store.
    pub(crate) async fn flush(&self) -> Result<usize, WriteBehindError> {
        self.core.flush().await
    }

    /// A handle on this log for the cache's registry, which checks and
    /// flushes every log without knowing its value type.
    pub(crate) fn handle(&self) -> std::sync::Weak<dyn LogHandle> {
        let core: Arc<dyn LogHandle> = self.core.clone();
        Arc::downgrade(&core)
    }
}

/// What the cache needs of a write-behind log, whatever its value type.
pub(crate) trait LogHandle: Send + Sync {
    /// Syncs the active segment through the append thread.
    fn sync(&self) -> BoxFuture<'_, Result<(), WriteBehindError>>;
    /// Flushes every pending entry to the store now.
    fn flush(&self) -> BoxFuture<'_, Result<usize, WriteBehindError>>;
}

impl<V: Send + Sync + 'static> LogHandle for Core<V> {
    fn sync(&self) -> BoxFuture<'_, Result<(), WriteBehindError>> {
        Box::pin(async move {
            let (reply, synced) = oneshot::channel();
            self.tx
                .send(Cmd::Sync { reply })
                .map_err(|_| WriteBehindError::Closed)?;
            synced
                .await
                .map_err(|_| WriteBehindError::Closed)?
                .map_err(|e| WriteBehindError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<usize, WriteBehindError>> {
        Box::pin(Core::flush(self))
    }
}

impl<V> Clone for WriteBehind<V> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<V: Send + Sync + 'static> Core<V> {
    fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn update_gauge(&self) {
        metrics::gauge!(WB_PENDING, "cache" => self.resource).set(self.pending_len() as f64);
    }

    async fn flush(&self) -> Result<usize, WriteBehindError> {
        let mut sealed = self.sealed.lock().await;
        let (reply, rotated) = oneshot::channel();
        self.tx
            .send(Cmd::Rotate { reply })
            .map_err(|_| WriteBehindError::Closed)?;
        let rotated = rotated
            .await
            .map_err(|_| WriteBehindError::Closed)?
            .map_err(|e| WriteBehindError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?;
        sealed.extend(rotated);

        // Every record of a sealed segment was marked pending before the
        // rotation was answered, so this snapshot covers them all.
        let mut snapshot: Vec<(Id, u64, Arc<V>)> = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .iter()
                .map(|(id, p)| (id.clone(), p.seq, p.value.clone()))
                .collect()
        };
        // A stable order makes the store's row locks always taken in the
        // same order by concurrent flushers of different instances.
        snapshot.sort_by(|a, b| a.0.cmp(&b.0));

        let mut written = 0usize;
        for chunk in snapshot.chunks(self.max_batch) {
            let batch: Vec<(Id, Arc<V>)> = chunk
                .iter()
                .map(|(id, _, v)| (id.clone(), v.clone()))
                .collect();
            if let Err(error) = self.writer.write_batch(&batch).await {
                metrics::counter!(WB_FLUSHES, "cache" => self.resource, "outcome" => "error")
                    .increment(1);
                tracing::warn!(
                    resource = self.resource,
                    entries = batch.len(),
                    %error,
                    "write-behind flush failed; entries stay pending"
                );
                self.update_gauge();
                return Err(WriteBehindError::Flush(error.to_string()));
            }
            metrics::counter!(WB_FLUSHES, "cache" => self.resource, "outcome" => "ok").increment(1);
            metrics::counter!(WB_FLUSHED, "cache" => self.resource).increment(batch.len() as u64);
            written += batch.len();
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, seq, _) in chunk {
                // A newer write of the same key since the snapshot stays.
                if pending.get(id).is_some_and(|p| p.seq == *seq) {
                    pending.remove(id);
                }
            }
        }
        for path in sealed.drain(..) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot delete a flushed write-behind segment");
            }
        }
        self.update_gauge();
        if let Some(inner) = self.inner.upgrade() {
            // Other instances may have loaded the old row from the store;
            // now that the store has the new one, they should reload.
            for (id, _, _) in &snapshot {
                inner
                    .bus
                    .send(Event::Invalidate {
                        resource: self.resource.to_owned(),
                        id: id.clone(),
                    })
                    .await;
            }
        }
        Ok(written)
    }
}

async fn flusher<V: Send + Sync + 'static>(
    core: Arc<Core<V>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = core.flush_now.notified() => false,
            _ = shutdown.changed() => true,
        };
        // Errors are counted and logged inside; the entries stay pending and
        // the next round tries again.
        let _ = core.flush().await;
        if stop || *shutdown.borrow() {
            return;
        }
    }
}

/// The append thread's state.
struct Appender<V> {
    resource: &'static str,
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    next_segment: u64,
    fsync: bool,
    pending: PendingMap<V>,
    seq: u64,
}

type Ack<V> = (Id, Arc<V>, oneshot::Sender<Result<(), String>>);

impl<V> Appender<V> {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd<V>>) {
        let mut buf = Vec::new();
        let mut acks: Vec<Ack<V>> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(cmd) = next {
                match cmd {
                    Cmd::Append {
                        id,
                        value,
                        record,
                        ack,
                    } => {
                        buf.extend_from_slice(&record);
                        acks.push((id, value, ack));
                    }
                    Cmd::Rotate { reply } => {
                        self.commit(&mut buf, &mut acks);
                        let _ = reply.send(self.rotate().map_err(|e| e.to_string()));
                    }
                    Cmd::Sync { reply } => {
                        self.commit(&mut buf, &mut acks);
                        let _ = reply.send(self.file.sync_data().map_err(|e| e.to_string()));
                    }
                }
                next = if acks.len() < 4096 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut buf, &mut acks);
        }
    }

    /// Writes and syncs the buffered records, then marks them pending and
    /// acknowledges them (in that order, so an acknowledged write is readable).
    fn commit(&mut self, buf: &mut Vec<u8>, acks: &mut Vec<Ack<V>>) {
        if acks.is_empty() {
            return;
        }
        let written = self.file.write_all(buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                metrics::counter!(WB_COMMITS, "cache" => self.resource).increment(1);
                {
                    let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, value, _) in acks.iter() {
                        self.seq += 1;
                        pending.insert(
                            id.clone(),
                            PendingValue {
                                seq: self.seq,
                                value: value.clone(),
                            },
                        );
                    }
                }
                for (_, _, ack) in acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(error) => {
                // Cut off whatever part of the group reached the file, so the
                // log holds only acknowledged records.
                let _ = self.file.set_len(self.len);
                tracing::error!(path = %self.path.display(), %error, "write-behind log append failed");
                let message = error.to_string();
                for (_, _, ack) in acks.drain(..) {
                    let _ = ack.send(Err(message.clone()));
                }
            }
        }
        buf.clear();
    }

    /// Starts a new segment; returns the sealed one (none if it was empty).
    fn rotate(&mut self) -> std::io::Result<Option<PathBuf>> {
        if self.len == 0 {
            return Ok(None);
        }
        let path = self.dir.join(segment_name(self.next_segment));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        self.next_segment += 1;
        self.file = file;
        self.len = 0;
        Ok(Some(std::mem::replace(&mut self.path, path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_found() {
        let mut data = encode_record(&Id::Int(7), b"seven");
        data.extend(encode_record(&Id::from("s"), b""));
        let whole = data.len();
        data.extend(&encode_record(&Id::Int(8), b"eight")[..5]);
        let (records, valid, damage) = read_segment(&data);
        assert_eq!(
            records,
            vec![(Id::Int(7), &b"seven"[..]), (Id::from("s"), &b""[..])]
        );
        assert_eq!(valid, whole);
        assert!(damage.is_some());
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut data = encode_record(&Id::Int(7), b"seven");
        let last = data.len() - 1;
        data[last] ^= 1;
        let (records, valid, damage) = read_segment(&data);
        assert!(records.is_empty());
        assert_eq!(valid, 0);
        assert_eq!(damage.as_deref(), Some("checksum mismatch"));
    }
}
