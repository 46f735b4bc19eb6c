//! Stock for placed orders: the inventory consumer's writes.
//!
//! [`Store::reserve_stock`] takes the stock of a batch of orders in one
//! catalog transaction. Each order's reservation row (keyed by order id) is
//! the dedupe record and is written in the same transaction as the decrement,
//! so an order delivered twice is decremented once: the second delivery finds
//! the row and gets the outcome recorded the first time.
//!
//! [`Store::settle_orders`] then moves each order from `placed` to
//! `confirmed` or `rejected` on its user's shard; a rejection that changes
//! the status writes an `order.rejected` outbox row in the same transaction,
//! so it too happens once however often the settlement is repeated. The two
//! steps are separate transactions on separate databases; a crash between
//! them is repaired by the redelivery, which finds the reservation and
//! settles again (settling is idempotent).
//!
//! This module must not know the queue or the cache: callers pass message
//! ids as opaque strings and decide what to invalidate.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use serde::{Deserialize, Serialize};

use crate::backend::BeginWrite as _;
use crate::{ORDERS_TOPIC, OrderRecord, Store, StoreError, ids, now_ms, on_pool};

/// The columns of an [`OrderRecord`], as a literal so that statements stay
/// static strings.
macro_rules! order_columns {
    () => {
        "id, user_id, product_id, quantity, unit_price_cents, total_cents, status, created_at"
    };
}

/// The stock an order asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRequest {
    /// The order.
    pub order_id: i64,
    /// The product.
    pub product_id: i64,
    /// Units.
    pub quantity: i64,
    /// The id of the message that carried the order (kept for operators).
    pub message_id: String,
}

/// What happened to an order's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StockOutcome {
    /// The units were taken from the product's stock.
    Reserved,
    /// The product has fewer units than ordered.
    OutOfStock,
    /// The product is not in the catalog.
    UnknownProduct,
}

impl StockOutcome {
    /// The stored (and metric label) form.
    pub fn as_str(self) -> &'static str {
        match self {
            StockOutcome::Reserved => "reserved",
            StockOutcome::OutOfStock => "out_of_stock",
            StockOutcome::UnknownProduct => "unknown_product",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(StockOutcome::Reserved),
            "out_of_stock" => Some(StockOutcome::OutOfStock),
            "unknown_product" => Some(StockOutcome::UnknownProduct),
            _ => None,
        }
    }

    /// The order status this outcome leads to.
    pub fn order_status(self) -> &'static str {
        match self {
            StockOutcome::Reserved => ORDER_CONFIRMED,
            StockOutcome::OutOfStock | StockOutcome::UnknownProduct => ORDER_REJECTED,
        }
    }
}

/// Status of an order whose stock was reserved.
pub const ORDER_CONFIRMED: &str = "confirmed";
/// Status of an order that could not get its stock.
pub const ORDER_REJECTED: &str = "rejected";

/// The outcome of one [`StockRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockResult {
    /// The order.
    pub order_id: i64,
    /// What happened, now or (for a duplicate) the first time.
    pub outcome: StockOutcome,
    /// True when the order had been handled before: nothing was changed now.
    pub duplicate: bool,
}

/// The event written to the outbox when an order is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    /// Always `order.rejected`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The order, with its new status.
    pub order: OrderRecord,
    /// Why: `out_of_stock` or `unknown_product`.
    pub reason: StockOutcome,
}

/// An order whose status [`Store::settle_orders`] looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The order as it is now (`None` if there is no such order).
    pub order: Option<OrderRecord>,
    /// True when this call changed its status (false: it had been settled).
    pub changed: bool,
}

impl Store {
    /// Reserves the stock of `requests` in one catalog transaction and
    /// returns one result per request, in order.
    ///
    /// A request whose order already has a reservation row is a duplicate:
    /// nothing changes and the recorded outcome is returned. A request for
    /// more units than the product has, or for an unknown product, is
    /// recorded as rejected (the stock is untouched).
    pub async fn reserve_stock(
        &self,
        requests: &[StockRequest],
    ) -> Result<Vec<StockResult>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let catalog = self.catalog();
        let now = now_ms();
        catalog
            .write("reserve_stock", async {
                on_pool!(&catalog.primary.pool, p => {
                    let mut tx = p.begin_write().await?;
                    let mut results = Vec::with_capacity(requests.len());
                    for r in requests {
                        // The placeholder outcome is replaced below in the
                        // same transaction; inserting first makes a second
                        // transaction with the same order wait (PostgreSQL)
                        // or fail, never decrement twice.
                        let fresh = sqlx::query(
                            "INSERT INTO inventory_reservations \
                             (order_id, product_id, quantity, outcome, message_id, applied_at) \
                             VALUES ($1, $2, $3, 'pending', $4, $5) ON CONFLICT (order_id) DO NOTHING",
                        )
                        .bind(r.order_id)
                        .bind(r.product_id)
                        .bind(r.quantity)
                        .bind(&r.message_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if !fresh {
                            let recorded: String = sqlx::query_scalar(
                                "SELECT outcome FROM inventory_reservations WHERE order_id = $1",
                            )
                            .bind(r.order_id)
                            .fetch_one(&mut *tx)
                            .await?;
                            let outcome = StockOutcome::parse(&recorded).ok_or_else(|| {
                                sqlx::Error::Decode(
                                    format!("unknown reservation outcome {recorded:?}").into(),
                                )
                            })?;
                            results.push(StockResult {
                                order_id: r.order_id,
                                outcome,
                                duplicate: true,
                            });
                            continue;
                        }
                        let taken = sqlx::query(
                            "UPDATE products SET stock = stock - $2, updated_at = $3 \
                             WHERE id = $1 AND stock >= $2",
                        )
                        .bind(r.product_id)
                        .bind(r.quantity)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        let outcome = if taken {
                            StockOutcome::Reserved
                        } else {
                            let exists = sqlx::query_scalar::<_, i64>(
                                "SELECT id FROM products WHERE id = $1",
                            )
                            .bind(r.product_id)
                            .fetch_optional(&mut *tx)
                            .await?
                            .is_some();
                            if exists {
                                StockOutcome::OutOfStock
                            } else {
                                StockOutcome::UnknownProduct
                            }
                        };
                        sqlx::query(
                            "UPDATE inventory_reservations SET outcome = $2 WHERE order_id = $1",
                        )
                        .bind(r.order_id)
                        .bind(outcome.as_str())
                        .execute(&mut *tx)
                        .await?;
                        results.push(StockResult {
                            order_id: r.order_id,
                            outcome,
                            duplicate: false,
                        });
                    }
                    tx.commit().await?;
                    Ok(results)
                })
            })
            .await
    }

