//! Placement of users on shards.
//!
//! Every map works the same way underneath: a user id gives a logical bucket
//! (one of [`LOGICAL_BUCKETS`]), and a table assigns each bucket to a physical
//! shard. Order ids carry their user's bucket (see [`crate::ids`]), so an
//! order is found without knowing its user, whatever the map. The maps differ
//! in how a user gets its bucket:
//!
//! * **hash**: the bucket is a stable hash of the user id, and buckets go to
//!   shards by jump consistent hashing (Lamping and Veach, 2014): growing
//!   from N to N + 1 shards moves about 1/(N + 1) of the buckets and never
//!   moves one between two old shards.
//! * **range**: the bucket is the index of the id range the user falls in,
//!   and that range names its shard. Adding a range past the last user moves
//!   nobody, which is how a range map grows.
//! * **geo**: the user id itself carries a bucket of the user's region (ids
//!   are `seq * 1024 + bucket`); each region owns a slice of the buckets and
//!   spreads them over its shards by jump hashing.
//!
//! A map has a version. The data set records the map it was written with; a
//! store refuses to open with a map that would move existing users.

use std::ops::Range;

use scalestack_config::{ShardMapKind, StoreConfig};

use crate::StoreError;

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

/// The logical bucket of a user id under a hash map.
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

/// A region of a geographic map: its name and the buckets it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GeoRegion {
    name: String,
    buckets: Range<u32>,
}

/// How a user id becomes a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    Hash,
    /// `(first user id, shard)`, ascending.
    Range(Vec<(i64, u16)>),
    Geo(Vec<GeoRegion>),
}

/// Assignment of users to physical shards (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Shard of each bucket, indexed by bucket.
    table: Vec<u16>,
    shards: u16,
    version: u32,
    placement: Placement,
}

impl ShardMap {
    /// The consistent-hash map over `shards` shards (version 1).
    pub fn hash(shards: u16) -> Self {
        assert!(shards > 0, "a shard map needs at least one shard");
        let table = (0..LOGICAL_BUCKETS)
            .map(|b| jump_hash(mix64(u64::from(b)), u32::from(shards)) as u16)
            .collect();
        Self {
            table,
            shards,
            version: 1,
            placement: Placement::Hash,
        }
    }

    /// A range map: users from each `(first user id, shard)` up to the next
    /// range's first id live on that shard (version 1). The ranges must
    /// ascend and start at user 1 (the config's validation checks it).
    pub fn range(shards: u16, ranges: &[(i64, u16)]) -> Self {
        assert!(shards > 0, "a shard map needs at least one shard");
        assert!(
            !ranges.is_empty() && ranges.len() <= LOGICAL_BUCKETS as usize,
            "a range map needs 1 to {LOGICAL_BUCKETS} ranges"
        );
        let mut table = vec![0u16; LOGICAL_BUCKETS as usize];
        for (i, &(_, shard)) in ranges.iter().enumerate() {
            table[i] = shard;
        }
        Self {
            table,
            shards,
            version: 1,
            placement: Placement::Range(ranges.to_vec()),
        }
    }

    /// A geographic map: each `(region, shards)` owns an equal slice of the
    /// buckets, spread over its shards by jump hashing (version 1).
    pub fn geo(shards: u16, regions: &[(String, Vec<u16>)]) -> Self {
        assert!(shards > 0, "a shard map needs at least one shard");
        let count = regions.len() as u32;
        assert!(
            count > 0 && count <= LOGICAL_BUCKETS,
            "a geographic map needs 1 to {LOGICAL_BUCKETS} regions"
        );
        let mut table = vec![0u16; LOGICAL_BUCKETS as usize];
        let mut placed = Vec::with_capacity(regions.len());
        for (i, (name, region_shards)) in regions.iter().enumerate() {
            assert!(!region_shards.is_empty(), "region {name} has no shards");
            let i = i as u32;
            let buckets = i * LOGICAL_BUCKETS / count..(i + 1) * LOGICAL_BUCKETS / count;
            for b in buckets.clone() {
                let k = jump_hash(mix64(u64::from(b)), region_shards.len() as u32);
                table[b as usize] = region_shards[k as usize];
            }
            placed.push(GeoRegion {
                name: name.clone(),
                buckets,
            });
        }
        Self {
            table,
            shards,
            version: 1,
            placement: Placement::Geo(placed),
        }
    }

    /// The map a store configuration describes.
    pub fn from_config(config: &StoreConfig) -> Self {
        let shards = u16::try_from(config.shards.len()).unwrap_or(u16::MAX);
        let map = match config.shard_map {
            ShardMapKind::Hash => Self::hash(shards),
            ShardMapKind::Range => Self::range(
                shards,
                &config
                    .ranges
                    .iter()
                    .map(|r| (r.first_user, r.shard))
                    .collect::<Vec<_>>(),
            ),
            ShardMapKind::Geo => Self::geo(
                shards,
                &config
                    .regions
                    .iter()
                    .map(|r| (r.name.clone(), r.shards.clone()))
                    .collect::<Vec<_>>(),
            ),
        };
        map.with_version(config.shard_map_version)
    }

