//! Group commit answers each request as its own one-statement append would have: written only
//! when the aggregate had no event and the row's precondition held, whatever else shared the
//! statement — a duplicate, a false precondition, a row that makes the statement fail, a
//! writer connection that died.

mod common;

use common::{event_count, schedule};
use futures::future::join_all;
use mpanel_adapters::bus::Doorbell;
use mpanel_adapters::group_commit::{GroupAppender, Grouped};
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::job::Job;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The test precondition: the row's `want` says `"ok": true`. `"ok": "no"` cannot be cast and
/// makes the whole statement fail.
const WANT_OK: &str = "(want->>'ok')::boolean";

fn appender(pool: &PgPool) -> GroupAppender<Job> {
    GroupAppender::new(pool, Doorbell::new(pool.clone()), WANT_OK, 1)
}

async fn create(
    appender: &GroupAppender<Job>,
    id: Uuid,
    want: serde_json::Value,
) -> Result<Grouped<Job>, String> {
    let want = serde_json::value::to_raw_value(&want).expect("serialisable");
    appender
        .create(id, schedule(), &EventMetadata::new("test"), want.into())
        .await
        .map_err(|e| e.to_string())
}

async fn transactions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT tx_id) FROM events")
        .fetch_one(pool)
        .await
        .expect("count")
}

fn not_written(outcome: &Result<Grouped<Job>, String>) -> bool {
    matches!(outcome, Ok(Grouped::NotWritten))
}

fn appended(outcome: &Result<Grouped<Job>, String>) -> bool {
    matches!(outcome, Ok(Grouped::Appended(e)) if e.events.len() == 1 && e.events[0].sequence == 1)
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_creates_share_a_statement_and_each_is_written(pool: PgPool) {
    let appender = appender(&pool);
    // Hold the writer's first statement on a table lock while all 32 requests are handed over
    // (one poll of `join_all` on this single-threaded test runtime), then let it go.
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let ids: Vec<Uuid> = (0..32).map(|_| Uuid::new_v4()).collect();
    let (outcomes, ()) = tokio::join!(
        join_all(
            ids.iter()
                .map(|id| create(&appender, *id, json!({"ok": true})))
        ),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            blocker.commit().await.expect("unlock");
        }
    );
    assert!(outcomes.iter().all(appended), "{outcomes:?}");
    for id in &ids {
        assert_eq!(event_count(&pool, *id).await, 1);
    }
    // The statement that waited on the lock took what had arrived when it started; every
    // other request was waiting when it ended, and went in the next one.
    let statements = transactions(&pool).await;
    assert!(
        statements <= 2,
        "{statements} statements for 32 waiting requests"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_duplicate_a_false_precondition_and_an_existing_aggregate_are_not_written(pool: PgPool) {
    let appender = appender(&pool);
    let existing = Uuid::new_v4();
    assert!(appended(
        &create(&appender, existing, json!({"ok": true})).await
    ));

    let (twice, refused, fine) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let outcomes = join_all([
        create(&appender, twice, json!({"ok": true})),
        create(&appender, twice, json!({"ok": true})),
        create(&appender, refused, json!({"ok": false})),
        create(&appender, existing, json!({"ok": true})),
        create(&appender, fine, json!({"ok": true})),
    ])
    .await;
    assert!(appended(&outcomes[0]), "{:?}", outcomes[0]);
    assert!(not_written(&outcomes[1]), "{:?}", outcomes[1]);
    assert!(not_written(&outcomes[2]), "{:?}", outcomes[2]);
    assert!(not_written(&outcomes[3]), "{:?}", outcomes[3]);
    assert!(appended(&outcomes[4]), "{:?}", outcomes[4]);
    assert_eq!(event_count(&pool, twice).await, 1);
    assert_eq!(event_count(&pool, refused).await, 0);
    assert_eq!(event_count(&pool, existing).await, 1);
    assert_eq!(event_count(&pool, fine).await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_row_that_fails_the_statement_does_not_fail_its_neighbours(pool: PgPool) {
    let appender = appender(&pool);
    let (before, bad, after) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let outcomes = join_all([
        create(&appender, before, json!({"ok": true})),
        create(&appender, bad, json!({"ok": "no"})),
        create(&appender, after, json!({"ok": true})),
    ])
    .await;
    assert!(appended(&outcomes[0]), "{:?}", outcomes[0]);
    assert!(not_written(&outcomes[1]), "{:?}", outcomes[1]);
    assert!(appended(&outcomes[2]), "{:?}", outcomes[2]);
    assert_eq!(event_count(&pool, bad).await, 0);
    assert_eq!(
        event_count(&pool, before).await + event_count(&pool, after).await,
        2
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_lost_writer_connection_fails_its_group_and_the_next_one_reconnects(pool: PgPool) {
    let appender = appender(&pool);
    assert!(appended(
        &create(&appender, Uuid::new_v4(), json!({"ok": true})).await
    ));
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND query LIKE 'INSERT INTO events%want_n%'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert_eq!(
        killed,
        [true],
        "the writer's connection was found and terminated"
    );

    // The group that meets the dead connection fails as a whole, with a storage error and
    // nothing written; the writer opens a fresh connection for the next group.
    let unlucky = Uuid::new_v4();
    let failed = create(&appender, unlucky, json!({"ok": true})).await;
    assert!(
        matches!(&failed, Err(e) if e.starts_with("event store:")),
        "{failed:?}"
    );
    assert_eq!(event_count(&pool, unlucky).await, 0);
    let next = Uuid::new_v4();
    assert!(appended(
        &create(&appender, next, json!({"ok": true})).await
    ));
    assert_eq!(event_count(&pool, next).await, 1);
}
