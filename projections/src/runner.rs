//! Running a subscriber: one runner per subscriber across all processes, from its checkpoint.
//!
//! Delivery guarantees:
//! - A [`Projector`] applies a batch of events and advances its checkpoint **in one
//!   transaction**, so each event's effect on the read model happens exactly once, whatever
//!   crashes in between. The checkpoint update is guarded by the old value, so even two runners
//!   that both believe they lead cannot both apply the same batch.
//! - A [`Reactor`] (the saga) has effects outside the transaction (commands), so it is
//!   at-least-once: its checkpoint advances after each event's reaction succeeded, and reactions
//!   must be idempotent (deterministic ids make them so).
//!
//! Leadership: a runner holds `pg_try_advisory_lock(hashtext('mpanel-subscriber:' || name))` on
//! a dedicated connection for as long as it runs. Other processes' runners for the same
//! subscriber stand by and retry the lock, so when the leader dies (its connection closes and
//! Postgres releases the lock) a standby takes over within `standby_interval`.
//!
//! A rebuild ([`crate::rebuild`]) takes over leadership for its swap: it holds the
//! subscriber's handover lock (`hashtext('mpanel-handover:' || name)`), which the leader checks
//! before every batch; the leader then closes its lock connection and stands by, and the
//! rebuild takes the leadership lock until the swap is committed.
//!
//! Wake-ups: `LISTEN mpanel_events` (a trigger notifies on every append) plus polling every
//! `poll_interval`, so a lost notification costs latency, never events.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::feed::{read_after, Checkpoint, FeedEvent};
use crate::SubscriberError;

/// A read-model builder: writes rows for an event inside the runner's transaction.
#[async_trait]
pub trait Projector: Send + Sync {
    /// The subscriber's stable name (its checkpoint row and lock key).
    fn name(&self) -> &'static str;

    /// The tables this projector writes (and the only ones it reads besides `events`), by
    /// unqualified name. A rebuild ([`crate::rebuild`]) builds copies of exactly these beside
    /// the live ones and swaps them in, so a projector must not touch any other table.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one event to the read model, using only `tx`.
    ///
    /// # Errors
    /// Any failure rolls back the whole batch; the runner records it and retries later.
    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError>;
}

/// A subscriber with effects outside the database transaction (commands, dispatch).
#[async_trait]
pub trait Reactor: Send + Sync {
    /// The subscriber's stable name (its checkpoint row and lock key).
    fn name(&self) -> &'static str;

    /// Reacts to one event. Must be idempotent: it may see the same event again after a crash.
    ///
    /// # Errors
    /// The runner records the error and retries the same event later.
    async fn react(&self, event: &FeedEvent) -> Result<(), SubscriberError>;
}

/// Either kind of subscriber.
#[derive(Clone)]
pub enum Subscriber {
    /// Exactly-once read-model effects.
    Projector(Arc<dyn Projector>),
    /// At-least-once external effects.
    Reactor(Arc<dyn Reactor>),
}

impl Subscriber {
    /// The subscriber's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Projector(p) => p.name(),
            Self::Reactor(r) => r.name(),
        }
    }
}

/// Tuning of a runner.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Events per read (and per projector transaction).
    pub batch_size: i64,
    /// Longest sleep between reads when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby retries the leadership lock.
    pub standby_interval: Duration,
    /// Pause after a failed event before trying it again.
    pub error_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_secs(1),
            error_backoff: Duration::from_secs(1),
        }
    }
}

/// The notification channel the append trigger uses.
pub const CHANNEL: &str = "mpanel_events";

/// Runs `subscriber` until `shutdown` becomes true: stands by while another process leads, leads
/// when it can, and re-acquires leadership after a lost connection.
pub async fn run(
    pool: PgPool,
    subscriber: Subscriber,
    config: RunnerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = subscriber.name();
    while !*shutdown.borrow() {
        match lead(&pool, &subscriber, config, &mut shutdown).await {
            Ok(Led::Stopped) => break,
            Ok(Led::NotLeader) => {}
            Err(error) => {
                tracing::warn!(subscriber = name, error = %error, "feed runner lost its footing; retrying");
            }
        }
        sleep_or_shutdown(config.standby_interval, &mut shutdown).await;
    }
    tracing::debug!(subscriber = name, "feed runner stopped");
}

enum Led {
    NotLeader,
    Stopped,
}

async fn lead(
    pool: &PgPool,
    subscriber: &Subscriber,
    config: RunnerConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Led, SubscriberError> {
    let name = subscriber.name();
    let mut lock_conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let leader: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('mpanel-subscriber:' || $1))")
            .bind(name)
            .fetch_one(&mut lock_conn)
            .await?;
    if !leader {
        return Ok(Led::NotLeader);
    }
    tracing::info!(subscriber = name, "feed runner leads");
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let mut checkpoint = load_checkpoint(pool, name).await?;
    loop {
        if *shutdown.borrow() {
            let _ = lock_conn.close().await;
            return Ok(Led::Stopped);
        }
        // Still leading? A dead lock connection means the lock is gone too (the query fails).
        // And a rebuild about to swap this subscriber's tables holds its handover lock: step
        // down between batches, so the rebuild can take the leadership lock (crate::rebuild).
        if handover_requested(&mut lock_conn, name).await? {
            tracing::info!(
                subscriber = name,
                "feed runner steps down for a rebuild's swap"
            );
            let _ = lock_conn.close().await;
            return Ok(Led::NotLeader);
        }
        let events = read_after(pool, checkpoint, config.batch_size).await?;
        if events.is_empty() {
            tokio::select! {
                _ = listener.recv() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        match process(pool, subscriber, checkpoint, &events).await {
            Ok(next) => checkpoint = next,
            Err(Failure {
                at,
                error,
                checkpoint: reached,
            }) => {
                tracing::error!(subscriber = name, position = at, error = %error, "subscriber failed on an event; will retry");
                record_error(pool, name, &format!("position {at}: {error}")).await?;
                if reached == checkpoint {
                    sleep_or_shutdown(config.error_backoff, shutdown).await;
                }
                // Re-read the stored checkpoint: it is the truth after a partial batch.
                checkpoint = load_checkpoint(pool, name).await?;
            }
        }
    }
}

/// The advisory-lock key a rebuild holds (exclusively) while it waits to swap `name`'s tables.
pub(crate) const HANDOVER_LOCK: &str = "hashtext('mpanel-handover:' || $1)";

/// Whether a rebuild waits for this subscriber's leader to step down: its handover lock is
/// held. Tried as a transaction-level shared lock, so nothing stays locked after the check.
async fn handover_requested(lock_conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT NOT pg_try_advisory_xact_lock_shared({HANDOVER_LOCK})"
    ))
    .bind(name)
    .fetch_one(lock_conn)
    .await
}

