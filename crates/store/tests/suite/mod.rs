//! The store suite: every scenario runs on SQLite (`tests/sqlite.rs`) and on
//! PostgreSQL with replicas (`tests/postgres.rs`).
//!
//! Reads that follow the test's own writes pass the writes' tokens
//! (read-your-writes), or wait for the replicas to settle first: on
//! PostgreSQL every read may be served by a replica.

// Each test binary uses every scenario, but through different wrappers.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::Arc;

use scalestack_config::{ShardMapKind, UserRangeConfig};
use scalestack_store::{
    Consistency, IdempotencyKey, NewOrder, NewProduct, NewUser, OrderFilter, OrderPlaced,
    OrderPosition, OrderRecord, Placement, Store, StoreError, StoredResponse, UserPatch,
    UserRecord, Written,
};

use crate::support::Fixture;

pub fn alice() -> NewUser {
    NewUser {
        email: "alice@example.com".into(),
        name: "Alice".into(),
        region: None,
    }
}

/// Read-your-writes for one write.
pub fn after<T>(written: &Written<T>) -> Consistency {
    written
        .token
        .map_or(Consistency::Eventual, Consistency::AtLeast)
}

pub fn order_for(user_id: i64, quantity: i64) -> NewOrder {
    NewOrder {
        user_id,
        product_id: 7,
        quantity,
        unit_price_cents: 250,
    }
}

