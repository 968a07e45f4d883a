//! Orders read model.

use async_trait::async_trait;
use mpanel_domain::ids;
use mpanel_domain::order::{OrderEvent, OrderStatus};
use sqlx::PgConnection;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `orders`.
pub struct OrdersProjector;

#[async_trait]
impl Projector for OrdersProjector {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.aggregate_type != "Order" {
            return Ok(());
        }
        let id = aggregate_uuid(event)?;
        match event.decode::<OrderEvent>()? {
            OrderEvent::OrderPlaced(p) => {
                sqlx::query(
                    "INSERT INTO orders (id, tenant_id, customer_id, customer_email, product_id, product_name, \
                       price_id, amount_minor, currency, interval, domain, payment_ref, subscription_id, status, placed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(p.tenant_id)
                .bind(p.customer_id)
                .bind(p.customer_email.as_str())
                .bind(p.price.product_id)
                .bind(&p.price.product_name)
                .bind(p.price.price_id)
                .bind(p.price.amount.amount_minor)
                .bind(p.price.amount.currency.as_str())
                .bind(p.price.interval.as_str())
                .bind(p.domain.as_ref().map(|d| d.as_str().to_owned()))
                .bind(p.payment.as_str())
                .bind(ids::subscription_id(id))
                .bind(OrderStatus::Paid.as_str())
                .bind(p.placed_at)
                .execute(&mut *tx)
                .await?;
            }
            OrderEvent::OrderFulfilled { fulfilled_at, .. } => {
                sqlx::query("UPDATE orders SET status = $2, fulfilled_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(OrderStatus::Fulfilled.as_str())
                    .bind(fulfilled_at)
                    .execute(&mut *tx)
                    .await?;
            }
            OrderEvent::OrderCancelled {
                reason,
                cancelled_at,
            } => {
                sqlx::query("UPDATE orders SET status = $2, cancelled_at = $3, cancel_reason = $4 WHERE id = $1")
                    .bind(id)
                    .bind(OrderStatus::Cancelled.as_str())
                    .bind(cancelled_at)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }
}
