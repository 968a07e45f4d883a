//! The saga runner: a feed subscriber that executes the domain's saga decisions.
//!
//! Delivery is at least once (a crash between a command and the checkpoint repeats the
//! command); the decisions target derived ids and idempotent commands, so the effect is exactly
//! once. A command the domain refuses is a decision, not a failure (e.g. fulfilling a cancelled
//! order): it is logged and the saga moves on. Infrastructure failures are returned so the
//! runner retries the same event.

use std::sync::Arc;

use async_trait::async_trait;
use mpanel_domain::job::{JobCommand, JobEvent};
use mpanel_domain::order::OrderEvent;
use mpanel_domain::saga::{react, SagaCommand, SagaEvent, SagaPolicy};
use mpanel_domain::subscription::{SubscriptionCommand, SubscriptionEvent};
use mpanel_projections::{FeedEvent, Reactor, SubscriberError};
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::{AggregateBus, BusError, CommandBus, Created};
use crate::metadata::EventMetadata;
use crate::queue::JobQueue;

/// Executes saga decisions for each event of the feed.
pub struct SagaRunner {
    bus: Arc<CommandBus>,
    policy: SagaPolicy,
    doorbell: Option<JobQueue>,
    /// Where to look up an order's `OrderPlaced` time for the activation metric.
    log: Option<sqlx::PgPool>,
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
            SagaCommand::Order(id, c) => self
                .bus
                .orders
                .execute(id, c, metadata)
                .await
                .map(drop)
                .map_err(outcome),
            // Opening a subscription and scheduling a job create their aggregate: try without
            // loading it first (one round trip); an existing one takes the ordinary path.
            SagaCommand::Subscription(id, c @ SubscriptionCommand::Open { .. }) => {
                create_or_execute(&self.bus.subscriptions, id, c, metadata).await
            }
            SagaCommand::Job(id, c @ JobCommand::Schedule(_)) => {
                create_or_execute(&self.bus.jobs, id, c, metadata).await
            }
            SagaCommand::Subscription(id, c) => self
                .bus
                .subscriptions
                .execute(id, c, metadata)
                .await
                .map(drop)
                .map_err(outcome),
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
async fn create_or_execute<A>(
    bus: &AggregateBus<A>,
    id: Uuid,
    command: A::Command,
    metadata: &EventMetadata,
) -> Result<(), Outcome>
where
    A: cqrs_es::Aggregate<Services = ()> + Clone + Send + Sync,
    A::Command: Clone + Send + Sync,
    A::Error: Send + Sync + 'static,
{
    match bus
        .execute_new_if(id, command.clone(), metadata, None)
        .await
    {
        Ok(Created::Appended(_)) => Ok(()),
        Ok(Created::Exists | Created::NotDecided | Created::PreconditionFailed) => bus
            .execute(id, command, metadata)
            .await
            .map(drop)
            .map_err(outcome),
        Err(e) => Err(outcome(e)),
    }
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
        let commands = match event.aggregate_type.as_str() {
            "Order" => react(
                self.policy,
                SagaEvent::Order(id, &event.decode::<OrderEvent>()?),
                event.recorded_at,
            ),
            "Subscription" => react(
                self.policy,
                SagaEvent::Subscription(id, &event.decode::<SubscriptionEvent>()?),
                event.recorded_at,
            ),
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
