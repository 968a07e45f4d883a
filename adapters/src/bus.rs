//! The command bus: load → handle → commit, with a bounded retry on write conflicts.
//!
//! `CqrsFramework::execute_with_metadata` returns no events, so mpanel drives cqrs-es's
//! [`EventStore`] itself: that is how the webhook tells a new order (events committed → 201)
//! from a duplicate (no events → 200), and where `AggregateConflict` — another writer committed
//! to the same aggregate between our load and our commit — is retried by reloading and
//! re-handling the same command. The event store is postgres-es without snapshots (ADR 0001).
//!
//! Appending is mpanel's own, not postgres-es's `persist` (which runs `BEGIN`, one `INSERT` per
//! event and `COMMIT`: 2 + n round trips): one `INSERT … SELECT FROM UNNEST` statement writes all
//! of a command's events atomically in one round trip, into the same columns with the same
//! serialisation, and a primary-key violation is the same optimistic-concurrency conflict.
//! [`AggregateBus::execute_new_if`] goes further for commands that normally create their
//! aggregate (the order webhook): it decides against the empty state without loading and lets
//! the insert itself detect an existing aggregate (docs/adr/0017).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{
    Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope, EventStore,
};
use mpanel_domain::job::Job;
use mpanel_domain::order::Order;
use mpanel_domain::product::Product;
use mpanel_domain::subscription::Subscription;
use mpanel_domain::tenant::Tenant;
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use uuid::Uuid;

use crate::metadata::EventMetadata;

/// How many times a command is re-handled after losing a write race before the bus gives up.
pub const DEFAULT_CONFLICT_RETRIES: u32 = 10;

/// Why a command did not produce a committed result.
#[derive(Debug, thiserror::Error)]
pub enum BusError<E: std::error::Error> {
    /// The aggregate refused the command (a domain rule).
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept winning the race for this aggregate.
    #[error("aggregate {0} stayed contended after {1} retries")]
    Contended(String, u32),
    /// The store failed (connection, serialisation).
    #[error("event store: {0}")]
    Store(String),
}

/// What a command did: the events it committed (empty for a no-op) and the state after them.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// Committed events, with their sequence numbers.
    pub events: Vec<EventEnvelope<A>>,
    /// The aggregate's state after the command.
    pub state: A,
}

/// What [`AggregateBus::execute_new_if`] did.
#[derive(Debug)]
pub enum Created<A: Aggregate> {
    /// The aggregate did not exist; the command's events are committed from sequence 1.
    Appended(Executed<A>),
    /// Nothing written: the aggregate already has events (the caller takes the ordinary path,
    /// which decides against its real state).
    Exists,
    /// Nothing written: the command decided nothing or was refused against the empty state
    /// (the ordinary path decides what that means for the real state).
    NotDecided,
}

/// The command path for one aggregate type.
pub struct AggregateBus<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    pool: PgPool,
    max_retries: u32,
    doorbell: Doorbell,
}

/// The shortest gap between two of one process's wake-up notifications.
const DOORBELL_GAP: Duration = Duration::from_millis(3);

/// Wakes the feed runners (`NOTIFY mpanel_events`, [`mpanel_projections::runner::CHANNEL`])
/// after appends — from a task of its own, coalesced: at most one notification in flight and
/// at most one per [`DOORBELL_GAP`] per process. A `NOTIFY` inside the appending transaction
/// (the trigger of the first migration, dropped by `20261125000009`) serialises every
/// appending commit on Postgres's notify lock and halved raw insert throughput at 16 clients
/// (docs/benchmarks.md); a lost or late ring costs latency only (runners also poll).
#[derive(Clone)]
pub struct Doorbell {
    inner: Arc<DoorbellInner>,
}

struct DoorbellInner {
    pool: PgPool,
    pending: tokio::sync::Notify,
    started: std::sync::Once,
}

