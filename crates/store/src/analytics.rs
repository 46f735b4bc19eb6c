//! The analytics read model (CQRS): net sales per product and orders and
//! spend per user, kept in the catalog database and fed by order events.
//!
//! [`Store::apply_sales`] applies a batch of events in one transaction. Each
//! event's message id is recorded in `consumed_messages` in that same
//! transaction, so an event delivered twice counts once. An `order.placed`
//! adds the order; an `order.rejected` takes it back out and counts the
//! rejection, so the model converges on the accepted orders whichever order
//! the two arrive in.
//!
//! The read side ([`Store::product_sales`], [`Store::user_summary`] and the
//! top lists of reports) reads what the events have built, never the orders
//! themselves: that is the point of a read model. This module must not know
//! the queue or HTTP.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;

use crate::backend::BeginWrite as _;
use crate::{Consistency, Store, StoreError, now_ms, on_pool};

/// An order id and a time (ms since the epoch).
type Stamp = (i64, i64);

/// The consumer name of the analytics group's dedupe records.
pub const ANALYTICS_CONSUMER: &str = "analytics";

/// Whether an event adds an order or takes a rejected one back out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleKind {
    /// `order.placed`.
    Placed,
    /// `order.rejected`.
    Rejected,
}

/// One order event, as the analytics consumer applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleEvent {
    /// The id of the message that carried it: the dedupe key.
    pub message_id: String,
    /// Placed or rejected.
    pub kind: SaleKind,
    /// The order.
    pub order_id: i64,
    /// Its user.
    pub user_id: i64,
    /// Its product.
    pub product_id: i64,
    /// Units.
    pub quantity: i64,
    /// Its total, in cents.
    pub total_cents: i64,
    /// When the order was placed (ms since the epoch).
    pub ordered_at: i64,
}

/// Net sales of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProductSales {
    /// The product.
    pub product_id: i64,
    /// Orders placed and not rejected.
    pub orders: i64,
    /// Units of those orders.
    pub units: i64,
    /// Their revenue, in cents.
    pub revenue_cents: i64,
    /// Orders rejected (out of stock).
    pub rejected_orders: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// Orders and spend of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserSummary {
    /// The user.
    pub user_id: i64,
    /// Orders placed and not rejected.
    pub orders: i64,
    /// What those orders cost, in cents.
    pub spend_cents: i64,
    /// Orders rejected.
    pub rejected_orders: i64,
    /// When the user's latest order was placed, ms since the epoch.
    pub last_order_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

