//! [`Cache`]: one per process. It owns the L1, the optional L2 connection, the
//! invalidation bus and its background tasks, the hot-key summary and the
//! registry of resources; [`crate::Resource`] views do the per-key work.
//!
//! Background tasks (bus receiver, heartbeat, L2 repair, write-behind
//! flushers) hold only weak references and stop when the last `Cache` clone
//! is dropped or [`Cache::shutdown`] is called.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use scalestack_config::{
    CacheConfig, InvalidationTransport, L1Eviction, L2Config, WriteBehindConfig,
};
use scalestack_resilience::{BreakerState, Clock, SystemClock};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::{self, Bus, Envelope, Event, GapTracker, Outbound};
use crate::hotkeys::HotKeys;
use crate::key::{self, Key};
use crate::l1::L1;
use crate::l2::L2;
use crate::metrics::{
    BREAKER_STATE, BYTES, ENTRIES, HIT_RATIO, HOT_KEY, INVALIDATION_GAPS, INVALIDATION_LAG,
    INVALIDATION_UP, INVALIDATIONS, PURGES,
};
use crate::resource::Stats;
use crate::write_behind::LogHandle;

/// Hot keys tracked by the space-saving summary.
const HOT_KEY_SLOTS: usize = 64;
/// Hot keys published as gauges.
const HOT_KEYS_REPORTED: usize = 10;
/// Most L2 deletes remembered for retry after Redis comes back.
const MAX_L2_REPAIRS: usize = 10_000;

/// Errors of building a cache or of its administrative operations. Reads
/// never fail because of the cache itself: only the loader's errors reach a
/// reader.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A setting cannot be used.
    #[error("invalid cache config `{key}` = {value}: {reason}")]
    Config {
        /// Dotted config key.
        key: String,
        /// The rejected value.
        value: String,
        /// What would be acceptable.
        reason: String,
    },
    /// The UDP socket of the peer invalidation bus could not be bound.
    #[error("cannot bind the cache invalidation socket udp://{addr}: {source}")]
    Bind {
        /// The address (the api instance's own listen address).
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Redis could not be reached for an administrative operation.
    #[error("the Redis L2 is unavailable for {op}")]
    L2Unavailable {
        /// The operation.
        op: String,
    },
    /// The write-behind log failed.
    #[error(transparent)]
    WriteBehind(#[from] crate::write_behind::WriteBehindError),
}

/// The processes that invalidate each other over UDP (embedded stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// This instance's address: datagrams are received on the UDP port of
    /// the same number and sent from it.
    pub this: SocketAddr,
    /// Every instance's address; `this` may be included and is skipped.
    pub all: Vec<SocketAddr>,
}

impl Peers {
    /// The api instances of `scalestack up` (`api.listen` + `i` for each of
    /// `api.instances`), seen from instance `index`.
    pub fn api_instances(api: &scalestack_config::ApiConfig, index: u16) -> Self {
        Self {
            this: api.instance_addr(index),
            all: (0..api.instances).map(|i| api.instance_addr(i)).collect(),
        }
    }

    /// Every process of the embedded stack that may change cached data: the
    /// api instances and the worker (whose consumers change stock, for
    /// example), seen from the process listening on `this`. Each member
    /// accepts invalidations only from these addresses.
    pub fn stack(config: &scalestack_config::Config, this: SocketAddr) -> Self {
        let mut all: Vec<SocketAddr> = (0..config.api.instances)
            .map(|i| config.api.instance_addr(i))
            .collect();
        all.push(config.worker.listen);
        Self { this, all }
    }
}

/// What one purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Keys deleted from the L2 (0 without an L2).
    pub l2_keys: u64,
    /// Whether other instances were told to purge their L1.
    pub broadcast: bool,
}

/// Builds a [`Cache`] from configuration plus what only the running process
/// knows (its peers, where its data lives).
pub struct CacheBuilder {
    enabled: bool,
    l1_max_bytes: u64,
    eviction: L1Eviction,
    namespace: String,
    l2: L2Config,
    transport: InvalidationTransport,
    heartbeat: Duration,
    peers: Option<Peers>,
    clock: Arc<dyn Clock>,
    write_behind: WriteBehindConfig,
    write_behind_dir: Option<PathBuf>,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("enabled", &self.enabled)
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("l2", &self.l2.mode)
            .field("transport", &self.transport)
            .finish()
    }
}

