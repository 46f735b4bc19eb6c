-- The queue's flows (issue 6): the catalog's own outbox (for jobs), background
-- jobs, the inventory consumer's stock reservations, the consumers' dedupe
-- records and the analytics read model.

-- Events written in the same transaction as catalog writes (jobs), published
-- by the worker's relay exactly like the shards' outboxes.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Background jobs (POST /emails, POST /reports): queued, running, done or failed.
CREATE TABLE jobs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    params     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    result     TEXT,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state);

-- One row per order the inventory consumer has handled: the dedupe record,
-- written in the same transaction as the stock decrement it records.
CREATE TABLE inventory_reservations (
    order_id   INTEGER PRIMARY KEY,
    product_id INTEGER NOT NULL,
    quantity   INTEGER NOT NULL,
    outcome    TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
);

-- Ids of messages whose effect a consumer has applied, written in the same
-- transaction as the effect; `subject` is the order or job concerned.
CREATE TABLE consumed_messages (
    consumer   TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    subject    INTEGER NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX consumed_messages_age ON consumed_messages (applied_at);

-- The analytics read model (CQRS): net sales per product and orders and
-- spend per user, fed by order.placed and order.rejected events.
CREATE TABLE product_sales (
    product_id      INTEGER PRIMARY KEY,
    orders          INTEGER NOT NULL,
    units           INTEGER NOT NULL,
    revenue_cents   INTEGER NOT NULL,
    rejected_orders INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE user_summaries (
    user_id         INTEGER PRIMARY KEY,
    orders          INTEGER NOT NULL,
    spend_cents     INTEGER NOT NULL,
    rejected_orders INTEGER NOT NULL,
    last_order_at   INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
