//! Tests of the cache tier against real redis-server processes (standalone
//! and a 3-master cluster, started by `scalestack-testkit`), plus the UDP
//! invalidation bus of the embedded stack. Several `Cache` values in one test
//! stand for several api processes: each has its own L1 and bus identity and
//! talks to Redis over its own connections, exactly as a process would.

mod cluster;
mod invalidation;
mod l2;
mod metrics;
mod model;
mod outage;
mod support;
