//! Subscriptions read model, with step progress.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::job::JobAction;
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::subscription::{SubscriptionEvent, SubscriptionStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{self, blame_first, column, int, text_array};
use crate::runner::BatchFailure;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `subscriptions`.
pub struct SubscriptionsProjector;

/// A `subscriptions` row, as the fold sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct SubscriptionRow {
    id: Uuid,
    order_id: Uuid,
    tenant_id: Uuid,
    customer_id: Uuid,
    domain: Option<String>,
    status: String,
    required_steps: Vec<String>,
    succeeded_steps: Vec<String>,
    failed_step: Option<String>,
    last_error: Option<String>,
    opened_at: DateTime<Utc>,
    activated_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    generation: i32,
    operation: String,
    pending_steps: Vec<String>,
    status_reason: Option<String>,
    status_changed_by: Option<String>,
}

const COLUMNS: &str = "id, order_id, tenant_id, customer_id, domain, status, required_steps, succeeded_steps, \
     failed_step, last_error, opened_at, activated_at, updated_at, generation, operation, pending_steps, \
     status_reason, status_changed_by";

#[async_trait]
impl Projector for SubscriptionsProjector {
    fn name(&self) -> &'static str {
        "subscriptions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["subscriptions"]
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
        let decoded = batch::decode::<SubscriptionEvent>(events, "Subscription")?;
        if decoded.events.is_empty() {
            return Ok(());
        }
        let select = format!("SELECT {COLUMNS} FROM subscriptions WHERE id = ANY($1)");
        let mut rows = batch::load(tx, &select, &decoded, |r: &SubscriptionRow| r.id)
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

fn names(steps: &[ProvisioningStep]) -> Vec<String> {
    steps.iter().map(|s| s.as_str().to_owned()).collect()
}

/// One event's effect on its subscription's row (`None`: not opened yet, nothing to update).
fn fold(row: &mut Option<SubscriptionRow>, id: Uuid, event: SubscriptionEvent) {
    if let SubscriptionEvent::SubscriptionOpened {
        order_id,
        tenant_id,
        customer_id,
        domain,
        required_steps,
        opened_at,
    } = event
    {
        // Opening an existing subscription changes nothing.
        row.get_or_insert_with(|| SubscriptionRow {
            id,
            order_id,
            tenant_id,
            customer_id,
            domain: domain.map(String::from),
            status: SubscriptionStatus::Inactive.as_str().to_owned(),
            required_steps: names(&required_steps),
            succeeded_steps: Vec::new(),
            failed_step: None,
            last_error: None,
            opened_at,
            activated_at: None,
            updated_at: opened_at,
            generation: 0,
            operation: JobAction::Provision.as_str().to_owned(),
            pending_steps: names(&required_steps),
            status_reason: None,
            status_changed_by: None,
        });
        return;
    }
    let Some(row) = row else {
        return;
    };
    if let Some((action, r)) = event.operation_request() {
        row.status = SubscriptionStatus::in_progress(action).as_str().to_owned();
        row.operation = action.as_str().to_owned();
        row.generation = int(r.generation);
        row.pending_steps = names(&r.steps);
        row.failed_step = None;
        if let Some(reason) = &r.reason {
            row.status_reason = Some(reason.clone());
        }
        row.status_changed_by = Some(r.requested_by.clone());
        row.updated_at = r.requested_at;
        return;
    }
    match event {
        SubscriptionEvent::ProvisioningStepSucceeded {
            step, succeeded_at, ..
        } => {
            let step = step.as_str();
            if !row.succeeded_steps.iter().any(|s| s == step) {
                row.succeeded_steps.push(step.to_owned());
                row.pending_steps.retain(|s| s != step);
                row.updated_at = succeeded_at;
            }
        }
        SubscriptionEvent::ProvisioningFailed {
            step,
            error,
            failed_at,
            ..
        } => {
            row.status = SubscriptionStatus::ProvisioningFailed.as_str().to_owned();
            row.failed_step = Some(step.as_str().to_owned());
            row.last_error = Some(error);
            row.updated_at = failed_at;
        }
        SubscriptionEvent::OperationStepSucceeded {
            step, succeeded_at, ..
        } => {
            row.pending_steps.retain(|s| s != step.as_str());
            row.updated_at = succeeded_at;
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
            if action == JobAction::Provision {
                row.status = SubscriptionStatus::ProvisioningFailed.as_str().to_owned();
            }
            row.failed_step = Some(step.as_str().to_owned());
            row.last_error = Some(error);
            row.updated_at = failed_at;
        }
        SubscriptionEvent::SubscriptionSuspended {
            suspended_at: at, ..
        } => finish(row, SubscriptionStatus::Suspended, at),
        SubscriptionEvent::SubscriptionUnsuspended {
            unsuspended_at: at, ..
        }
        | SubscriptionEvent::SubscriptionReprovisioned {
            reprovisioned_at: at,
            ..
        } => finish(row, SubscriptionStatus::Active, at),
        SubscriptionEvent::SubscriptionTerminated {
            terminated_at: at, ..
        } => finish(row, SubscriptionStatus::Terminated, at),
        SubscriptionEvent::SubscriptionActivated { activated_at, .. } => {
            row.status = SubscriptionStatus::Active.as_str().to_owned();
            row.activated_at = Some(activated_at);
            row.failed_step = None;
            row.updated_at = activated_at;
        }
        SubscriptionEvent::SubscriptionOpened { .. }
        | SubscriptionEvent::SubscriptionSuspensionRequested(_)
        | SubscriptionEvent::SubscriptionUnsuspensionRequested(_)
        | SubscriptionEvent::SubscriptionTerminationRequested(_)
        | SubscriptionEvent::SubscriptionReprovisioningRequested(_) => {}
    }
}

/// An operation completed: its end status, nothing pending, no failed step.
fn finish(row: &mut SubscriptionRow, status: SubscriptionStatus, at: DateTime<Utc>) {
    row.status = status.as_str().to_owned();
    row.pending_steps.clear();
    row.failed_step = None;
    row.updated_at = at;
}

/// Writes the changed rows with one statement.
async fn store(tx: &mut PgConnection, rows: Vec<SubscriptionRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO subscriptions ({COLUMNS}) \
         SELECT id, order_id, tenant_id, customer_id, domain, status, \
           ARRAY(SELECT jsonb_array_elements_text(required_steps)), \
           ARRAY(SELECT jsonb_array_elements_text(succeeded_steps)), \
           failed_step, last_error, opened_at, activated_at, updated_at, generation, operation, \
           ARRAY(SELECT jsonb_array_elements_text(pending_steps)), status_reason, status_changed_by \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], \
           $7::jsonb[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], \
           $13::timestamptz[], $14::int[], $15::text[], $16::jsonb[], $17::text[], $18::text[]) \
           AS u ({COLUMNS}) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, \
           succeeded_steps = EXCLUDED.succeeded_steps, failed_step = EXCLUDED.failed_step, \
           last_error = EXCLUDED.last_error, activated_at = EXCLUDED.activated_at, \
           updated_at = EXCLUDED.updated_at, generation = EXCLUDED.generation, \
           operation = EXCLUDED.operation, pending_steps = EXCLUDED.pending_steps, \
           status_reason = EXCLUDED.status_reason, status_changed_by = EXCLUDED.status_changed_by"
    ))
    .bind(column(&rows, |r| r.id))
    .bind(column(&rows, |r| r.order_id))
    .bind(column(&rows, |r| r.tenant_id))
    .bind(column(&rows, |r| r.customer_id))
    .bind(column(&rows, |r| r.domain.as_deref()))
    .bind(column(&rows, |r| r.status.as_str()))
    .bind(column(&rows, |r| text_array(&r.required_steps)))
    .bind(column(&rows, |r| text_array(&r.succeeded_steps)))
    .bind(column(&rows, |r| r.failed_step.as_deref()))
    .bind(column(&rows, |r| r.last_error.as_deref()))
    .bind(column(&rows, |r| r.opened_at))
    .bind(column(&rows, |r| r.activated_at))
    .bind(column(&rows, |r| r.updated_at))
    .bind(column(&rows, |r| r.generation))
    .bind(column(&rows, |r| r.operation.as_str()))
    .bind(column(&rows, |r| text_array(&r.pending_steps)))
    .bind(column(&rows, |r| r.status_reason.as_deref()))
    .bind(column(&rows, |r| r.status_changed_by.as_deref()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
