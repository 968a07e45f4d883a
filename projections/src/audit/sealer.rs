//! The audit sealer: the feed subscriber that chains a seal onto every event.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::PgConnection;

use super::canonical::{seal_event, Hash, GENESIS};
use crate::runner::BatchFailure;
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
        self.apply_batch(tx, std::slice::from_ref(event))
            .await
            .map_err(|failure| failure.error)
    }

    /// Seals a whole batch with three statements whatever its size: the hash before the
    /// batch's first event, the seals that already exist for its positions (a reset sealer
    /// re-walking the chain), and one insert of the new seals. The chain itself is computed in
    /// memory, in the batch's feed order.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), BatchFailure> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let at_first = |error: SubscriberError| BatchFailure {
            position: first.position,
            error,
        };
        let mut prev = previous_hash(tx, first).await.map_err(at_first)?;
        let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
        let existing: HashMap<i64, (i64, Vec<u8>, Vec<u8>)> =
            sqlx::query_as::<_, (i64, i64, Vec<u8>, Vec<u8>)>(
                "SELECT global_position, tx_id::text::bigint, hash, prev_hash FROM event_seals \
             WHERE global_position = ANY($1)",
            )
            .bind(&positions)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| at_first(e.into()))?
            .into_iter()
            .map(|(position, tx_id, hash, prev_hash)| (position, (tx_id, hash, prev_hash)))
            .collect();
        let (mut new_positions, mut tx_ids, mut hashes, mut prevs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for event in events {
            let hash = seal_event(&prev, event);
            match existing.get(&event.position) {
                None => {
                    new_positions.push(event.position);
                    tx_ids.push(event.tx_id);
                    hashes.push(hash.to_vec());
                    prevs.push(prev.to_vec());
                }
                Some((tx_id, stored, stored_prev))
                    if *tx_id == event.tx_id
                        && stored.as_slice() == hash.as_slice()
                        && stored_prev.as_slice() == prev.as_slice() => {}
                Some(_) => {
                    return Err(BatchFailure {
                        position: event.position,
                        error: SubscriberError::Other(format!(
                            "event {} does not match its existing seal: the log changed after \
                             it was sealed (run `mpanel events verify`)",
                            event.position
                        )),
                    })
                }
            }
            prev = hash;
        }
        if !new_positions.is_empty() {
            sqlx::query(
                "INSERT INTO event_seals (global_position, tx_id, hash, prev_hash, sealed_at) \
                 SELECT p, t::text::xid8, h, ph, now() \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS s(p, t, h, ph)",
            )
            .bind(&new_positions)
            .bind(&tx_ids)
            .bind(&hashes)
            .bind(&prevs)
            .execute(&mut *tx)
            .await
            .map_err(|e| at_first(e.into()))?;
        }
        Ok(())
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
