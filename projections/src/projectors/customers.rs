//! Customers read model: found or created per tenant and e-mail address on each order.

use async_trait::async_trait;
use mpanel_domain::order::OrderEvent;
use sqlx::PgConnection;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `customers` from placed orders.
pub struct CustomersProjector;

#[async_trait]
impl Projector for CustomersProjector {
    fn name(&self) -> &'static str {
        "customers"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["customers"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.aggregate_type != "Order" {
            return Ok(());
        }
        if let OrderEvent::OrderPlaced(placed) = event.decode()? {
            sqlx::query(
                "INSERT INTO customers (id, tenant_id, email, first_order_id, orders_count, created_at) \
                 VALUES ($1, $2, $3, $4, 1, $5) \
                 ON CONFLICT (id) DO UPDATE SET orders_count = customers.orders_count + 1",
            )
            .bind(placed.customer_id)
            .bind(placed.tenant_id)
            .bind(placed.customer_email.as_str())
            .bind(aggregate_uuid(event)?)
            .bind(placed.placed_at)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
