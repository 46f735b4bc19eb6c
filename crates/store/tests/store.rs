//! The store against real SQLite files in a temporary data directory.

use std::collections::HashSet;

use scalestack_config::{Config, ReplicaSetConfig};
use scalestack_store::{
    NewOrder, NewProduct, NewUser, OrderPlaced, Store, StoreError, UserPatch, UserRecord,
};

fn config_in(dir: &tempfile::TempDir) -> Config {
    Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    }
}

fn alice() -> NewUser {
    NewUser {
        email: "alice@example.com".into(),
        name: "Alice".into(),
    }
}

async fn shard_user_counts(config: &Config) -> Vec<i64> {
    let mut counts = Vec::new();
    for shard in &config.store.shards {
        let path = config.resolve_sqlite_path(&shard.primary).unwrap();
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        counts.push(
            sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(&pool)
                .await
                .unwrap(),
        );
        pool.close().await;
    }
    counts
}

#[tokio::test]
async fn users_round_trip_and_land_on_their_shard() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    let store = Store::open(&config).await.unwrap();

    let user = store.create_user(&alice()).await.unwrap();
    assert_eq!(user.id, 1, "a fresh data set starts user ids at 1");
    assert_eq!(store.get_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(store.get_user(999).await.unwrap(), None);

    let patched = store
        .update_user(
            user.id,
            &UserPatch {
                name: Some("Alice B".into()),
                email: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.name, "Alice B");
    assert_eq!(patched.email, user.email);
    assert!(patched.updated_at >= user.updated_at);
    assert_eq!(
        store.update_user(999, &UserPatch::default()).await.unwrap(),
        None
    );

    let mut expected = vec![0i64; 4];
    expected[store.shard_map().shard_of_user(user.id)] = 1;
    store.close().await;
    assert_eq!(shard_user_counts(&config).await, expected);
}

#[tokio::test]
async fn orders_are_written_with_their_outbox_row_and_paged_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config_in(&dir)).await.unwrap();
    let user = store.create_user(&alice()).await.unwrap();

    let mut placed = Vec::new();
    for quantity in 1..=5 {
        let order = store
            .create_order(&NewOrder {
                user_id: user.id,
                product_id: 7,
                quantity,
                unit_price_cents: 250,
            })
            .await
            .unwrap();
        assert_eq!(order.total_cents, quantity * 250);
        assert_eq!(
            store.get_order(order.id).await.unwrap(),
            Some(order.clone())
        );
        placed.push(order);
    }

    let first = store.list_user_orders(user.id, None, 2).await.unwrap();
    assert_eq!(first, vec![placed[4].clone(), placed[3].clone()]);
    let second = store
        .list_user_orders(user.id, Some(first[1].id), 2)
        .await
        .unwrap();
    assert_eq!(second, vec![placed[2].clone(), placed[1].clone()]);
    let last = store
        .list_user_orders(user.id, Some(second[1].id), 2)
        .await
        .unwrap();
    assert_eq!(last, vec![placed[0].clone()]);

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

    assert_eq!(store.get_order(123_456_789).await.unwrap(), None);
    assert_eq!(store.get_order(-1).await.unwrap(), None);
}

#[tokio::test]
async fn an_order_for_a_missing_user_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config_in(&dir)).await.unwrap();
    let err = store
        .create_order(&NewOrder {
            user_id: 42,
            product_id: 1,
            quantity: 1,
            unit_price_cents: 1,
        })
        .await
        .unwrap_err();
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
    let backlog: u64 = store
        .outbox_backlog()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(backlog, 0);
}

#[tokio::test]
async fn products_page_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&config_in(&dir)).await.unwrap();
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
    assert_eq!(single.id, 26);
    assert_eq!(store.get_product(26).await.unwrap(), Some(single));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_products(after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|p| p.id);
        seen.extend(page.into_iter().map(|p| p.id));
    }
    assert_eq!(seen, (1..=26).collect::<Vec<_>>());
}

#[tokio::test]
async fn data_survives_reopen_and_a_changed_shard_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(&dir);
    let store = Store::open(&config).await.unwrap();
    let user = store.create_user(&alice()).await.unwrap();
    store.close().await;

    let store = Store::open(&config).await.unwrap();
    assert_eq!(store.get_user(user.id).await.unwrap(), Some(user));
    store.close().await;

    config
        .store
        .shards
        .push(ReplicaSetConfig::sqlite("shard-4.db"));
    let err = Store::open(&config).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("store.shards") && msg.contains("4 shards"),
        "{msg}"
    );

    // Swapping two shard files is caught too.
    let mut swapped = config_in(&dir);
    swapped.store.shards.swap(0, 1);
    let msg = Store::open(&swapped).await.unwrap_err().to_string();
    assert!(msg.contains("holds shard"), "{msg}");
}

#[tokio::test]
async fn two_processes_never_share_ids_or_lose_writes() {
    // Two stores on the same files stand in for two api processes.
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    let a = Store::open(&config).await.unwrap();
    let b = Store::open(&config).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.create_user(&alice()).await.unwrap()
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
                .create_order(&NewOrder {
                    user_id,
                    product_id: 1,
                    quantity: 1,
                    unit_price_cents: 1,
                })
                .await
                .unwrap()
        }));
    }
    let mut order_ids = HashSet::new();
    for t in tasks {
        order_ids.insert(t.await.unwrap().id);
    }
    assert_eq!(order_ids.len(), 200);
    let backlog: u64 = a
        .outbox_backlog()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(backlog, 200);
}

#[tokio::test]
async fn bulk_insert_uses_reserved_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    let store = Store::open(&config).await.unwrap();
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
        store.get_user(4_321).await.unwrap().unwrap().email,
        "user4321@example.com"
    );
    // Single creations continue after the reserved block.
    assert_eq!(store.create_user(&alice()).await.unwrap().id, 5_001);
    store.close().await;
    assert_eq!(shard_user_counts(&config).await.iter().sum::<i64>(), 5_001);
}
