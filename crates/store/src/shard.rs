//! Placement of users on shards.
//!
//! A user id hashes to one of [`LOGICAL_BUCKETS`] logical buckets; the shard map
//! assigns buckets to physical shards. Order ids carry their user's bucket (see
//! [`crate::ids`]), so an order is found without knowing its user, and moving a
//! bucket to another shard keeps every id valid.
//!
//! The hash map uses jump consistent hashing (Lamping and Veach, 2014) over the
//! buckets: growing from N to N + 1 shards moves about 1/(N + 1) of the buckets
//! and never moves a bucket between two old shards.

/// Number of logical buckets. A power of two so the bucket fits 10 bits of an order id.
pub const LOGICAL_BUCKETS: u32 = 1024;

/// A stable 64-bit mix (the SplitMix64 finalizer): identical on every machine,
/// build and release, unlike `std`'s hashers.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The logical bucket of a user id.
pub fn bucket_of_user(user_id: i64) -> u32 {
    (mix64(user_id as u64) % u64::from(LOGICAL_BUCKETS)) as u32
}

/// Jump consistent hash: maps `key` to one of `buckets` slots.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// Assignment of logical buckets to physical shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Shard of each bucket, indexed by bucket.
    table: Vec<u16>,
    shards: u16,
}

impl ShardMap {
    /// The consistent-hash map over `shards` shards.
    pub fn hash(shards: u16) -> Self {
        assert!(shards > 0, "a shard map needs at least one shard");
        let table = (0..LOGICAL_BUCKETS)
            .map(|b| jump_hash(mix64(u64::from(b)), u32::from(shards)) as u16)
            .collect();
        Self { table, shards }
    }

    /// Number of physical shards.
    pub fn shard_count(&self) -> u16 {
        self.shards
    }

    /// The shard that holds `bucket`.
    pub fn shard_of_bucket(&self, bucket: u32) -> usize {
        usize::from(self.table[(bucket % LOGICAL_BUCKETS) as usize])
    }

    /// The shard that holds user `user_id` and their orders.
    pub fn shard_of_user(&self, user_id: i64) -> usize {
        self.shard_of_bucket(bucket_of_user(user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_spread_evenly_over_shards() {
        let map = ShardMap::hash(4);
        let mut per_shard = [0u32; 4];
        for b in 0..LOGICAL_BUCKETS {
            per_shard[map.shard_of_bucket(b)] += 1;
        }
        // 256 each ideally; jump hash over 1024 keys stays well within ±20%.
        for count in per_shard {
            assert!((205..=307).contains(&count), "{per_shard:?}");
        }
    }

    #[test]
    fn users_spread_evenly_over_shards() {
        let map = ShardMap::hash(4);
        let mut per_shard = [0u32; 4];
        for id in 1..=100_000 {
            per_shard[map.shard_of_user(id)] += 1;
        }
        for count in per_shard {
            assert!((20_000..=30_000).contains(&count), "{per_shard:?}");
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one() {
        for n in 1..16u16 {
            let before = ShardMap::hash(n);
            let after = ShardMap::hash(n + 1);
            let users = 50_000i64;
            let moved = (1..=users)
                .filter(|&u| before.shard_of_user(u) != after.shard_of_user(u))
                .count();
            let expected = users as f64 / f64::from(n + 1);
            let ratio = moved as f64 / expected;
            assert!(
                (0.7..1.3).contains(&ratio),
                "n={n}: moved {moved}, expected about {expected}"
            );
            // Whatever moved went to the new shard; nothing moved between old shards.
            for u in 1..=users {
                if before.shard_of_user(u) != after.shard_of_user(u) {
                    assert_eq!(after.shard_of_user(u), usize::from(n));
                }
            }
        }
    }

    #[test]
    fn mix_is_stable() {
        // Pinned: shard placement must never change between releases.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(bucket_of_user(42), (mix64(42) % 1024) as u32);
    }

    proptest! {
        #[test]
        fn jump_hash_is_in_range(key: u64, buckets in 1u32..10_000) {
            prop_assert!(jump_hash(key, buckets) < buckets);
        }
    }
}
