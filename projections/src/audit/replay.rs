//! Loading an export into an empty database.

use std::io::BufRead;

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use super::canonical::{seal_event, Hash};
use super::export::records;
use super::AuditError;
use crate::FeedEvent;

/// Lines per replay transaction unless the caller says otherwise.
pub const DEFAULT_REPLAY_BATCH: usize = 1000;

/// What a replay loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySummary {
    /// Events inserted.
    pub events: u64,
    /// Transactions used.
    pub transactions: u64,
    /// Position of the last line.
    pub last_position: Option<i64>,
    /// Hex hash of the last line's seal. For an unfiltered export from the start, the replayed
    /// database's sealer arrives at exactly this head hash.
    pub last_hash: Option<String>,
}

/// Inserts the events of an export into the **empty** `events` table, keeping each event's
/// `global_position`, `recorded_at`, payload and metadata, in file order, in transactions of at
/// most `batch_size` lines; then moves the position identity past the highest position, so new
/// appends do not collide. The caller then runs every projector's catch-up (including the
/// sealer) to rebuild read models and seals.
///
/// Feed order after a replay is file order: the new rows get new transaction ids, increasing
/// per replay transaction, and a transaction is also ended wherever the next line's position
/// is lower than the previous one's (the original had a late commit there), so that sorting by
/// `(tx_id, global_position)` gives back the file's order. Projectors therefore see the events
/// in the original order, and the new seals equal the exported ones.
///
/// Each line's own seal is checked before it is inserted; a line that fails stops the replay
/// with [`AuditError::Tampered`] (earlier batches stay committed — run
/// [`super::verify_export`] first to refuse a bad file up front).
///
/// # Errors
/// [`AuditError::NotEmpty`] when `events` or `event_seals` has rows; [`AuditError::Malformed`],
/// [`AuditError::Tampered`], I/O and database errors.
pub async fn replay_export(
    reader: impl BufRead,
    pool: &PgPool,
    batch_size: usize,
) -> Result<ReplaySummary, AuditError> {
    let batch_size = batch_size.max(1);
    let occupied: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM event_seals)",
    )
    .fetch_one(pool)
    .await?;
    if occupied {
        return Err(AuditError::NotEmpty);
    }
    let mut summary = ReplaySummary::default();
    let mut open: Option<(Transaction<'static, Postgres>, usize, i64)> = None;
    for record in records(reader) {
        let (line_no, event, hash, prev) = record?;
        if seal_event(&prev, &event) != hash {
            return Err(AuditError::Tampered {
                line: line_no,
                position: event.position,
                committed: summary.events - open.as_ref().map_or(0, |(_, n, _)| *n as u64),
            });
        }
        // End the batch when it is full, or when the file goes back in position.
        let mut batch = match open.take() {
            Some((tx, lines, last)) if lines >= batch_size || event.position < last => {
                tx.commit().await?;
                summary.transactions += 1;
                (pool.begin().await?, 0, event.position)
            }
            Some(batch) => batch,
            None => (pool.begin().await?, 0, event.position),
        };
        insert(&mut batch.0, &event).await?;
        batch.1 += 1;
        batch.2 = event.position;
        open = Some(batch);
        summary.events += 1;
        summary.last_position = Some(event.position);
        summary.last_hash = Some(hex::encode::<Hash>(hash));
    }
    if let Some((tx, _, _)) = open {
        tx.commit().await?;
        summary.transactions += 1;
    }
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('events', 'global_position'), m) \
         FROM (SELECT max(global_position) AS m FROM events) AS head WHERE m IS NOT NULL",
    )
    .execute(pool)
    .await?;
    Ok(summary)
}

async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    event: &FeedEvent,
) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_type, \
           event_version, payload, metadata, recorded_at) OVERRIDING SYSTEM VALUE \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(event.position)
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .bind(&event.event_type)
    .bind(&event.event_version)
    .bind(sqlx::types::Json(&event.payload))
    .bind(&event.metadata)
    .bind(event.recorded_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