    /// The same map under another version number.
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The kind of map.
    pub fn kind(&self) -> ShardMapKind {
        match self.placement {
            Placement::Hash => ShardMapKind::Hash,
            Placement::Range(_) => ShardMapKind::Range,
            Placement::Geo(_) => ShardMapKind::Geo,
        }
    }

    /// The map's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Number of physical shards.
    pub fn shard_count(&self) -> u16 {
        self.shards
    }

    /// The logical bucket of user `user_id`.
    pub fn bucket_of_user(&self, user_id: i64) -> u32 {
        match &self.placement {
            Placement::Hash => bucket_of_user(user_id),
            Placement::Range(ranges) => {
                ranges
                    .partition_point(|&(first, _)| first <= user_id)
                    .max(1) as u32
                    - 1
            }
            Placement::Geo(_) => user_id.rem_euclid(i64::from(LOGICAL_BUCKETS)) as u32,
        }
    }

    /// The shard that holds `bucket`.
    pub fn shard_of_bucket(&self, bucket: u32) -> usize {
        usize::from(self.table[(bucket % LOGICAL_BUCKETS) as usize])
    }

    /// The shard that holds user `user_id` and their orders.
    pub fn shard_of_user(&self, user_id: i64) -> usize {
        self.shard_of_bucket(self.bucket_of_user(user_id))
    }