impl Store {
    /// Applies a batch of events in one catalog transaction; returns, per
    /// event, whether it was applied now (false: its message id had been
    /// applied before, and nothing changed).
    pub async fn apply_sales(&self, events: &[SaleEvent]) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let catalog = self.catalog();
        let now = now_ms();
        catalog
            .write("apply_sales", async {
                on_pool!(&catalog.primary.pool, p => {
                    let mut tx = p.begin_write().await?;
                    let mut applied = Vec::with_capacity(events.len());
                    for e in events {
                        let fresh = sqlx::query(
                            "INSERT INTO consumed_messages (consumer, message_id, subject, applied_at) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, message_id) DO NOTHING",
                        )
                        .bind(ANALYTICS_CONSUMER)
                        .bind(&e.message_id)
                        .bind(e.order_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        applied.push(fresh);
                        if !fresh {
                            continue;
                        }
                        // A rejection takes the order back out and counts it.
                        let (sign, rejected) = match e.kind {
                            SaleKind::Placed => (1i64, 0i64),
                            SaleKind::Rejected => (-1, 1),
                        };
                        sqlx::query(
                            "INSERT INTO product_sales \
                             (product_id, orders, units, revenue_cents, rejected_orders, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (product_id) DO UPDATE SET \
                             orders = product_sales.orders + excluded.orders, \
                             units = product_sales.units + excluded.units, \
                             revenue_cents = product_sales.revenue_cents + excluded.revenue_cents, \
                             rejected_orders = product_sales.rejected_orders + excluded.rejected_orders, \
                             updated_at = excluded.updated_at",
                        )
                        .bind(e.product_id)
                        .bind(sign)
                        .bind(sign * e.quantity)
                        .bind(sign * e.total_cents)
                        .bind(rejected)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO user_summaries \
                             (user_id, orders, spend_cents, rejected_orders, last_order_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (user_id) DO UPDATE SET \
                             orders = user_summaries.orders + excluded.orders, \
                             spend_cents = user_summaries.spend_cents + excluded.spend_cents, \
                             rejected_orders = user_summaries.rejected_orders + excluded.rejected_orders, \
                             last_order_at = CASE WHEN excluded.last_order_at > user_summaries.last_order_at \
                                 THEN excluded.last_order_at ELSE user_summaries.last_order_at END, \
                             updated_at = excluded.updated_at",
                        )
                        .bind(e.user_id)
                        .bind(sign)
                        .bind(sign * e.total_cents)
                        .bind(rejected)
                        .bind(e.ordered_at)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(applied)
                })
            })
            .await
    }

    /// Net sales of a product; `None` before its first event.
    pub async fn product_sales(
        &self,
        product_id: i64,
        consistency: Consistency,
    ) -> Result<Option<ProductSales>, StoreError> {
        self.catalog()
            .read("product_sales", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, ProductSales>(
                    "SELECT product_id, orders, units, revenue_cents, rejected_orders, updated_at \
                     FROM product_sales WHERE product_id = $1",
                )
                .bind(product_id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// Orders and spend of a user; `None` before the user's first event.
    pub async fn user_summary(
        &self,
        user_id: i64,
        consistency: Consistency,
    ) -> Result<Option<UserSummary>, StoreError> {
        self.catalog()
            .read("user_summary", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, UserSummary>(
                    "SELECT user_id, orders, spend_cents, rejected_orders, last_order_at, updated_at \
                     FROM user_summaries WHERE user_id = $1",
                )
                .bind(user_id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// The `limit` products with the highest revenue (ties by id).
    pub async fn top_products(&self, limit: u32) -> Result<Vec<ProductSales>, StoreError> {
        let limit = i64::from(limit);
        self.catalog()
            .read("top_products", Consistency::Eventual, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, ProductSales>(
                    "SELECT product_id, orders, units, revenue_cents, rejected_orders, updated_at \
                     FROM product_sales ORDER BY revenue_cents DESC, product_id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(p)
                .await)
            })
            .await
    }

    /// The `limit` users with the highest spend (ties by id).
    pub async fn top_customers(&self, limit: u32) -> Result<Vec<UserSummary>, StoreError> {
        let limit = i64::from(limit);
        self.catalog()
            .read("top_customers", Consistency::Eventual, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, UserSummary>(
                    "SELECT user_id, orders, spend_cents, rejected_orders, last_order_at, updated_at \
                     FROM user_summaries ORDER BY spend_cents DESC, user_id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(p)
                .await)
            })
            .await
    }

    /// Deletes dedupe records applied before `before` (ms); returns how many.
    pub async fn purge_consumed(&self, before: i64) -> Result<u64, StoreError> {
        let catalog = self.catalog();
        catalog
            .write("purge_consumed", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query(
                    "DELETE FROM consumed_messages WHERE applied_at < $1",
                )
                .bind(before)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            })
            .await
    }

    /// When each of `order_ids` got its stock decision and its analytics
    /// update (ms since the epoch), for the end-to-end benchmark: `(order,
    /// inventory, analytics)`, `None` where that effect has not happened.
    pub async fn effect_times(
        &self,
        order_ids: &[i64],
    ) -> Result<Vec<(i64, Option<i64>, Option<i64>)>, StoreError> {
        let catalog = self.catalog();
        let mut out = Vec::with_capacity(order_ids.len());
        for chunk in order_ids.chunks(500) {
            let (inventory, analytics): (Vec<Stamp>, Vec<Stamp>) = catalog
                .write("effect_times", async {
                    on_pool!(&catalog.primary.pool, p, Db => {
                        let mut q = QueryBuilder::<Db>::new(
                            "SELECT order_id, applied_at FROM inventory_reservations WHERE order_id IN (",
                        );
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        q.push(")");
                        let a = q.build_query_as().fetch_all(p).await?;
                        let mut q = QueryBuilder::<Db>::new(
                            "SELECT subject, MIN(applied_at) FROM consumed_messages WHERE consumer = ",
                        );
                        q.push_bind(ANALYTICS_CONSUMER);
                        q.push(" AND subject IN (");
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        q.push(") GROUP BY subject");
                        let b = q.build_query_as().fetch_all(p).await?;
                        Ok((a, b))
                    })
                })
                .await?;
            let inventory: HashMap<i64, i64> = inventory.into_iter().collect();
            let analytics: HashMap<i64, i64> = analytics.into_iter().collect();
            for id in chunk {
                out.push((*id, inventory.get(id).copied(), analytics.get(id).copied()));
            }
        }
        Ok(out)
    }
}
