//! A proptest model of the cache: random sequences of reads, writes of both
//! strategies, invalidations, purges, out-of-band store changes and clock
//! moves, checked against a plain map with expiry times.
//!
//! The model says what a read must return: the cached value while it has
//! not expired (even if the store changed behind the cache's back), else the
//! store's value, which is then cached for the TTL (or the negative TTL for
//! "not found"). TTLs run on a manual clock; moka's own wall-clock expiry is
//! far beyond what a case takes, so it never interferes. The L2 variant runs
//! the same model through a real Redis without clock moves (Redis keeps its
//! own time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use scalestack_cache::{Cache, Resource, ResourceOptions, WriteStrategy};
use scalestack_config::CacheConfig;
use scalestack_resilience::ManualClock;
use scalestack_testkit::redis::RedisServer;

use crate::support::{Store, standalone, without_bus};

const TTL: u64 = 10;
const NEGATIVE_TTL: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Read(i64),
    WriteAside(i64, u8),
    WriteThrough(i64, u8),
    Invalidate(i64),
    /// The store changes without telling the cache.
    StoreOnly(i64, u8),
    PurgePrefix(i64),
    PurgeAll,
    Advance(u64),
}

fn op(with_clock: bool) -> impl Strategy<Value = Op> {
    let id = 0i64..13;
    let advance = if with_clock { 0u64..12 } else { 0u64..1 };
    prop_oneof![
        6 => id.clone().prop_map(Op::Read),
        2 => (id.clone(), any::<u8>()).prop_map(|(i, v)| Op::WriteAside(i, v)),
        2 => (id.clone(), any::<u8>()).prop_map(|(i, v)| Op::WriteThrough(i, v)),
        1 => id.clone().prop_map(Op::Invalidate),
        2 => (id, any::<u8>()).prop_map(|(i, v)| Op::StoreOnly(i, v)),
        1 => (0i64..3).prop_map(Op::PurgePrefix),
        1 => Just(Op::PurgeAll),
        2 => advance.prop_map(Op::Advance),
    ]
}

/// The reference: store rows and cached entries with their expiry second.
#[derive(Default)]
struct Model {
    now: u64,
    store: HashMap<i64, String>,
    cached: HashMap<i64, (Option<String>, u64)>,
}

impl Model {
    fn read(&mut self, id: i64) -> Option<String> {
        if let Some((v, expires)) = self.cached.get(&id)
            && *expires > self.now
        {
            return v.clone();
        }
        let v = self.store.get(&id).cloned();
        let ttl = if v.is_some() { TTL } else { NEGATIVE_TTL };
        self.cached.insert(id, (v.clone(), self.now + ttl));
        v
    }
}

async fn run(ops: Vec<Op>, cache: Cache, clock: Arc<ManualClock>) -> Result<(), TestCaseError> {
    let opts = ResourceOptions {
        negative_ttl: Duration::from_secs(NEGATIVE_TTL),
        ..ResourceOptions::new(Duration::from_secs(TTL))
    };
    let aside: Resource<String> = cache
        .resource_with("m", opts, crate::support::weigh)
        .unwrap();
    let through: Resource<String> = cache
        .resource_with(
            "m",
            ResourceOptions {
                strategy: WriteStrategy::WriteThrough,
                ..opts
            },
            crate::support::weigh,
        )
        .unwrap();
    let store = Store::default();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Read(id) => {
                let got = store.read(&aside, id).await;
                let want = model.read(id);
                prop_assert_eq!(got, want, "read of {} at {}s", id, model.now);
            }
            Op::WriteAside(id, v) => {
                store.write(&aside, id, &v.to_string()).await;
                model.store.insert(id, v.to_string());
                model.cached.remove(&id);
            }
            Op::WriteThrough(id, v) => {
                store.write(&through, id, &v.to_string()).await;
                model.store.insert(id, v.to_string());
                model
                    .cached
                    .insert(id, (Some(v.to_string()), model.now + TTL));
            }
            Op::Invalidate(id) => {
                aside.invalidate(id).await;
                model.cached.remove(&id);
            }
            Op::StoreOnly(id, v) => {
                store.set(id, &v.to_string());
                model.store.insert(id, v.to_string());
            }
            Op::PurgePrefix(digit) => {
                let prefix = digit.to_string();
                cache.purge_prefix(&format!("m:{prefix}")).await.unwrap();
                model
                    .cached
                    .retain(|id, _| !id.to_string().starts_with(&prefix));
            }
            Op::PurgeAll => {
                cache.purge_all().await.unwrap();
                model.cached.clear();
            }
            Op::Advance(secs) => {
                clock.advance(Duration::from_secs(secs));
                model.now += secs;
            }
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn build(config: &CacheConfig) -> (Cache, Arc<ManualClock>) {
    crate::support::metrics();
    let clock = Arc::new(ManualClock::new());
    let cache = Cache::builder(config)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    (cache, clock)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn l1_behaves_like_a_map_with_expiry(ops in proptest::collection::vec(op(true), 1..80)) {
        let rt = runtime();
        rt.block_on(async {
            let (cache, clock) = build(&CacheConfig::default()).await;
            run(ops, cache, clock).await
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn l1_and_l2_behave_like_a_map(ops in proptest::collection::vec(op(false), 1..60)) {
        let redis = RedisServer::shared().unwrap();
        let rt = runtime();
        rt.block_on(async {
            // A fresh namespace per case: an empty L2 for an empty model.
            let mut config = without_bus(standalone(redis.url()));
            // The L1 is off, so every read that the model answers from the
            // cache must really come out of Redis.
            config.l1_max_bytes = 0;
            let (cache, clock) = build(&config).await;
            run(ops, cache, clock).await
        })?;
    }
}
