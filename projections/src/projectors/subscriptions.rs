//! Subscriptions read model, with step progress.

use async_trait::async_trait;
use mpanel_domain::job::JobAction;
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
        let decoded = event.decode::<SubscriptionEvent>()?;
        if let Some((action, r)) = decoded.operation_request() {
            let steps: Vec<&str> = r.steps.iter().map(|s| s.as_str()).collect();
            sqlx::query(
                "UPDATE subscriptions SET status = $2, operation = $3, generation = $4, pending_steps = $5, \
                   failed_step = NULL, status_reason = coalesce($6, status_reason), status_changed_by = $7, \
                   updated_at = $8 WHERE id = $1",
            )
            .bind(id)
            .bind(SubscriptionStatus::in_progress(action).as_str())
            .bind(action.as_str())
            .bind(i32::try_from(r.generation).unwrap_or(i32::MAX))
            .bind(&steps)
            .bind(r.reason.as_deref())
            .bind(&r.requested_by)
            .bind(r.requested_at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        match decoded {
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
                    "INSERT INTO subscriptions (id, order_id, tenant_id, customer_id, domain, status, required_steps, pending_steps, opened_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $8) ON CONFLICT (id) DO NOTHING",
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
                    "UPDATE subscriptions SET succeeded_steps = array_append(succeeded_steps, $2), \
                       pending_steps = array_remove(pending_steps, $2), updated_at = $3 \
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
            SubscriptionEvent::OperationStepSucceeded {
                step, succeeded_at, ..
            } => {
                sqlx::query(
                    "UPDATE subscriptions SET pending_steps = array_remove(pending_steps, $2), updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(step.as_str())
                .bind(succeeded_at)
                .execute(&mut *tx)
                .await?;
            }
            SubscriptionEvent::OperationStepFailed {
                action,
                step,
                error,
                failed_at,
                ..
            } => {
                // A failed re-provisioning is PROVISIONING_FAILED; the other operations stay
                // in progress with the failed step shown.
                sqlx::query(
                    "UPDATE subscriptions SET status = CASE WHEN $6 THEN $2 ELSE status END, \
                       failed_step = $3, last_error = $4, updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(SubscriptionStatus::ProvisioningFailed.as_str())
                .bind(step.as_str())
                .bind(error)
                .bind(failed_at)
                .bind(action == JobAction::Provision)
                .execute(&mut *tx)
                .await?;
            }
            SubscriptionEvent::SubscriptionSuspended {
                suspended_at: at, ..
            } => {
                finish(tx, id, SubscriptionStatus::Suspended, at).await?;
            }
            SubscriptionEvent::SubscriptionUnsuspended {
                unsuspended_at: at, ..
            }
            | SubscriptionEvent::SubscriptionReprovisioned {
                reprovisioned_at: at,
                ..
            } => {
                finish(tx, id, SubscriptionStatus::Active, at).await?;
            }
            SubscriptionEvent::SubscriptionTerminated {
                terminated_at: at, ..
            } => {
                finish(tx, id, SubscriptionStatus::Terminated, at).await?;
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
            SubscriptionEvent::SubscriptionSuspensionRequested(_)
            | SubscriptionEvent::SubscriptionUnsuspensionRequested(_)
            | SubscriptionEvent::SubscriptionTerminationRequested(_)
            | SubscriptionEvent::SubscriptionReprovisioningRequested(_) => {}
        }
        Ok(())
    }
}

/// An operation completed: its end status, nothing pending, no failed step.
async fn finish(
    tx: &mut PgConnection,
    id: uuid::Uuid,
    status: SubscriptionStatus,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), SubscriberError> {
    sqlx::query(
        "UPDATE subscriptions SET status = $2, pending_steps = '{}', failed_step = NULL, updated_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
