//! The audit sealer: the feed subscriber that chains a seal onto every event.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::canonical::{seal_event, Hash, GENESIS};
use crate::{FeedEvent, Projector, SubscriberError};

/// Writes one `event_seals` row per event, in feed order, in the runner's transaction (so a seal
/// and the sealer's checkpoint commit together: no event is sealed twice or skipped).
///
/// The previous hash is read in the same transaction as the seal *before this event in feed
/// order*, not "the newest seal", so a sealer whose checkpoint was reset walks the chain again:
/// an existing seal that matches is kept, one that does not stops the sealer with an error
/// naming the position (the log changed after it was sealed; `mpanel events verify` tells how).
pub struct AuditSealer;

/// The sealer's subscriber name (its checkpoint row); verification reads that checkpoint to tell
/// a forged old event from one simply not sealed yet.
pub const SEALER_NAME: &str = "audit";

#[async_trait]
impl Projector for AuditSealer {
    fn name(&self) -> &'static str {
        SEALER_NAME
    }

    /// The seals are not a read model: a rebuild refuses the sealer (see [`crate::rebuild`]).
    fn tables(&self) -> &'static [&'static str] {
        &["event_seals"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        let prev = previous_hash(tx, event).await?;
        let hash = seal_event(&prev, event);
        let existing: Option<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT tx_id::text::bigint, hash, prev_hash FROM event_seals WHERE global_position = $1",
        )
        .bind(event.position)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            None => {
                sqlx::query(
                    "INSERT INTO event_seals (global_position, tx_id, hash, prev_hash, sealed_at) \
                     VALUES ($1, $2::bigint::text::xid8, $3, $4, now())",
                )
                .bind(event.position)
                .bind(event.tx_id)
                .bind(hash.as_slice())
                .bind(prev.as_slice())
                .execute(&mut *tx)
                .await?;
                Ok(())
            }
            Some((tx_id, stored, stored_prev))
                if tx_id == event.tx_id
                    && stored.as_slice() == hash.as_slice()
                    && stored_prev.as_slice() == prev.as_slice() =>
            {
                Ok(())
            }
            Some(_) => Err(SubscriberError::Other(format!(
                "event {} does not match its existing seal: the log changed after it was sealed \
                 (run `mpanel events verify`)",
                event.position
            ))),
        }
    }
}

/// The hash of the seal just before `event` in feed order, or [`GENESIS`] for the first.
async fn previous_hash(tx: &mut PgConnection, event: &FeedEvent) -> Result<Hash, SubscriberError> {
    let prev: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT hash FROM event_seals \
         WHERE (tx_id, global_position) < ($1::bigint::text::xid8, $2) \
         ORDER BY tx_id DESC, global_position DESC LIMIT 1",
    )
    .bind(event.tx_id)
    .bind(event.position)
    .fetch_optional(&mut *tx)
    .await?;
    match prev {
        None => Ok(GENESIS),
        Some(bytes) => Hash::try_from(bytes.as_slice()).map_err(|_| {
            SubscriberError::Other(format!(
                "the seal before event {} is not 32 bytes long",
                event.position
            ))
        }),
    }
}
