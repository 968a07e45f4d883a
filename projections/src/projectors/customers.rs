//! Customers read model: found or created per tenant and e-mail address on each order.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::order::OrderEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::aggregate_uuid;
use super::batch::{blame, blame_first, column};
use crate::runner::BatchFailure;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `customers` from placed orders.
pub struct CustomersProjector;

/// A customer first seen in a batch, and how many of the batch's orders are theirs.
struct Seen {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    first_order_id: Uuid,
    created_at: DateTime<Utc>,
    orders: i32,
}

#[async_trait]
impl Projector for CustomersProjector {
    fn name(&self) -> &'static str {
        "customers"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["customers"]
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        self.apply_batch(tx, std::slice::from_ref(event))
            .await
            .map_err(|f| f.error)
    }

    /// One upsert per batch: a customer new to the table takes the batch's first order's
    /// details, and every order of the batch adds one to the count (the rule of applying
    /// them one by one, counted in memory).
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), BatchFailure> {
        let mut seen: Vec<Seen> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for event in events.iter().filter(|e| e.aggregate_type == "Order") {
            let OrderEvent::OrderPlaced(placed) = event.decode().map_err(blame(event))? else {
                continue;
            };
            let order_id = aggregate_uuid(event).map_err(blame(event))?;
            match index.get(&placed.customer_id) {
                Some(&i) => seen[i].orders = seen[i].orders.saturating_add(1),
                None => {
                    index.insert(placed.customer_id, seen.len());
                    seen.push(Seen {
                        id: placed.customer_id,
                        tenant_id: placed.tenant_id,
                        email: placed.customer_email.as_str().to_owned(),
                        first_order_id: order_id,
                        created_at: placed.placed_at,
                        orders: 1,
                    });
                }
            }
        }
        if seen.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO customers (id, tenant_id, email, first_order_id, orders_count, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::int[], $6::timestamptz[]) \
             ON CONFLICT (id) DO UPDATE SET orders_count = customers.orders_count + EXCLUDED.orders_count",
        )
        .bind(column(&seen, |s| s.id))
        .bind(column(&seen, |s| s.tenant_id))
        .bind(column(&seen, |s| s.email.clone()))
        .bind(column(&seen, |s| s.first_order_id))
        .bind(column(&seen, |s| s.orders))
        .bind(column(&seen, |s| s.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| blame_first(events)(e.into()))?;
        Ok(())
    }
}
