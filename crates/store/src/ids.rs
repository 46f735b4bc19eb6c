//! The id scheme.
//!
//! * User ids are global integers reserved in blocks from the catalog's
//!   `id_sequences` table, so two api processes never hand out the same id and
//!   a fresh data set seeded with N users has ids `1..=N`.
//! * Order ids are `seq * 1024 + bucket`: `seq` comes from the shard's own
//!   sequence (no cross-shard coordination on the write path) and `bucket` is
//!   the logical bucket of the order's user, so `GET /orders/{id}` finds the
//!   shard from the id alone. A user's orders share a bucket, so their ids
//!   increase in creation order.

use crate::shard::LOGICAL_BUCKETS;

/// Builds an order id from the shard sequence value and the user's bucket.
pub fn order_id(seq: i64, bucket: u32) -> i64 {
    seq * i64::from(LOGICAL_BUCKETS) + i64::from(bucket)
}

/// The logical bucket an order id carries, or `None` for ids we never issue.
pub fn order_bucket(order_id: i64) -> Option<u32> {
    (order_id >= i64::from(LOGICAL_BUCKETS)).then(|| (order_id % i64::from(LOGICAL_BUCKETS)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bucket_round_trips(seq in 1i64..(1 << 50), bucket in 0u32..LOGICAL_BUCKETS) {
            prop_assert_eq!(order_bucket(order_id(seq, bucket)), Some(bucket));
        }

        #[test]
        fn ids_of_one_bucket_follow_the_sequence(a in 1i64..(1 << 40), b in 1i64..(1 << 40), bucket in 0u32..LOGICAL_BUCKETS) {
            prop_assert_eq!(a < b, order_id(a, bucket) < order_id(b, bucket));
        }
    }

    #[test]
    fn ids_we_never_issue_have_no_bucket() {
        assert_eq!(order_bucket(0), None);
        assert_eq!(order_bucket(-5), None);
        assert_eq!(order_bucket(1023), None);
    }
}