    /// The recorded outcome of an order's reservation, if it has one.
    pub async fn stock_outcome(&self, order_id: i64) -> Result<Option<StockOutcome>, StoreError> {
        let catalog = self.catalog();
        let recorded: Option<String> = catalog
            .write("stock_outcome", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query_scalar(
                    "SELECT outcome FROM inventory_reservations WHERE order_id = $1",
                )
                .bind(order_id)
                .fetch_optional(p)
                .await)
            })
            .await?;
        Ok(recorded.as_deref().and_then(StockOutcome::parse))
    }

    /// Moves orders from `placed` to the status of their outcome, one
    /// transaction per shard (shards in parallel). A rejection that changes
    /// an order's status also writes its `order.rejected` outbox row in
    /// that transaction. Orders already settled are left alone. Returns one
    /// [`Settled`] per input, in order.
    pub async fn settle_orders(
        &self,
        outcomes: &[(i64, StockOutcome)],
    ) -> Result<Vec<Settled>, StoreError> {
        // Orders by shard, remembering each one's place in the input.
        let mut by_shard: BTreeMap<usize, Vec<(usize, i64, StockOutcome)>> = BTreeMap::new();
        let mut settled: Vec<Settled> = vec![
            Settled {
                order: None,
                changed: false,
            };
            outcomes.len()
        ];
        for (i, (order_id, outcome)) in outcomes.iter().enumerate() {
            if let Some(bucket) = ids::order_bucket(*order_id) {
                let shard = self.inner.map.shard_of_bucket(bucket);
                by_shard
                    .entry(shard)
                    .or_default()
                    .push((i, *order_id, *outcome));
            }
        }
        let per_shard = try_join_all(by_shard.into_iter().map(|(shard, orders)| async move {
            let set = self.shard(shard);
            let now = now_ms();
            let done = set
                .write("settle_orders", async {
                    on_pool!(&set.primary.pool, p => {
                        let mut tx = p.begin_write().await?;
                        let mut done = Vec::with_capacity(orders.len());
                        for (i, order_id, outcome) in &orders {
                            let changed: Option<OrderRecord> = sqlx::query_as(concat!(
                                "UPDATE orders SET status = $2 WHERE id = $1 AND status = 'placed' \
                                 RETURNING ",
                                order_columns!()
                            ))
                            .bind(order_id)
                            .bind(outcome.order_status())
                            .fetch_optional(&mut *tx)
                            .await?;
                            let order = match changed {
                                Some(order) => {
                                    if *outcome != StockOutcome::Reserved {
                                        let event = OrderRejected {
                                            kind: "order.rejected".into(),
                                            order: order.clone(),
                                            reason: *outcome,
                                        };
                                        sqlx::query(
                                            "INSERT INTO outbox (topic, key, payload, created_at) \
                                             VALUES ($1, $2, $3, $4)",
                                        )
                                        .bind(ORDERS_TOPIC)
                                        .bind(order.user_id.to_string())
                                        .bind(
                                            serde_json::to_string(&event)
                                                .expect("an event serializes"),
                                        )
                                        .bind(now)
                                        .execute(&mut *tx)
                                        .await?;
                                    }
                                    done.push((*i, Settled { order: Some(order), changed: true }));
                                    continue;
                                }
                                None => sqlx::query_as::<_, OrderRecord>(concat!(
                                    "SELECT ",
                                    order_columns!(),
                                    " FROM orders WHERE id = $1"
                                ))
                                .bind(order_id)
                                .fetch_optional(&mut *tx)
                                .await?,
                            };
                            done.push((*i, Settled { order, changed: false }));
                        }
                        tx.commit().await?;
                        Ok(done)
                    })
                })
                .await?;
            Ok::<_, StoreError>(done)
        }))
        .await?;
        for (i, s) in per_shard.into_iter().flatten() {
            settled[i] = s;
        }
        Ok(settled)
    }
}
