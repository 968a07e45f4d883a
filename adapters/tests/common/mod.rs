//! Fixtures shared by the adapter tests (each test file includes this module).

#![allow(dead_code)]

use chrono::Utc;
use mpanel_domain::job::{JobAction, JobCommand, ScheduleJob};
use mpanel_domain::step::ProvisioningStep;
use sqlx::PgPool;
use uuid::Uuid;

/// A fresh job's `Schedule`: the creating command the bus tests write with.
pub fn schedule() -> JobCommand {
    JobCommand::Schedule(ScheduleJob {
        subscription_id: Uuid::new_v4(),
        order_id: Uuid::new_v4(),
        tenant_id: Uuid::new_v4(),
        step: ProvisioningStep::Dns,
        domain: None,
        max_attempts: 3,
        due_at: Utc::now(),
        action: JobAction::Provision,
        generation: 0,
    })
}

/// How many events aggregate `id` has in the store.
pub async fn event_count(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id.to_string())
        .fetch_one(pool)
        .await
        .expect("count")
}