impl Doorbell {
    /// A doorbell notifying through `pool`; its task starts with the first ring.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(DoorbellInner {
                pool,
                pending: tokio::sync::Notify::new(),
                started: std::sync::Once::new(),
            }),
        }
    }

    /// Asks for a notification soon (never waits).
    pub fn ring(&self) {
        self.inner.started.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(ring_loop(weak));
        });
        self.inner.pending.notify_one();
    }
}

/// Sends one notification per burst of rings until the bus is dropped.
async fn ring_loop(weak: std::sync::Weak<DoorbellInner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let rung = tokio::time::timeout(Duration::from_secs(1), inner.pending.notified()).await;
        if rung.is_ok() {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(mpanel_projections::runner::CHANNEL)
                .execute(&inner.pool)
                .await
            {
                tracing::debug!(error = %e, "could not notify the feed runners; they poll");
            }
        }
        drop(inner);
        if rung.is_ok() {
            tokio::time::sleep(DOORBELL_GAP).await;
        }
    }
}

/// Why an append did not write.
enum AppendError {
    /// An event with one of these sequence numbers exists: another writer won the race.
    Conflict,
    /// Anything else.
    Store(String),
}

/// One statement for the whole append: the rows come from arrays in sequence order (identity
/// values, hence feed order within the transaction, follow `ORDER BY`).
const APPEND_SQL: &str = "INSERT INTO events \
       (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, $3 \
     FROM UNNEST($4::bigint[], $5::text[], $6::text[], $7::jsonb[]) \
       AS e(sequence, event_type, event_version, payload) \
     ORDER BY e.sequence";

