//! The `analytics` group: the CQRS read model. Every order event updates the
//! net sales of its product and the orders and spend of its user, in one
//! catalog transaction per batch that also records each message id (see
//! `Store::apply_sales`), so a redelivered event counts once.
//!
//! The read side is served by `GET /analytics/products/{id}` and
//! `GET /analytics/users/{id}` and feeds the reports of `POST /reports`.

use scalestack_queue::{BatchHandler, Delivery, HandlerError};
use scalestack_store::{SaleEvent, SaleKind, Store};

use super::{ANALYTICS, OrderEvent, count_effects, record_latency, store_failure};

/// The `analytics` group's handler.
#[derive(Debug, Clone)]
pub struct AnalyticsHandler {
    store: Store,
}

impl AnalyticsHandler {
    /// A handler over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl BatchHandler for AnalyticsHandler {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let mut results: Vec<Result<(), HandlerError>> = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut at = Vec::new();
        for (i, delivery) in batch.iter().enumerate() {
            match OrderEvent::decode(delivery) {
                Ok(event) => {
                    let kind = match event {
                        OrderEvent::Placed(_) => SaleKind::Placed,
                        OrderEvent::Rejected(..) => SaleKind::Rejected,
                    };
                    let order = event.order();
                    events.push(SaleEvent {
                        message_id: delivery.message.id.clone(),
                        kind,
                        order_id: order.id,
                        user_id: order.user_id,
                        product_id: order.product_id,
                        quantity: order.quantity,
                        total_cents: order.total_cents,
                        ordered_at: order.created_at,
                    });
                    at.push((i, kind, order.created_at));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if events.is_empty() {
            return results;
        }
        match self.store.apply_sales(&events).await {
            Ok(applied) => {
                let fresh = applied.iter().filter(|a| **a).count();
                count_effects(ANALYTICS, fresh, applied.len() - fresh);
                for (applied, (_, kind, created_at)) in applied.iter().zip(&at) {
                    if *applied && *kind == SaleKind::Placed {
                        record_latency(ANALYTICS, *created_at);
                    }
                }
            }
            Err(e) => {
                let error = store_failure(&e);
                for (i, ..) in &at {
                    results[*i] = Err(error.clone());
                }
            }
        }
        results
    }
}
