//! The command bus's shortcuts decide what the ordinary path would have: `execute_new_if` on an
//! aggregate that exists already, and `execute_after` from a history another writer has since
//! extended, write nothing and leave the decision to a fresh load.

mod common;

use chrono::Utc;
use common::{event_count, schedule};
use cqrs_es::EventEnvelope;
use mpanel_adapters::bus::{BusError, CommandBus, Created};
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::job::{Job, JobCommand, JobError, StepOutcome};
use sqlx::PgPool;
use uuid::Uuid;

fn start() -> JobCommand {
    let now = Utc::now();
    JobCommand::Start {
        lease_id: Uuid::new_v4(),
        worker: "test".into(),
        lease_until: now + chrono::Duration::seconds(60),
        at: now,
    }
}

/// A job scheduled through the bus, with the history a caller would hold right after.
async fn scheduled_job(bus: &CommandBus, meta: &EventMetadata) -> (Uuid, Vec<EventEnvelope<Job>>) {
    let id = Uuid::new_v4();
    bus.jobs
        .execute(id, schedule(), meta)
        .await
        .expect("schedule");
    let history = bus.jobs.history(id).await.expect("history");
    (id, history)
}

#[sqlx::test(migrations = "../migrations")]
async fn creating_an_existing_aggregate_writes_nothing_and_says_so(pool: PgPool) {
    let bus = CommandBus::new(&pool);
    let meta = EventMetadata::new("test");
    let id = Uuid::new_v4();
    let command = schedule();
    let first = bus
        .jobs
        .execute_new_if(id, command.clone(), &meta)
        .await
        .expect("append");
    assert!(matches!(first, Created::Appended(_)));
    let again = bus
        .jobs
        .execute_new_if(id, command.clone(), &meta)
        .await
        .expect("no store error");
    assert!(matches!(again, Created::Exists));
    assert_eq!(event_count(&pool, id).await, 1);
    // The ordinary path then decides against the real state: the same schedule is a no-op.
    let executed = bus.jobs.execute(id, command, &meta).await.expect("no-op");
    assert!(executed.events.is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stale_history_falls_back_to_a_fresh_decision(pool: PgPool) {
    let bus = CommandBus::new(&pool);
    let meta = EventMetadata::new("test");
    let (id, history) = scheduled_job(&bus, &meta).await;
    assert_eq!(history.len(), 1);

    // Another writer cancels the job after our read.
    bus.jobs
        .execute(
            id,
            JobCommand::Cancel {
                reason: "superseded".into(),
                at: Utc::now(),
            },
            &meta,
        )
        .await
        .expect("cancel");

    // From the stale history, starting looks allowed; the append conflicts, and the fresh
    // decision refuses it: nothing written.
    let refused = bus.jobs.execute_after(id, &history, start(), &meta).await;
    assert!(
        matches!(refused, Err(BusError::Rejected(JobError::Cancelled))),
        "{refused:?}"
    );
    assert_eq!(event_count(&pool, id).await, 2);

    // From a current history it appends right after it.
    let (other, history) = scheduled_job(&bus, &meta).await;
    let started = bus
        .jobs
        .execute_after(other, &history, start(), &meta)
        .await
        .expect("start");
    assert_eq!(started.events.len(), 1);
    assert_eq!(started.events[0].sequence, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_refusal_on_a_stale_history_is_decided_again_on_the_stored_state(pool: PgPool) {
    let bus = CommandBus::new(&pool);
    let meta = EventMetadata::new("test");
    let (id, stale) = scheduled_job(&bus, &meta).await;

    // Another writer starts the job after our read.
    let lease_id = Uuid::new_v4();
    let now = Utc::now();
    bus.jobs
        .execute(
            id,
            JobCommand::Start {
                lease_id,
                worker: "other".into(),
                lease_until: now + chrono::Duration::seconds(60),
                at: now,
            },
            &meta,
        )
        .await
        .expect("start");

    // On the stale history (never started) recording that attempt's success is refused, and
    // a refusal appends nothing, so nothing would reveal the history as stale: the bus decides
    // again on the stored state, where the attempt is running, and records it.
    let succeed = JobCommand::Succeed {
        lease_id,
        outcome: StepOutcome::Dns {
            zone: "example.com.".into(),
            records: vec![],
        },
        at: Utc::now(),
    };
    let recorded = bus
        .jobs
        .execute_after(id, &stale, succeed, &meta)
        .await
        .expect("recorded on the stored state");
    assert_eq!(recorded.events.len(), 1);
    assert_eq!(recorded.events[0].sequence, 3);
    assert_eq!(event_count(&pool, id).await, 3);
}
