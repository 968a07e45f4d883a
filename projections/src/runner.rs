//! Running a subscriber: one runner per subscriber across all processes, from its checkpoint.
//!
//! Delivery guarantees:
//! - A [`Projector`] applies a batch of events and advances its checkpoint **in one
//!   transaction**, so each event's effect on the read model happens exactly once, whatever
//!   crashes in between. The checkpoint update is guarded by the old value, so even two runners
//!   that both believe they lead cannot both apply the same batch.
//! - A [`Reactor`] (the saga) has effects outside the transaction (commands), so it is
//!   at-least-once: its checkpoint advances once per batch, past the events whose reactions
//!   succeeded, and reactions must be idempotent (deterministic ids make them so). Unrelated
//!   events (different aggregates and orders) are reacted to in concurrent lanes.
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
//! Wake-ups: `LISTEN mpanel_events` (the command bus notifies after its appends, coalesced) plus polling every
//! `poll_interval`, so a lost notification costs latency, never events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::feed::{read_after, Checkpoint, FeedEvent, Metadata};
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

    /// Whether [`FeedEvent::metadata`] matters to this projector. A read model answers `false`
    /// and its reads leave the column out ([`Metadata::Skip`]), a fifth of a rebuild's mpanel
    /// CPU; the default keeps it, so a projector that reads it cannot silently get `null`.
    fn reads_metadata(&self) -> bool {
        true
    }

    /// Applies one event to the read model, using only `tx`.
    ///
    /// # Errors
    /// Any failure rolls back the whole batch; the runner records it and retries later.
    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError>;

    /// Applies a batch of events, in feed order, using only `tx`, with exactly the effect of
    /// [`Self::apply`] on each in turn — which is what the default does. A projector may
    /// override it with a few set-based statements per batch (`INSERT … SELECT … FROM
    /// UNNEST(…)`) instead of one per event: live runners and rebuilds both call this, and a
    /// rebuild's throughput is bounded by statements per event (docs/benchmarks.md).
    ///
    /// # Errors
    /// The event at fault (the batch's first when a set-based statement cannot tell) and why;
    /// the runner rolls the whole batch back.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), BatchFailure> {
        for event in events {
            self.apply(tx, event).await.map_err(|error| BatchFailure {
                position: event.position,
                error,
            })?;
        }
        Ok(())
    }
}

/// A batch a projector could not apply: where and why.
#[derive(Debug)]
pub struct BatchFailure {
    /// The global position of the event at fault.
    pub position: i64,
    /// What went wrong.
    pub error: SubscriberError,
}

/// A subscriber with effects outside the database transaction (commands, dispatch).
#[async_trait]
pub trait Reactor: Send + Sync {
    /// The subscriber's stable name (its checkpoint row and lock key).
    fn name(&self) -> &'static str;

    /// Reacts to one event. Must be idempotent: it may see the same event again after a crash
    /// (the checkpoint advances once per batch). Events of one aggregate, and events sharing a
    /// `correlation_id`, are reacted to in feed order; unrelated events may be reacted to
    /// concurrently ([`RunnerConfig::reactor_lanes`]).
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

    /// What its feed reads carry: reactors always get `metadata` (the saga's lanes follow
    /// correlation ids), projectors when they say they read it.
    #[must_use]
    pub fn metadata(&self) -> Metadata {
        match self {
            Self::Projector(p) => Metadata::of(p.as_ref()),
            Self::Reactor(_) => Metadata::Include,
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
    /// How many unrelated events a reactor may react to at once. Events of one aggregate or
    /// one correlation id (an order's subscription and jobs) always keep feed order within
    /// one lane; other orders' events run beside them, so one order's round trips do not queue
    /// every other order behind them. 1 reacts strictly in feed order.
    pub reactor_lanes: usize,
    /// How long a caught-up *projector* waits after a wake-up before reading, so that it
    /// applies the events of many appends in one transaction instead of a transaction per
    /// append. Reactors (the saga, on the order → ACTIVE path) never linger.
    pub projector_linger: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_secs(1),
            error_backoff: Duration::from_secs(1),
            reactor_lanes: 8,
            projector_linger: Duration::from_millis(20),
        }
    }
}

