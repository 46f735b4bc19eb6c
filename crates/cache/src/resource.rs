//! [`Resource`]: a typed view of the cache for one kind of value (users,
//! products, sessions...), with its TTLs, key version and write strategy.
//!
//! A read goes L1 → L2 → the caller's loader. Misses of one key on one
//! instance share a single load (moka's single flight); misses of one key on
//! several instances share one load too, through a short Redis lock that the
//! first instance takes while the others wait for its value to appear in L2.
//! A "not found" is cached for the resource's negative TTL.
//!
//! Writes follow the resource's [`WriteStrategy`]; every write also tells the
//! other instances to drop their L1 copy.
//!
//! This module must stay free of SQL and domain types: values are opaque
//! `Arc<V>`, loaders and store writes are the caller's futures.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use scalestack_config::{ResourceCacheConfig, WriteStrategy};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::Event;
use crate::cache::{Cache, CacheError, Inner};
use crate::codec::Codec;
use crate::key::{self, Id, Key};
use crate::l1::{ENTRY_OVERHEAD, Entry};
use crate::metrics::{LOADS, REQUESTS, STAMPEDE, WRITES};
use crate::write_behind::{self, BatchWriter, WriteBehind, WriteBehindError};

/// Per-resource settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceOptions {
    /// Life of a cached value.
    pub ttl: Duration,
    /// Life of a cached "not found"; zero disables negative caching.
    pub negative_ttl: Duration,
    /// How writes reach the store and the cache.
    pub strategy: WriteStrategy,
    /// Version in the L2 keys.
    pub version: u32,
    /// Whether the L2 is used for this resource.
    pub l2: bool,
}

impl ResourceOptions {
    /// Cache-aside with `ttl`, no negative caching, version 1, L2 on.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            negative_ttl: Duration::ZERO,
            strategy: WriteStrategy::CacheAside,
            version: 1,
            l2: true,
        }
    }

    /// The settings of a `[cache.<resource>]` table.
    pub fn from_config(config: &ResourceCacheConfig) -> Self {
        Self {
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            strategy: config.strategy,
            version: config.version,
            l2: config.l2,
        }
    }
}

/// Counters of one resource since the process started.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_unavailable: AtomicU64,
    loads: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> ResourceStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResourceStats {
            l1_hits: get(&self.l1_hits),
            l1_misses: get(&self.l1_misses),
            l2_hits: get(&self.l2_hits),
            l2_misses: get(&self.l2_misses),
            l2_unavailable: get(&self.l2_unavailable),
            loads: get(&self.loads),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of one resource's counters (all instances of one process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceStats {
    /// Reads answered by L1 (including pending write-behind values).
    pub l1_hits: u64,
    /// Reads L1 could not answer.
    pub l1_misses: u64,
    /// L1 misses answered by L2.
    pub l2_hits: u64,
    /// L1 misses L2 could not answer.
    pub l2_misses: u64,
    /// L1 misses for which L2 was skipped (breaker open) or failed.
    pub l2_unavailable: u64,
    /// Loader runs.
    pub loads: u64,
}

impl ResourceStats {
    /// Share of reads answered without a load; `None` before any read.
    pub fn hit_ratio(&self) -> Option<f64> {
        let reads = self.l1_hits + self.l1_misses;
        (reads > 0).then(|| (self.l1_hits + self.l2_hits) as f64 / reads as f64)
    }
}

/// Why a cache-aside read produced no value.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader failed; the error is shared by every request that waited for it.
    Failed(Arc<E>),
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for LoadError<E> {}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The store write failed; the cache was not changed.
    #[error("store write failed: {0}")]
    Store(E),
    /// The write-behind log could not record the write; it was not acknowledged.
    #[error(transparent)]
    Log(WriteBehindError),
}

/// What one load produced when its result must not be kept.
enum Miss<E> {
    Failed(Arc<E>),
    /// A value (or "not found") to return to the waiting readers without
    /// caching it: an invalidation ran while it loaded, or negative caching
    /// is off.
    Uncached(Option<Arc<dyn Any + Send + Sync>>),
}

