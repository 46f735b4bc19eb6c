//! The `inventory` group: takes the stock of every placed order from the
//! catalog, idempotently by order id, and settles the order: `confirmed`, or
//! `rejected` (with an `order.rejected` event) when the stock is not there.
//!
//! A batch is one catalog transaction (reservations are the dedupe records;
//! see `Store::reserve_stock`), then one transaction per shard to settle
//! the orders, then invalidations: the products whose stock moved, and the
//! users whose orders were rejected. The later steps are idempotent and run
//! for duplicates too, so a crash after the first step is repaired by the
//! redelivery. `order.rejected` events (written by this group) are of no
//! concern to it and are acknowledged as they come.

use scalestack_queue::{BatchHandler, Delivery, HandlerError};
use scalestack_store::{StockOutcome, StockRequest, Store};

use super::{
    INVENTORY, Invalidator, OrderEvent, STOCK_OUTCOMES, count_effects, record_latency,
    store_failure,
};

/// The `inventory` group's handler.
#[derive(Debug, Clone)]
pub struct InventoryHandler {
    store: Store,
    invalidator: Invalidator,
}

impl InventoryHandler {
    /// A handler over `store`, invalidating through `invalidator`.
    pub fn new(store: Store, invalidator: Invalidator) -> Self {
        Self { store, invalidator }
    }
}

impl BatchHandler for InventoryHandler {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(batch.len());
        // Index in the batch of each stock request.
        let mut placed = Vec::new();
        let mut requests = Vec::new();
        for (i, delivery) in batch.iter().enumerate() {
            match OrderEvent::decode(delivery) {
                Ok(OrderEvent::Placed(order)) => {
                    placed.push((i, order.created_at, order.user_id));
                    requests.push(StockRequest {
                        order_id: order.id,
                        product_id: order.product_id,
                        quantity: order.quantity,
                        message_id: delivery.message.id.clone(),
                    });
                    results.push(Ok(()));
                }
                Ok(OrderEvent::Rejected(..)) => results.push(Ok(())),
                Err(e) => results.push(Err(e)),
            }
        }
        if requests.is_empty() {
            return results;
        }
        let fail_all = |results: &mut Vec<Result<(), HandlerError>>, error: HandlerError| {
            for (i, ..) in &placed {
                results[*i] = Err(error.clone());
            }
        };
        let reserved = match self.store.reserve_stock(&requests).await {
            Ok(reserved) => reserved,
            Err(e) => {
                fail_all(&mut results, store_failure(&e));
                return results;
            }
        };
        let outcomes: Vec<(i64, StockOutcome)> =
            reserved.iter().map(|r| (r.order_id, r.outcome)).collect();
        if let Err(e) = self.store.settle_orders(&outcomes).await {
            // The reservations are committed; the redelivery settles them.
            fail_all(&mut results, store_failure(&e));
            return results;
        }
        let (mut applied, mut duplicates) = (0, 0);
        for (r, (_, created_at, _)) in reserved.iter().zip(&placed) {
            if r.duplicate {
                duplicates += 1;
            } else {
                applied += 1;
                metrics::counter!(STOCK_OUTCOMES, "outcome" => r.outcome.as_str()).increment(1);
                record_latency(INVENTORY, *created_at);
            }
        }
        count_effects(INVENTORY, applied, duplicates);
        // After the commits: a reader that misses the cache now loads the
        // new stock and status.
        self.invalidator
            .products(
                reserved
                    .iter()
                    .zip(&requests)
                    .filter(|(r, _)| r.outcome == StockOutcome::Reserved)
                    .map(|(_, q)| q.product_id),
            )
            .await;
        self.invalidator
            .users(
                reserved
                    .iter()
                    .zip(&placed)
                    .filter(|(r, _)| r.outcome != StockOutcome::Reserved)
                    .map(|(_, (_, _, user_id))| *user_id),
            )
            .await;
        results
    }
}