pub async fn users_round_trip_and_land_on_their_shard(fx: Fixture) {
    let store = fx.open().await;
    let created = store.create_user(&alice()).await.unwrap();
    let user = created.value.clone();
    assert_eq!(user.id, 1, "a fresh data set starts user ids at 1");
    assert_eq!(
        fx.is_postgres(),
        created.token.is_some(),
        "tokens exist where replicas do"
    );
    assert_eq!(
        store.get_user(user.id, after(&created)).await.unwrap(),
        Some(user.clone())
    );
    assert_eq!(
        store.get_user(999, Consistency::Eventual).await.unwrap(),
        None
    );

    let patched = store
        .update_user(
            user.id,
            &UserPatch {
                name: Some("Alice B".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let value = patched.value.clone().unwrap();
    assert_eq!(value.name, "Alice B");
    assert_eq!(value.email, user.email);
    assert!(value.updated_at >= user.updated_at);
    assert_eq!(
        store.get_user(user.id, after(&patched)).await.unwrap(),
        Some(value)
    );
    assert_eq!(
        store
            .update_user(999, &UserPatch::default())
            .await
            .unwrap()
            .value,
        None
    );

    let home = store.shard_map().shard_of_user(user.id);
    for shard in 0..fx.config.store.shards.len() {
        let expected = i64::from(shard == home);
        assert_eq!(
            fx.count_rows(shard, "users").await,
            expected,
            "shard {shard}"
        );
    }
    store.close().await;
}

pub async fn orders_are_written_with_their_outbox_row_and_paged(fx: Fixture) {
    let store = fx.open().await;
    let user = store.create_user(&alice()).await.unwrap().value;

    let mut placed = Vec::new();
    for quantity in 1..=5 {
        let written = store
            .create_order(&order_for(user.id, quantity))
            .await
            .unwrap();
        let order = written.value.clone();
        assert_eq!(order.total_cents, quantity * 250);
        assert_eq!(
            store.get_order(order.id, after(&written)).await.unwrap(),
            Some(order.clone())
        );
        placed.push(order);
    }
    let fresh = Consistency::Primary;
    let first = store
        .list_user_orders(user.id, None, 2, fresh)
        .await
        .unwrap();
    assert_eq!(first, vec![placed[4].clone(), placed[3].clone()]);
    let second = store
        .list_user_orders(user.id, Some(first[1].id), 2, fresh)
        .await
        .unwrap();
    assert_eq!(second, vec![placed[2].clone(), placed[1].clone()]);
    let last = store
        .list_user_orders(user.id, Some(second[1].id), 2, fresh)
        .await
        .unwrap();
    assert_eq!(last, vec![placed[0].clone()]);

    fx.settle().await;
    let backlog: u64 = store
        .outbox_backlog()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(backlog, 5);
    let events = store.outbox_unsent(100).await.unwrap();
    let orders: Vec<_> = events
        .iter()
        .map(|(_, OrderPlaced { order, .. })| order.clone())
        .collect();
    assert_eq!(orders, placed);

    // The admin listing pages through the same rows, resuming per shard.
    let mut cursor = vec![0i64; fx.config.store.shards.len()];
    let mut seen = Vec::new();
    loop {
        let page = store.outbox_page(&cursor, 2, true).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        for row in &page {
            cursor[usize::from(row.shard)] = row.id;
            assert_eq!(row.topic, "orders");
            assert_eq!(row.sent_at, None);
            let event: OrderPlaced = serde_json::from_str(&row.payload).unwrap();
            seen.push(event.order);
        }
    }
    assert_eq!(seen, placed);

    let eventual = Consistency::Eventual;
    assert_eq!(store.get_order(123_456_789, eventual).await.unwrap(), None);
    assert_eq!(store.get_order(-1, eventual).await.unwrap(), None);
    store.close().await;
}

pub async fn an_order_for_a_missing_user_writes_nothing(fx: Fixture) {
    let store = fx.open().await;
    let err = store.create_order(&order_for(42, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Missing {
                entity: "user",
                id: 42
            }
        ),
        "{err}"
    );
    let err = store
        .place_order(&order_for(42, 1), Some(&key("k", "f")), |_| response(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    fx.settle().await;
    let backlog: u64 = store
        .outbox_backlog()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(backlog, 0);
    for shard in 0..fx.config.store.shards.len() {
        assert_eq!(fx.count_rows(shard, "idempotency_keys").await, 0);
    }
    store.close().await;
}

pub async fn products_page_in_id_order(fx: Fixture) {
    let store = fx.open().await;
    let products: Vec<NewProduct> = (0..25)
        .map(|i| NewProduct {
            name: format!("p{i}"),
            description: String::new(),
            price_cents: 100 + i,
            stock: 10,
        })
        .collect();
    store.insert_products(&products).await.unwrap();
    let single = store
        .create_product(&NewProduct {
            name: "last".into(),
            description: "d".into(),
            price_cents: 5,
            stock: 0,
        })
        .await
        .unwrap();
    assert_eq!(single.value.id, 26);
    assert_eq!(
        store.get_product(26, after(&single)).await.unwrap(),
        Some(single.value.clone())
    );

    fx.settle().await;
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_products(cursor, 10, Consistency::Eventual)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|p| p.id);
        seen.extend(page.into_iter().map(|p| p.id));
    }
    assert_eq!(seen, (1..=26).collect::<Vec<_>>());
    store.close().await;
}

pub async fn data_survives_reopen_and_a_changed_shard_count_is_refused(fx: Fixture) {
    let store = fx.open().await;
    let user = store.create_user(&alice()).await.unwrap().value;
    store.close().await;

    let store = fx.open().await;
    assert_eq!(
        store.get_user(user.id, Consistency::Primary).await.unwrap(),
        Some(user)
    );
    store.close().await;

    let bigger = fx.with_extra_shard().await;
    let err = Store::open(&bigger).await.unwrap_err();
    let msg = err.to_string();
    let shards = fx.config.store.shards.len();
    assert!(
        msg.contains("store.shards") && msg.contains(&format!("{shards} shards")),
        "{msg}"
    );

    // Swapping two shard databases is caught too.
    let mut swapped = fx.config.clone();
    swapped.store.shards.swap(0, 1);
    let msg = Store::open(&swapped).await.unwrap_err().to_string();
    assert!(msg.contains("holds shard"), "{msg}");
}

pub async fn a_range_map_grows_past_the_last_user_only_with_a_new_version(fx: Fixture) {
    let mut config = fx.config.clone();
    config.store.shards.truncate(2);
    config.store.shard_map = ShardMapKind::Range;
    config.store.ranges = vec![UserRangeConfig {
        first_user: 1,
        shard: 0,
    }];
    config.validate().unwrap();
    let store = Store::open(&config).await.unwrap();
    for _ in 0..3 {
        let user = store.create_user(&alice()).await.unwrap().value;
        assert_eq!(store.shard_map().shard_of_user(user.id), 0);
    }
    store.close().await;

    // Send users from 1,000 on to shard 1: nobody moves, but the map changed.
    let mut grown = config.clone();
    grown.store.ranges.push(UserRangeConfig {
        first_user: 1_000,
        shard: 1,
    });
    let msg = Store::open(&grown).await.unwrap_err().to_string();
    assert!(msg.contains("store.shard_map_version"), "{msg}");
    grown.store.shard_map_version = 2;
    let store = Store::open(&grown).await.unwrap();
    assert_eq!(store.shard_map().version(), 2);
    assert_eq!(store.shard_map().shard_of_user(1_000), 1);
    store.close().await;

    // A split through existing users is refused whatever the version.
    let mut cutting = grown.clone();
    cutting.store.ranges[1].first_user = 2;
    cutting.store.shard_map_version = 3;
    let msg = Store::open(&cutting).await.unwrap_err().to_string();
    assert!(msg.contains("move existing users"), "{msg}");
}

pub async fn two_stores_never_share_ids_or_lose_writes(fx: Fixture) {
    // Two stores on the same databases stand in for two api processes.
    let a = fx.open().await;
    let b = fx.open().await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.create_user(&alice()).await.unwrap().value
        }));
    }
    let mut users = Vec::new();
    for t in tasks {
        users.push(t.await.unwrap());
    }
    let ids: HashSet<i64> = users.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), 200);

    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let user_id = user.id;
        tasks.push(tokio::spawn(async move {
            store
                .create_order(&order_for(user_id, 1))
                .await
                .unwrap()
                .value
        }));
    }
    let mut order_ids = HashSet::new();
    for t in tasks {
        order_ids.insert(t.await.unwrap().id);
    }
    assert_eq!(order_ids.len(), 200);
    fx.settle().await;
    let backlog: u64 = a
        .outbox_backlog()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(backlog, 200);
}