impl CacheBuilder {
    /// Settings from the `[cache]` section.
    pub fn from_config(config: &CacheConfig) -> Self {
        Self {
            enabled: config.enabled,
            l1_max_bytes: config.l1_max_bytes,
            eviction: config.l1_eviction,
            namespace: config.namespace.clone(),
            l2: config.l2.clone(),
            transport: config.invalidation.transport,
            heartbeat: config.invalidation.heartbeat,
            peers: None,
            clock: Arc::new(SystemClock),
            write_behind: config.write_behind.clone(),
            write_behind_dir: None,
        }
    }

    /// The api instances for the UDP invalidation bus.
    pub fn peers(mut self, peers: Peers) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Directory of this process's write-behind logs, normally
    /// `WriteBehindConfig::instance_dir` (e.g. `data/cache-wal/api-0`), so
    /// that a restarted instance replays its own log. Without it,
    /// `cache.write_behind.dir` is used as is (relative to the working directory).
    pub fn write_behind_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.write_behind_dir = Some(dir.into());
        self
    }

    /// The clock of TTLs and of the L2 breaker (tests use a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Connects nothing yet (Redis is reached lazily, so a cache starts while
    /// Redis is down), binds the UDP socket if the peer bus is used, and
    /// starts the background tasks. Must run inside a Tokio runtime.
    pub async fn build(self) -> Result<Cache, CacheError> {
        if !self.enabled {
            return Ok(Cache::disabled());
        }
        crate::metrics::describe();
        let l2 = L2::new(&self.l2, self.clock.clone())?.map(Arc::new);
        let transport = match self.transport {
            InvalidationTransport::Auto if l2.is_some() => InvalidationTransport::Redis,
            InvalidationTransport::Auto if self.peers.is_some() => InvalidationTransport::Peers,
            InvalidationTransport::Auto => InvalidationTransport::Off,
            other => other,
        };
        let mut udp = None;
        let outbound = match transport {
            InvalidationTransport::Redis => {
                let Some(l2) = &l2 else {
                    return Err(CacheError::Config {
                        key: "cache.invalidation.transport".into(),
                        value: "\"redis\"".into(),
                        reason: "needs cache.l2.mode = \"standalone\" or \"cluster\"".into(),
                    });
                };
                Outbound::Redis {
                    l2: l2.clone(),
                    channel: format!("{}:invalidate", self.namespace),
                }
            }
            InvalidationTransport::Peers => {
                let Some(peers) = &self.peers else {
                    return Err(CacheError::Config {
                        key: "cache.invalidation.transport".into(),
                        value: "\"peers\"".into(),
                        reason: "this process was not given the api instances' addresses".into(),
                    });
                };
                let others: Vec<SocketAddr> = peers
                    .all
                    .iter()
                    .copied()
                    .filter(|a| *a != peers.this)
                    .collect();
                if others.is_empty() {
                    Outbound::Off
                } else {
                    let socket =
                        UdpSocket::bind(peers.this)
                            .await
                            .map_err(|source| CacheError::Bind {
                                addr: peers.this,
                                source,
                            })?;
                    let socket = Arc::new(socket);
                    udp = Some((socket.clone(), others.clone()));
                    Outbound::Udp {
                        socket,
                        peers: others,
                    }
                }
            }
            InvalidationTransport::Off | InvalidationTransport::Auto => Outbound::Off,
        };
        let bus = Bus::new(outbound);
        let redis_bus = matches!(transport, InvalidationTransport::Redis);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            l1: L1::new(self.l1_max_bytes, self.eviction),
            l2: l2.clone(),
            bus_up: AtomicBool::new(!redis_bus),
            redis_bus,
            bus,
            clock: self.clock,
            namespace: self.namespace,
            hot: HotKeys::new(HOT_KEY_SLOTS),
            names: Mutex::new(HashMap::new()),
            gaps: Mutex::new(GapTracker::default()),
            degraded_ttl: self.heartbeat,
            shutdown,
            tasks: Mutex::new(Vec::new()),
            write_behind: self.write_behind,
            write_behind_dir: self.write_behind_dir,
            l2_repairs: Mutex::new(HashSet::new()),
            reported_hot: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
        });
        metrics::gauge!(INVALIDATION_UP).set(if redis_bus { 0.0 } else { 1.0 });
        let weak = Arc::downgrade(&inner);
        let mut tasks = Vec::new();
        if let Some((socket, others)) = udp {
            tasks.push(tokio::spawn(bus::udp_loop(
                socket,
                others,
                weak.clone(),
                shutdown_rx.clone(),
            )));
        }
        if redis_bus && let Some(l2) = &l2 {
            tasks.push(tokio::spawn(bus::redis_loop(
                l2.pubsub_urls.clone(),
                format!("{}:invalidate", inner.namespace),
                self.heartbeat,
                weak.clone(),
                shutdown_rx.clone(),
            )));
        }
        if !inner.bus.is_off() {
            tasks.push(tokio::spawn(bus::heartbeat_loop(
                self.heartbeat,
                weak.clone(),
                shutdown_rx.clone(),
            )));
        }
        if l2.is_some() {
            tasks.push(tokio::spawn(repair_loop(self.heartbeat, weak, shutdown_rx)));
        }
        inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        Ok(Cache { inner: Some(inner) })
    }
}

