//! The store suite on embedded SQLite: four shard files and a catalog in a
//! temporary data directory, the default of `scalestack up`.

mod suite;
mod support;

use proptest::prelude::*;
use scalestack_config::{RegionConfig, ShardMapKind};
use scalestack_store::{NewUser, Store};
use support::Fixture;

#[tokio::test]
async fn users_round_trip_and_land_on_their_shard() {
    suite::users_round_trip_and_land_on_their_shard(Fixture::sqlite()).await;
}

#[tokio::test]
async fn orders_are_written_with_their_outbox_row_and_paged() {
    suite::orders_are_written_with_their_outbox_row_and_paged(Fixture::sqlite()).await;
}

#[tokio::test]
async fn an_order_for_a_missing_user_writes_nothing() {
    suite::an_order_for_a_missing_user_writes_nothing(Fixture::sqlite()).await;
}

#[tokio::test]
async fn products_page_in_id_order() {
    suite::products_page_in_id_order(Fixture::sqlite()).await;
}

#[tokio::test]
async fn data_survives_reopen_and_a_changed_shard_count_is_refused() {
    suite::data_survives_reopen_and_a_changed_shard_count_is_refused(Fixture::sqlite()).await;
}

#[tokio::test]
async fn a_range_map_grows_past_the_last_user_only_with_a_new_version() {
    suite::a_range_map_grows_past_the_last_user_only_with_a_new_version(Fixture::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_never_share_ids_or_lose_writes() {
    suite::two_stores_never_share_ids_or_lose_writes(Fixture::sqlite()).await;
}

#[tokio::test]
async fn bulk_insert_uses_reserved_ids() {
    suite::bulk_insert_uses_reserved_ids(Fixture::sqlite()).await;
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_and_expire() {
    suite::idempotency_keys_replay_refuse_and_expire(Fixture::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_raced_by_a_hundred_writes_makes_one_order() {
    suite::one_key_raced_by_a_hundred_writes_makes_one_order(Fixture::sqlite()).await;
}

#[tokio::test]
async fn a_geographic_map_keeps_users_in_their_region() {
    let mut fx = Fixture::sqlite();
    fx.config.store.shard_map = ShardMapKind::Geo;
    fx.config.store.regions = vec![
        RegionConfig {
            name: "eu".into(),
            shards: vec![0, 1],
        },
        RegionConfig {
            name: "us".into(),
            shards: vec![2, 3],
        },
    ];
    fx.config.validate().unwrap();
    let store = fx.open().await;
    for (region, shards) in [("eu", [0, 1]), ("us", [2, 3])] {
        for _ in 0..20 {
            let user = store
                .create_user(&NewUser {
                    region: Some(region.into()),
                    ..suite::alice()
                })
                .await
                .unwrap()
                .value;
            let shard = store.shard_map().shard_of_user(user.id);
            assert!(shards.contains(&shard), "{region} user on shard {shard}");
            assert_eq!(store.shard_map().region_of_user(user.id), Some(region));
            let order = store
                .create_order(&suite::order_for(user.id, 1))
                .await
                .unwrap()
                .value;
            let found = store
                .get_order(order.id, scalestack_store::Consistency::Eventual)
                .await
                .unwrap();
            assert_eq!(found, Some(order), "an order is found from its id alone");
        }
    }
    let err = store
        .create_user(&NewUser {
            region: Some("mars".into()),
            ..suite::alice()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("eu, us"), "{err}");
    assert_eq!(
        (fx.count_rows(0, "users").await + fx.count_rows(1, "users").await),
        20
    );
}

#[tokio::test]
async fn a_region_is_refused_by_a_hash_map() {
    let fx = Fixture::sqlite();
    let store: Store = fx.open().await;
    let err = store
        .create_user(&NewUser {
            region: Some("eu".into()),
            ..suite::alice()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown region"), "{err}");
}

fn listing_case() -> impl Strategy<Value = suite::ListingCase> {
    (
        proptest::collection::vec((0usize..5, 0usize..3), 0..40),
        proptest::option::of(0usize..3),
        proptest::option::of(0usize..40),
        1u32..8,
    )
        .prop_map(|(orders, status, since, limit)| suite::ListingCase {
            orders,
            status,
            since,
            limit,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Cross-shard pages against an in-memory model, on fresh data sets.
    #[test]
    fn cross_shard_pages_match_the_model(cases in proptest::collection::vec(listing_case(), 1..4)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let fx = Fixture::sqlite();
            let store = fx.open().await;
            let mut model = suite::Model::default();
            for case in &cases {
                suite::check_listing(&fx, &store, &mut model, case).await;
            }
            store.close().await;
        });
    }
}
