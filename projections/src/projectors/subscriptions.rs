//! Subscriptions read model, with step progress.

use async_trait::async_trait;
use mpanel_domain::subscription::{SubscriptionEvent, SubscriptionStatus};
use sqlx::PgConnection;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `subscriptions`.
pub struct SubscriptionsProjector;

#[async_trait]
impl Projector for SubscriptionsProjector {
    fn name(&self) -> &'static str {
        "subscriptions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["subscriptions"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.aggregate_type != "Subscription" {
            return Ok(());
        }
        let id = aggregate_uuid(event)?;
        match event.decode::<SubscriptionEvent>()? {
            SubscriptionEvent::SubscriptionOpened {
                order_id,
                tenant_id,
                customer_id,
                domain,
                required_steps,
                opened_at,
            } => {
                let steps: Vec<&str> = required_steps.iter().map(|s| s.as_str()).collect();
                sqlx::query(
                    "INSERT INTO subscriptions (id, order_id, tenant_id, customer_id, domain, status, required_steps, opened_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(order_id)
                .bind(tenant_id)
                .bind(customer_id)
                .bind(domain.map(String::from))
                .bind(SubscriptionStatus::Inactive.as_str())
                .bind(&steps)
                .bind(opened_at)
                .execute(&mut *tx)
                .await?;
            }
            SubscriptionEvent::ProvisioningStepSucceeded {
                step, succeeded_at, ..
            } => {
                sqlx::query(
                    "UPDATE subscriptions SET succeeded_steps = array_append(succeeded_steps, $2), updated_at = $3 \
                     WHERE id = $1 AND NOT ($2 = ANY (succeeded_steps))",
                )
                .bind(id)
                .bind(step.as_str())
                .bind(succeeded_at)
                .execute(&mut *tx)
                .await?;
            }
            SubscriptionEvent::ProvisioningFailed {
                step,
                error,
                failed_at,
                ..
            } => {
                sqlx::query(
                    "UPDATE subscriptions SET status = $2, failed_step = $3, last_error = $4, updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(SubscriptionStatus::ProvisioningFailed.as_str())
                .bind(step.as_str())
                .bind(error)
                .bind(failed_at)
                .execute(&mut *tx)
                .await?;
            }
            SubscriptionEvent::SubscriptionActivated { activated_at, .. } => {
                sqlx::query(
                    "UPDATE subscriptions SET status = $2, activated_at = $3, failed_step = NULL, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(SubscriptionStatus::Active.as_str())
                .bind(activated_at)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}
