//! Names and descriptions of every metric the cache tier records.
//!
//! This module owns the series names only; the code that counts lives next to
//! the behaviour it counts. Names are public so that dashboards, the app's
//! tests and the benchmark read the same constants.

/// Counter of lookups by `cache` (resource), `layer` (`l1`, `l2`) and `result`
/// (`hit`, `miss`; `unavailable` when L2 was skipped or failed).
pub const REQUESTS: &str = "scalestack_cache_requests_total";
/// Counter of loads run on a miss, by `cache` and `outcome` (`found`/`absent`/`error`).
pub const LOADS: &str = "scalestack_cache_loads_total";
/// Counter of L1 entries removed, by `cache` and `cause` (`expired`/`size`/`invalidated`).
pub const EVICTIONS: &str = "scalestack_cache_evictions_total";
/// Gauge of entries held by the L1.
pub const ENTRIES: &str = "scalestack_cache_entries";
/// Gauge of the L1 memory budget used, in bytes (approximate).
pub const BYTES: &str = "scalestack_cache_bytes";
/// Gauge, per `cache`: share of lookups since start answered without a load.
pub const HIT_RATIO: &str = "scalestack_cache_hit_ratio";
/// Histogram of Redis call durations in seconds, by `op`.
pub const L2_DURATION: &str = "scalestack_cache_l2_duration_seconds";
/// Counter of failed Redis calls, by `op` and `kind` (`timeout`, `io`, `other`).
pub const L2_ERRORS: &str = "scalestack_cache_l2_errors_total";
/// Counter of Redis calls not made because the breaker was open, by `op`.
pub const L2_REJECTED: &str = "scalestack_cache_l2_rejected_total";
/// Gauge of the L2 breaker: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "scalestack_cache_l2_breaker_state";
/// Counter of breaker transitions, by the state entered (`to`).
pub const BREAKER_TRANSITIONS: &str = "scalestack_cache_l2_breaker_transitions_total";
/// Counter of L2 misses handled by the load lock, by `cache` and `outcome`:
/// `won` (this instance loaded), `waited` (another's value arrived),
/// `gave_up` (waited `lock_wait`, then loaded anyway).
pub const STAMPEDE: &str = "scalestack_cache_stampede_total";
/// Gauge of approximate recent lookups of the hottest keys, by `rank` and `key`.
pub const HOT_KEY: &str = "scalestack_cache_hot_key_requests";
/// Counter of invalidation messages, by `direction` (`sent`/`received`) and `transport`.
pub const INVALIDATIONS: &str = "scalestack_cache_invalidations_total";
/// Histogram of the delay from sending an invalidation to applying it, in seconds.
pub const INVALIDATION_LAG: &str = "scalestack_cache_invalidation_lag_seconds";
/// Counter of lost invalidation messages detected; each purges the L1.
pub const INVALIDATION_GAPS: &str = "scalestack_cache_invalidation_gaps_total";
/// Gauge: 1 while the invalidation channel is known to work, 0 otherwise.
pub const INVALIDATION_UP: &str = "scalestack_cache_invalidation_up";
/// Counter of writes by `cache`, `strategy` and `outcome` (`ok`/`error`).
pub const WRITES: &str = "scalestack_cache_writes_total";
/// Counter of purges, by `scope` (`all`/`prefix`) and `origin` (`local`/`remote`).
pub const PURGES: &str = "scalestack_cache_purges_total";
/// Gauge of acknowledged write-behind entries not yet in the store, by `cache`.
pub const WB_PENDING: &str = "scalestack_cache_write_behind_pending";
/// Counter of write-behind batches handed to the store, by `cache` and `outcome`.
pub const WB_FLUSHES: &str = "scalestack_cache_write_behind_flushes_total";
/// Counter of write-behind entries written to the store, by `cache`.
pub const WB_FLUSHED: &str = "scalestack_cache_write_behind_flushed_total";
/// Counter of write-behind entries recovered from the log at start, by `cache`.
pub const WB_REPLAYED: &str = "scalestack_cache_write_behind_replayed_total";
/// Counter of write-behind log group commits (one write, one sync), by `cache`.
pub const WB_COMMITS: &str = "scalestack_cache_write_behind_log_commits_total";

pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Cache lookups by cache, layer and result (hit, miss, unavailable)."
    );
    describe_counter!(LOADS, "Loads run on a cache miss, by cache and outcome.");
    describe_counter!(
        EVICTIONS,
        "Entries removed from the L1 cache, by cache and cause."
    );
    describe_gauge!(ENTRIES, "Entries held by the L1 cache.");
    describe_gauge!(BYTES, "Approximate bytes held by the L1 cache.");
    describe_gauge!(
        HIT_RATIO,
        "Share of lookups since start answered by L1 or L2 without a load."
    );
    describe_histogram!(
        L2_DURATION,
        metrics::Unit::Seconds,
        "Duration of Redis calls of the L2 cache, by operation."
    );
    describe_counter!(
        L2_ERRORS,
        "Failed or timed-out Redis calls, by operation and kind."
    );
    describe_counter!(
        L2_REJECTED,
        "Redis calls skipped because the L2 breaker was open."
    );
    describe_gauge!(
        BREAKER_STATE,
        "State of the L2 circuit breaker: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Transitions of the L2 breaker, by the state entered."
    );
    describe_counter!(
        STAMPEDE,
        "L2 misses resolved through the load lock, by cache and outcome."
    );
    describe_gauge!(
        HOT_KEY,
        "Approximate recent lookups of the hottest keys (space-saving top-K)."
    );
    describe_counter!(
        INVALIDATIONS,
        "Invalidation messages sent and received, by transport."
    );
    describe_histogram!(
        INVALIDATION_LAG,
        metrics::Unit::Seconds,
        "Delay from sending an invalidation to applying it on another instance."
    );
    describe_counter!(
        INVALIDATION_GAPS,
        "Lost invalidation messages detected; each purged the L1."
    );
    describe_gauge!(
        INVALIDATION_UP,
        "1 while the invalidation channel is known to work."
    );
    describe_counter!(WRITES, "Cache writes by cache, strategy and outcome.");
    describe_counter!(PURGES, "Cache purges by scope and origin.");
    describe_gauge!(
        WB_PENDING,
        "Acknowledged write-behind entries not yet written to the store."
    );
    describe_counter!(
        WB_FLUSHES,
        "Write-behind batches handed to the store, by outcome."
    );
    describe_counter!(WB_FLUSHED, "Write-behind entries written to the store.");
    describe_counter!(
        WB_REPLAYED,
        "Write-behind entries recovered from the log at start."
    );
    describe_counter!(
        WB_COMMITS,
        "Write-behind log group commits (one write and one sync each)."
    );
}
