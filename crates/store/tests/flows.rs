//! The store's side of the queue's flows, on both engines: the relay's view
//! of every outbox, stock reservations that a redelivery cannot repeat, order
//! settlement with its `order.rejected` event, the analytics read model with
//! its dedupe records, and the life of a job.
//!
//! Each test runs on SQLite (four shards) and on PostgreSQL (two shards, each
//! a primary with a streaming replica).

mod support;

use scalestack_store::{
    Consistency, DbId, NewOrder, NewProduct, NewUser, SaleEvent, SaleKind, StockOutcome,
    StockRequest, Store,
};
use support::Fixture;

async fn user(store: &Store) -> i64 {
    store
        .create_user(&NewUser {
            email: "flow@example.com".into(),
            name: "Flow".into(),
            region: None,
        })
        .await
        .unwrap()
        .value
        .id
}

async fn product(store: &Store, stock: i64) -> i64 {
    store
        .create_product(&NewProduct {
            name: "Lamp".into(),
            description: String::new(),
            price_cents: 250,
            stock,
        })
        .await
        .unwrap()
        .value
        .id
}

async fn order(store: &Store, user_id: i64, product_id: i64, quantity: i64) -> i64 {
    store
        .create_order(&NewOrder {
            user_id,
            product_id,
            quantity,
            unit_price_cents: 250,
        })
        .await
        .unwrap()
        .value
        .id
}

fn request(order_id: i64, product_id: i64, quantity: i64) -> StockRequest {
    StockRequest {
        order_id,
        product_id,
        quantity,
        message_id: format!("m-{order_id}"),
    }
}

