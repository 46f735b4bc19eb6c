//! Load driver for `cargo xtask bench cache`: how many reads per second the
//! cache's L2 path (L1 off, so every read is one pipelined GET + PTTL to
//! Redis through the breaker) sustains against a given Redis, to be set next
//! to `redis-benchmark -t get` on the same server.
//!
//! Built by `cargo bench` (release profile) and driven by xtask through
//! environment variables; prints one `RESULT` line. Not a criterion bench:
//! this is a closed-loop load test with a fixed number of concurrent callers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scalestack_cache::{Cache, ResourceOptions};
use scalestack_config::{CacheConfig, InvalidationTransport, L2Mode};
use scalestack_telemetry::procfs;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(clippy::ptr_arg)] // The weigher signature is `fn(&V)` with V = String.
fn weigh(s: &String) -> usize {
    s.len()
}

fn main() {
    let Ok(url) = std::env::var("L2_BENCH_URL") else {
        // `cargo bench --workspace` runs every bench; this one needs a Redis
        // from xtask, so without one it says so and succeeds.
        println!("l2_ceiling: set L2_BENCH_URL (use `cargo xtask bench cache`)");
        return;
    };
    let callers: usize = env("L2_BENCH_CALLERS", 50);
    let keys: i64 = env("L2_BENCH_KEYS", 10_000);
    let value_bytes: usize = env("L2_BENCH_VALUE_BYTES", 100);
    let warmup = Duration::from_secs_f64(env("L2_BENCH_WARMUP", 2.0));
    let seconds = Duration::from_secs_f64(env("L2_BENCH_SECONDS", 10.0));
    let threads: usize = env("L2_BENCH_THREADS", 2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut config = CacheConfig {
            l1_max_bytes: 0,
            namespace: "bench".into(),
            ..CacheConfig::default()
        };
        config.l2.mode = L2Mode::Standalone;
        config.l2.urls = vec![url];
        config.invalidation.transport = InvalidationTransport::Off;
        let cache = Cache::builder(&config).build().await.expect("cache");
        let r = cache
            .resource_with::<String>("b", ResourceOptions::new(Duration::from_secs(3600)), weigh)
            .expect("resource");
        let value = "x".repeat(value_bytes);
        for id in 0..keys {
            r.insert(id, Arc::new(value.clone())).await;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let (ops, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let (r, stop, measuring, ops, misses) = (
                    r.clone(),
                    stop.clone(),
                    measuring.clone(),
                    ops.clone(),
                    misses.clone(),
                );
                tokio::spawn(async move {
                    // A cheap per-caller sequence spreads reads over all keys.
                    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let id = (x % keys as u64) as i64;
                        let got = r
                            .get_or_load(id, async { Ok::<_, ()>(None::<String>) })
                            .await;
                        if measuring.load(Ordering::Relaxed) {
                            ops.fetch_add(1, Ordering::Relaxed);
                            if !matches!(got, Ok(Some(_))) {
                                misses.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(warmup).await;
        let cpu_before = procfs::self_stat().map(|s| s.cpu).unwrap_or_default();
        let started = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(seconds).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = procfs::self_stat()
            .map(|s| s.cpu)
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let ops = ops.load(Ordering::Relaxed);
        println!(
            "RESULT ops={ops} seconds={elapsed:.3} client_cpu_seconds={:.3} misses={}",
            cpu.as_secs_f64(),
            misses.load(Ordering::Relaxed)
        );
    });
}