impl<A> AggregateBus<A>
where
    A: Aggregate<Services = ()> + Clone + Send + Sync,
    A::Command: Clone + Send + Sync,
    A::Error: Send + Sync + 'static,
{
    /// A bus writing to the `events` table of `pool`.
    #[must_use]
    pub fn new(pool: PgPool, max_retries: u32) -> Self {
        let doorbell = Doorbell::new(pool.clone());
        Self::with_doorbell(pool, max_retries, doorbell)
    }

    /// A bus ringing a shared `doorbell` after its appends.
    #[must_use]
    pub fn with_doorbell(pool: PgPool, max_retries: u32, doorbell: Doorbell) -> Self {
        Self {
            store: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone())),
            pool,
            max_retries,
            doorbell,
        }
    }

    /// Appends `events` after sequence `after` with `metadata`, in one statement (one round
    /// trip, atomic without an explicit transaction).
    async fn append(
        &self,
        aggregate_id: &str,
        after: usize,
        events: Vec<A::Event>,
        metadata: &HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AppendError> {
        let n = events.len();
        let mut sequences = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for (event, sequence) in events.iter().zip(after + 1..) {
            sequences.push(i64::try_from(sequence).map_err(|e| AppendError::Store(e.to_string()))?);
            types.push(event.event_type());
            versions.push(event.event_version());
            payloads
                .push(serde_json::to_value(event).map_err(|e| AppendError::Store(e.to_string()))?);
        }
        let metadata_json =
            serde_json::to_value(metadata).map_err(|e| AppendError::Store(e.to_string()))?;
        let result = sqlx::query(APPEND_SQL)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(&metadata_json)
            .bind(&sequences)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => {
                self.doorbell.ring();
                for event in &events {
                    crate::metrics::event_appended(event.event_type());
                }
                Ok(events
                    .into_iter()
                    .zip(after + 1..)
                    .map(|(payload, sequence)| EventEnvelope {
                        aggregate_id: aggregate_id.to_owned(),
                        sequence,
                        payload,
                        metadata: metadata.clone(),
                    })
                    .collect())
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                Err(AppendError::Conflict)
            }
            Err(e) => Err(AppendError::Store(e.to_string())),
        }
    }

    /// Executes a command that normally *creates* aggregate `id`, without loading it: decides
    /// against the empty state and appends from sequence 1. An existing aggregate makes the
    /// insert conflict on the primary key and nothing is written, so the caller can take the
    /// ordinary path ([`Self::execute`]), which decides against the real state: the outcome is
    /// what `execute` alone would have decided, one round trip instead of two for the common
    /// case of a new id.
    ///
    /// # Errors
    /// [`BusError::Store`] for infrastructure failures; nothing is written on any error.
    pub async fn execute_new_if(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Created<A>, BusError<A::Error>> {
        let metadata = with_trace(metadata);
        let Some((aggregate, events)) = decide(A::default(), command).await else {
            return Ok(Created::NotDecided);
        };
        match self.append(&id.to_string(), 0, events, &metadata).await {
            Ok(events) => Ok(Created::Appended(Executed {
                events,
                state: aggregate,
            })),
            Err(AppendError::Conflict) => Ok(Created::Exists),
            Err(AppendError::Store(e)) => Err(BusError::Store(e)),
        }
    }

    /// Loads the aggregate by replaying its events (no snapshots).
    ///
    /// # Errors
    /// [`BusError::Store`] when the store fails.
    pub async fn load(&self, id: Uuid) -> Result<A, BusError<A::Error>> {
        let mut context = self
            .store
            .load_aggregate(&id.to_string())
            .await
            .map_err(store_error)?;
        Ok(context.aggregate().clone())
    }

    /// The aggregate's committed events with their metadata, oldest first.
    ///
    /// # Errors
    /// [`BusError::Store`] when the store fails.
    pub async fn history(&self, id: Uuid) -> Result<Vec<EventEnvelope<A>>, BusError<A::Error>> {
        self.store
            .load_events(&id.to_string())
            .await
            .map_err(store_error)
    }

    /// [`Self::execute`] from the aggregate's `history` that the caller has read (all its
    /// events, in sequence order), saving the load. Only a decision that appends is taken from
    /// `history`: the append names the next sequence number, so if another writer appended
    /// since, it conflicts, nothing is written, and [`Self::execute`] decides again from a
    /// fresh load. A refusal or a "nothing to do" appends nothing and so proves nothing about
    /// `history` being current (an event not in it could change the answer), so those are
    /// decided again from a fresh load too. The outcome is always the ordinary path's.
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub async fn execute_after(
        &self,
        id: Uuid,
        history: &[EventEnvelope<A>],
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Executed<A>, BusError<A::Error>> {
        let mut held = A::default();
        for event in history {
            held.apply(event.payload.clone());
        }
        let Some((state, events)) = decide(held, command.clone()).await else {
            return self.execute(id, command, metadata).await;
        };
        match self
            .append(
                &id.to_string(),
                history.len(),
                events,
                &with_trace(metadata),
            )
            .await
        {
            Ok(events) => Ok(Executed { events, state }),
            Err(AppendError::Conflict) => self.execute(id, command, metadata).await,
            Err(AppendError::Store(e)) => Err(BusError::Store(e)),
        }
    }

    /// Executes `command` against aggregate `id`, retrying lost write races. Without a trace
    /// context in `metadata`, the events record the current span's (an operator's request, say).
    ///
    /// # Errors
    /// [`BusError::Rejected`] with the domain's reason, [`BusError::Contended`] when retries run
    /// out, [`BusError::Store`] for infrastructure failures. Nothing is written on any error.
    pub async fn execute(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Executed<A>, BusError<A::Error>> {
        let aggregate_id = id.to_string();
        let metadata = with_trace(metadata);
        let mut attempt = 0;
        loop {
            let mut context = self
                .store
                .load_aggregate(&aggregate_id)
                .await
                .map_err(store_error)?;
            let sink = cqrs_es::event_sink::EventSink::default();
            context
                .aggregate()
                .handle(command.clone(), &(), &sink)
                .await
                .map_err(BusError::Rejected)?;
            let state = context.aggregate().clone();
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Executed {
                    events: vec![],
                    state,
                });
            }
            match self
                .append(&aggregate_id, context.current_sequence, events, &metadata)
                .await
            {
                Ok(events) => return Ok(Executed { events, state }),
                Err(AppendError::Conflict) if attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(aggregate_type = A::TYPE, aggregate_id = %aggregate_id, attempt, "write conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                }
                Err(AppendError::Conflict) => {
                    return Err(BusError::Contended(aggregate_id, self.max_retries));
                }
                Err(AppendError::Store(e)) => return Err(BusError::Store(e)),
            }
        }
    }
}

/// Decides `command` against `state` (the empty aggregate, or a history the caller holds):
/// the state after it and its events, or `None` when it was refused or decided nothing there.
/// The bus's shortcuts take only a decision that appends from such a state, and leave the rest
/// to the ordinary path, on the stored state.
pub(crate) async fn decide<A: Aggregate<Services = ()>>(
    mut state: A,
    command: A::Command,
) -> Option<(A, Vec<A::Event>)> {
    let sink = cqrs_es::event_sink::EventSink::default();
    state.handle(command, &(), &sink).await.ok()?;
    let events = sink.collect().await;
    (!events.is_empty()).then_some((state, events))
}

/// The command's metadata as stored; without a trace context, the current span's (an
/// operator's request, say).
pub(crate) fn with_trace(metadata: &EventMetadata) -> HashMap<String, String> {
    let mut metadata = metadata.to_map();
    if !metadata.contains_key("traceparent") {
        if let Some(traceparent) = crate::telemetry::current_traceparent() {
            metadata.insert("traceparent".to_owned(), traceparent);
        }
    }
    metadata
}

fn store_error<E: std::error::Error>(error: AggregateError<E>) -> BusError<E> {
    match error {
        AggregateError::UserError(e) => BusError::Rejected(e),
        other => BusError::Store(other.to_string()),
    }
}

/// The command path for every aggregate.
pub struct CommandBus {
    /// Tenants.
    pub tenants: AggregateBus<Tenant>,
    /// Products and prices.
    pub products: AggregateBus<Product>,
    /// Orders.
    pub orders: AggregateBus<Order>,
    /// Subscriptions.
    pub subscriptions: AggregateBus<Subscription>,
    /// Jobs.
    pub jobs: AggregateBus<Job>,
    /// The order webhook's appends, grouped with concurrent webhooks' (docs/adr/0022).
    pub order_intake: crate::group_commit::GroupAppender<Order>,
    /// Prices the order webhook recently sold (its fast path, docs/adr/0017): per process,
    /// like the bus, and re-checked by every append that uses it.
    pub catalog: crate::intake::CatalogCache,
}

impl CommandBus {
    /// One bus per aggregate over the same pool.
    #[must_use]
    pub fn new(pool: &PgPool) -> Self {
        Self::with_retries(pool, DEFAULT_CONFLICT_RETRIES)
    }

    /// Same, with a custom conflict retry bound.
    #[must_use]
    pub fn with_retries(pool: &PgPool, max_retries: u32) -> Self {
        let bell = Doorbell::new(pool.clone());
        Self {
            tenants: AggregateBus::with_doorbell(pool.clone(), max_retries, bell.clone()),
            products: AggregateBus::with_doorbell(pool.clone(), max_retries, bell.clone()),
            orders: AggregateBus::with_doorbell(pool.clone(), max_retries, bell.clone()),
            subscriptions: AggregateBus::with_doorbell(pool.clone(), max_retries, bell.clone()),
            jobs: AggregateBus::with_doorbell(pool.clone(), max_retries, bell.clone()),
            order_intake: crate::group_commit::GroupAppender::new(
                pool,
                bell,
                crate::intake::SNAPSHOT_STILL_SOLD,
                crate::group_commit::DEFAULT_WRITERS,
            ),
            catalog: crate::intake::CatalogCache::default(),
        }
    }
}