    /// The regions of a geographic map, in order (empty for other maps).
    pub fn regions(&self) -> Vec<&str> {
        match &self.placement {
            Placement::Geo(regions) => regions.iter().map(|r| r.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// The region of a user under a geographic map.
    pub fn region_of_user(&self, user_id: i64) -> Option<&str> {
        let Placement::Geo(regions) = &self.placement else {
            return None;
        };
        let bucket = self.bucket_of_user(user_id);
        regions
            .iter()
            .find(|r| r.buckets.contains(&bucket))
            .map(|r| r.name.as_str())
    }

    /// The user id for sequence value `seq` (from the catalog's user id
    /// sequence) of a user in `region`.
    ///
    /// Under hash and range maps the id is the sequence value and a region
    /// is refused; under a geographic map the id carries a bucket of the
    /// region (the first region when none is given).
    pub fn user_id(&self, seq: i64, region: Option<&str>) -> Result<i64, StoreError> {
        let unknown = |region: &str| StoreError::UnknownRegion {
            region: region.to_owned(),
            known: self.regions().join(", "),
        };
        match &self.placement {
            Placement::Geo(regions) => {
                let chosen = match region {
                    None => &regions[0],
                    Some(name) => regions
                        .iter()
                        .find(|r| r.name == name)
                        .ok_or_else(|| unknown(name))?,
                };
                let width = u64::from(chosen.buckets.end - chosen.buckets.start);
                let bucket = chosen.buckets.start + (mix64(seq as u64) % width) as u32;
                Ok(crate::ids::order_id(seq, bucket))
            }
            _ => match region {
                Some(name) => Err(unknown(name)),
                None => Ok(seq),
            },
        }
    }

    /// The map in words, without its version: what a data set records.
    pub fn describe(&self) -> String {
        match &self.placement {
            Placement::Hash => format!("hash over {} shards", self.shards),
            Placement::Range(ranges) => {
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|(first, shard)| format!("{first}..→{shard}"))
                    .collect();
                format!("range {}", parts.join(", "))
            }
            Placement::Geo(regions) => {
                let parts: Vec<String> = regions
                    .iter()
                    .map(|r| {
                        let mut shards: Vec<u16> =
                            r.buckets.clone().map(|b| self.table[b as usize]).collect();
                        shards.sort_unstable();
                        shards.dedup();
                        let shards: Vec<String> = shards.iter().map(u16::to_string).collect();
                        format!("{}→[{}]", r.name, shards.join(" "))
                    })
                    .collect();
                format!("geo {} over {} shards", parts.join(", "), self.shards)
            }
        }
    }

    /// Whether switching from this map to `other` would move any user with
    /// an id below `next_user_id` to another bucket or shard.
    pub fn moves_users(&self, other: &ShardMap, next_user_id: i64) -> bool {
        if next_user_id <= 1 {
            return false;
        }
        match (&self.placement, &other.placement) {
            (Placement::Hash, Placement::Hash) => self.table != other.table,
            (Placement::Geo(a), Placement::Geo(b)) => a != b || self.table != other.table,
            (Placement::Range(a), Placement::Range(b)) => {
                // Both maps are constant between consecutive range starts,
                // so comparing every segment's first id covers every user.
                let mut starts: Vec<i64> = a
                    .iter()
                    .chain(b)
                    .map(|&(first, _)| first)
                    .chain(std::iter::once(1))
                    .filter(|&first| first >= 1 && first < next_user_id)
                    .collect();
                starts.sort_unstable();
                starts.dedup();
                starts.into_iter().any(|id| {
                    self.bucket_of_user(id) != other.bucket_of_user(id)
                        || self.shard_of_user(id) != other.shard_of_user(id)
                })
            }
            _ => true,
        }
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
            assert!(before.moves_users(&after, users));
        }
    }

    #[test]
    fn mix_is_stable() {
        // Pinned: shard placement must never change between releases.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(bucket_of_user(42), (mix64(42) % 1024) as u32);
        assert_eq!(ShardMap::hash(4).bucket_of_user(42), bucket_of_user(42));
    }

    #[test]
    fn range_maps_place_by_id_and_grow_without_moving_anyone() {
        let map = ShardMap::range(2, &[(1, 0), (1_000, 1)]);
        assert_eq!(map.shard_of_user(1), 0);
        assert_eq!(map.shard_of_user(999), 0);
        assert_eq!(map.shard_of_user(1_000), 1);
        assert_eq!(map.shard_of_user(i64::MAX), 1);
        assert_eq!(map.bucket_of_user(5), 0);
        assert_eq!(map.bucket_of_user(5_000), 1);
        assert!(map.user_id(7, Some("eu")).is_err());
        assert_eq!(map.user_id(7, None).unwrap(), 7);

        // A third range past the last user moves nobody...
        let grown = ShardMap::range(3, &[(1, 0), (1_000, 1), (5_000, 2)]).with_version(2);
        assert!(!map.moves_users(&grown, 4_000));
        // ...but one that cuts through existing users does.
        assert!(map.moves_users(&grown, 6_000));
        // Re-pointing a range, or renumbering ranges, moves users.
        assert!(map.moves_users(&ShardMap::range(2, &[(1, 1), (1_000, 0)]), 10));
        assert!(map.moves_users(&ShardMap::range(2, &[(1, 0), (500, 0), (1_000, 1)]), 2_000));
        // Anything goes while the data set has no users.
        assert!(!map.moves_users(&ShardMap::hash(7), 1));
        assert!(map.moves_users(&ShardMap::hash(2), 2));
    }

    #[test]
    fn geo_maps_keep_users_in_their_region() {
        let regions = vec![
            ("eu".to_owned(), vec![0, 1]),
            ("us".to_owned(), vec![2, 3]),
            ("ap".to_owned(), vec![4]),
        ];
        let map = ShardMap::geo(5, &regions);
        assert_eq!(map.regions(), ["eu", "us", "ap"]);
        let mut per_shard = [0u32; 5];
        for seq in 1..=3_000 {
            for (name, shards) in &regions {
                let id = map.user_id(seq, Some(name)).unwrap();
                let shard = map.shard_of_user(id) as u16;
                assert!(shards.contains(&shard), "{name} user {id} on shard {shard}");
                assert_eq!(map.region_of_user(id), Some(name.as_str()));
                per_shard[usize::from(shard)] += 1;
            }
        }
        // Both shards of a two-shard region get a fair share.
        for shard in 0..4 {
            assert!((1_000..=2_000).contains(&per_shard[shard]), "{per_shard:?}");
        }
        assert_eq!(per_shard[4], 3_000);
        let default = map.user_id(9, None).unwrap();
        assert_eq!(map.region_of_user(default), Some("eu"));
        let err = map.user_id(9, Some("mars")).unwrap_err().to_string();
        assert!(err.contains("mars") && err.contains("eu, us, ap"), "{err}");
        assert!(!map.moves_users(&ShardMap::geo(5, &regions).with_version(3), 100));
        assert!(map.moves_users(&ShardMap::geo(5, &regions[..2]), 100));
    }

    #[test]
    fn descriptions_name_the_layout() {
        assert_eq!(ShardMap::hash(4).describe(), "hash over 4 shards");
        assert_eq!(
            ShardMap::range(2, &[(1, 0), (100, 1)]).describe(),
            "range 1..→0, 100..→1"
        );
        assert_eq!(
            ShardMap::geo(3, &[("eu".into(), vec![0, 1]), ("us".into(), vec![2])]).describe(),
            "geo eu→[0 1], us→[2] over 3 shards"
        );
    }

    proptest! {
        #[test]
        fn jump_hash_is_in_range(key: u64, buckets in 1u32..10_000) {
            prop_assert!(jump_hash(key, buckets) < buckets);
        }

        #[test]
        fn range_lookup_matches_a_linear_scan(
            mut firsts in proptest::collection::btree_set(2i64..1_000_000, 0..20),
            id in 1i64..2_000_000,
        ) {
            firsts.insert(1);
            let ranges: Vec<(i64, u16)> = firsts.iter().enumerate().map(|(i, &f)| (f, (i % 3) as u16)).collect();
            let map = ShardMap::range(3, &ranges);
            let expected = ranges.iter().rposition(|&(first, _)| first <= id).unwrap();
            prop_assert_eq!(map.bucket_of_user(id), expected as u32);
            prop_assert_eq!(map.shard_of_user(id), usize::from(ranges[expected].1));
        }
    }
}