/// The process's cache: one L1 budget shared by every resource, the L2
/// connection, and the invalidation bus. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("enabled", &self.inner.is_some());
        if let Some(inner) = &self.inner {
            d.field("l2", &inner.l2.is_some())
                .field("transport", &inner.bus.transport());
        }
        d.finish()
    }
}

pub(crate) struct Inner {
    pub(crate) l1: L1,
    pub(crate) l2: Option<Arc<L2>>,
    pub(crate) bus: Bus,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) namespace: String,
    pub(crate) hot: HotKeys,
    /// Resource names by string (for remote events) with their statistics.
    names: Mutex<HashMap<String, (&'static str, Arc<Stats>)>>,
    gaps: Mutex<GapTracker>,
    /// Whether invalidations are known to arrive (always true for UDP).
    bus_up: AtomicBool,
    redis_bus: bool,
    /// Longest life of an L1 entry while the Redis bus is down.
    degraded_ttl: Duration,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) write_behind: WriteBehindConfig,
    pub(crate) write_behind_dir: Option<PathBuf>,
    /// L2 keys whose delete failed; retried when Redis answers again.
    l2_repairs: Mutex<HashSet<String>>,
    reported_hot: Mutex<Vec<(String, String)>>,
    /// The write-behind logs of this cache's resources.
    pub(crate) logs: Mutex<Vec<Weak<dyn LogHandle>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Inner {
    /// Registers a resource name; returns its interned name and statistics.
    pub(crate) fn register(&self, name: &'static str) -> Arc<Stats> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .entry(name.to_owned())
            .or_insert_with(|| (name, Arc::new(Stats::default())))
            .1
            .clone()
    }

    fn name_of(&self, resource: &str) -> Option<&'static str> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.get(resource).map(|(n, _)| *n)
    }

    /// The life of a new L1 entry: shortened while invalidations may be lost.
    pub(crate) fn entry_ttl(&self, ttl: Duration) -> Duration {
        if self.redis_bus && !self.bus_up.load(Ordering::Acquire) {
            ttl.min(self.degraded_ttl)
        } else {
            ttl
        }
    }

    /// Applies a message from another instance.
    pub(crate) async fn receive(&self, envelope: Envelope, transport: &'static str) {
        metrics::counter!(INVALIDATIONS, "direction" => "received", "transport" => transport)
            .increment(1);
        let heartbeat = matches!(envelope.event, Event::Heartbeat);
        if !heartbeat {
            let lag_us = bus::now_us().saturating_sub(envelope.sent_us);
            metrics::histogram!(INVALIDATION_LAG).record(lag_us as f64 / 1e6);
        }
        let gap = self.gaps.lock().unwrap_or_else(|p| p.into_inner()).observe(
            envelope.origin,
            envelope.seq,
            heartbeat,
        );
        if gap {
            metrics::counter!(INVALIDATION_GAPS).increment(1);
            tracing::warn!(
                origin = envelope.origin,
                seq = envelope.seq,
                transport,
                "invalidations were lost; purging the L1 cache"
            );
            self.l1.purge_prefix("");
        }
        match envelope.event {
            Event::Heartbeat => {}
            Event::Invalidate { resource, id } => {
                if let Some(name) = self.name_of(&resource) {
                    self.l1.invalidate(&Key::new(name, id)).await;
                }
            }
            Event::Purge { prefix } => {
                self.l1.purge_prefix(&prefix);
                let scope = if prefix.is_empty() { "all" } else { "prefix" };
                metrics::counter!(PURGES, "scope" => scope, "origin" => "remote").increment(1);
            }
        }
    }

    /// Records whether the Redis bus works; going down purges the L1, since
    /// invalidations sent meanwhile are lost.
    pub(crate) fn set_bus_up(&self, up: bool) {
        let was = self.bus_up.swap(up, Ordering::AcqRel);
        if was == up {
            return;
        }
        metrics::gauge!(INVALIDATION_UP).set(if up { 1.0 } else { 0.0 });
        if up {
            tracing::info!("cache invalidation bus is up");
        } else {
            tracing::warn!("cache invalidation bus is down; purging the L1 cache");
            self.l1.purge_prefix("");
        }
    }

    /// Deletes an L2 key, remembering it for a retry if Redis does not answer.
    pub(crate) async fn l2_delete(&self, l2: &L2, key: String) {
        if !l2.del(&key).await {
            let mut repairs = self.l2_repairs.lock().unwrap_or_else(|p| p.into_inner());
            if repairs.len() < MAX_L2_REPAIRS {
                repairs.insert(key);
            } else {
                tracing::warn!(
                    key,
                    "too many L2 deletes pending; this entry may stay stale until its TTL"
                );
            }
        }
    }
}

