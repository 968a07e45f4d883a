//! The saga runner: a feed subscriber that executes the domain's saga decisions.
//!
//! Delivery is at least once (a crash between a command and the checkpoint repeats the
//! command); the decisions target derived ids and idempotent commands, so the effect is exactly
//! once. A command the domain refuses is a decision, not a failure (e.g. fulfilling a cancelled
//! order): it is logged and the saga moves on. Infrastructure failures are returned so the
//! runner retries the same event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cqrs_es::{Aggregate, EventEnvelope};
use mpanel_domain::job::{JobCommand, JobEvent};
use mpanel_domain::order::{Order, OrderEvent};
use mpanel_domain::saga::{react, SagaCommand, SagaEvent, SagaPolicy};
use mpanel_domain::subscription::{Subscription, SubscriptionCommand, SubscriptionEvent};
use mpanel_projections::{FeedEvent, Reactor, SubscriberError};
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::{AggregateBus, BusError, CommandBus, Created, Executed};
use crate::metadata::EventMetadata;
use crate::queue::JobQueue;

/// Executes saga decisions for each event of the feed.
pub struct SagaRunner {
    bus: Arc<CommandBus>,
    policy: SagaPolicy,
    doorbell: Option<JobQueue>,
    /// Where to look up an order's `OrderPlaced` time for the activation metric.
    log: Option<sqlx::PgPool>,
    /// The orders and subscriptions whose whole history this saga has seen.
    orders: Histories<Order>,
    subscriptions: Histories<Subscription>,
}

/// Histories the saga has seen whole, from sequence 1, in the feed or in its own appends'
/// results: its next command on such an aggregate is decided on them without loading it
/// ([`AggregateBus::execute_after`]; 4 of the 7 aggregate loads per order were the saga's). A
/// history another writer has since extended makes that append conflict, and the command is
/// decided again on a fresh load — the outcome is always the ordinary path's. Bounded: full,
/// it starts over (the aggregates it forgets are loaded, as before).
struct Histories<A: Aggregate> {
    seen: Mutex<HashMap<Uuid, Vec<EventEnvelope<A>>>>,
}

/// Aggregates a [`Histories`] holds at most (a few events each).
const HISTORIES_HELD: usize = 4096;

impl<A: Aggregate> Histories<A> {
    fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Takes note of `id`'s event number `sequence` (1-based). Sequence 1 starts a history; the
    /// next number extends it; one already held is ignored; a gap (an event this saga never
    /// saw) forgets the aggregate.
    fn record(&self, id: Uuid, sequence: usize, payload: &A::Event) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let envelope = || EventEnvelope {
            aggregate_id: id.to_string(),
            sequence,
            payload: payload.clone(),
            metadata: HashMap::new(),
        };
        match seen.get_mut(&id) {
            Some(history) if sequence <= history.len() => {}
            Some(history) if sequence == history.len() + 1 => history.push(envelope()),
            Some(_) => {
                seen.remove(&id);
            }
            None if sequence == 1 => {
                if seen.len() >= HISTORIES_HELD {
                    seen.clear();
                }
                seen.insert(id, vec![envelope()]);
            }
            None => {}
        }
    }

    /// Takes note of the events a command just appended.
    fn record_all(&self, id: Uuid, events: &[EventEnvelope<A>]) {
        for event in events {
            self.record(id, event.sequence, &event.payload);
        }
    }

    /// `id`'s whole history, when this saga has seen it all.
    fn get(&self, id: Uuid) -> Option<Vec<EventEnvelope<A>>> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(&id).cloned()
    }
}

impl SagaRunner {
    /// A saga executing through `bus` and ringing `doorbell` for jobs that became due.
    #[must_use]
    pub fn new(bus: Arc<CommandBus>, policy: SagaPolicy, doorbell: Option<JobQueue>) -> Self {
        Self {
            bus,
            policy,
            doorbell,
            log: None,
            orders: Histories::new(),
            subscriptions: Histories::new(),
        }
    }

    /// Reads the event log to observe `mpanel_order_activation_seconds` on each
    /// `SubscriptionActivated` (without it the metric is not recorded).
    #[must_use]
    pub fn with_event_log(mut self, pool: sqlx::PgPool) -> Self {
        self.log = Some(pool);
        self
    }