/// A subscriber's failure on one event, and how far it got before it.
#[derive(Debug)]
pub struct Failure {
    /// The failing event's position.
    pub at: i64,
    /// What went wrong.
    pub error: SubscriberError,
    /// The checkpoint reached before the failure.
    pub checkpoint: Checkpoint,
}

/// Processes one batch read after `from` and returns the new checkpoint. Exposed for tests and
/// for catch-up tools; live processing goes through [`run`], which adds leadership.
///
/// # Errors
/// The first failing event, with the checkpoint reached before it.
pub async fn process(
    pool: &PgPool,
    subscriber: &Subscriber,
    from: Checkpoint,
    events: &[FeedEvent],
) -> Result<Checkpoint, Failure> {
    let fail = |at: i64, checkpoint: Checkpoint| {
        move |error: SubscriberError| Failure {
            at,
            error,
            checkpoint,
        }
    };
    let Some(last) = events.last() else {
        return Ok(from);
    };
    match subscriber {
        Subscriber::Projector(projector) => {
            let first = events[0].position;
            let mut tx = pool
                .begin()
                .await
                .map_err(|e| fail(first, from)(e.into()))?;
            for event in events {
                projector
                    .apply(&mut tx, event)
                    .await
                    .map_err(fail(event.position, from))?;
            }
            advance(
                &mut tx,
                projector.name(),
                from,
                last.checkpoint(),
                events.len(),
            )
            .await
            .map_err(fail(last.position, from))?;
            tx.commit()
                .await
                .map_err(|e| fail(last.position, from)(e.into()))?;
            Ok(last.checkpoint())
        }
        Subscriber::Reactor(reactor) => {
            let mut at = from;
            for event in events {
                reactor
                    .react(event)
                    .await
                    .map_err(fail(event.position, at))?;
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| fail(event.position, at)(e.into()))?;
                advance(&mut conn, reactor.name(), at, event.checkpoint(), 1)
                    .await
                    .map_err(fail(event.position, at))?;
                at = event.checkpoint();
            }
            Ok(at)
        }
    }
}

/// Processes everything visible now, without taking leadership. For tests and offline tools
/// only: running it beside a live runner is safe for projectors (guarded checkpoint) but would
/// duplicate a reactor's effects.
///
/// # Errors
/// The first failure.
pub async fn catch_up(
    pool: &PgPool,
    subscriber: &Subscriber,
    batch_size: i64,
) -> Result<Checkpoint, Failure> {
    let name = subscriber.name();
    let mut checkpoint = load_checkpoint(pool, name).await.map_err(|error| Failure {
        at: 0,
        error,
        checkpoint: Checkpoint::default(),
    })?;
    loop {
        let events = read_after(pool, checkpoint, batch_size)
            .await
            .map_err(|e| Failure {
                at: 0,
                error: e.into(),
                checkpoint,
            })?;
        if events.is_empty() {
            return Ok(checkpoint);
        }
        checkpoint = process(pool, subscriber, checkpoint, &events).await?;
    }
}

/// Reads a subscriber's checkpoint, creating its row at the start of the feed if missing.
///
/// # Errors
/// The database error.
pub async fn load_checkpoint(pool: &PgPool, name: &str) -> Result<Checkpoint, SubscriberError> {
    sqlx::query("INSERT INTO checkpoints (subscriber) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let (tx_id, position): (i64, i64) = sqlx::query_as(
        "SELECT tx_id::text::bigint, position FROM checkpoints WHERE subscriber = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(Checkpoint { tx_id, position })
}

async fn advance(
    conn: &mut PgConnection,
    name: &str,
    from: Checkpoint,
    to: Checkpoint,
    count: usize,
) -> Result<(), SubscriberError> {
    let updated = sqlx::query(
        "UPDATE checkpoints SET tx_id = $2::bigint::text::xid8, position = $3, \
           events_processed = events_processed + $4, last_error = NULL, last_error_at = NULL, updated_at = now() \
         WHERE subscriber = $1 AND tx_id = $5::bigint::text::xid8 AND position = $6",
    )
    .bind(name)
    .bind(to.tx_id)
    .bind(to.position)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .bind(from.tx_id)
    .bind(from.position)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 1 {
        Ok(())
    } else {
        Err(SubscriberError::Other(format!(
            "checkpoint of {name} moved under this runner (another runner leads?)"
        )))
    }
}

async fn record_error(pool: &PgPool, name: &str, error: &str) -> Result<(), SubscriberError> {
    sqlx::query(
        "UPDATE checkpoints SET last_error = $2, last_error_at = now() WHERE subscriber = $1",
    )
    .bind(name)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = shutdown.changed() => {}
    }
}