/// A typed view of the cache for one resource (e.g. `users`).
pub struct Resource<V> {
    cache: Cache,
    name: &'static str,
    opts: ResourceOptions,
    weigh: fn(&V) -> usize,
    codec: Option<Codec<V>>,
    wb: Option<WriteBehind<V>>,
    stats: Arc<Stats>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Resource<V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            name: self.name,
            opts: self.opts,
            weigh: self.weigh,
            codec: self.codec,
            wb: self.wb.clone(),
            stats: self.stats.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for Resource<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("options", &self.opts)
            .field("l2", &self.codec.is_some())
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), CacheError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(CacheError::Config {
            key: "resource name".into(),
            value: format!("\"{name}\""),
            reason: "must be non-empty ASCII letters, digits, '_' or '-'".into(),
        });
    }
    Ok(())
}

// === impl Cache: resource constructors ===

impl Cache {
    /// An L1-only resource with `ttl` and no negative caching; `weigh`
    /// estimates a value's heap bytes. Values need no serialization.
    pub fn resource<V: Send + Sync + 'static>(
        &self,
        name: &'static str,
        ttl: Duration,
        weigh: fn(&V) -> usize,
    ) -> Resource<V> {
        self.make(name, ResourceOptions::new(ttl), weigh, None)
    }

    fn make<V: Send + Sync + 'static>(
        &self,
        name: &'static str,
        opts: ResourceOptions,
        weigh: fn(&V) -> usize,
        codec: Option<Codec<V>>,
    ) -> Resource<V> {
        let stats = match &self.inner {
            Some(inner) => inner.register(name),
            None => Arc::new(Stats::default()),
        };
        Resource {
            cache: self.clone(),
            name,
            opts,
            weigh,
            codec,
            wb: None,
            stats,
            _value: PhantomData,
        }
    }

    /// A resource that uses every layer: L1, the L2 if configured (values are
    /// serialized with MessagePack), negative caching and the cache-aside or
    /// write-through strategy. Write-behind resources need a batch writer:
    /// see [`Cache::write_behind_resource`].
    pub fn resource_with<V>(
        &self,
        name: &'static str,
        opts: ResourceOptions,
        weigh: fn(&V) -> usize,
    ) -> Result<Resource<V>, CacheError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        check_name(name)?;
        if opts.strategy == WriteStrategy::WriteBehind {
            return Err(CacheError::Config {
                key: format!("cache.{name}.strategy"),
                value: "\"write_behind\"".into(),
                reason: "needs a batch writer: open it with write_behind_resource".into(),
            });
        }
        Ok(self.make(name, opts, weigh, Some(Codec::msgpack())))
    }

    /// A write-behind resource: writes are logged durably under this
    /// process's write-behind directory and flushed to the store through
    /// `writer`. Opening replays what an earlier process left in the log.
    pub async fn write_behind_resource<V, W>(
        &self,
        name: &'static str,
        opts: ResourceOptions,
        weigh: fn(&V) -> usize,
        writer: W,
    ) -> Result<Resource<V>, CacheError>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        W: BatchWriter<V>,
    {
        check_name(name)?;
        let Some(inner) = &self.inner else {
            return Err(CacheError::Config {
                key: "cache.enabled".into(),
                value: "false".into(),
                reason: format!("resource `{name}` uses write_behind, which needs the cache"),
            });
        };
        let opts = ResourceOptions {
            strategy: WriteStrategy::WriteBehind,
            ..opts
        };
        let dir = inner
            .write_behind_dir
            .clone()
            .unwrap_or_else(|| inner.write_behind.dir.clone());
        let settings = write_behind::Options {
            dir,
            flush_interval: inner.write_behind.flush_interval,
            max_batch: inner.write_behind.max_batch,
            fsync: inner.write_behind.fsync,
        };
        let shutdown = self.shutdown_signal().ok_or(WriteBehindError::Closed)?;
        let codec = Codec::msgpack();
        let (wb, task) = WriteBehind::open(
            name,
            settings,
            codec,
            Arc::new(writer),
            Arc::downgrade(inner),
            shutdown,
        )
        .await?;
        self.add_task(task);
        inner
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(wb.handle());
        let mut resource = self.make(name, opts, weigh, Some(codec));
        resource.wb = Some(wb);
        Ok(resource)
    }
}

// === impl Resource ===

