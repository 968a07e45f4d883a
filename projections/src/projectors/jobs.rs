//! Jobs read model: status, attempts, last error and next run.

use async_trait::async_trait;
use mpanel_domain::job::{JobEvent, JobStatus};
use sqlx::PgConnection;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `jobs`.
pub struct JobsProjector;

#[async_trait]
impl Projector for JobsProjector {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.aggregate_type != "Job" {
            return Ok(());
        }
        let id = aggregate_uuid(event)?;
        let at = event.recorded_at;
        match event.decode::<JobEvent>()? {
            JobEvent::JobScheduled(s) => {
                sqlx::query(
                    "INSERT INTO jobs (id, subscription_id, order_id, tenant_id, step, domain, status, max_attempts, due_at, scheduled_at, updated_at, action, generation) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(s.subscription_id)
                .bind(s.order_id)
                .bind(s.tenant_id)
                .bind(s.step.as_str())
                .bind(s.domain.map(String::from))
                .bind(JobStatus::Scheduled.as_str())
                .bind(i32::try_from(s.max_attempts).unwrap_or(i32::MAX))
                .bind(s.due_at)
                .bind(at)
                .bind(s.action.as_str())
                .bind(i32::try_from(s.generation).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobStarted {
                attempt,
                worker,
                lease_expires_at,
                ..
            } => {
                sqlx::query(
                    "UPDATE jobs SET status = $2, attempts = $3, worker = $4, lease_expires_at = $5, updated_at = $6 WHERE id = $1",
                )
                .bind(id)
                .bind(JobStatus::Running.as_str())
                .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
                .bind(worker)
                .bind(lease_expires_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobSucceeded { outcome, .. } => {
                let outcome = serde_json::to_value(outcome)
                    .map_err(|e| SubscriberError::Other(e.to_string()))?;
                sqlx::query(
                    "UPDATE jobs SET status = $2, outcome = $3, lease_expires_at = NULL, due_at = NULL, updated_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(JobStatus::Succeeded.as_str())
                .bind(outcome)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobAttemptFailed {
                error, retry_at, ..
            } => {
                sqlx::query(
                    "UPDATE jobs SET status = CASE WHEN cancelled THEN $6 ELSE $2 END, last_error = $3, due_at = $4, \
                     lease_expires_at = NULL, updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(JobStatus::RetryWaiting.as_str())
                .bind(error)
                .bind(retry_at)
                .bind(at)
                .bind(JobStatus::Cancelled.as_str())
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobDeadLettered { .. } => {
                sqlx::query(
                    "UPDATE jobs SET status = $2, due_at = NULL, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(JobStatus::DeadLettered.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobCancelled { while_running, .. } => {
                // A running attempt keeps its status until its outcome is recorded.
                sqlx::query(
                    "UPDATE jobs SET cancelled = true, \
                       status = CASE WHEN $2 THEN status ELSE $3 END, \
                       due_at = CASE WHEN $2 THEN due_at ELSE NULL END, updated_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(while_running)
                .bind(JobStatus::Cancelled.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            JobEvent::JobRetryRequested { series, due_at, .. } => {
                sqlx::query(
                    "UPDATE jobs SET status = $2, series = $3, attempts = 0, due_at = $4, updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(JobStatus::Scheduled.as_str())
                .bind(i32::try_from(series).unwrap_or(i32::MAX))
                .bind(due_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}
