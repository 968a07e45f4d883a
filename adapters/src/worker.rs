//! The provisioning worker and the sweeper (DESIGN §4).
//!
//! A worker takes job ids from the Redis stream, takes a lease on the job (`Job.Start` — the
//! aggregate refuses when the job is not due, leased by someone else, done or dead-lettered),
//! runs the step's provisioner, records `Succeed` or `FailAttempt` (with the next try computed
//! here: exponential backoff with jitter) and only then acknowledges the stream entry. A worker
//! killed mid-step leaves a lease that expires; the sweeper then re-dispatches the job and the
//! next worker's converging provisioner repairs whatever half-state was left.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cqrs_es::EventEnvelope;
use mpanel_domain::ids;
use mpanel_domain::job::{Job, JobCommand, JobError, JobEvent, JobStatus};
use mpanel_domain::step::ProvisioningStep;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::{BusError, CommandBus};
use crate::metadata::EventMetadata;
use crate::provisioners::{ProvisionError, ProvisionRequest, Provisioner};
use crate::queue::{Delivery, JobQueue};

/// The provisioner for each step.
#[derive(Clone, Default)]
pub struct ProvisionerSet {
    by_step: HashMap<ProvisioningStep, Arc<dyn Provisioner>>,
}

impl ProvisionerSet {
    /// Adds (or replaces) the provisioner of `step`.
    #[must_use]
    pub fn with(mut self, step: ProvisioningStep, provisioner: Arc<dyn Provisioner>) -> Self {
        self.by_step.insert(step, provisioner);
        self
    }

    fn get(&self, step: ProvisioningStep) -> Option<&Arc<dyn Provisioner>> {
        self.by_step.get(&step)
    }
}

/// Tuning of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's name (recorded in `JobStarted`).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a lease holds; a provisioner call is cut off a little before.
    pub lease: Duration,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: format!("worker-{}", std::process::id()),
            concurrency: 4,
            lease: Duration::from_secs(120),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
        }
    }
}

/// The delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped, then scaled by a
/// jitter factor in `[0.8, 1.2)` (`jitter` in `[0, 1)`) so that jobs failing together do not
/// retry in lockstep.
#[must_use]
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exponent).min(cap);
    raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// What a worker did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRun {
    /// The step succeeded and was recorded.
    Succeeded,
    /// The attempt failed and was recorded (retry scheduled or dead-lettered).
    Failed(String),
    /// Nothing to do now (not due, leased elsewhere, finished, dead-lettered, unknown).
    Skipped(String),
}

/// Why a delivery could not be handled; it stays unacknowledged and is retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(String);

/// A provisioning worker.
#[derive(Clone)]
pub struct Worker {
    bus: Arc<CommandBus>,
    queue: JobQueue,
    provisioners: ProvisionerSet,
    config: WorkerConfig,
}

impl Worker {
    /// A worker over `queue` executing through `bus`.
    #[must_use]
    pub fn new(
        bus: Arc<CommandBus>,
        queue: JobQueue,
        provisioners: ProvisionerSet,
        config: WorkerConfig,
    ) -> Self {
        Self {
            bus,
            queue,
            provisioners,
            config,
        }
    }

