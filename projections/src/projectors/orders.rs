//! Orders read model.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::ids;
use mpanel_domain::order::{OrderEvent, OrderStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{self, blame_first, column};
use crate::runner::BatchFailure;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `orders`.
pub struct OrdersProjector;

/// An `orders` row, as the fold sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    tenant_id: Uuid,
    customer_id: Uuid,
    customer_email: String,
    product_id: Uuid,
    product_name: String,
    price_id: Uuid,
    amount_minor: i64,
    currency: String,
    interval: String,
    domain: Option<String>,
    payment_ref: String,
    subscription_id: Uuid,
    status: String,
    placed_at: DateTime<Utc>,
    fulfilled_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
}

const COLUMNS: &str =
    "id, tenant_id, customer_id, customer_email, product_id, product_name, price_id, \
     amount_minor, currency, interval, domain, payment_ref, subscription_id, status, placed_at, \
     fulfilled_at, cancelled_at, cancel_reason";

#[async_trait]
impl Projector for OrdersProjector {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders"]
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        self.apply_batch(tx, std::slice::from_ref(event))
            .await
            .map_err(|f| f.error)
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), BatchFailure> {
        let decoded = batch::decode::<OrderEvent>(events, "Order")?;
        if decoded.events.is_empty() {
            return Ok(());
        }
        let select = format!("SELECT {COLUMNS} FROM orders WHERE id = ANY($1)");
        let mut rows = batch::load(tx, &select, &decoded, |r: &OrderRow| r.id)
            .await
            .map_err(|e| blame_first(events)(e.into()))?;
        for (id, _, event) in decoded.events {
            fold(rows.entry(&id), id, event);
        }
        store(tx, rows.into_changed())
            .await
            .map_err(|e| blame_first(events)(e.into()))
    }
}

/// One event's effect on its order's row (`None`: not placed yet, nothing to update).
fn fold(row: &mut Option<OrderRow>, id: Uuid, event: OrderEvent) {
    match (row, event) {
        // Placing an existing order changes nothing.
        (row @ None, OrderEvent::OrderPlaced(p)) => {
            *row = Some(OrderRow {
                id,
                tenant_id: p.tenant_id,
                customer_id: p.customer_id,
                customer_email: p.customer_email.as_str().to_owned(),
                product_id: p.price.product_id,
                product_name: p.price.product_name,
                price_id: p.price.price_id,
                amount_minor: p.price.amount.amount_minor,
                currency: p.price.amount.currency.as_str().to_owned(),
                interval: p.price.interval.as_str().to_owned(),
                domain: p.domain.as_ref().map(|d| d.as_str().to_owned()),
                payment_ref: p.payment.as_str().to_owned(),
                subscription_id: ids::subscription_id(id),
                status: OrderStatus::Paid.as_str().to_owned(),
                placed_at: p.placed_at,
                fulfilled_at: None,
                cancelled_at: None,
                cancel_reason: None,
            });
        }
        (Some(row), OrderEvent::OrderFulfilled { fulfilled_at, .. }) => {
            row.status = OrderStatus::Fulfilled.as_str().to_owned();
            row.fulfilled_at = Some(fulfilled_at);
        }
        (
            Some(row),
            OrderEvent::OrderCancelled {
                reason,
                cancelled_at,
            },
        ) => {
            row.status = OrderStatus::Cancelled.as_str().to_owned();
            row.cancelled_at = Some(cancelled_at);
            row.cancel_reason = Some(reason);
        }
        _ => {}
    }
}

/// Writes the changed rows with one statement.
async fn store(tx: &mut PgConnection, rows: Vec<OrderRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO orders ({COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], \
           $7::uuid[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::uuid[], \
           $14::text[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[], $18::text[]) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, fulfilled_at = EXCLUDED.fulfilled_at, \
           cancelled_at = EXCLUDED.cancelled_at, cancel_reason = EXCLUDED.cancel_reason"
    ))
    .bind(column(&rows, |r| r.id))
    .bind(column(&rows, |r| r.tenant_id))
    .bind(column(&rows, |r| r.customer_id))
    .bind(column(&rows, |r| r.customer_email.as_str()))
    .bind(column(&rows, |r| r.product_id))
    .bind(column(&rows, |r| r.product_name.as_str()))
    .bind(column(&rows, |r| r.price_id))
    .bind(column(&rows, |r| r.amount_minor))
    .bind(column(&rows, |r| r.currency.as_str()))
    .bind(column(&rows, |r| r.interval.as_str()))
    .bind(column(&rows, |r| r.domain.as_deref()))
    .bind(column(&rows, |r| r.payment_ref.as_str()))
    .bind(column(&rows, |r| r.subscription_id))
    .bind(column(&rows, |r| r.status.as_str()))
    .bind(column(&rows, |r| r.placed_at))
    .bind(column(&rows, |r| r.fulfilled_at))
    .bind(column(&rows, |r| r.cancelled_at))
    .bind(column(&rows, |r| r.cancel_reason.as_deref()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