    /// Observes the time from the order's `OrderPlaced` to this `SubscriptionActivated` (both
    /// `recorded_at`). Best effort; a redelivered activation (after a crash or a failover)
    /// observes again, which a histogram of thousands of orders absorbs.
    async fn observe_activation(&self, event: &FeedEvent) {
        let Some(pool) = &self.log else { return };
        let Ok(SubscriptionEvent::SubscriptionActivated { order_id, .. }) =
            event.decode::<SubscriptionEvent>()
        else {
            return;
        };
        let placed: Result<Option<chrono::DateTime<chrono::Utc>>, _> = sqlx::query_scalar(
            "SELECT recorded_at FROM events WHERE aggregate_type = 'Order' AND aggregate_id = $1 \
             AND event_type = 'OrderPlaced' LIMIT 1",
        )
        .bind(order_id.to_string())
        .fetch_optional(pool)
        .await;
        match placed {
            Ok(Some(placed)) => {
                let took = (event.recorded_at - placed).to_std().unwrap_or_default();
                crate::metrics::order_activated(took);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot read OrderPlaced for the activation metric")
            }
        }
    }

    /// Rings the bell for a job that just became due. Best effort: the sweeper rings again for
    /// every due job, so an unreachable Redis must not hold the saga back.
    async fn ring(&self, event: &FeedEvent, job_id: Uuid) {
        let due_now = matches!(
            event.event_type.as_str(),
            "JobScheduled" | "JobRetryRequested"
        );
        if let (true, Some(queue)) = (due_now, &self.doorbell) {
            if let Err(e) = queue.dispatch(job_id).await {
                tracing::warn!(job_id = %job_id, error = %e, "could not dispatch job; the sweeper will");
            }
        }
    }

    async fn execute(
        &self,
        command: SagaCommand,
        metadata: &EventMetadata,
    ) -> Result<(), SubscriberError> {
        let result = match command {
            SagaCommand::Order(id, c) => {
                execute_on(&self.bus.orders, &self.orders, id, c, metadata).await
            }
            // Opening a subscription and scheduling a job create their aggregate: try without
            // loading it first (one round trip); an existing one takes the ordinary path.
            SagaCommand::Subscription(id, c @ SubscriptionCommand::Open { .. }) => {
                create_or_execute(&self.bus.subscriptions, id, c, metadata)
                    .await
                    .map(|events| self.subscriptions.record_all(id, &events))
            }
            SagaCommand::Job(id, c @ JobCommand::Schedule(_)) => {
                create_or_execute(&self.bus.jobs, id, c, metadata)
                    .await
                    .map(drop)
            }
            SagaCommand::Subscription(id, c) => {
                execute_on(
                    &self.bus.subscriptions,
                    &self.subscriptions,
                    id,
                    c,
                    metadata,
                )
                .await
            }
            SagaCommand::Job(id, c) => self
                .bus
                .jobs
                .execute(id, c, metadata)
                .await
                .map(drop)
                .map_err(outcome),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Outcome::Refused(reason)) => {
                tracing::warn!(reason = %reason, "saga command refused by the domain; moving on");
                Ok(())
            }
            Err(Outcome::Failed(error)) => Err(SubscriberError::Other(error)),
        }
    }
}

enum Outcome {
    Refused(String),
    Failed(String),
}

