//! Where every feed subscriber stands: what `mpanel projections status` prints.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// One subscriber's progress and health.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatus {
    /// The subscriber's name (its `checkpoints` row).
    pub name: String,
    /// Global position of the last processed event (0 = none yet).
    pub position: i64,
    /// Transaction id of the last processed event.
    pub tx_id: i64,
    /// Position of the newest committed event in feed order (`None` for an empty log).
    pub head_position: Option<i64>,
    /// Committed events after the checkpoint: what the subscriber still has to process.
    pub lag_events: i64,
    /// How long the oldest unprocessed event has been waiting (now − its `recorded_at`), in
    /// seconds; 0 when caught up. Growing lag with no `last_error` usually means a long-running
    /// transaction holds the feed back (docs/OPERATIONS.md).
    pub lag_seconds: f64,
    /// Events processed since the checkpoint row was created.
    pub events_processed: i64,
    /// The error of the event it is stuck on, if any (cleared on the next success).
    pub last_error: Option<String>,
    /// When that error last happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

const STATUS: &str = "\
WITH head AS ( \
    SELECT global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1), \
names AS ( \
    SELECT unnest($1::text[]) AS subscriber UNION SELECT subscriber FROM checkpoints), \
state AS ( \
    SELECT n.subscriber, coalesce(c.tx_id, '0'::xid8) AS tx_id, coalesce(c.position, 0) AS position, \
           coalesce(c.events_processed, 0) AS events_processed, c.last_error, c.last_error_at \
    FROM names n LEFT JOIN checkpoints c USING (subscriber)) \
SELECT s.subscriber AS name, s.position, s.tx_id::text::bigint AS tx_id, \
       (SELECT global_position FROM head) AS head_position, \
       (SELECT count(*) FROM events e WHERE (e.tx_id, e.global_position) > (s.tx_id, s.position)) AS lag_events, \
       coalesce((SELECT extract(epoch FROM now() - e.recorded_at)::float8 FROM events e \
                 WHERE (e.tx_id, e.global_position) > (s.tx_id, s.position) \
                 ORDER BY e.tx_id, e.global_position LIMIT 1), 0) AS lag_seconds, \
       s.events_processed, s.last_error, s.last_error_at \
FROM state s ORDER BY s.subscriber";

/// Every subscriber with a checkpoint row, plus `expected` names that have none yet (a
/// projector that never ran shows the whole log as lag instead of being missing), by name.
///
/// Pass the names of [`crate::projectors::all`] and any reactor (the saga), e.g.
/// `status(&pool, &["saga"])` — projector names are always included.
///
/// # Errors
/// The database error.
pub async fn status(
    pool: &PgPool,
    expected: &[&str],
) -> Result<Vec<SubscriberStatus>, sqlx::Error> {
    let mut names: Vec<String> = crate::projectors::all()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    names.extend(expected.iter().map(|s| (*s).to_owned()));
    sqlx::query_as(STATUS).bind(&names).fetch_all(pool).await
}
