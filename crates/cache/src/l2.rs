//! The Redis L2: one connection (standalone, through redis-rs's reconnecting
//! `ConnectionManager`; or a Redis Cluster through `cluster-async`) behind a
//! circuit breaker and a per-call timeout.
//!
//! Every call here either answers in time or returns `None`, and counts its
//! outcome on the breaker: Redis down, slow or refusing never becomes an error
//! of a cache read. When the breaker is open, calls are skipped at once (the
//! read goes to the loader) until the breaker lets a few probes through.
//!
//! This module owns the Redis commands of the cache (GET with PTTL, SET with
//! PX, the load lock, PUBLISH, purges by SCAN); it knows nothing of values,
//! resources or L1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisResult, Script};
use scalestack_config::{L2Config, L2Mode};
use scalestack_resilience::{BreakerConfig, BreakerState, CircuitBreaker, Clock};

use crate::CacheError;
use crate::metrics::{BREAKER_STATE, BREAKER_TRANSITIONS, L2_DURATION, L2_ERRORS, L2_REJECTED};

/// Deletes the lock only if it still holds our token: a holder that overran
/// its lock must not release a lock another instance took since.
const UNLOCK: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Keys per SCAN step of a purge.
const SCAN_COUNT: usize = 500;

enum Conn {
    Standalone(ConnectionManager),
    Cluster {
        client: Box<ClusterClient>,
        /// Connected on first use, so that a cache can start while Redis is down.
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
}

/// The L2 connection with its breaker and timeouts.
pub(crate) struct L2 {
    conn: Conn,
    breaker: CircuitBreaker,
    timeout: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    /// Where pub/sub subscriptions connect (any node of a cluster receives
    /// every message published in it).
    pub(crate) pubsub_urls: Vec<String>,
    unlock: Script,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("urls", &self.pubsub_urls)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl L2 {
    /// Creates the client; no connection is made until the first call, so a
    /// cache starts even while Redis is down.
    pub(crate) fn new(config: &L2Config, clock: Arc<dyn Clock>) -> Result<Option<L2>, CacheError> {
        let bad_url = |url: &str, e: redis::RedisError| CacheError::Config {
            key: "cache.l2.urls".into(),
            value: url.to_owned(),
            reason: e.to_string(),
        };
        let conn = match config.mode {
            L2Mode::Off => return Ok(None),
            L2Mode::Standalone => {
                let url = config.urls.first().ok_or_else(|| CacheError::Config {
                    key: "cache.l2.urls".into(),
                    value: "[]".into(),
                    reason: "needs a redis:// URL".into(),
                })?;
                let client = redis::Client::open(url.as_str()).map_err(|e| bad_url(url, e))?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    .set_response_timeout(Some(config.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(config.breaker.open_for);
                let cm = client
                    .get_connection_manager_lazy(manager)
                    .map_err(|e| bad_url(url, e))?;
                Conn::Standalone(cm)
            }
            L2Mode::Cluster => {
                let client = ClusterClient::builder(config.urls.iter().map(String::as_str))
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| bad_url(&config.urls.join(","), e))?;
                Conn::Cluster {
                    client: Box::new(client),
                    conn: tokio::sync::Mutex::new(None),
                }
            }
        };
        let breaker = CircuitBreaker::with_clock(
            BreakerConfig {
                consecutive_failures: config.breaker.consecutive_failures,
                // Only the run of failures opens this breaker: a cache needs
                // no statistics to know that Redis stopped answering.
                failure_rate: 2.0,
                open_for: config.breaker.open_for,
                half_open_probes: config.breaker.half_open_probes,
                ..BreakerConfig::default()
            },
            clock,
        )
        .on_transition(|from, to| {
            metrics::gauge!(BREAKER_STATE).set(to.as_gauge());
            metrics::counter!(BREAKER_TRANSITIONS, "to" => to.as_str()).increment(1);
            tracing::warn!(
                from = from.as_str(),
                to = to.as_str(),
                "cache L2 breaker changed state"
            );
        });
        metrics::gauge!(BREAKER_STATE).set(BreakerState::Closed.as_gauge());
        Ok(Some(L2 {
            conn,
            breaker,
            timeout: config.timeout,
            lock_ttl: config.lock_ttl,
            lock_wait: config.lock_wait,
            pubsub_urls: config.urls.clone(),
            unlock: Script::new(UNLOCK),
        }))
    }

    /// The breaker's current state.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs `f` on a connection if the breaker allows it, within the timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(AnyConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Ok(permit) = self.breaker.try_acquire() else {
            metrics::counter!(L2_REJECTED, "op" => op).increment(1);
            return None;
        };
        let start = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await
        })
        .await;
        metrics::histogram!(L2_DURATION, "op" => op).record(start.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(v)) => {
                permit.success();
                Some(v)
            }
            Ok(Err(error)) => {
                permit.failure();
                let kind = if error.is_io_error() || error.is_connection_dropped() {
                    "io"
                } else {
                    "other"
                };
                metrics::counter!(L2_ERRORS, "op" => op, "kind" => kind).increment(1);
                tracing::debug!(op, %error, "cache L2 call failed");
                None
            }
            Err(_elapsed) => {
                permit.failure();
                metrics::counter!(L2_ERRORS, "op" => op, "kind" => "timeout").increment(1);
                tracing::debug!(op, "cache L2 call timed out");
                None
            }
        }
    }

    async fn connection(&self) -> RedisResult<AnyConn> {
        match &self.conn {
            Conn::Standalone(cm) => Ok(AnyConn::Standalone(cm.clone())),
            Conn::Cluster { client, conn } => {
                let mut slot = conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(AnyConn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                *slot = Some(c.clone());
                Ok(AnyConn::Cluster(c))
            }
        }
    }

    /// `Some(Some((payload, ms to live)))` on a hit, `Some(None)` on a miss,
    /// `None` when Redis could not be asked.
    pub(crate) async fn get(&self, key: &str) -> Option<Option<(Vec<u8>, Option<u64>)>> {
        self.call("get", |mut c| async move {
            let (value, pttl): (Option<Vec<u8>>, i64) =
                redis::pipe().get(key).pttl(key).query_async(&mut c).await?;
            Ok(value.map(|v| (v, u64::try_from(pttl).ok())))
        })
        .await
    }

    /// Like [`L2::get`], and also whether the load lock `lock_key` is still
    /// held: `Some((entry, locked))`.
    pub(crate) async fn get_and_lock_state(
        &self,
        key: &str,
        lock_key: &str,
    ) -> Option<(Option<(Vec<u8>, Option<u64>)>, bool)> {
        self.call("get", |mut c| async move {
            let (value, pttl, locked): (Option<Vec<u8>>, i64, bool) = redis::pipe()
                .get(key)
                .pttl(key)
                .exists(lock_key)
                .query_async(&mut c)
                .await?;
            Ok((value.map(|v| (v, u64::try_from(pttl).ok())), locked))
        })
        .await
    }

    /// SET with expiry; `false` when it could not be done.
    pub(crate) async fn set(&self, key: &str, payload: &[u8], ttl: Duration) -> bool {
        let ms = ttl.as_millis().max(1) as u64;
        self.call("set", |mut c| async move {
            Cmd::set_options(
                key,
                payload,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ms)),
            )
            .query_async::<()>(&mut c)
            .await
        })
        .await
        .is_some()
    }

    /// DEL; `false` when it could not be done.
    pub(crate) async fn del(&self, key: &str) -> bool {
        self.call("del", |mut c| async move {
            Cmd::del(key).query_async::<()>(&mut c).await
        })
        .await
        .is_some()
    }

    /// Takes the load lock of a key: `Some(true)` if this caller holds it now.
    pub(crate) async fn try_lock(&self, lock_key: &str, token: &str) -> Option<bool> {
        let ms = self.lock_ttl.as_millis().max(1) as u64;
        self.call("lock", |mut c| async move {
            let set: Option<String> = Cmd::set_options(
                lock_key,
                token,
                redis::SetOptions::default()
                    .conditional_set(redis::ExistenceCheck::NX)
                    .with_expiration(redis::SetExpiry::PX(ms)),
            )
            .query_async(&mut c)
            .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Releases the load lock if it still holds `token`.
    pub(crate) async fn unlock(&self, lock_key: &str, token: &str) {
        let script = &self.unlock;
        self.call("unlock", |mut c| async move {
            script
                .key(lock_key)
                .arg(token)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// PUBLISH; `false` when it could not be done.
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        self.call("publish", |mut c| async move {
            Cmd::publish(channel, payload)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Deletes every key matching `pattern` on every master; returns how many.
    /// Each SCAN step and each batch of deletes is one breaker-guarded call,
    /// so a long purge survives on a healthy server and stops on a failing one.
    pub(crate) async fn purge(&self, pattern: &str) -> Result<u64, CacheError> {
        let unavailable = || CacheError::L2Unavailable { op: "purge".into() };
        let nodes: Vec<Option<(String, u16)>> = match &self.conn {
            Conn::Standalone(_) => vec![None],
            Conn::Cluster { .. } => self
                .call("cluster_nodes", |mut c| async move {
                    Cmd::new()
                        .arg("CLUSTER")
                        .arg("NODES")
                        .query_async::<String>(&mut c)
                        .await
                })
                .await
                .ok_or_else(unavailable)?
                .lines()
                .filter_map(master_address)
                .map(Some)
                .collect(),
        };
        let mut deleted = 0u64;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let node = node.clone();
                let (next, keys): (u64, Vec<String>) = self
                    .call("scan", |c| async move {
                        let mut cmd = Cmd::new();
                        cmd.arg("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT);
                        c.query_on(cmd, node).await
                    })
                    .await
                    .ok_or_else(unavailable)?;
                for key in &keys {
                    // One key per DEL: keys of a cluster node still live in
                    // different slots, which multi-key commands refuse.
                    if !self.del(key).await {
                        return Err(unavailable());
                    }
                    deleted += 1;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

/// `host:port` of a master from one line of `CLUSTER NODES`.
fn master_address(line: &str) -> Option<(String, u16)> {
    let mut fields = line.split_whitespace();
    let _id = fields.next()?;
    let addr = fields.next()?;
    let flags = fields.next()?;
    if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
        return None;
    }
    let host_port = addr.split('@').next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// A connection of either kind, cloned per call (both are cheap handles on
/// one multiplexed connection).
pub(crate) enum AnyConn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl AnyConn {
    /// Runs `cmd` on a given cluster node (for SCAN), or on the server.
    async fn query_on<T: FromRedisValue>(
        self,
        cmd: Cmd,
        node: Option<(String, u16)>,
    ) -> RedisResult<T> {
        match (self, node) {
            (AnyConn::Cluster(mut c), Some((host, port))) => {
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await?;
                redis::from_redis_value(value).map_err(Into::into)
            }
            (mut c, _) => cmd.query_async(&mut c).await,
        }
    }
}

impl redis::aio::ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConn::Standalone(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Standalone(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
6ec2 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 connected";
        let masters: Vec<_> = text.lines().filter_map(master_address).collect();
        assert_eq!(
            masters,
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30001)
            ]
        );
    }
}
