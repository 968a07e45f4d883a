//! Jobs read model: status, attempts, last error and next run.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::job::{JobEvent, JobStatus};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{self, blame_first, column, int};
use crate::runner::BatchFailure;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `jobs`.
pub struct JobsProjector;

/// A `jobs` row, as the fold sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    subscription_id: Uuid,
    order_id: Uuid,
    tenant_id: Uuid,
    step: String,
    domain: Option<String>,
    status: String,
    series: i32,
    attempts: i32,
    max_attempts: i32,
    due_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    worker: Option<String>,
    last_error: Option<String>,
    outcome: Option<Value>,
    scheduled_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    action: String,
    generation: i32,
    cancelled: bool,
}

const COLUMNS: &str = "id, subscription_id, order_id, tenant_id, step, domain, status, series, attempts, \
     max_attempts, due_at, lease_expires_at, worker, last_error, outcome, scheduled_at, updated_at, \
     action, generation, cancelled";

#[async_trait]
impl Projector for JobsProjector {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs"]
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
        let decoded = batch::decode::<JobEvent>(events, "Job")?;
        if decoded.events.is_empty() {
            return Ok(());
        }
        let select = format!("SELECT {COLUMNS} FROM jobs WHERE id = ANY($1)");
        let mut rows = batch::load(tx, &select, &decoded, |r: &JobRow| r.id)
            .await
            .map_err(|e| blame_first(events)(e.into()))?;
        for (id, event, decoded) in decoded.events {
            fold(rows.entry(&id), id, event.recorded_at, decoded).map_err(blame_first(events))?;
        }
        store(tx, rows.into_changed())
            .await
            .map_err(|e| blame_first(events)(e.into()))
    }
}

/// One event's effect on its job's row (`None`: not scheduled yet, so nothing to update).
fn fold(
    row: &mut Option<JobRow>,
    id: Uuid,
    at: DateTime<Utc>,
    event: JobEvent,
) -> Result<(), SubscriberError> {
    if let JobEvent::JobScheduled(s) = event {
        // Scheduling an existing job changes nothing.
        row.get_or_insert_with(|| JobRow {
            id,
            subscription_id: s.subscription_id,
            order_id: s.order_id,
            tenant_id: s.tenant_id,
            step: s.step.as_str().to_owned(),
            domain: s.domain.map(String::from),
            status: JobStatus::Scheduled.as_str().to_owned(),
            series: 0,
            attempts: 0,
            max_attempts: int(s.max_attempts),
            due_at: Some(s.due_at),
            lease_expires_at: None,
            worker: None,
            last_error: None,
            outcome: None,
            scheduled_at: at,
            updated_at: at,
            action: s.action.as_str().to_owned(),
            generation: int(s.generation),
            cancelled: false,
        });
        return Ok(());
    }
    let Some(row) = row else {
        return Ok(());
    };
    row.updated_at = at;
    match event {
        JobEvent::JobScheduled(_) => {}
        JobEvent::JobStarted {
            attempt,
            worker,
            lease_expires_at,
            ..
        } => {
            row.status = JobStatus::Running.as_str().to_owned();
            row.attempts = int(attempt);
            row.worker = Some(worker);
            row.lease_expires_at = Some(lease_expires_at);
        }
        JobEvent::JobSucceeded { outcome, .. } => {
            row.status = JobStatus::Succeeded.as_str().to_owned();
            row.outcome = Some(
                serde_json::to_value(outcome).map_err(|e| SubscriberError::Other(e.to_string()))?,
            );
            row.lease_expires_at = None;
            row.due_at = None;
        }
        JobEvent::JobAttemptFailed {
            error, retry_at, ..
        } => {
            // A cancelled job's failed attempt is not retried: it shows as cancelled.
            row.status = if row.cancelled {
                JobStatus::Cancelled
            } else {
                JobStatus::RetryWaiting
            }
            .as_str()
            .to_owned();
            row.last_error = Some(error);
            row.due_at = retry_at;
            row.lease_expires_at = None;
        }
        JobEvent::JobDeadLettered { .. } => {
            row.status = JobStatus::DeadLettered.as_str().to_owned();
            row.due_at = None;
        }
        JobEvent::JobCancelled { while_running, .. } => {
            // A running attempt keeps its status until its outcome is recorded.
            row.cancelled = true;
            if !while_running {
                row.status = JobStatus::Cancelled.as_str().to_owned();
                row.due_at = None;
            }
        }
        JobEvent::JobRetryRequested { series, due_at, .. } => {
            row.status = JobStatus::Scheduled.as_str().to_owned();
            row.series = int(series);
            row.attempts = 0;
            row.due_at = Some(due_at);
        }
    }
    Ok(())
}

/// Writes the changed rows with one statement.
async fn store(tx: &mut PgConnection, rows: Vec<JobRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO jobs ({COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], \
           $7::text[], $8::int[], $9::int[], $10::int[], $11::timestamptz[], $12::timestamptz[], \
           $13::text[], $14::text[], $15::jsonb[], $16::timestamptz[], $17::timestamptz[], $18::text[], \
           $19::int[], $20::bool[]) \
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, series = EXCLUDED.series, \
           attempts = EXCLUDED.attempts, due_at = EXCLUDED.due_at, \
           lease_expires_at = EXCLUDED.lease_expires_at, worker = EXCLUDED.worker, \
           last_error = EXCLUDED.last_error, outcome = EXCLUDED.outcome, \
           updated_at = EXCLUDED.updated_at, cancelled = EXCLUDED.cancelled"
    ))
    .bind(column(&rows, |r| r.id))
    .bind(column(&rows, |r| r.subscription_id))
    .bind(column(&rows, |r| r.order_id))
    .bind(column(&rows, |r| r.tenant_id))
    .bind(column(&rows, |r| r.step.as_str()))
    .bind(column(&rows, |r| r.domain.as_deref()))
    .bind(column(&rows, |r| r.status.as_str()))
    .bind(column(&rows, |r| r.series))
    .bind(column(&rows, |r| r.attempts))
    .bind(column(&rows, |r| r.max_attempts))
    .bind(column(&rows, |r| r.due_at))
    .bind(column(&rows, |r| r.lease_expires_at))
    .bind(column(&rows, |r| r.worker.as_deref()))
    .bind(column(&rows, |r| r.last_error.as_deref()))
    .bind(column(&rows, |r| r.outcome.as_ref()))
    .bind(column(&rows, |r| r.scheduled_at))
    .bind(column(&rows, |r| r.updated_at))
    .bind(column(&rows, |r| r.action.as_str()))
    .bind(column(&rows, |r| r.generation))
    .bind(column(&rows, |r| r.cancelled))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
