//! Helpers shared by the tier tests: a test config per Redis, a store with a
//! load counter, and the global metrics recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use scalestack_cache::{Cache, Resource, ResourceOptions};
use scalestack_config::{CacheConfig, InvalidationTransport, L2Mode};

/// The process-wide Prometheus recorder, installed before the first cache.
pub(crate) fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other recorder in this test binary")
    })
}

/// A namespace no other test uses, so tests can share one Redis.
pub(crate) fn namespace() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A config with an L2 on `urls`, generous lock waits (so that a slow
/// machine never turns the one stampede load into two) and a fast heartbeat.
pub(crate) fn l2_config(mode: L2Mode, urls: Vec<String>) -> CacheConfig {
    let mut c = CacheConfig {
        namespace: namespace(),
        ..CacheConfig::default()
    };
    c.l2.mode = mode;
    c.l2.urls = urls;
    c.l2.timeout = Duration::from_secs(1);
    c.l2.lock_ttl = Duration::from_secs(10);
    c.l2.lock_wait = Duration::from_secs(10);
    c.invalidation.heartbeat = Duration::from_millis(200);
    c
}

/// A standalone-Redis config.
pub(crate) fn standalone(url: String) -> CacheConfig {
    l2_config(L2Mode::Standalone, vec![url])
}

/// The same config without the invalidation bus.
pub(crate) fn without_bus(mut c: CacheConfig) -> CacheConfig {
    c.invalidation.transport = InvalidationTransport::Off;
    c
}

pub(crate) async fn cache(config: &CacheConfig) -> Cache {
    metrics();
    Cache::builder(config).build().await.unwrap()
}

/// Waits until every cache hears its own heartbeats back through Redis.
pub(crate) async fn wait_bus_up(caches: &[&Cache]) {
    let up = scalestack_testkit::eventually(Duration::from_secs(20), || async {
        caches.iter().all(|c| c.invalidation_up()).then_some(())
    })
    .await;
    assert!(up.is_some(), "the invalidation bus came up");
}

#[allow(clippy::ptr_arg)] // The weigher signature is `fn(&V)` with V = String.
pub(crate) fn weigh(s: &String) -> usize {
    s.len()
}

pub(crate) fn users(cache: &Cache, opts: ResourceOptions) -> Resource<String> {
    cache.resource_with("users", opts, weigh).unwrap()
}

pub(crate) fn ttl(secs: u64) -> ResourceOptions {
    ResourceOptions::new(Duration::from_secs(secs))
}

/// The system of record: rows, and how often they were read.
#[derive(Clone, Default)]
pub(crate) struct Store {
    rows: Arc<Mutex<HashMap<i64, String>>>,
    pub(crate) loads: Arc<AtomicUsize>,
}

impl Store {
    pub(crate) fn set(&self, id: i64, v: &str) {
        self.rows.lock().unwrap().insert(id, v.to_owned());
    }

    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Reads `id` through `r` with this store as the loader.
    pub(crate) async fn read(&self, r: &Resource<String>, id: i64) -> Option<String> {
        self.read_slow(r, id, Duration::ZERO).await
    }

    /// The same, with a loader that takes `delay`.
    pub(crate) async fn read_slow(
        &self,
        r: &Resource<String>,
        id: i64,
        delay: Duration,
    ) -> Option<String> {
        r.get_or_load(id, async {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, String>(self.rows.lock().unwrap().get(&id).cloned())
        })
        .await
        .unwrap()
        .map(|v| (*v).clone())
    }

    /// A cache-aside or write-through store write of `v` to `id`.
    pub(crate) async fn write(&self, r: &Resource<String>, id: i64, v: &str) {
        let rows = self.rows.clone();
        r.write(id, v.to_owned(), |v| async move {
            rows.lock().unwrap().insert(id, (*v).clone());
            Ok::<(), String>(())
        })
        .await
        .unwrap();
    }
}
