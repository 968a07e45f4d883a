//! Verifying the live chain: events and seals walked side by side in feed order.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;

use super::canonical::{seal_event, Hash, GENESIS};
use super::sealer::SEALER_NAME;
use super::{AuditError, BreakKind, VerifyReport};
use crate::{Checkpoint, FeedEvent};

/// Events full-outer-joined with their seals on `(tx_id, global_position)`, in feed order: one
/// stream, so the walk needs one connection and constant memory however long the log is.
const WALK: &str = "\
SELECT coalesce(e.tx_id, s.tx_id)::text::bigint AS tx_id, \
       coalesce(e.global_position, s.global_position) AS position, \
       e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
       e.payload, e.metadata, e.recorded_at, s.hash, s.prev_hash \
FROM events e FULL OUTER JOIN event_seals s \
  ON s.global_position = e.global_position AND s.tx_id = e.tx_id \
ORDER BY 1, 2";

#[derive(sqlx::FromRow)]
struct WalkRow {
    tx_id: i64,
    position: i64,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<i64>,
    event_type: Option<String>,
    event_version: Option<String>,
    payload: Option<Json<Box<RawValue>>>,
    metadata: Option<Value>,
    recorded_at: Option<DateTime<Utc>>,
    hash: Option<Vec<u8>>,
    prev_hash: Option<Vec<u8>>,
}

impl WalkRow {
    /// The event side of the row, if the event exists.
    fn event(&mut self) -> Option<FeedEvent> {
        Some(FeedEvent {
            position: self.position,
            tx_id: self.tx_id,
            aggregate_type: self.aggregate_type.take()?,
            aggregate_id: self.aggregate_id.take()?,
            sequence: self.sequence?,
            event_type: self.event_type.take()?,
            event_version: self.event_version.take()?,
            payload: self.payload.take()?.0,
            metadata: self.metadata.take()?,
            recorded_at: self.recorded_at?,
        })
    }
}

/// Recomputes the whole chain from the events and compares it with `event_seals`, reporting the
/// first position (in feed order) where it breaks, or the head when it holds.
///
/// Runs in one read-only `REPEATABLE READ` transaction, so the sealer's checkpoint, the events
/// and the seals are one consistent snapshot even while the system writes; a read-only
/// transaction takes no transaction id and so does not hold the feed back.
///
/// Classification, walking in feed order with `prev` = the last good seal's hash:
/// - event and seal: the seal's `prev_hash` must equal `prev` (else `ChainBroken`) and its hash
///   must equal `sha256(prev || canonical)` (else `Changed`);
/// - seal without event: `Deleted`;
/// - event without seal: `Inserted` if it is at or before the sealer's checkpoint, or if any
///   sealed event follows it (the sealer has passed it); otherwise it is the unsealed tail.
///
/// # Errors
/// Database errors only; a broken chain is an `Ok(VerifyReport::Broken)`.
pub async fn verify_database(pool: &PgPool) -> Result<VerifyReport, AuditError> {
    let mut tx = super::snapshot(pool).await?;
    let sealed_up_to: Checkpoint = sqlx::query_as::<_, (i64, i64)>(
        "SELECT tx_id::text::bigint, position FROM checkpoints WHERE subscriber = $1",
    )
    .bind(SEALER_NAME)
    .fetch_optional(&mut *tx)
    .await?
    .map(|(tx_id, position)| Checkpoint { tx_id, position })
    .unwrap_or_default();

    let mut walk = Walk::default();
    let report = {
        let mut rows = sqlx::query_as::<_, WalkRow>(WALK).fetch(&mut *tx);
        loop {
            let Some(mut row) = rows.try_next().await? else {
                break walk.finish();
            };
            if let Some(broken) = walk.step(&mut row, sealed_up_to) {
                break broken;
            }
        }
    };
    tx.commit().await?;
    Ok(report)
}

/// The state of a walk along the chain.
#[derive(Default)]
struct Walk {
    prev: Option<Hash>,
    head_position: Option<i64>,
    verified: u64,
    /// The first unsealed event past the checkpoint, and how many such events follow.
    tail: Option<i64>,
    tail_len: u64,
}

impl Walk {
    fn prev(&self) -> Hash {
        self.prev.unwrap_or(GENESIS)
    }

    fn broken(&self, position: i64, kind: BreakKind, detail: String) -> VerifyReport {
        VerifyReport::Broken {
            position,
            kind,
            events: self.verified,
            detail,
        }
    }

    /// Checks one row; returns the report when the chain breaks here.
    fn step(&mut self, row: &mut WalkRow, sealed_up_to: Checkpoint) -> Option<VerifyReport> {
        let key = Checkpoint {
            tx_id: row.tx_id,
            position: row.position,
        };
        let seal = match (row.hash.take(), row.prev_hash.take()) {
            (Some(hash), Some(prev)) => Some((hash, prev)),
            _ => None,
        };
        if let (Some(first_unsealed), Some(_)) = (self.tail, &seal) {
            // The sealer has passed the unsealed event: it was not there when the sealer was.
            return Some(self.broken(
                first_unsealed,
                BreakKind::Inserted,
                format!(
                    "event {first_unsealed} has no seal, yet the seal of position {} follows it: \
                     it was written into the already sealed log",
                    row.position
                ),
            ));
        }
        match (row.event(), seal) {
            (Some(event), Some((hash, prev_hash))) => {
                let (Ok(hash), Ok(prev_hash)) = (
                    Hash::try_from(hash.as_slice()),
                    Hash::try_from(prev_hash.as_slice()),
                ) else {
                    return Some(self.broken(
                        row.position,
                        BreakKind::ChainBroken,
                        "the seal's hashes are not 32 bytes long".into(),
                    ));
                };
                if prev_hash != self.prev() {
                    return Some(self.broken(
                        row.position,
                        BreakKind::ChainBroken,
                        "the seal's prev_hash is not the previous seal's hash: seals were edited, \
                         reordered, or removed together with their events"
                            .into(),
                    ));
                }
                if seal_event(&prev_hash, &event) != hash {
                    return Some(self.broken(
                        row.position,
                        BreakKind::Changed,
                        format!(
                            "{} {} #{} ({}) does not match its seal: the event (or the seal's hash) \
                             was edited",
                            event.aggregate_type, event.aggregate_id, event.sequence, event.event_type
                        ),
                    ));
                }
                self.prev = Some(hash);
                self.head_position = Some(row.position);
                self.verified += 1;
                None
            }
            (None, Some(_)) => Some(self.broken(
                row.position,
                BreakKind::Deleted,
                "a seal exists but its event is gone: the event was deleted (or its position or \
                 transaction id was edited)"
                    .into(),
            )),
            (Some(event), None) => {
                if key <= sealed_up_to {
                    return Some(self.broken(
                        row.position,
                        BreakKind::Inserted,
                        format!(
                            "{} {} #{} ({}) has no seal but is older than the sealer's checkpoint: \
                             it was written into the already sealed log",
                            event.aggregate_type, event.aggregate_id, event.sequence, event.event_type
                        ),
                    ));
                }
                self.tail.get_or_insert(row.position);
                self.tail_len += 1;
                None
            }
            (None, None) => None,
        }
    }

    fn finish(self) -> VerifyReport {
        VerifyReport::Ok {
            head_position: self.head_position,
            head_hash: hex::encode(self.prev()),
            events: self.verified,
            unsealed_tail: self.tail_len,
            first_prev_hash: hex::encode(GENESIS),
        }
    }
}
