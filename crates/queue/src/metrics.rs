//! Names of the queue's metrics and their descriptions.
//!
//! Every series is labelled with `topic` (and `group` where a group is
//! involved); both come from a bounded set that the configuration declares,
//! never from message contents.

/// Counter of messages published, by topic and backend.
pub const PUBLISHED: &str = "scalestack_queue_published_total";
/// Counter of publishes dropped as duplicates of an id already in the topic.
pub const DUPLICATES: &str = "scalestack_queue_publish_duplicates_total";
/// Counter of messages deleted from a JetStream topic once every consumer
/// group had settled them, by topic.
pub const CLEANED: &str = "scalestack_queue_cleaned_total";
/// Counter of settled deliveries by topic, group and outcome
/// (`ack`, `retry`, `dead`): its rate is the consumer throughput.
pub const SETTLED: &str = "scalestack_queue_settled_total";
/// Counter of deliveries handed back for a retry, by topic and group.
pub const RETRIES: &str = "scalestack_queue_retries_total";
/// Counter of messages moved to the dead-letter queue, by topic and group.
pub const DEAD_LETTERED: &str = "scalestack_queue_dead_lettered_total";
/// Histogram of the batch handler's run time, by topic and group.
pub const PROCESSING: &str = "scalestack_queue_processing_seconds";
/// Histogram of the time from publish to acknowledgement, by topic and group.
pub const END_TO_END: &str = "scalestack_queue_end_to_end_seconds";
/// Histogram of batch sizes fetched, by topic and group.
pub const BATCH_SIZE: &str = "scalestack_queue_batch_size";
/// Gauge of the consumer lag (undelivered plus unacknowledged), by topic and group.
pub const LAG: &str = "scalestack_queue_consumer_lag";
/// Gauge of the dead-letter queue's depth, by topic and group.
pub const DLQ_DEPTH: &str = "scalestack_queue_dlq_depth";
/// Gauge of batches being handled right now, by topic and group.
pub const IN_FLIGHT: &str = "scalestack_queue_batches_in_flight";
/// Counter of backend errors seen by the worker runtime, by topic, group and operation.
pub const ERRORS: &str = "scalestack_queue_errors_total";
/// Counter of settlements ignored because the delivery had been redelivered
/// to another consumer (its deadline had passed), by topic and group.
pub const STALE: &str = "scalestack_queue_stale_settlements_total";

/// Registers the descriptions of every series (shown as `# HELP`).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PUBLISHED, "Messages published, by topic and backend.");
    describe_counter!(
        DUPLICATES,
        "Publishes dropped because their message id was already in the topic."
    );
    describe_counter!(
        CLEANED,
        "Messages deleted from a JetStream topic once every group had settled them."
    );
    describe_counter!(
        SETTLED,
        "Deliveries settled by topic, group and outcome (ack, retry, dead)."
    );
    describe_counter!(
        RETRIES,
        "Deliveries handed back for a retry after a transient error."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Messages moved to the dead-letter queue after their last attempt or a permanent error."
    );
    describe_histogram!(
        PROCESSING,
        Unit::Seconds,
        "Run time of the batch handler, by topic and group."
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "Time from publish to acknowledgement, by topic and group."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Messages per fetched batch, by topic and group."
    );
    describe_gauge!(
        LAG,
        "Consumer lag: messages not yet delivered plus delivered and unacknowledged."
    );
    describe_gauge!(DLQ_DEPTH, "Dead letters waiting, by topic and group.");
    describe_gauge!(IN_FLIGHT, "Batches being handled now, by topic and group.");
    describe_counter!(
        ERRORS,
        "Backend errors met by the worker runtime, by topic, group and operation."
    );
    describe_counter!(
        STALE,
        "Settlements ignored because the delivery had already been redelivered."
    );
}