/// The notification channel the command bus rings after appends (and runners listen on).
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
    if !try_lead(&mut lock_conn, name).await? {
        return Ok(Led::NotLeader);
    }
    tracing::info!(subscriber = name, "feed runner leads");
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let mut checkpoint = load_checkpoint(pool, name).await?;
    // Whether the last read left nothing more to read: wait for a wake-up before the next.
    let mut caught_up = false;
    loop {
        if *shutdown.borrow() {
            let _ = lock_conn.close().await;
            return Ok(Led::Stopped);
        }
        if caught_up {
            // Notifications that arrived while the batch was processed are buffered, so an
            // append during it wakes this at once. A projector then lingers, so one
            // transaction covers the appends of `projector_linger` instead of one each (a
            // projector that re-read at once after every batch read the feed dozens of times
            // per order under load: docs/benchmarks.md).
            tokio::select! {
                _ = listener.recv() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            if matches!(subscriber, Subscriber::Projector(_)) && !config.projector_linger.is_zero()
            {
                sleep_or_shutdown(config.projector_linger, shutdown).await;
            }
            caught_up = false;
            continue;
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
        let events = read_after(pool, checkpoint, config.batch_size, subscriber.metadata()).await?;
        if events.is_empty() {
            caught_up = true;
            continue;
        }
        // A short batch was everything there was to read (as of its snapshot).
        let short = i64::try_from(events.len()).unwrap_or(i64::MAX) < config.batch_size;
        match process_in_lanes(pool, subscriber, checkpoint, &events, config.reactor_lanes).await {
            Ok(next) => {
                checkpoint = next;
                caught_up = short;
            }
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

/// Tries to take `name`'s leadership lock (session-level, on `lock_conn`): whoever holds it
/// runs the subscriber — a live runner, or a rebuild for its swap.
pub(crate) async fn try_lead(
    lock_conn: &mut PgConnection,
    name: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('mpanel-subscriber:' || $1))")
        .bind(name)
        .fetch_one(lock_conn)
        .await
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
    process_in_lanes(pool, subscriber, from, events, 1).await
}

/// [`process`], with a reactor's unrelated events reacted to in up to `lanes` concurrent lanes
/// (see [`RunnerConfig::reactor_lanes`]).
///
/// # Errors
/// The first failing event, with the checkpoint reached before it.
pub async fn process_in_lanes(
    pool: &PgPool,
    subscriber: &Subscriber,
    from: Checkpoint,
    events: &[FeedEvent],
    lanes: usize,
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
            projector
                .apply_batch(&mut tx, events)
                .await
                .map_err(|f| fail(f.position, from)(f.error))?;
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
            react_batch(pool, reactor.as_ref(), from, events, lanes).await
        }
    }
}

/// Reacts to a batch in `lanes` concurrent lanes and advances the checkpoint once: to the end
/// of the batch, or — after a failure — to just before the earliest event that was not
/// reacted to (later events some other lane did react to are delivered again: at least once).
async fn react_batch(
    pool: &PgPool,
    reactor: &dyn Reactor,
    from: Checkpoint,
    events: &[FeedEvent],
    lanes: usize,
) -> Result<Checkpoint, Failure> {
    let stop = AtomicBool::new(false);
    let run_lane = |lane: Vec<usize>| {
        let stop = &stop;
        async move {
            for i in lane {
                if stop.load(Ordering::Relaxed) {
                    return Some((i, None));
                }
                if let Err(error) = reactor.react(&events[i]).await {
                    stop.store(true, Ordering::Relaxed);
                    return Some((i, Some(error)));
                }
            }
            None
        }
    };
    let stopped: Vec<(usize, Option<SubscriberError>)> = if lanes <= 1 {
        run_lane((0..events.len()).collect())
            .await
            .into_iter()
            .collect()
    } else {
        futures::stream::iter(lane_partition(events))
            .map(run_lane)
            .buffer_unordered(lanes)
            .filter_map(|r| async move { r })
            .collect()
            .await
    };
    // The earliest event not reacted to, and the error that stopped the lanes.
    let undone = stopped.iter().map(|(i, _)| *i).min();
    let error = stopped
        .into_iter()
        .filter_map(|(i, e)| e.map(|e| (i, e)))
        .min_by_key(|(i, _)| *i);
    let done = undone.unwrap_or(events.len());
    let reached = if done == 0 {
        from
    } else {
        events[done - 1].checkpoint()
    };
    let at_fault = events.get(done).map_or(0, |e| e.position);
    if done > 0 {
        let mut conn = pool.acquire().await.map_err(|e| Failure {
            at: at_fault,
            error: e.into(),
            checkpoint: from,
        })?;
        advance(&mut conn, reactor.name(), from, reached, done)
            .await
            .map_err(|error| Failure {
                at: at_fault,
                error,
                checkpoint: from,
            })?;
    }
    match error {
        None => Ok(reached),
        Some((i, error)) => Err(Failure {
            at: events[i].position,
            error,
            checkpoint: reached,
        }),
    }
}

/// Splits a batch into lanes that may run concurrently: events that share an aggregate, or a
/// correlation id (one order's subscription and jobs), are in one lane, in feed order.
fn lane_partition(events: &[FeedEvent]) -> Vec<Vec<usize>> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..events.len()).collect();
    let mut first_with: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let keys = [
            Some(("aggregate", event.aggregate_id.as_str())),
            event.meta("correlation_id").map(|c| ("correlation", c)),
        ];
        for key in keys.into_iter().flatten() {
            let other = *first_with.entry(key).or_insert(i);
            let (a, b) = (root(&mut parent, i), root(&mut parent, other));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of: HashMap<usize, usize> = HashMap::new();
    for i in 0..events.len() {
        let r = root(&mut parent, i);
        let lane = *lane_of.entry(r).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(i);
    }
    lanes
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
        let events = read_after(pool, checkpoint, batch_size, subscriber.metadata())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, aggregate: &str, correlation: Option<&str>) -> FeedEvent {
        let metadata = correlation.map_or(
            serde_json::json!({}),
            |c| serde_json::json!({ "correlation_id": c }),
        );
        FeedEvent {
            position,
            tx_id: position,
            aggregate_type: "Job".into(),
            aggregate_id: aggregate.into(),
            sequence: 1,
            event_type: "JobScheduled".into(),
            event_version: "1".into(),
            payload: serde_json::value::to_raw_value(&serde_json::Value::Null).expect("raw"),
            metadata,
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn lanes_keep_an_aggregate_and_an_order_together_in_feed_order() {
        let events = [
            event(1, "order-a", Some("a")),
            event(2, "order-b", Some("b")),
            event(3, "sub-a", Some("a")),
            event(4, "product", None),
            event(5, "job-b", Some("b")),
            // An operator's command without correlation on a job of order b.
            event(6, "job-b", None),
            event(7, "sub-a", None),
        ];
        let mut lanes = lane_partition(&events);
        lanes.sort();
        assert_eq!(lanes, vec![vec![0, 2, 6], vec![1, 4, 5], vec![3]]);
    }

    #[test]
    fn an_event_bridging_two_lanes_joins_them() {
        // Aggregate x first seen under correlation a, then under b: a and b become one lane.
        let events = [
            event(1, "x", Some("a")),
            event(2, "y", Some("b")),
            event(3, "x", Some("b")),
            event(4, "z", Some("c")),
        ];
        let mut lanes = lane_partition(&events);
        lanes.sort();
        assert_eq!(lanes, vec![vec![0, 1, 2], vec![3]]);
    }
}
