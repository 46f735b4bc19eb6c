//! Idempotency records of writes (the IETF `Idempotency-Key` draft).
//!
//! A record is written in the same transaction as the order it produced, on
//! the order's shard, so that the key, the order and its outbox row exist
//! together or not at all. It holds the request's fingerprint (to refuse the
//! same key with another payload) and the response the caller rendered (to
//! replay it), both as opaque text: what a response is, is the caller's
//! business. Keys are scoped to the user the order is for and expire after
//! `store.idempotency_retention`; the worker purges expired ones.

use futures::future::try_join_all;

use crate::{OrderRecord, Store, StoreError, now_ms, on_pool};

/// Counter of idempotency records deleted after their retention.
pub const IDEMPOTENCY_PURGED: &str = "scalestack_store_idempotency_keys_purged_total";

/// Rows deleted per statement by the purge, so that no statement holds
/// locks for long.
const PURGE_BATCH: i64 = 5_000;

/// A client's idempotency key and what its request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it.
    pub key: String,
    /// What identifies the request's payload: a request with the same key and
    /// another fingerprint is refused.
    pub fingerprint: String,
}

/// A response as the caller rendered it, stored with the key and replayed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Headers worth replaying, e.g. `Location`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// What placing an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The order was written (with its outbox row and, if a key was given,
    /// the key's record).
    Created(OrderRecord),
    /// The key was used before with the same payload: here is the response
    /// it got. Nothing was written.
    Replayed(StoredResponse),
    /// Another request with the same key is being processed right now.
    InFlight,
    /// The key was used before with another payload. Nothing was written.
    KeyReused,
}

/// 64 bits of a user's key, for PostgreSQL's advisory locks.
pub(crate) fn lock_id(user_id: i64, key: &str) -> i64 {
    // FNV-1a over the key, then mixed with the user id: stable across
    // processes and releases, which is all an advisory lock id needs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    crate::shard::mix64(h ^ crate::shard::mix64(user_id as u64)) as i64
}

/// A stored record, as read inside the write transaction.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredKey {
    pub(crate) fingerprint: String,
    pub(crate) status: i64,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl StoredKey {
    /// What a repeated request gets: the response, or a refusal when the
    /// payload differs.
    pub(crate) fn outcome(self, key: &IdempotencyKey) -> Placement {
        if self.fingerprint != key.fingerprint {
            return Placement::KeyReused;
        }
        Placement::Replayed(StoredResponse {
            status: u16::try_from(self.status).unwrap_or(500),
            headers: serde_json::from_str(&self.headers).unwrap_or_default(),
            body: self.body,
        })
    }
}

pub(crate) const SELECT_KEY: &str = "SELECT fingerprint, status, headers, body FROM idempotency_keys \
     WHERE user_id = $1 AND key = $2 AND expires_at > $3";

/// Replaces an expired record of the same key, if there is one.
pub(crate) const INSERT_KEY: &str = "INSERT INTO idempotency_keys \
     (user_id, key, fingerprint, status, headers, body, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
     status = excluded.status, headers = excluded.headers, body = excluded.body, \
     created_at = excluded.created_at, expires_at = excluded.expires_at";

impl Store {
    /// Deletes idempotency records past their retention on every shard;
    /// returns how many went.
    pub async fn purge_expired_idempotency_keys(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let per_shard = try_join_all(self.inner.shards.iter().map(|shard| async move {
            let mut total = 0u64;
            loop {
                let deleted = shard
                    .write("purge_idempotency_keys", async {
                        on_pool!(&shard.primary.pool, p => sqlx::query(
                            "DELETE FROM idempotency_keys WHERE (user_id, key) IN \
                             (SELECT user_id, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
                        )
                        .bind(now)
                        .bind(PURGE_BATCH)
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected()))
                    })
                    .await?;
                total += deleted;
                if deleted < PURGE_BATCH as u64 {
                    break;
                }
            }
            if total > 0 {
                metrics::counter!(IDEMPOTENCY_PURGED, "db" => shard.name().to_owned())
                    .increment(total);
            }
            Ok::<_, StoreError>(total)
        }))
        .await?;
        Ok(per_shard.into_iter().sum())
    }
}

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        IDEMPOTENCY_PURGED,
        "Idempotency records deleted after their retention, by shard."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_depend_on_user_and_key() {
        assert_eq!(lock_id(1, "a"), lock_id(1, "a"));
        assert_ne!(lock_id(1, "a"), lock_id(2, "a"));
        assert_ne!(lock_id(1, "a"), lock_id(1, "b"));
    }
}
