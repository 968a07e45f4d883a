//! The command bus: load → handle → commit, with a bounded retry on write conflicts.
//!
//! `CqrsFramework::execute_with_metadata` returns no events, so mpanel drives cqrs-es's
//! [`EventStore`] itself: that is how the webhook tells a new order (events committed → 201)
//! from a duplicate (no events → 200), and where `AggregateConflict` — another writer committed
//! to the same aggregate between our load and our commit — is retried by reloading and
//! re-handling the same command. The event store is postgres-es without snapshots (ADR 0001).

use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
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

/// The command path for one aggregate type.
pub struct AggregateBus<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    max_retries: u32,
}

impl<A> AggregateBus<A>
where
    A: Aggregate<Services = ()> + Clone + Send + Sync,
    A::Command: Clone + Send + Sync,
    A::Error: Send + Sync + 'static,
{
    /// A bus writing to the `events` table of `pool`.
    #[must_use]
    pub fn new(pool: PgPool, max_retries: u32) -> Self {
        Self {
            store: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool)),
            max_retries,
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
        let mut metadata = metadata.to_map();
        if !metadata.contains_key("traceparent") {
            if let Some(traceparent) = crate::telemetry::current_traceparent() {
                metadata.insert("traceparent".to_owned(), traceparent);
            }
        }
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
            match self.store.commit(events, context, metadata.clone()).await {
                Ok(events) => {
                    for event in &events {
                        crate::metrics::event_appended(cqrs_es::DomainEvent::event_type(
                            &event.payload,
                        ));
                    }
                    return Ok(Executed { events, state });
                }
                Err(AggregateError::AggregateConflict) if attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(aggregate_type = A::TYPE, aggregate_id = %aggregate_id, attempt, "write conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                }
                Err(AggregateError::AggregateConflict) => {
                    return Err(BusError::Contended(aggregate_id, self.max_retries));
                }
                Err(other) => return Err(store_error(other)),
            }
        }
    }
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
        Self {
            tenants: AggregateBus::new(pool.clone(), max_retries),
            products: AggregateBus::new(pool.clone(), max_retries),
            orders: AggregateBus::new(pool.clone(), max_retries),
            subscriptions: AggregateBus::new(pool.clone(), max_retries),
            jobs: AggregateBus::new(pool.clone(), max_retries),
        }
    }
}