pub async fn bulk_insert_uses_reserved_ids(fx: Fixture) {
    let store = fx.open().await;
    let ids = store.reserve_user_ids(5_000).await.unwrap();
    assert_eq!(ids, 1..5_001);
    let users: Vec<UserRecord> = ids
        .clone()
        .map(|id| UserRecord {
            id,
            email: format!("user{id}@example.com"),
            name: format!("User {id}"),
            created_at: 0,
            updated_at: 0,
        })
        .collect();
    store.insert_users(&users).await.unwrap();
    assert_eq!(
        store
            .get_user(4_321, Consistency::Primary)
            .await
            .unwrap()
            .unwrap()
            .email,
        "user4321@example.com"
    );
    // Single creations continue after the reserved block.
    assert_eq!(store.create_user(&alice()).await.unwrap().value.id, 5_001);
    let mut total = 0;
    for shard in 0..fx.config.store.shards.len() {
        total += fx.count_rows(shard, "users").await;
    }
    assert_eq!(total, 5_001);
    store.close().await;
}

// === idempotency ===

pub fn key(key: &str, fingerprint: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: key.into(),
        fingerprint: fingerprint.into(),
    }
}

pub fn response(id: i64) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("location".into(), format!("/orders/{id}"))],
        body: format!("{{\"id\":{id}}}"),
    }
}

async fn orders_of(store: &Store, user_id: i64) -> Vec<OrderRecord> {
    store
        .list_user_orders(user_id, None, 1_000, Consistency::Primary)
        .await
        .unwrap()
}

pub async fn idempotency_keys_replay_refuse_and_expire(fx: Fixture) {
    let store = fx.open().await;
    let user = store.create_user(&alice()).await.unwrap().value;
    let new = order_for(user.id, 2);

    let first = store
        .place_order(&new, Some(&key("k-1", "a")), |o| response(o.id))
        .await
        .unwrap();
    let Placement::Created(order) = first.value else {
        panic!("{:?}", first.value)
    };
    // The same key and payload: the stored response, nothing new written.
    let again = store
        .place_order(&new, Some(&key("k-1", "a")), |_| unreachable!())
        .await
        .unwrap();
    assert_eq!(again.value, Placement::Replayed(response(order.id)));
    assert_eq!(again.token, None);
    // The same key with another payload is refused.
    let other = store
        .place_order(
            &order_for(user.id, 3),
            Some(&key("k-1", "b")),
            |_| unreachable!(),
        )
        .await
        .unwrap();
    assert_eq!(other.value, Placement::KeyReused);
    // Keys are per user: another user's "k-1" is a new key.
    let bob = store.create_user(&alice()).await.unwrap().value;
    let bobs = store
        .place_order(&order_for(bob.id, 1), Some(&key("k-1", "a")), |o| {
            response(o.id)
        })
        .await
        .unwrap();
    assert!(
        matches!(bobs.value, Placement::Created(_)),
        "{:?}",
        bobs.value
    );
    assert_eq!(orders_of(&store, user.id).await, vec![order]);
    assert_eq!(orders_of(&store, bob.id).await.len(), 1);
    store.close().await;

    // With a retention that has already passed, the key is forgotten: a new
    // order, and the purge deletes what expired.
    let mut short = fx.config.clone();
    short.store.idempotency_retention = std::time::Duration::from_millis(1);
    let store = Store::open(&short).await.unwrap();
    let placed = store
        .place_order(&new, Some(&key("k-2", "a")), |o| response(o.id))
        .await
        .unwrap();
    assert!(matches!(placed.value, Placement::Created(_)));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let replaced = store
        .place_order(&new, Some(&key("k-2", "a")), |o| response(o.id))
        .await
        .unwrap();
    assert!(
        matches!(replaced.value, Placement::Created(_)),
        "an expired key is a new key: {:?}",
        replaced.value
    );
    assert_eq!(orders_of(&store, user.id).await.len(), 3);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // k-2 (short retention) expired; k-1 of both users (24 h) did not.
    assert_eq!(store.purge_expired_idempotency_keys().await.unwrap(), 1);
    assert_eq!(store.purge_expired_idempotency_keys().await.unwrap(), 0);
    let mut left = 0;
    for shard in 0..fx.config.store.shards.len() {
        left += fx.count_rows(shard, "idempotency_keys").await;
    }
    assert_eq!(left, 2);
    store.close().await;
}