async fn stock(store: &Store, product_id: i64) -> i64 {
    store
        .get_product(product_id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap()
        .stock
}

// === the relay's view ===

async fn every_outbox_is_relayed_once_marked(f: Fixture) {
    let store = f.open().await;
    let u = user(&store).await;
    let p = product(&store, 10).await;
    let o1 = order(&store, u, p, 1).await;
    let o2 = order(&store, u, p, 2).await;
    let job = store.create_job("report", "{}").await.unwrap().value;

    let dbs = store.outbox_databases();
    assert_eq!(dbs[0], DbId::Catalog, "the catalog comes first");
    assert_eq!(dbs.len(), 1 + f.config.store.shards.len());
    let mut seen = Vec::new();
    for db in &dbs {
        let rows = store.outbox_pending(*db, 100).await.unwrap();
        let lag = store.outbox_lag(*db).await.unwrap();
        assert_eq!(lag.unsent, rows.len() as u64);
        assert_eq!(lag.oldest_created_at, rows.first().map(|r| r.created_at));
        for row in rows {
            assert_eq!(row.db, Some(*db));
            assert_eq!(row.message_id(), format!("{db}-{}", row.id));
            seen.push((*db, row));
        }
    }
    assert_eq!(seen.len(), 3, "two orders and a job: {seen:?}");
    let job_row = seen.iter().find(|(db, _)| *db == DbId::Catalog).unwrap();
    assert_eq!(job_row.1.topic, "jobs");
    assert_eq!(job_row.1.key, job.id.to_string());
    let order_rows: Vec<_> = seen.iter().filter(|(db, _)| *db != DbId::Catalog).collect();
    assert!(order_rows.iter().all(|(_, r)| r.topic == "orders"));
    assert!(order_rows.iter().all(|(_, r)| r.key == u.to_string()));
    let text: String = order_rows.iter().map(|(_, r)| r.payload.clone()).collect();
    assert!(text.contains(&o1.to_string()) && text.contains(&o2.to_string()));

    // Marking is by id and happens once; a second mark changes nothing.
    for (db, row) in &seen {
        assert_eq!(
            store.mark_outbox_sent(*db, &[row.id], 1_000).await.unwrap(),
            1
        );
        assert_eq!(
            store.mark_outbox_sent(*db, &[row.id], 2_000).await.unwrap(),
            0
        );
    }
    for db in &dbs {
        assert!(store.outbox_pending(*db, 100).await.unwrap().is_empty());
        assert_eq!(store.outbox_lag(*db).await.unwrap().unsent, 0);
        // Sent at 1,000 ms: kept at 1,000, deleted when the cut passes it.
        assert_eq!(store.purge_sent_outbox(*db, 1_000).await.unwrap(), 0);
    }
    let mut purged = 0;
    for db in &dbs {
        purged += store.purge_sent_outbox(*db, 1_001).await.unwrap();
    }
    assert_eq!(purged, 3);
    assert!(store.outbox_pending(DbId::Shard(99), 1).await.is_err());
}

#[tokio::test]
async fn sqlite_every_outbox_is_relayed_once_marked() {
    every_outbox_is_relayed_once_marked(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_every_outbox_is_relayed_once_marked() {
    every_outbox_is_relayed_once_marked(Fixture::postgres().await).await;
}

/// Orders placed in bulk are what single placements would have been: an
/// id in the user's shard, an `order.placed` row in that shard's outbox, the
/// next single placement continuing the sequence.
async fn bulk_orders_are_placed_with_their_outbox_rows(f: Fixture) {
    let store = f.open().await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(user(&store).await);
    }
    let p = product(&store, 10).await;
    let news: Vec<NewOrder> = (0..2_500)
        .map(|i| NewOrder {
            user_id: users[i % users.len()],
            product_id: p,
            quantity: 1 + (i as i64 % 3),
            unit_price_cents: 250,
        })
        .collect();
    let written = store.insert_orders(&news).await.unwrap();
    assert_eq!(written.len(), news.len());
    let ids: std::collections::HashSet<i64> = written.iter().map(|o| o.id).collect();
    assert_eq!(ids.len(), news.len(), "every id is new");
    for o in written.iter().step_by(97) {
        let read = store
            .get_order(o.id, Consistency::Primary)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&read, o);
    }
    let mut payloads = 0;
    for db in store.outbox_databases() {
        for row in store.outbox_pending(db, 10_000).await.unwrap() {
            assert_eq!(row.topic, "orders");
            let event: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
            assert_eq!(event["type"], "order.placed");
            let id = event["order"]["id"].as_i64().unwrap();
            assert!(ids.contains(&id), "{event}");
            assert_eq!(row.key, event["order"]["user_id"].to_string());
            payloads += 1;
        }
    }
    assert_eq!(payloads, news.len());
    let next = order(&store, users[0], p, 1).await;
    assert!(!ids.contains(&next));
    assert!(store.insert_orders(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_bulk_orders_are_placed_with_their_outbox_rows() {
    bulk_orders_are_placed_with_their_outbox_rows(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_bulk_orders_are_placed_with_their_outbox_rows() {
    bulk_orders_are_placed_with_their_outbox_rows(Fixture::postgres().await).await;
}

// === inventory ===

async fn stock_is_taken_once_per_order(f: Fixture) {
    let store = f.open().await;
    let u = user(&store).await;
    let p = product(&store, 5).await;
    let o1 = order(&store, u, p, 3).await;
    let o2 = order(&store, u, p, 3).await;
    let o3 = order(&store, u, 999_999, 1).await;

    let first = store
        .reserve_stock(&[
            request(o1, p, 3),
            request(o2, p, 3),
            request(o3, 999_999, 1),
        ])
        .await
        .unwrap();
    let outcomes: Vec<_> = first.iter().map(|r| (r.outcome, r.duplicate)).collect();
    assert_eq!(
        outcomes,
        [
            (StockOutcome::Reserved, false),
            (StockOutcome::OutOfStock, false),
            (StockOutcome::UnknownProduct, false),
        ]
    );
    assert_eq!(stock(&store, p).await, 2);

    // A redelivery of the whole batch changes nothing and reports what was
    // decided the first time, even though the stock has changed since.
    let again = store
        .reserve_stock(&[
            request(o1, p, 3),
            request(o2, p, 3),
            request(o3, 999_999, 1),
        ])
        .await
        .unwrap();
    assert!(again.iter().all(|r| r.duplicate));
    assert_eq!(
        again.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        [
            StockOutcome::Reserved,
            StockOutcome::OutOfStock,
            StockOutcome::UnknownProduct
        ]
    );
    assert_eq!(stock(&store, p).await, 2);
    assert_eq!(
        store.stock_outcome(o2).await.unwrap(),
        Some(StockOutcome::OutOfStock)
    );
    assert_eq!(store.stock_outcome(123).await.unwrap(), None);

    // Two consumers racing on the same orders take the stock once.
    let q = product(&store, 100).await;
    let racing: Vec<i64> = futures::future::join_all((0..10).map(|_| order(&store, u, q, 1))).await;
    let batch: Vec<StockRequest> = racing.iter().map(|o| request(*o, q, 1)).collect();
    let (a, b) = Box::pin(futures::future::join(
        store.reserve_stock(&batch),
        store.reserve_stock(&batch),
    ))
    .await;
    let fresh = a
        .unwrap()
        .iter()
        .chain(b.unwrap().iter())
        .filter(|r| !r.duplicate)
        .count();
    assert_eq!(fresh, 10);
    assert_eq!(stock(&store, q).await, 90);

    // Settling: placed → confirmed or rejected, once; a rejection writes one
    // order.rejected event however often it is settled.
    let settle = [
        (o1, StockOutcome::Reserved),
        (o2, StockOutcome::OutOfStock),
        (o3, StockOutcome::UnknownProduct),
        (1_024 * 1_000_000 + 7, StockOutcome::Reserved),
    ];
    let settled = store.settle_orders(&settle).await.unwrap();
    assert_eq!(
        settled.iter().map(|s| s.changed).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert_eq!(settled[0].order.as_ref().unwrap().status, "confirmed");
    assert_eq!(settled[1].order.as_ref().unwrap().status, "rejected");
    assert!(settled[3].order.is_none(), "no such order");
    let again = store.settle_orders(&settle).await.unwrap();
    assert!(again.iter().all(|s| !s.changed));
    assert_eq!(again[1].order.as_ref().unwrap().status, "rejected");
    let mut rejected_events = Vec::new();
    for db in store.outbox_databases() {
        for row in store.outbox_pending(db, 1_000).await.unwrap() {
            if row.payload.contains("order.rejected") {
                rejected_events.push(row.payload);
            }
        }
    }
    assert_eq!(rejected_events.len(), 2, "{rejected_events:?}");
    let event: serde_json::Value = serde_json::from_str(
        rejected_events
            .iter()
            .find(|e| e.contains(&format!("\"id\":{o2}")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(event["reason"], "out_of_stock");
    assert_eq!(event["order"]["status"], "rejected");
}

#[tokio::test]
async fn sqlite_stock_is_taken_once_per_order() {
    Box::pin(stock_is_taken_once_per_order(Fixture::sqlite())).await;
}

#[tokio::test]
async fn postgres_stock_is_taken_once_per_order() {
    Box::pin(stock_is_taken_once_per_order(Fixture::postgres().await)).await;
}

// === analytics ===

fn sale(message: &str, kind: SaleKind, order_id: i64, user_id: i64, quantity: i64) -> SaleEvent {
    SaleEvent {
        message_id: message.into(),
        kind,
        order_id,
        user_id,
        product_id: 7,
        quantity,
        total_cents: quantity * 100,
        ordered_at: 1_000 + order_id,
    }
}

async fn sales_count_once_and_rejections_take_them_back(f: Fixture) {
    let store = f.open().await;
    let applied = store
        .apply_sales(&[
            sale("a", SaleKind::Placed, 1, 10, 2),
            sale("b", SaleKind::Placed, 2, 10, 3),
            sale("a", SaleKind::Placed, 1, 10, 2),
            sale("c", SaleKind::Placed, 3, 11, 1),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [true, true, false, true]);
    let applied = store
        .apply_sales(&[
            sale("d", SaleKind::Rejected, 2, 10, 3),
            sale("b", SaleKind::Placed, 2, 10, 3),
            sale("d", SaleKind::Rejected, 2, 10, 3),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [true, false, false]);

    let product = store
        .product_sales(7, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            product.orders,
            product.units,
            product.revenue_cents,
            product.rejected_orders
        ),
        (2, 3, 300, 1)
    );
    let u10 = store
        .user_summary(10, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            u10.orders,
            u10.spend_cents,
            u10.rejected_orders,
            u10.last_order_at
        ),
        (1, 200, 1, 1_002)
    );
    assert_eq!(
        store.user_summary(12, Consistency::Primary).await.unwrap(),
        None
    );
    f.settle().await;
    let top = store.top_customers(5).await.unwrap();
    assert_eq!(top.iter().map(|u| u.user_id).collect::<Vec<_>>(), [10, 11]);
    assert_eq!(store.top_products(5).await.unwrap().len(), 1);

    let times = store.effect_times(&[1, 2, 99]).await.unwrap();
    assert!(times[0].2.is_some() && times[1].2.is_some() && times[2].2.is_none());
    assert!(times.iter().all(|t| t.1.is_none()), "no stock was reserved");

    // Dedupe records go after their retention, and only then.
    assert_eq!(store.purge_consumed(0).await.unwrap(), 0);
    assert_eq!(store.purge_consumed(i64::MAX).await.unwrap(), 4);
}

#[tokio::test]
async fn sqlite_sales_count_once_and_rejections_take_them_back() {
    sales_count_once_and_rejections_take_them_back(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_sales_count_once_and_rejections_take_them_back() {
    sales_count_once_and_rejections_take_them_back(Fixture::postgres().await).await;
}

// === jobs ===

async fn a_job_goes_from_queued_to_done_and_stays_done(f: Fixture) {
    let store = f.open().await;
    let job = store
        .create_job("email", r#"{"to":"a@b"}"#)
        .await
        .unwrap()
        .value;
    assert_eq!((job.state.as_str(), job.attempts), ("queued", 0));
    let row = &store.outbox_pending(DbId::Catalog, 10).await.unwrap()[0];
    let event: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
    assert_eq!(event["type"], "job.submitted");
    assert_eq!(event["job_id"], job.id);
    assert_eq!(event["job_kind"], "email");

    let running = store.start_job(job.id, 1).await.unwrap().unwrap();
    assert_eq!((running.state.as_str(), running.attempts), ("running", 1));
    store.fail_job(job.id, "disk full", false).await.unwrap();
    let retrying = store
        .get_job(job.id, Consistency::Primary)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retrying.state, "queued");
    assert_eq!(retrying.error.as_deref(), Some("disk full"));
    store.start_job(job.id, 2).await.unwrap();
    assert!(store.finish_job(job.id, r#"{"ok":true}"#).await.unwrap());
    assert!(!store.finish_job(job.id, r#"{"ok":false}"#).await.unwrap());
    store.fail_job(job.id, "late failure", true).await.unwrap();
    let again = store.start_job(job.id, 3).await.unwrap().unwrap();
    assert_eq!(again.state, "done", "a done job stays done");
    assert_eq!(again.attempts, 2);
    assert_eq!(again.result.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(again.error, None);
    assert_eq!(store.start_job(987_654, 1).await.unwrap(), None);

    let other = store.create_job("report", "{}").await.unwrap().value;
    store.start_job(other.id, 1).await.unwrap();
    store.fail_job(other.id, "bad", true).await.unwrap();
    f.settle().await;
    let counts = store.job_counts().await.unwrap();
    assert_eq!(
        counts,
        [("queued", 0), ("running", 0), ("done", 1), ("failed", 1)]
    );
}

#[tokio::test]
async fn sqlite_a_job_goes_from_queued_to_done_and_stays_done() {
    a_job_goes_from_queued_to_done_and_stays_done(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_a_job_goes_from_queued_to_done_and_stays_done() {
    a_job_goes_from_queued_to_done_and_stays_done(Fixture::postgres().await).await;
}