/// [`AggregateBus::execute_new_if`] for a command that normally creates its aggregate, falling
/// back to [`AggregateBus::execute`] (which decides against the real state) when the aggregate
/// exists already or the empty state decided nothing: the outcome is the ordinary path's.
/// Returns the events appended.
async fn create_or_execute<A>(
    bus: &AggregateBus<A>,
    id: Uuid,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<Vec<EventEnvelope<A>>, Outcome>
where
    A: Aggregate<Services = ()> + Clone + Send + Sync,
    A::Command: Clone + Send + Sync,
    A::Error: Send + Sync + 'static,
{
    match bus.execute_new_if(id, command.clone(), metadata).await {
        Ok(Created::Appended(executed)) => Ok(executed.events),
        Ok(Created::Exists | Created::NotDecided) => bus
            .execute(id, command, metadata)
            .await
            .map(|executed| executed.events)
            .map_err(outcome),
        Err(e) => Err(outcome(e)),
    }
}

/// Executes `command` on `id` from the history the saga holds for it, if it holds it whole
/// ([`AggregateBus::execute_after`]: only a decision that appends is taken from it, anything
/// else is decided again on a fresh load), else the ordinary way; either way the appended
/// events extend what it holds.
async fn execute_on<A>(
    bus: &AggregateBus<A>,
    histories: &Histories<A>,
    id: Uuid,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<(), Outcome>
where
    A: Aggregate<Services = ()> + Clone + Send + Sync,
    A::Command: Clone + Send + Sync,
    A::Error: Send + Sync + 'static,
{
    let executed: Executed<A> = match histories.get(id) {
        Some(history) => bus.execute_after(id, &history, command, metadata).await,
        None => bus.execute(id, command, metadata).await,
    }
    .map_err(outcome)?;
    histories.record_all(id, &executed.events);
    Ok(())
}

fn outcome<E: std::error::Error>(error: BusError<E>) -> Outcome {
    match error {
        BusError::Rejected(e) => Outcome::Refused(e.to_string()),
        other => Outcome::Failed(other.to_string()),
    }
}

#[async_trait]
impl Reactor for SagaRunner {
    fn name(&self) -> &'static str {
        "saga"
    }

    /// Reacts inside a `saga.react` span that continues the trace stored in the event's
    /// metadata, so the commands it issues (and, through their events, the worker) stay in the
    /// trace of the request that started the order.
    async fn react(&self, event: &FeedEvent) -> Result<(), SubscriberError> {
        let span = tracing::info_span!(
            "saga.react",
            event_type = %event.event_type,
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            position = event.position,
        );
        crate::telemetry::continue_trace(&span, event.meta("traceparent"));
        self.react_to(event).instrument(span).await
    }
}

impl SagaRunner {
    async fn react_to(&self, event: &FeedEvent) -> Result<(), SubscriberError> {
        let Ok(id) = Uuid::parse_str(&event.aggregate_id) else {
            return Ok(());
        };
        let sequence = usize::try_from(event.sequence).unwrap_or(0);
        let commands = match event.aggregate_type.as_str() {
            "Order" => {
                let decoded = event.decode::<OrderEvent>()?;
                self.orders.record(id, sequence, &decoded);
                react(
                    self.policy,
                    SagaEvent::Order(id, &decoded),
                    event.recorded_at,
                )
            }
            "Subscription" => {
                let decoded = event.decode::<SubscriptionEvent>()?;
                self.subscriptions.record(id, sequence, &decoded);
                react(
                    self.policy,
                    SagaEvent::Subscription(id, &decoded),
                    event.recorded_at,
                )
            }
            "Job" => react(
                self.policy,
                SagaEvent::Job(id, &event.decode::<JobEvent>()?),
                event.recorded_at,
            ),
            _ => vec![],
        };
        if event.aggregate_type == "Job" {
            self.ring(event, id).await;
        }
        if commands.is_empty() {
            return Ok(());
        }
        let correlation = event
            .meta("correlation_id")
            .and_then(|c| Uuid::parse_str(c).ok());
        for command in commands {
            let mut metadata = EventMetadata::new("saga")
                .caused_by(event.position)
                .traced(crate::telemetry::current_traceparent());
            if let Some(c) = correlation {
                metadata = metadata.correlated(c);
            }
            self.execute(command, &metadata).await?;
        }
        if event.event_type == "SubscriptionActivated" {
            self.observe_activation(event).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activated() -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionActivated {
            order_id: Uuid::nil(),
            activated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn held(histories: &Histories<Subscription>, id: Uuid) -> Option<Vec<usize>> {
        histories
            .get(id)
            .map(|h| h.iter().map(|e| e.sequence).collect())
    }

    #[test]
    fn a_history_is_held_only_when_seen_whole_from_its_first_event() {
        let histories = Histories::<Subscription>::new();
        let (seen_from_start, joined_late) = (Uuid::new_v4(), Uuid::new_v4());
        histories.record(joined_late, 2, &activated());
        for sequence in [1, 2, 3] {
            histories.record(seen_from_start, sequence, &activated());
        }
        assert_eq!(held(&histories, seen_from_start), Some(vec![1, 2, 3]));
        assert_eq!(
            held(&histories, joined_late),
            None,
            "no first event, no history"
        );
    }

    #[test]
    fn a_repeated_event_is_ignored_and_a_gap_forgets_the_aggregate() {
        let histories = Histories::<Subscription>::new();
        let id = Uuid::new_v4();
        // Its own append's events first, then the same events from the feed.
        for sequence in [1, 2, 1, 2] {
            histories.record(id, sequence, &activated());
        }
        assert_eq!(held(&histories, id), Some(vec![1, 2]));
        // Event 3 was appended by someone else and never seen: 4 cannot follow 2.
        histories.record(id, 4, &activated());
        assert_eq!(held(&histories, id), None);
        histories.record(id, 5, &activated());
        assert_eq!(held(&histories, id), None, "forgotten until it starts over");
    }

    #[test]
    fn the_held_histories_are_bounded() {
        let histories = Histories::<Subscription>::new();
        let first = Uuid::new_v4();
        histories.record(first, 1, &activated());
        for _ in 0..HISTORIES_HELD {
            histories.record(Uuid::new_v4(), 1, &activated());
        }
        let held_now = histories
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(held_now <= HISTORIES_HELD, "{held_now} held");
        assert_eq!(held(&histories, first), None, "started over when full");
    }
}
