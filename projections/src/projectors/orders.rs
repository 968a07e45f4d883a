//! Orders read model.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::ids;
use mpanel_domain::order::{OrderEvent, OrderStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{self, blame_first};
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
    let mut c = Columns::default();
    for r in rows {
        c.id.push(r.id);
        c.tenant_id.push(r.tenant_id);
        c.customer_id.push(r.customer_id);
        c.customer_email.push(r.customer_email);
        c.product_id.push(r.product_id);
        c.product_name.push(r.product_name);
        c.price_id.push(r.price_id);
        c.amount_minor.push(r.amount_minor);
        c.currency.push(r.currency);
        c.interval.push(r.interval);
        c.domain.push(r.domain);
        c.payment_ref.push(r.payment_ref);
        c.subscription_id.push(r.subscription_id);
        c.status.push(r.status);
        c.placed_at.push(r.placed_at);
        c.fulfilled_at.push(r.fulfilled_at);
        c.cancelled_at.push(r.cancelled_at);
        c.cancel_reason.push(r.cancel_reason);
    }
    sqlx::query(&format!(
        "INSERT INTO orders ({COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], \
           $7::uuid[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::uuid[], \
           $14::text[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[], $18::text[]) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, fulfilled_at = EXCLUDED.fulfilled_at, \
           cancelled_at = EXCLUDED.cancelled_at, cancel_reason = EXCLUDED.cancel_reason"
    ))
    .bind(c.id)
    .bind(c.tenant_id)
    .bind(c.customer_id)
    .bind(c.customer_email)
    .bind(c.product_id)
    .bind(c.product_name)
    .bind(c.price_id)
    .bind(c.amount_minor)
    .bind(c.currency)
    .bind(c.interval)
    .bind(c.domain)
    .bind(c.payment_ref)
    .bind(c.subscription_id)
    .bind(c.status)
    .bind(c.placed_at)
    .bind(c.fulfilled_at)
    .bind(c.cancelled_at)
    .bind(c.cancel_reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// [`OrderRow`]s column by column, as `UNNEST` takes them.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    tenant_id: Vec<Uuid>,
    customer_id: Vec<Uuid>,
    customer_email: Vec<String>,
    product_id: Vec<Uuid>,
    product_name: Vec<String>,
    price_id: Vec<Uuid>,
    amount_minor: Vec<i64>,
    currency: Vec<String>,
    interval: Vec<String>,
    domain: Vec<Option<String>>,
    payment_ref: Vec<String>,
    subscription_id: Vec<Uuid>,
    status: Vec<String>,
    placed_at: Vec<DateTime<Utc>>,
    fulfilled_at: Vec<Option<DateTime<Utc>>>,
    cancelled_at: Vec<Option<DateTime<Utc>>>,
    cancel_reason: Vec<Option<String>>,
}