impl<V: Send + Sync + 'static> Resource<V> {
    /// The resource's name, as used in metric labels.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its settings.
    pub fn options(&self) -> ResourceOptions {
        self.opts
    }

    /// Its counters since the process started.
    pub fn stats(&self) -> ResourceStats {
        self.stats.snapshot()
    }

    fn count(&self, layer: &'static str, result: &'static str) {
        metrics::counter!(REQUESTS, "cache" => self.name, "layer" => layer, "result" => result)
            .increment(1);
    }

    fn count_load(&self, outcome: &'static str) {
        bump(&self.stats.loads);
        metrics::counter!(LOADS, "cache" => self.name, "outcome" => outcome).increment(1);
    }

    fn l2_key(&self, inner: &Inner, id: &Id) -> String {
        key::l2_key(&inner.namespace, self.name, self.opts.version, id)
    }

    /// The L2 and codec, if this resource uses an L2.
    fn l2<'a>(&'a self, inner: &'a Inner) -> Option<(&'a crate::l2::L2, Codec<V>)> {
        match (&inner.l2, self.codec) {
            (Some(l2), Some(codec)) if self.opts.l2 => Some((l2, codec)),
            _ => None,
        }
    }

    fn entry(&self, inner: &Inner, value: Option<Arc<V>>, ttl: Duration) -> Entry {
        let bytes = value
            .as_deref()
            .map_or(0, |v| (self.weigh)(v) + std::mem::size_of::<V>());
        let weight = (bytes.min(u32::MAX as usize) as u32).saturating_add(ENTRY_OVERHEAD);
        let ttl = inner.entry_ttl(ttl);
        Entry {
            value: value.map(|v| v as Arc<dyn Any + Send + Sync>),
            weight,
            ttl,
            expires_at: inner.clock.now() + ttl,
        }
    }

    fn downcast(&self, value: Option<Arc<dyn Any + Send + Sync>>) -> Result<Option<Arc<V>>, ()> {
        match value {
            None => Ok(None),
            Some(v) => v.downcast::<V>().map(Some).map_err(|_| ()),
        }
    }

    /// Cache-aside read: the cached value, or the loader's. Concurrent misses
    /// of one key share a single load; with an L2, misses on other instances
    /// wait for this one's value instead of loading too. `Ok(None)` (not
    /// found) is cached for the negative TTL. Redis trouble never fails a read.
    pub async fn get_or_load<E, F>(
        &self,
        id: impl Into<Id>,
        load: F,
    ) -> Result<Option<Arc<V>>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Option<V>, E>>,
    {
        let id = id.into();
        let Some(inner) = &self.cache.inner else {
            self.count("l1", "miss");
            bump(&self.stats.l1_misses);
            return match load.await {
                Ok(v) => {
                    self.count_load(if v.is_some() { "found" } else { "absent" });
                    Ok(v.map(Arc::new))
                }
                Err(e) => {
                    self.count_load("error");
                    Err(LoadError::Failed(Arc::new(e)))
                }
            };
        };
        let key = Key::new(self.name, id);
        inner.hot.observe(&key);
        if let Some(value) = self.wb.as_ref().and_then(|wb| wb.pending_value(&key.id)) {
            self.count("l1", "hit");
            bump(&self.stats.l1_hits);
            return Ok(Some(value));
        }
        if let Some(entry) = inner.l1.cache.get(&key).await {
            if entry.expires_at > inner.clock.now()
                && let Ok(value) = self.downcast(entry.value)
            {
                self.count("l1", "hit");
                bump(&self.stats.l1_hits);
                return Ok(value);
            }
            // Expired on our clock (or of another type under the same name):
            // drop it so the single-flight load below runs.
            inner.l1.cache.invalidate(&key).await;
        }
        self.count("l1", "miss");
        bump(&self.stats.l1_misses);
        let epoch = inner.l1.epoch(&key);
        let loaded = inner
            .l1
            .cache
            .try_get_with(key.clone(), self.fill(inner, &key, epoch, load))
            .await;
        let value = match loaded {
            Ok(entry) => entry.value,
            Err(miss) => match &*miss {
                Miss::Uncached(value) => value.clone(),
                Miss::Failed(e) => return Err(LoadError::Failed(Arc::clone(e))),
            },
        };
        // A type mismatch can only come from two resources sharing a name;
        // treat it as absent rather than panic.
        Ok(self.downcast(value).unwrap_or(None))
    }

    /// Runs once per key and instance for a miss: L2, then (under the L2 load
    /// lock) the loader.
    async fn fill<E, F>(
        &self,
        inner: &Inner,
        key: &Key,
        epoch: u64,
        load: F,
    ) -> Result<Entry, Miss<E>>
    where
        F: Future<Output = Result<Option<V>, E>>,
    {
        let Some((l2, codec)) = self.l2(inner) else {
            return self.finish(inner, key, epoch, load.await, None).await;
        };
        let l2_key = self.l2_key(inner, &key.id);
        match self.l2_lookup(inner, l2, codec, &l2_key).await {
            Ok(Some(entry)) => return Ok(entry),
            Ok(None) => {}
            Err(()) => {
                // Redis is out of reach: load without the lock and without
                // writing L2 back.
                return self.finish(inner, key, epoch, load.await, None).await;
            }
        }
        let lock_key = key::lock_key(&l2_key);
        let token = format!("{:016x}", rand::random::<u64>());
        match l2.try_lock(&lock_key, &token).await {
            Some(true) => {
                metrics::counter!(STAMPEDE, "cache" => self.name, "outcome" => "won").increment(1);
                let result = load.await;
                let filled = self
                    .finish(inner, key, epoch, result, Some((l2, codec, &l2_key)))
                    .await;
                l2.unlock(&lock_key, &token).await;
                filled
            }
            Some(false) => {
                // Another instance is loading this key: wait for its value.
                let deadline = tokio::time::Instant::now() + l2.lock_wait;
                let mut pause = Duration::from_millis(5);
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    let Some((found, locked)) = l2.get_and_lock_state(&l2_key, &lock_key).await
                    else {
                        break;
                    };
                    match self.l2_entry(inner, l2, codec, &l2_key, found).await {
                        Some(entry) => {
                            metrics::counter!(STAMPEDE, "cache" => self.name, "outcome" => "waited")
                                .increment(1);
                            return Ok(entry);
                        }
                        // The holder released the lock without a value (its
                        // load failed, or found nothing to cache): stop waiting.
                        None if !locked => break,
                        None => {}
                    }
                }
                metrics::counter!(STAMPEDE, "cache" => self.name, "outcome" => "gave_up")
                    .increment(1);
                let result = load.await;
                self.finish(inner, key, epoch, result, Some((l2, codec, &l2_key)))
                    .await
            }
            None => self.finish(inner, key, epoch, load.await, None).await,
        }
    }

    /// One L2 read: `Ok(Some)` hit, `Ok(None)` miss, `Err` unavailable.
    async fn l2_lookup(
        &self,
        inner: &Inner,
        l2: &crate::l2::L2,
        codec: Codec<V>,
        l2_key: &str,
    ) -> Result<Option<Entry>, ()> {
        match l2.get(l2_key).await {
            None => {
                self.count("l2", "unavailable");
                bump(&self.stats.l2_unavailable);
                Err(())
            }
            Some(found) => Ok(self.l2_entry(inner, l2, codec, l2_key, found).await),
        }
    }

    /// Turns what L2 answered into an L1 entry (`None`: a miss).
    async fn l2_entry(
        &self,
        inner: &Inner,
        l2: &crate::l2::L2,
        codec: Codec<V>,
        l2_key: &str,
        found: Option<(Vec<u8>, Option<u64>)>,
    ) -> Option<Entry> {
        match found {
            None => {
                self.count("l2", "miss");
                bump(&self.stats.l2_misses);
                None
            }
            Some((bytes, pttl_ms)) => match codec.decode_l2(&bytes) {
                Ok(value) => {
                    self.count("l2", "hit");
                    bump(&self.stats.l2_hits);
                    let full = if value.is_some() {
                        self.opts.ttl
                    } else {
                        self.opts.negative_ttl
                    };
                    // L1 keeps the entry no longer than L2 still would.
                    let ttl = pttl_ms.map_or(full, |ms| full.min(Duration::from_millis(ms.max(1))));
                    Some(self.entry(inner, value.map(Arc::new), ttl))
                }
                Err(reason) => {
                    // Written by incompatible code under the same version:
                    // drop it and load afresh.
                    tracing::warn!(cache = self.name, key = l2_key, %reason, "undecodable L2 entry dropped");
                    self.count("l2", "miss");
                    bump(&self.stats.l2_misses);
                    inner.l2_delete(l2, l2_key.to_owned()).await;
                    None
                }
            },
        }
    }

    /// Turns a load's result into an L1 entry and, if given, writes it to L2.
    async fn finish<E>(
        &self,
        inner: &Inner,
        key: &Key,
        epoch: u64,
        result: Result<Option<V>, E>,
        l2: Option<(&crate::l2::L2, Codec<V>, &str)>,
    ) -> Result<Entry, Miss<E>> {
        let value = match result {
            Ok(Some(v)) => {
                self.count_load("found");
                Some(Arc::new(v))
            }
            Ok(None) => {
                self.count_load("absent");
                None
            }
            Err(e) => {
                self.count_load("error");
                return Err(Miss::Failed(Arc::new(e)));
            }
        };
        let ttl = if value.is_some() {
            self.opts.ttl
        } else {
            self.opts.negative_ttl
        };
        let raced = inner.l1.epoch(key) != epoch;
        if ttl.is_zero() || raced {
            return Err(Miss::Uncached(
                value.map(|v| v as Arc<dyn Any + Send + Sync>),
            ));
        }
        if let Some((l2, codec, l2_key)) = l2 {
            match codec.encode_l2(value.as_deref()) {
                Ok(payload) => {
                    // Re-check right before the write: an invalidation that
                    // arrived during the load must win over this fill.
                    if inner.l1.epoch(key) == epoch {
                        l2.set(l2_key, &payload, ttl).await;
                    }
                }
                Err(reason) => {
                    tracing::warn!(cache = self.name, %reason, "value not cacheable in L2");
                }
            }
        }
        Ok(self.entry(inner, value, ttl))
    }

    /// Stores a value written elsewhere (after a store write, so the next
    /// read needs no load): in L1, in L2, and drops other instances' copies.
    pub async fn insert(&self, id: impl Into<Id>, value: Arc<V>) {
        let Some(inner) = &self.cache.inner else {
            return;
        };
        let key = Key::new(self.name, id.into());
        self.put(inner, &key, value).await;
        self.broadcast(inner, &key).await;
    }

    async fn put(&self, inner: &Inner, key: &Key, value: Arc<V>) {
        // Loads of this key still running would otherwise overwrite the
        // new value with what they read before the write.
        inner.l1.bump(key);
        if let Some((l2, codec)) = self.l2(inner) {
            let l2_key = self.l2_key(inner, &key.id);
            let stored = match codec.encode_l2(Some(&value)) {
                Ok(payload) => l2.set(&l2_key, &payload, self.opts.ttl).await,
                Err(_) => false,
            };
            if !stored {
                // The old value must not outlive the write in L2.
                inner.l2_delete(l2, l2_key).await;
            }
        }
        let entry = self.entry(inner, Some(value), self.opts.ttl);
        inner.l1.cache.insert(key.clone(), entry).await;
    }

    async fn broadcast(&self, inner: &Inner, key: &Key) {
        inner
            .bus
            .send(Event::Invalidate {
                resource: self.name.to_owned(),
                id: key.id.clone(),
            })
            .await;
    }

    /// Drops the cached value of `id` here, in L2 and on every other
    /// instance, e.g. after a store write.
    pub async fn invalidate(&self, id: impl Into<Id>) {
        let Some(inner) = &self.cache.inner else {
            return;
        };
        let key = Key::new(self.name, id.into());
        inner.l1.invalidate(&key).await;
        if let Some((l2, _)) = self.l2(inner) {
            inner.l2_delete(l2, self.l2_key(inner, &key.id)).await;
        }
        self.broadcast(inner, &key).await;
    }

    /// Writes `value` following the resource's strategy, and returns it once
    /// the write is acknowledged:
    ///
    /// * cache-aside: `store_write`, then invalidate everywhere;
    /// * write-through: `store_write`, then the new value in L1 and L2 (and
    ///   other instances' copies dropped);
    /// * write-behind: the value in the durable log and the cache;
    ///   `store_write` is not called (the batch writer writes later).
    ///
    /// A failed store write leaves the cache untouched.
    pub async fn write<E, F, Fut>(
        &self,
        id: impl Into<Id>,
        value: V,
        store_write: F,
    ) -> Result<Arc<V>, WriteError<E>>
    where
        F: FnOnce(Arc<V>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let id = id.into();
        let value = Arc::new(value);
        let strategy = match self.opts.strategy {
            WriteStrategy::CacheAside => "cache_aside",
            WriteStrategy::WriteThrough => "write_through",
            WriteStrategy::WriteBehind => "write_behind",
        };
        let outcome = match (&self.wb, self.opts.strategy) {
            (Some(wb), _) => match wb.append(id.clone(), value.clone()).await {
                Ok(()) => {
                    if let Some(inner) = &self.cache.inner {
                        let key = Key::new(self.name, id);
                        self.put(inner, &key, value.clone()).await;
                        self.broadcast(inner, &key).await;
                    }
                    Ok(())
                }
                Err(e) => Err(WriteError::Log(e)),
            },
            (None, WriteStrategy::WriteThrough) => match store_write(value.clone()).await {
                Ok(()) => {
                    self.insert(id, value.clone()).await;
                    Ok(())
                }
                Err(e) => Err(WriteError::Store(e)),
            },
            (None, _) => match store_write(value.clone()).await {
                Ok(()) => {
                    self.invalidate(id).await;
                    Ok(())
                }
                Err(e) => Err(WriteError::Store(e)),
            },
        };
        let result = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!(WRITES, "cache" => self.name, "strategy" => strategy, "outcome" => result)
            .increment(1);
        outcome.map(|()| value)
    }

    /// Runs a store write that produces the stored value (an `UPDATE ...
    /// RETURNING`, an insert that assigns an id) and updates the cache by the
    /// resource's strategy before returning:
    ///
    /// * cache-aside: the key is dropped everywhere;
    /// * write-through and write-behind: the returned value goes into L1 and
    ///   L2 and other instances drop their copies. A write-behind resource
    ///   uses this for writes that must not be deferred, such as creates.
    ///
    /// `Ok(None)` (nothing to write, e.g. no such row) drops the key
    /// everywhere, so a stale entry cannot outlive a write of a deleted row.
    /// A store error drops the key too, because a write whose outcome is
    /// unknown (a timeout after the commit) may have changed the row.
    pub async fn write_with<E, Fut>(
        &self,
        id: impl Into<Id>,
        store_write: Fut,
    ) -> Result<Option<Arc<V>>, WriteError<E>>
    where
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let id = id.into();
        let strategy = match self.opts.strategy {
            WriteStrategy::CacheAside => "cache_aside",
            WriteStrategy::WriteThrough => "write_through",
            WriteStrategy::WriteBehind => "write_behind",
        };
        let outcome = match store_write.await {
            Ok(Some(value)) => {
                let value = Arc::new(value);
                match &self.wb {
                    // An older acknowledged write of this key still waits in
                    // the log, and reads prefer pending values: log this one
                    // after it, so that it is the one read and flushed last.
                    Some(wb) if wb.pending_value(&id).is_some() => {
                        if let Err(e) = wb.append(id.clone(), value.clone()).await {
                            tracing::warn!(cache = self.name, key = %id, error = %e,
                                "could not supersede a pending write-behind value");
                            self.invalidate(id.clone()).await;
                        }
                    }
                    _ => {}
                }
                if self.opts.strategy == WriteStrategy::CacheAside {
                    self.invalidate(id).await;
                } else {
                    self.insert(id, value.clone()).await;
                }
                Ok(Some(value))
            }
            Ok(None) => {
                self.invalidate(id).await;
                Ok(None)
            }
            Err(e) => {
                self.invalidate(id).await;
                Err(WriteError::Store(e))
            }
        };
        let result = if outcome.is_ok() { "ok" } else { "error" };
        metrics::counter!(WRITES, "cache" => self.name, "strategy" => strategy, "outcome" => result)
            .increment(1);
        outcome
    }

    /// The acknowledged write-behind value of `id` that has not reached the
    /// store yet, if any. Reads that bypass the cache (e.g. to honour a
    /// read-your-writes token) must prefer it to what the store says.
    pub fn pending(&self, id: impl Into<Id>) -> Option<Arc<V>> {
        self.wb.as_ref()?.pending_value(&id.into())
    }

    /// Write-behind entries not yet in the store (0 for other strategies).
    pub fn pending_writes(&self) -> usize {
        self.wb.as_ref().map_or(0, |wb| wb.pending_len())
    }

    /// Writes every pending write-behind entry to the store now; returns how
    /// many were written.
    pub async fn flush(&self) -> Result<usize, CacheError> {
        match &self.wb {
            Some(wb) => Ok(wb.flush().await?),
            None => Ok(0),
        }
    }
}
