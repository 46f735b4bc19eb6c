-- Idempotency keys of POST /orders, written in the same transaction as the
-- order they produced. The key is scoped to the user the order is for.
CREATE TABLE idempotency_keys (
    user_id     INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    status      INTEGER NOT NULL,
    headers     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Cross-shard listing of orders by time (GET /orders), with and without a
-- status filter.
CREATE INDEX orders_by_time ON orders (created_at, id);
CREATE INDEX orders_by_status_time ON orders (status, created_at, id);