/// 100 concurrent writes with one key produce exactly one order: the others
/// replay its response or are told it is in flight.
pub async fn one_key_raced_by_a_hundred_writes_makes_one_order(fx: Fixture) {
    let store = fx.open().await;
    let user = store.create_user(&alice()).await.unwrap().value;
    let new = Arc::new(order_for(user.id, 1));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            let new = new.clone();
            tokio::spawn(async move {
                store
                    .place_order(&new, Some(&key("race", "same")), |o| response(o.id))
                    .await
                    .unwrap()
                    .value
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    let mut in_flight = 0;
    for task in tasks {
        match task.await.unwrap() {
            Placement::Created(order) => created.push(order),
            Placement::Replayed(r) => replayed.push(r),
            Placement::InFlight => in_flight += 1,
            Placement::KeyReused => panic!("same payload, same fingerprint"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "replayed {}, in flight {in_flight}",
        replayed.len()
    );
    assert_eq!(created.len() + replayed.len() + in_flight, 100);
    for r in &replayed {
        assert_eq!(*r, response(created[0].id));
    }
    assert_eq!(orders_of(&store, user.id).await, created);
    let shard = store.shard_map().shard_of_user(user.id);
    assert_eq!(fx.count_rows(shard, "outbox").await, 1);
    assert_eq!(fx.count_rows(shard, "idempotency_keys").await, 1);
    store.close().await;
}

// === cross-shard listing ===

/// One step of a listing check: orders to add, statuses to set, and the
/// query to page through.
#[derive(Debug, Clone)]
pub struct ListingCase {
    /// `(user index, status index)` of each order to place.
    pub orders: Vec<(usize, usize)>,
    /// The status filter, as an index into [`STATUSES`].
    pub status: Option<usize>,
    /// The `since` filter, as an index into the orders created so far.
    pub since: Option<usize>,
    /// Page size.
    pub limit: u32,
}

pub const STATUSES: [&str; 3] = ["placed", "paid", "shipped"];

/// The orders of a store, kept beside it: what a listing must return.
#[derive(Debug, Default)]
pub struct Model {
    pub users: Vec<i64>,
    pub orders: Vec<OrderRecord>,
}

/// Adds the case's orders to the store and the model, then checks that
/// paging through the listing returns exactly the model's answer: every
/// matching order once, in `(created_at, id)` order, full pages but the last.
pub async fn check_listing(fx: &Fixture, store: &Store, model: &mut Model, case: &ListingCase) {
    while model.users.len() < 5 {
        model
            .users
            .push(store.create_user(&alice()).await.unwrap().value.id);
    }
    for &(user, status) in &case.orders {
        let user_id = model.users[user % model.users.len()];
        let mut order = store
            .create_order(&order_for(user_id, 1))
            .await
            .unwrap()
            .value;
        let status = STATUSES[status % STATUSES.len()];
        if status != "placed" {
            order = store
                .set_order_status(order.id, status)
                .await
                .unwrap()
                .value
                .unwrap();
        }
        model.orders.push(order);
    }
    fx.settle().await;

    let filter = OrderFilter {
        status: case.status.map(|s| STATUSES[s % STATUSES.len()].to_owned()),
        since: case
            .since
            .and_then(|i| model.orders.get(i % model.orders.len().max(1)))
            .map(|o| o.created_at),
    };
    let mut expected: Vec<OrderRecord> = model
        .orders
        .iter()
        .filter(|o| filter.status.as_ref().is_none_or(|s| *s == o.status))
        .filter(|o| filter.since.is_none_or(|t| o.created_at >= t))
        .cloned()
        .collect();
    expected.sort_by_key(OrderPosition::of);

    let limit = case.limit;
    let mut got = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let mut page = store
            .list_orders(&filter, cursor, limit + 1, Consistency::Eventual)
            .await
            .unwrap();
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        pages += 1;
        assert!(pages <= expected.len() + 1, "the listing does not end");
        if more {
            assert_eq!(page.len(), limit as usize, "a page before the last is full");
            cursor = page.last().map(OrderPosition::of);
        }
        got.extend(page);
        if !more {
            break;
        }
    }
    let ids = |v: &[OrderRecord]| v.iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&got),
        ids(&expected),
        "filter {filter:?}, limit {limit}"
    );
    assert_eq!(got, expected);
}