/// Retries failed L2 deletes once Redis answers again.
async fn repair_loop(interval: Duration, inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let Some(l2) = inner.l2.clone() else { return };
        if l2.breaker_state() == BreakerState::Open {
            continue;
        }
        let keys: Vec<String> = {
            let repairs = inner.l2_repairs.lock().unwrap_or_else(|p| p.into_inner());
            repairs.iter().take(500).cloned().collect()
        };
        for key in keys {
            if !l2.del(&key).await {
                break;
            }
            inner
                .l2_repairs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

impl Cache {
    /// An L1-only cache bounded to about `max_bytes` of values plus
    /// bookkeeping, with TinyLFU admission, no L2 and no invalidation bus.
    /// Needs no runtime; [`CacheBuilder`] builds the full tier.
    pub fn new(max_bytes: u64) -> Self {
        crate::metrics::describe();
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Some(Arc::new(Inner {
                l1: L1::new(max_bytes, L1Eviction::TinyLfu),
                l2: None,
                bus: Bus::new(Outbound::Off),
                clock: Arc::new(SystemClock),
                namespace: CacheConfig::default().namespace,
                hot: HotKeys::new(HOT_KEY_SLOTS),
                names: Mutex::new(HashMap::new()),
                gaps: Mutex::new(GapTracker::default()),
                bus_up: AtomicBool::new(true),
                redis_bus: false,
                degraded_ttl: Duration::MAX,
                shutdown,
                tasks: Mutex::new(Vec::new()),
                write_behind: WriteBehindConfig::default(),
                write_behind_dir: None,
                l2_repairs: Mutex::new(HashSet::new()),
                reported_hot: Mutex::new(Vec::new()),
                logs: Mutex::new(Vec::new()),
            })),
        }
    }

    /// The builder for a cache from the `[cache]` section.
    pub fn builder(config: &CacheConfig) -> CacheBuilder {
        CacheBuilder::from_config(config)
    }

    /// A cache that holds nothing: every read goes to the loader.
    pub fn disabled() -> Self {
        crate::metrics::describe();
        Self { inner: None }
    }

    /// Whether values are kept at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a Redis L2 is configured.
    pub fn has_l2(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.l2.is_some())
    }

    /// The L2 breaker's state, if there is an L2.
    pub fn l2_breaker(&self) -> Option<BreakerState> {
        self.inner
            .as_ref()?
            .l2
            .as_ref()
            .map(|l2| l2.breaker_state())
    }

    /// `udp`, `redis` or `off`: how this cache tells others about writes.
    pub fn invalidation_transport(&self) -> &'static str {
        self.inner.as_ref().map_or("off", |i| i.bus.transport())
    }

    /// Whether invalidations from other instances are known to arrive.
    pub fn invalidation_up(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.bus_up.load(Ordering::Acquire))
    }

    /// Drops every entry of every resource, in L1, in L2 (all versions) and
    /// in every other instance's L1.
    pub async fn purge_all(&self) -> Result<PurgeReport, CacheError> {
        self.purge_prefix("").await
    }

    /// Drops every entry whose `resource:id` starts with `prefix`: `users`
    /// purges the users resource, `users:12` ids 12, 120, 1200... The L1s are
    /// purged even if the L2 cannot be reached, which is then the error.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<PurgeReport, CacheError> {
        let Some(inner) = &self.inner else {
            return Ok(PurgeReport {
                l2_keys: 0,
                broadcast: false,
            });
        };
        let scope = if prefix.is_empty() { "all" } else { "prefix" };
        metrics::counter!(PURGES, "scope" => scope, "origin" => "local").increment(1);
        inner.l1.purge_prefix(prefix);
        let l2_keys = match &inner.l2 {
            Some(l2) => l2.purge(&key::l2_pattern(&inner.namespace, prefix)).await?,
            None => 0,
        };
        inner
            .bus
            .send(Event::Purge {
                prefix: prefix.to_owned(),
            })
            .await;
        // Loads that ran during the L2 scan may have refilled the L1.
        inner.l1.purge_prefix(prefix);
        Ok(PurgeReport {
            l2_keys,
            broadcast: !inner.bus.is_off(),
        })
    }

    /// The deep health check of the cache: every write-behind log's append
    /// thread answers and its disk accepts a sync.
    ///
    /// Nothing else can fail here. The L1 is process memory, and reading a
    /// probe entry back would be a false alarm whenever TinyLFU declines to
    /// admit it; the L2 is optional by design (Redis down means slower
    /// reads, not failed ones), so its state is reported by metrics and
    /// [`Cache::l2_breaker`], never as an unhealthy process that a balancer
    /// would take out of rotation.
    pub async fn check(&self) -> Result<(), CacheError> {
        for log in self.logs() {
            log.sync().await?;
        }
        Ok(())
    }

    /// Writes every pending write-behind entry of every resource to the
    /// store now; returns how many were written. Stops at the first
    /// resource whose store write fails (its entries stay pending).
    pub async fn flush_write_behind(&self) -> Result<usize, CacheError> {
        let mut written = 0;
        for log in self.logs() {
            written += log.flush().await?;
        }
        Ok(written)
    }

    /// The live write-behind logs.
    fn logs(&self) -> Vec<std::sync::Arc<dyn LogHandle>> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let mut logs = inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.retain(|l| l.strong_count() > 0);
        logs.iter().filter_map(Weak::upgrade).collect()
    }

    /// The `n` hottest keys (`resource:id`, approximate recent lookups).
    pub fn hot_keys(&self, n: usize) -> Vec<(String, u64)> {
        self.inner.as_ref().map_or_else(Vec::new, |i| i.hot.top(n))
    }

    /// Publishes entry count, bytes, hit ratios, hot keys and the breaker
    /// state as gauges (call before a scrape).
    pub fn update_gauges(&self) {
        let Some(inner) = &self.inner else { return };
        metrics::gauge!(ENTRIES).set(inner.l1.cache.entry_count() as f64);
        metrics::gauge!(BYTES).set(inner.l1.cache.weighted_size() as f64);
        let resources: Vec<(&'static str, Arc<Stats>)> = inner
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for (name, stats) in resources {
            if let Some(ratio) = stats.snapshot().hit_ratio() {
                metrics::gauge!(HIT_RATIO, "cache" => name).set(ratio);
            }
        }
        if let Some(l2) = &inner.l2 {
            metrics::gauge!(BREAKER_STATE).set(l2.breaker_state().as_gauge());
        }
        let top = inner.hot.top(HOT_KEYS_REPORTED);
        let mut reported = inner.reported_hot.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<(String, String)> = top
            .iter()
            .enumerate()
            .map(|(i, (k, _))| ((i + 1).to_string(), k.clone()))
            .collect();
        // A key that left the top list is set to zero rather than left at
        // its last value, so a dashboard does not show a stale celebrity.
        for (rank, key) in reported.iter() {
            if !now.contains(&(rank.clone(), key.clone())) {
                metrics::gauge!(HOT_KEY, "rank" => rank.clone(), "key" => key.clone()).set(0.0);
            }
        }
        for ((rank, key), (_, count)) in now.iter().zip(&top) {
            metrics::gauge!(HOT_KEY, "rank" => rank.clone(), "key" => key.clone())
                .set(*count as f64);
        }
        *reported = now;
    }

    /// Applies pending evictions and expiries now (moka batches them); lets
    /// tests and health checks see an exact state.
    pub async fn run_pending_tasks(&self) {
        if let Some(inner) = &self.inner {
            inner.l1.cache.run_pending_tasks().await;
        }
    }

    /// Stops the background tasks after a last flush of every write-behind
    /// resource, and waits for them. Call on graceful shutdown; without it,
    /// unflushed writes stay in the log and are replayed at the next start.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        let _ = inner.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    pub(crate) fn shutdown_signal(&self) -> Option<watch::Receiver<bool>> {
        self.inner.as_ref().map(|i| i.shutdown.subscribe())
    }

    pub(crate) fn add_task(&self, task: JoinHandle<()>) {
        if let Some(inner) = &self.inner {
            inner
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(task);
        }
    }
}