    /// Receives and runs jobs until `shutdown`; then finishes the jobs in hand (their leases are
    /// recorded as outcomes) before returning.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut running = JoinSet::new();
        while !*shutdown.borrow() {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let deliveries = tokio::select! {
                d = self.queue.receive(&self.config.name, free as u64, 1000) => d,
                _ = shutdown.changed() => break,
            };
            match deliveries {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let worker = self.clone();
                        running.spawn(async move {
                            worker.handle(delivery).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "job queue unavailable; the sweeper keeps due jobs safe");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            while running.try_join_next().is_some() {}
        }
        tracing::info!(worker = %self.config.name, in_flight = running.len(), "worker stopping; finishing jobs in hand");
        while running.join_next().await.is_some() {}
    }

    async fn handle(&self, delivery: Delivery) {
        match self.execute(delivery.job_id).await {
            Ok(run) => {
                tracing::debug!(job_id = %delivery.job_id, ?run, "job delivery handled");
                if let Err(e) = self.queue.ack(&delivery.entry_id).await {
                    tracing::warn!(job_id = %delivery.job_id, error = %e, "could not acknowledge; harmless");
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %delivery.job_id, error = %e, "job delivery failed; will be retried")
            }
        }
    }

    /// Takes a lease on `job_id`, runs its provisioner and records the outcome.
    ///
    /// # Errors
    /// When the event store is unavailable (the delivery should be retried).
    ///
    /// The attempt runs in a `job.attempt` span continuing the trace of the job's schedule (or
    /// of the operator's retry), so its events — and the saga's reactions to them — stay in the
    /// trace of the order's webhook.
    pub async fn execute(&self, job_id: Uuid) -> Result<JobRun, WorkerError> {
        let span = tracing::info_span!(
            "job.attempt",
            job_id = %job_id,
            step = tracing::field::Empty,
            attempt = tracing::field::Empty,
            worker = %self.config.name,
        );
        let history = self
            .bus
            .jobs
            .history(job_id)
            .await
            .map_err(|e| WorkerError(e.to_string()))?;
        crate::telemetry::continue_trace(&span, trace_of(&history));
        if let Some(earlier) = self.earlier_job_running(&history).await? {
            // Acknowledged without a lease: the job stays due and the sweeper rings it again.
            return Ok(JobRun::Skipped(format!(
                "waiting for job {earlier} of an earlier operation to finish its attempt"
            )));
        }
        self.attempt(job_id, &history).instrument(span).await
    }

    /// A job of a lifecycle operation must not run while a job of an earlier generation for the
    /// same step still runs under a live lease (e.g. a termination while the order's
    /// provisioning is creating the account): the earlier job was cancelled, so it will not
    /// start again, but the attempt in flight could recreate what this job removes. Returns
    /// that earlier job's id.
    async fn earlier_job_running(
        &self,
        history: &[EventEnvelope<Job>],
    ) -> Result<Option<Uuid>, WorkerError> {
        let Some(spec) = history.iter().find_map(|e| match &e.payload {
            JobEvent::JobScheduled(spec) => Some(spec),
            _ => None,
        }) else {
            return Ok(None);
        };
        let now = Utc::now();
        for generation in (0..spec.generation).rev() {
            let id = ids::job_id(spec.subscription_id, spec.step, generation);
            let earlier = self
                .bus
                .jobs
                .load(id)
                .await
                .map_err(|e| WorkerError(e.to_string()))?;
            if earlier.status() == Some(JobStatus::Running)
                && earlier.lease_expires_at().is_some_and(|until| until > now)
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Takes the lease from the `history` just read (no second load), runs the step, records
    /// the outcome on top of the history it leased from (no load either).
    async fn attempt(
        &self,
        job_id: Uuid,
        history: &[EventEnvelope<Job>],
    ) -> Result<JobRun, WorkerError> {
        let now = Utc::now();
        let lease_id = Uuid::new_v4();
        let lease =
            chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(120));
        let metadata = EventMetadata::new("worker").traced(crate::telemetry::current_traceparent());
        let start = JobCommand::Start {
            lease_id,
            worker: self.config.name.clone(),
            lease_until: now + lease,
            at: now,
        };
        let started = match self
            .bus
            .jobs
            .execute_after(job_id, history, start, &metadata)
            .await
        {
            Ok(started) => started,
            Err(BusError::Rejected(reason)) => return Ok(JobRun::Skipped(reason.to_string())),
            Err(e) => return Err(WorkerError(e.to_string())),
        };
        let job = started.state;
        let Some(spec) = job.schedule().cloned() else {
            return Ok(JobRun::Skipped(JobError::NotScheduled.to_string()));
        };
        let metadata = metadata.correlated(spec.order_id);
        let attempt = job.attempt();
        let span = tracing::Span::current();
        span.record("step", spec.step.as_str());
        span.record("attempt", attempt);
        let mut attempt_started = std::time::Instant::now();
        let result = match (spec.domain.clone(), self.provisioners.get(spec.step)) {
            (Some(domain), Some(provisioner)) => {
                let request = ProvisionRequest {
                    job_id,
                    subscription_id: spec.subscription_id,
                    step: spec.step,
                    domain,
                    action: spec.action,
                };
                let budget = self.config.lease.saturating_sub(self.config.lease / 10);
                attempt_started = std::time::Instant::now();
                let call = provisioner
                    .provision(&request)
                    .instrument(provision_span(spec.step, &request));
                match tokio::time::timeout(budget, call).await {
                    Ok(result) => result,
                    Err(_) => Err(ProvisionError::Transient(format!(
                        "timed out after {budget:?}"
                    ))),
                }
            }
            (None, _) => Err(ProvisionError::Permanent("the job has no domain".into())),
            (_, None) => Err(ProvisionError::Permanent(format!(
                "no provisioner configured for {}",
                spec.step
            ))),
        };
        let at = Utc::now();
        let (command, run) = match result {
            Ok(outcome) => (
                JobCommand::Succeed {
                    lease_id,
                    outcome,
                    at,
                },
                JobRun::Succeeded,
            ),
            Err(error) => {
                let delay = backoff(
                    attempt,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                    rand::thread_rng().gen(),
                );
                let retry_at = at
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(300));
                tracing::warn!(job_id = %job_id, step = %spec.step, attempt, error = %error, "provisioning attempt failed");
                (
                    JobCommand::FailAttempt {
                        lease_id,
                        error: error.to_string(),
                        retry_at,
                        at,
                    },
                    JobRun::Failed(error.to_string()),
                )
            }
        };
        let took = attempt_started.elapsed();
        let step = spec.step.as_str();
        // The job's history as of the lease: what was read plus what `Start` wrote. A cancel
        // (or anything else) appended meanwhile makes this conflict, and the bus then decides
        // again from a fresh load.
        let leased: Vec<EventEnvelope<Job>> =
            history.iter().cloned().chain(started.events).collect();
        match self
            .bus
            .jobs
            .execute_after(job_id, &leased, command, &metadata)
            .await
        {
            Ok(recorded) => {
                let outcome = if run == JobRun::Succeeded {
                    "succeeded"
                } else {
                    "failed"
                };
                crate::metrics::job_attempt(step, outcome, took);
                if recorded
                    .events
                    .iter()
                    .any(|e| matches!(e.payload, JobEvent::JobDeadLettered { .. }))
                {
                    crate::metrics::job_dead_lettered(step);
                }
                Ok(run)
            }
            // Our lease was taken over while we worked: the newer attempt owns the outcome.
            Err(BusError::Rejected(reason)) => {
                crate::metrics::job_attempt(step, "superseded", took);
                Ok(JobRun::Skipped(reason.to_string()))
            }
            Err(e) => Err(WorkerError(e.to_string())),
        }
    }
}

/// The trace of the job's current attempt series: the `traceparent` of its latest
/// `JobScheduled` or `JobRetryRequested`.
fn trace_of(history: &[EventEnvelope<Job>]) -> Option<&str> {
    history
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.payload,
                JobEvent::JobScheduled(_) | JobEvent::JobRetryRequested { .. }
            )
        })
        .and_then(|e| e.metadata.get("traceparent"))
        .map(String::as_str)
}

/// The span of one provisioner call, named for its step (`dns.provision`, `hosting.provision`,
/// `mail.provision`); the provisioners' own spans (`ssh.run_script`) nest inside. The only span
/// of the call: the provisioners do not open one of their own. `job_id` is on the parent
/// `job.attempt` span.
fn provision_span(step: ProvisioningStep, request: &ProvisionRequest) -> tracing::Span {
    let domain = request.domain.as_str();
    let action = request.action.as_str();
    let subscription_id = tracing::field::display(request.subscription_id);
    match step {
        ProvisioningStep::Dns => {
            tracing::info_span!("dns.provision", domain, action, subscription_id)
        }
        ProvisioningStep::Hosting => {
            tracing::info_span!("hosting.provision", domain, action, subscription_id)
        }
        ProvisioningStep::Mail => {
            tracing::info_span!("mail.provision", domain, action, subscription_id)
        }
    }
}

/// Re-dispatches, every `interval`, each job that is due (scheduled or waiting for a retry whose
/// time has come) or whose lease expired — at most once per `redispatch_after` per job, so a
/// slow worker is not flooded. A lease ending more than two `lease` lengths from now was taken
/// with a clock that ran ahead and counts as expired (the `Job` aggregate agrees). Runs until
/// `shutdown`.
pub async fn sweep(
    pool: PgPool,
    queue: JobQueue,
    interval: Duration,
    redispatch_after: Duration,
    lease: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_rung: HashMap<Uuid, tokio::time::Instant> = HashMap::new();
    while !*shutdown.borrow() {
        // While the workers have bells still to hear, a scheduled job is almost surely among
        // them (the saga rang it): ringing it again only queues a duplicate behind the backlog,
        // and under a burst those duplicates were most of the queue — new orders' jobs waited
        // behind tens of thousands of them (docs/benchmarks.md). A lost bell is rung once the
        // workers have caught up. Retries and expired leases nobody else rings: always rung.
        let backlog = matches!(queue.undelivered().await, Ok(Some(n)) if n > 0);
        match due_jobs(&pool, lease, !backlog).await {
            Ok(due) => {
                let now = tokio::time::Instant::now();
                last_rung.retain(|id, _| due.contains(id));
                for id in due {
                    let recent = last_rung
                        .get(&id)
                        .is_some_and(|t| now.duration_since(*t) < redispatch_after);
                    if recent {
                        continue;
                    }
                    if let Err(e) = queue.dispatch(id).await {
                        tracing::warn!(error = %e, "sweeper cannot reach the job queue");
                        break;
                    }
                    last_rung.insert(id, now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeper cannot read due jobs"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Jobs to ring for. A freshly scheduled job was rung by the saga already, so it only counts
/// after a 5 s grace, and only when `scheduled` (no backlog of bells); a retry whose time came
/// is rung by nobody else; an expired lease means its worker died (or was taken with a clock
/// far ahead). A cancelled job never starts again, so it is never rung. The first line is the
/// predicate of the partial index `jobs_unfinished`, so a sweep reads the unfinished jobs
/// only, not every job ever run.
async fn due_jobs(
    pool: &PgPool,
    lease: Duration,
    scheduled: bool,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM jobs \
         WHERE status IN ('SCHEDULED', 'RETRY_WAITING', 'RUNNING') AND NOT cancelled \
           AND ((status = 'SCHEDULED' AND $2 AND due_at <= now() - interval '5 seconds') \
            OR (status = 'RETRY_WAITING' AND due_at <= now()) \
            OR (status = 'RUNNING' AND (lease_expires_at < now() \
                OR lease_expires_at > now() + make_interval(secs => $1)))) \
         ORDER BY due_at NULLS FIRST LIMIT 1000",
    )
    .bind(lease.as_secs_f64() * 2.0)
    .bind(scheduled)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_twenty_percent() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, base, cap, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(2, base, cap, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(4, base, cap, 0.5), Duration::from_secs(16));
        assert_eq!(backoff(10, base, cap, 0.5), cap);
        assert_eq!(backoff(u32::MAX, base, cap, 0.5), cap);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(1600));
        assert!(backoff(1, base, cap, 0.999) < Duration::from_millis(2400));
        assert_eq!(backoff(0, base, cap, 0.5), base);
    }
}
