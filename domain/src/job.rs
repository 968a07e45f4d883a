//! The Job aggregate: one provisioning step for one subscription, with its attempts.
//!
//! A job is due because its events say so (scheduled, or an attempt failed with a retry time, or
//! an operator asked for a retry), never because a queue entry exists. A worker takes a lease
//! with `Start`; only the holder of the current lease can record the attempt's outcome, so a
//! worker whose lease was taken over cannot overwrite the newer attempt. After `max_attempts`
//! failures in a series the job is dead-lettered; an operator retry starts a new series.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::step::ProvisioningStep;
use crate::values::DomainName;

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting for its first attempt (or for an operator retry's).
    Scheduled,
    /// A worker holds a lease and is running an attempt.
    Running,
    /// The last attempt failed; the next is due at the stored retry time.
    RetryWaiting,
    /// Done.
    Succeeded,
    /// Gave up after the series' last attempt; needs an operator retry.
    DeadLettered,
    /// A newer operation of its subscription superseded it; it will not run (again).
    Cancelled,
}

impl JobStatus {
    /// The stable name used in the API and read models.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Running => "RUNNING",
            Self::RetryWaiting => "RETRY_WAITING",
            Self::Succeeded => "SUCCEEDED",
            Self::DeadLettered => "DEAD_LETTERED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// A DNS record as provisioned, for the read models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Fully qualified owner name with trailing dot.
    pub name: String,
    /// Record type (`SOA`, `NS`, `A`, `MX`).
    pub record_type: String,
    /// Time to live in seconds.
    pub ttl: u32,
    /// The record contents.
    pub contents: Vec<String>,
}

/// What a job does to its step's resource on the server.
///
/// The create flow and re-provisioning use [`JobAction::Provision`]; the lifecycle operations
/// of a subscription (suspend, unsuspend, terminate) the others. Events written before
/// lifecycle operations existed carry no action and mean `Provision`, which is therefore
/// never written out (the stored JSON of a provisioning job is unchanged).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobAction {
    /// Create the resource, or repair it to the desired state.
    #[default]
    Provision,
    /// Take the resource out of service and keep its data (site placeholder, mail login off).
    Suspend,
    /// Put a suspended resource back in service.
    Unsuspend,
    /// Remove the resource; data (web root, Maildir) is archived, not deleted.
    Terminate,
}

impl JobAction {
    /// The stable name used in the API, read models and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "PROVISION",
            Self::Suspend => "SUSPEND",
            Self::Unsuspend => "UNSUSPEND",
            Self::Terminate => "TERMINATE",
        }
    }

    /// Whether this action has work to do for `step`. A zone is neither suspended nor
    /// unsuspended (the name keeps resolving to the web server, which serves the placeholder);
    /// every other combination has a job.
    #[must_use]
    pub fn applies_to(self, step: ProvisioningStep) -> bool {
        !matches!(
            (self, step),
            (Self::Suspend | Self::Unsuspend, ProvisioningStep::Dns)
        )
    }

    /// For `skip_serializing_if`: the default is not written out.
    #[must_use]
    pub fn is_provision(&self) -> bool {
        *self == Self::Provision
    }
}

impl std::fmt::Display for JobAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For `skip_serializing_if` on generation fields: generation 0 (the order's own provisioning)
/// is not written out, so events from before lifecycle operations keep their stored shape.
#[must_use]
#[allow(clippy::trivially_copy_pass_by_ref)]
pub fn is_first_generation(generation: &u32) -> bool {
    *generation == 0
}

/// What a successful step produced; the read models of domains, zones, hosting and mail
/// accounts are built from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StepOutcome {
    /// A DNS zone converged to the desired records.
    #[serde(rename_all = "camelCase")]
    Dns {
        /// Zone name with trailing dot.
        zone: String,
        /// The records as set.
        records: Vec<DnsRecord>,
    },
    /// A hosting account exists on a web server.
    #[serde(rename_all = "camelCase")]
    Hosting {
        /// The server it lives on.
        server: String,
        /// The account's system user name.
        system_user: String,
        /// The web root.
        web_root: String,
        /// The vhost file.
        vhost_path: String,
    },
    /// A mailbox exists on the mail server.
    #[serde(rename_all = "camelCase")]
    Mail {
        /// The mailbox address.
        address: String,
        /// The server it lives on.
        server: String,
        /// Its Maildir.
        maildir: String,
    },
    /// A lifecycle action (suspend, unsuspend, terminate) converged on the server.
    #[serde(rename_all = "camelCase")]
    Changed {
        /// What was done.
        action: JobAction,
        /// The server it was done on.
        server: String,
        /// What it was done to: the zone (with trailing dot), the web root, or the mailbox
        /// address.
        target: String,
        /// Where a termination moved the data (web root or Maildir archive); `None` when
        /// there was nothing left to archive or the action keeps data in place.
        archived: Option<String>,
    },
}

/// What a job is for (the payload of [`JobEvent::JobScheduled`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleJob {
    /// The subscription the step belongs to.
    pub subscription_id: Uuid,
    /// The order (correlation for readers).
    pub order_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// Which step.
    pub step: ProvisioningStep,
    /// The domain the step provisions.
    pub domain: Option<DomainName>,
    /// Attempts per series before dead-lettering.
    pub max_attempts: u32,
    /// When the first attempt is due.
    pub due_at: DateTime<Utc>,
    /// What the job does (absent in stored events: provision).
    #[serde(default, skip_serializing_if = "JobAction::is_provision")]
    pub action: JobAction,
    /// The subscription's operation this job belongs to: 0 for the order's provisioning, then
    /// one more per lifecycle operation (absent in stored events: 0).
    #[serde(default, skip_serializing_if = "is_first_generation")]
    pub generation: u32,
}

/// Commands on a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    /// Schedules the job (idempotent for the same subscription and step).
    Schedule(ScheduleJob),
    /// A worker takes a lease to run the next attempt.
    Start {
        /// A fresh id for this lease; the outcome must quote it.
        lease_id: Uuid,
        /// The worker's name, for operators.
        worker: String,
        /// Until when the lease holds; after that another worker may take over.
        lease_until: DateTime<Utc>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The attempt under `lease_id` succeeded.
    Succeed {
        /// The lease the attempt ran under.
        lease_id: Uuid,
        /// What it produced.
        outcome: StepOutcome,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The attempt under `lease_id` failed.
    FailAttempt {
        /// The lease the attempt ran under.
        lease_id: Uuid,
        /// The error, as operators should read it (no secrets).
        error: String,
        /// When to try again if attempts remain (the caller computes backoff and jitter).
        retry_at: DateTime<Utc>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// A newer operation of the subscription superseded this job: it must not start again. A
    /// running attempt finishes (its outcome is recorded) but is not retried.
    Cancel {
        /// Why, for the log.
        reason: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// An operator starts a new attempt series.
    Retry {
        /// Who asked.
        requested_by: String,
        /// Now (the new series is due at once).
        at: DateTime<Utc>,
    },
}

/// Events of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job exists and is due at `due_at`.
    JobScheduled(ScheduleJob),
    /// A worker took a lease and began an attempt.
    #[serde(rename_all = "camelCase")]
    JobStarted {
        /// Attempt number within the series, from 1.
        attempt: u32,
        /// The lease.
        lease_id: Uuid,
        /// Who.
        worker: String,
        /// When.
        started_at: DateTime<Utc>,
        /// Lease expiry.
        lease_expires_at: DateTime<Utc>,
    },
    /// The attempt succeeded.
    #[serde(rename_all = "camelCase")]
    JobSucceeded {
        /// The subscription to tell.
        subscription_id: Uuid,
        /// The step.
        step: ProvisioningStep,
        /// What the job did (absent in stored events: provision).
        #[serde(default, skip_serializing_if = "JobAction::is_provision")]
        action: JobAction,
        /// The subscription's operation (absent in stored events: 0).
        #[serde(default, skip_serializing_if = "is_first_generation")]
        generation: u32,
        /// Which attempt.
        attempt: u32,
        /// What it produced.
        outcome: StepOutcome,
        /// When.
        succeeded_at: DateTime<Utc>,
    },
    /// The attempt failed; `retry_at` is set when another attempt will follow.
    #[serde(rename_all = "camelCase")]
    JobAttemptFailed {
        /// Which attempt.
        attempt: u32,
        /// The error.
        error: String,
        /// When.
        failed_at: DateTime<Utc>,
        /// When the next attempt is due, if any.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The series' attempts are used up.
    #[serde(rename_all = "camelCase")]
    JobDeadLettered {
        /// The subscription to tell.
        subscription_id: Uuid,
        /// The step.
        step: ProvisioningStep,
        /// What the job did (absent in stored events: provision).
        #[serde(default, skip_serializing_if = "JobAction::is_provision")]
        action: JobAction,
        /// The subscription's operation (absent in stored events: 0).
        #[serde(default, skip_serializing_if = "is_first_generation")]
        generation: u32,
        /// The series that gave up.
        series: u32,
        /// Attempts made in it.
        attempts: u32,
        /// The last error.
        last_error: String,
        /// When.
        dead_lettered_at: DateTime<Utc>,
    },
    /// A newer operation superseded the job; it will not be started or retried again.
    #[serde(rename_all = "camelCase")]
    JobCancelled {
        /// Why.
        reason: String,
        /// Whether an attempt was running (its outcome will still be recorded).
        while_running: bool,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
    /// An operator started a new series.
    #[serde(rename_all = "camelCase")]
    JobRetryRequested {
        /// The new series number.
        series: u32,
        /// Who asked.
        requested_by: String,
        /// When the new series is due.
        due_at: DateTime<Utc>,
    },
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        match self {
            Self::JobScheduled(_) => "JobScheduled",
            Self::JobStarted { .. } => "JobStarted",
            Self::JobSucceeded { .. } => "JobSucceeded",
            Self::JobAttemptFailed { .. } => "JobAttemptFailed",
            Self::JobDeadLettered { .. } => "JobDeadLettered",
            Self::JobRetryRequested { .. } => "JobRetryRequested",
            Self::JobCancelled { .. } => "JobCancelled",
        }
        .into()
    }
    fn event_version(&self) -> String {
        crate::EVENT_VERSION_1.into()
    }
}

/// Why a job command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No job under this id.
    #[error("job not found")]
    NotScheduled,
    /// The id is taken by a job for another subscription or step.
    #[error("job already scheduled for another subscription or step")]
    ScheduledDifferently,
    /// `max_attempts` must be at least one.
    #[error("max attempts must be at least 1")]
    NoAttemptsAllowed,
    /// The job is not due yet.
    #[error("job is not due until {0}")]
    NotDue(DateTime<Utc>),
    /// Another worker holds an unexpired lease.
    #[error("job is leased until {0}")]
    LeaseHeld(DateTime<Utc>),
    /// The outcome quotes a lease that is not the current one.
    #[error("lease is not the job's current lease")]
    StaleLease,
    /// The job already succeeded.
    #[error("job already succeeded")]
    AlreadySucceeded,
    /// The job is dead-lettered; only a retry moves it.
    #[error("job is dead-lettered")]
    DeadLettered,
    /// A retry was asked for while an attempt runs.
    #[error("job is running")]
    Running,
    /// The lease would end before it starts.
    #[error("lease must end after it starts")]
    EmptyLease,
    /// A newer operation of the subscription cancelled the job.
    #[error("job was cancelled")]
    Cancelled,
}

/// The job's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    spec: Option<ScheduleJob>,
    status: Option<JobStatus>,
    series: u32,
    attempt: u32,
    due_at: Option<DateTime<Utc>>,
    lease: Option<(Uuid, DateTime<Utc>)>,
    last_error: Option<String>,
    #[serde(default)]
    cancelled: bool,
}

impl Job {
    /// The status, `None` before scheduling.
    #[must_use]
    pub fn status(&self) -> Option<JobStatus> {
        self.status
    }

    /// What the job is for, `None` before scheduling.
    #[must_use]
    pub fn schedule(&self) -> Option<&ScheduleJob> {
        self.spec.as_ref()
    }

    /// The current attempt number within the series (0 before the first start).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt series (0 until an operator retry).
    #[must_use]
    pub fn series(&self) -> u32 {
        self.series
    }

    /// Until when the current attempt's lease holds (`None` when no attempt runs).
    #[must_use]
    pub fn lease_expires_at(&self) -> Option<DateTime<Utc>> {
        self.lease.map(|(_, expires)| expires)
    }

    fn spec(&self) -> Result<&ScheduleJob, JobError> {
        self.spec.as_ref().ok_or(JobError::NotScheduled)
    }

    fn current_lease(&self, lease_id: Uuid) -> Result<(), JobError> {
        match (self.status, self.lease) {
            (Some(JobStatus::Running), Some((id, _))) if id == lease_id => Ok(()),
            (Some(JobStatus::Succeeded), _) => Err(JobError::AlreadySucceeded),
            _ => Err(JobError::StaleLease),
        }
    }

    fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        match command {
            JobCommand::Schedule(schedule) => {
                if schedule.max_attempts == 0 {
                    return Err(JobError::NoAttemptsAllowed);
                }
                match &self.spec {
                    Some(spec)
                        if spec.subscription_id == schedule.subscription_id
                            && spec.step == schedule.step
                            && spec.action == schedule.action
                            && spec.generation == schedule.generation =>
                    {
                        Ok(vec![])
                    }
                    Some(_) => Err(JobError::ScheduledDifferently),
                    None => Ok(vec![JobEvent::JobScheduled(schedule)]),
                }
            }
            JobCommand::Start {
                lease_id,
                worker,
                lease_until,
                at,
            } => {
                self.spec()?;
                if lease_until <= at {
                    return Err(JobError::EmptyLease);
                }
                if self.cancelled {
                    return Err(JobError::Cancelled);
                }
                match self.status {
                    Some(JobStatus::Succeeded) => return Err(JobError::AlreadySucceeded),
                    Some(JobStatus::DeadLettered) => return Err(JobError::DeadLettered),
                    Some(JobStatus::Running) => {
                        if let Some((_, expires)) = self.lease {
                            // A lease outlasting two fresh ones was taken with a clock that ran
                            // ahead; honouring it would strand the job until that clock's time.
                            let implausible = expires - at > (lease_until - at) * 2;
                            if expires > at && !implausible {
                                return Err(JobError::LeaseHeld(expires));
                            }
                        }
                    }
                    _ => {
                        if let Some(due) = self.due_at {
                            if due > at {
                                return Err(JobError::NotDue(due));
                            }
                        }
                    }
                }
                Ok(vec![JobEvent::JobStarted {
                    attempt: self.attempt + 1,
                    lease_id,
                    worker,
                    started_at: at,
                    lease_expires_at: lease_until,
                }])
            }
            JobCommand::Succeed {
                lease_id,
                outcome,
                at,
            } => {
                let spec = self.spec()?;
                self.current_lease(lease_id)?;
                Ok(vec![JobEvent::JobSucceeded {
                    subscription_id: spec.subscription_id,
                    step: spec.step,
                    action: spec.action,
                    generation: spec.generation,
                    attempt: self.attempt,
                    outcome,
                    succeeded_at: at,
                }])
            }
            JobCommand::FailAttempt {
                lease_id,
                error,
                retry_at,
                at,
            } => {
                let spec = self.spec()?;
                self.current_lease(lease_id)?;
                if self.cancelled {
                    // Superseded while it ran: the attempt is recorded, nothing follows it.
                    return Ok(vec![JobEvent::JobAttemptFailed {
                        attempt: self.attempt,
                        error,
                        failed_at: at,
                        retry_at: None,
                    }]);
                }
                if self.attempt >= spec.max_attempts {
                    Ok(vec![
                        JobEvent::JobAttemptFailed {
                            attempt: self.attempt,
                            error: error.clone(),
                            failed_at: at,
                            retry_at: None,
                        },
                        JobEvent::JobDeadLettered {
                            subscription_id: spec.subscription_id,
                            step: spec.step,
                            action: spec.action,
                            generation: spec.generation,
                            series: self.series,
                            attempts: self.attempt,
                            last_error: error,
                            dead_lettered_at: at,
                        },
                    ])
                } else {
                    Ok(vec![JobEvent::JobAttemptFailed {
                        attempt: self.attempt,
                        error,
                        failed_at: at,
                        retry_at: Some(retry_at.max(at)),
                    }])
                }
            }
            JobCommand::Cancel { reason, at } => {
                self.spec()?;
                if self.cancelled {
                    return Ok(vec![]);
                }
                if self.status == Some(JobStatus::Succeeded) {
                    return Ok(vec![]);
                }
                // An attempt whose lease expired has no live worker to report its outcome.
                let while_running = self.status == Some(JobStatus::Running)
                    && self.lease.is_some_and(|(_, expires)| expires > at);
                Ok(vec![JobEvent::JobCancelled {
                    reason,
                    while_running,
                    cancelled_at: at,
                }])
            }
            JobCommand::Retry { requested_by, at } => {
                self.spec()?;
                if self.cancelled {
                    return Err(JobError::Cancelled);
                }
                match self.status {
                    Some(JobStatus::Succeeded) => Err(JobError::AlreadySucceeded),
                    Some(JobStatus::Running) => Err(JobError::Running),
                    _ => Ok(vec![JobEvent::JobRetryRequested {
                        series: self.series + 1,
                        requested_by,
                        due_at: at,
                    }]),
                }
            }
        }
    }
}

impl Aggregate for Job {
    const TYPE: &'static str = "Job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = self.decide(command)?;
        crate::emit(self, sink, events).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            JobEvent::JobScheduled(spec) => {
                self.due_at = Some(spec.due_at);
                self.spec = Some(spec);
                self.status = Some(JobStatus::Scheduled);
            }
            JobEvent::JobStarted {
                attempt,
                lease_id,
                lease_expires_at,
                ..
            } => {
                self.attempt = attempt;
                self.lease = Some((lease_id, lease_expires_at));
                self.status = Some(JobStatus::Running);
            }
            JobEvent::JobSucceeded { .. } => {
                self.lease = None;
                self.status = Some(JobStatus::Succeeded);
            }
            JobEvent::JobAttemptFailed {
                error, retry_at, ..
            } => {
                self.lease = None;
                self.last_error = Some(error);
                self.due_at = retry_at;
                self.status = Some(if self.cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::RetryWaiting
                });
            }
            JobEvent::JobDeadLettered { .. } => {
                self.status = Some(JobStatus::DeadLettered);
            }
            JobEvent::JobCancelled { while_running, .. } => {
                self.cancelled = true;
                if !while_running {
                    self.due_at = None;
                    self.status = Some(JobStatus::Cancelled);
                }
            }
            JobEvent::JobRetryRequested { series, due_at, .. } => {
                self.series = series;
                self.attempt = 0;
                self.due_at = Some(due_at);
                self.status = Some(JobStatus::Scheduled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::tests::at;
    use cqrs_es::test::TestFramework;

    type Tester = TestFramework<Job>;

    const SUB: Uuid = Uuid::from_u128(20);
    const LEASE: Uuid = Uuid::from_u128(30);
    const OTHER_LEASE: Uuid = Uuid::from_u128(31);

    fn spec(max_attempts: u32) -> ScheduleJob {
        ScheduleJob {
            subscription_id: SUB,
            order_id: Uuid::from_u128(10),
            tenant_id: Uuid::from_u128(1),
            step: ProvisioningStep::Dns,
            domain: Some(DomainName::parse("example.com").expect("valid")),
            max_attempts,
            due_at: at(0),
            action: JobAction::Provision,
            generation: 0,
        }
    }
    fn scheduled(max_attempts: u32) -> JobEvent {
        JobEvent::JobScheduled(spec(max_attempts))
    }
    fn start(lease_id: Uuid, now: i64) -> JobCommand {
        JobCommand::Start {
            lease_id,
            worker: "w1".into(),
            lease_until: at(now + 60),
            at: at(now),
        }
    }
    fn started(attempt: u32, lease_id: Uuid, now: i64) -> JobEvent {
        JobEvent::JobStarted {
            attempt,
            lease_id,
            worker: "w1".into(),
            started_at: at(now),
            lease_expires_at: at(now + 60),
        }
    }
    fn outcome() -> StepOutcome {
        StepOutcome::Dns {
            zone: "example.com.".into(),
            records: vec![],
        }
    }
    fn fail(lease_id: Uuid) -> JobCommand {
        JobCommand::FailAttempt {
            lease_id,
            error: "timeout".into(),
            retry_at: at(100),
            at: at(10),
        }
    }
    fn attempt_failed(attempt: u32, retry: bool) -> JobEvent {
        JobEvent::JobAttemptFailed {
            attempt,
            error: "timeout".into(),
            failed_at: at(10),
            retry_at: retry.then(|| at(100)),
        }
    }

    #[test]
    fn schedules_once() {
        Tester::with(())
            .given_no_previous_events()
            .when(JobCommand::Schedule(spec(3)))
            .then_expect_events(vec![scheduled(3)]);
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(JobCommand::Schedule(spec(3)))
            .then_expect_events(vec![]);
        let mut other = spec(3);
        other.step = ProvisioningStep::Mail;
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(JobCommand::Schedule(other))
            .then_expect_error(JobError::ScheduledDifferently);
        Tester::with(())
            .given_no_previous_events()
            .when(JobCommand::Schedule(spec(0)))
            .then_expect_error(JobError::NoAttemptsAllowed);
    }

    #[test]
    fn start_takes_a_lease_when_due() {
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(start(LEASE, 1))
            .then_expect_events(vec![started(1, LEASE, 1)]);
        let mut later = spec(3);
        later.due_at = at(50);
        Tester::with(())
            .given(vec![JobEvent::JobScheduled(later)])
            .when(start(LEASE, 1))
            .then_expect_error(JobError::NotDue(at(50)));
        Tester::with(())
            .given_no_previous_events()
            .when(start(LEASE, 1))
            .then_expect_error(JobError::NotScheduled);
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(JobCommand::Start {
                lease_id: LEASE,
                worker: "w".into(),
                lease_until: at(1),
                at: at(1),
            })
            .then_expect_error(JobError::EmptyLease);
    }

    #[test]
    fn a_held_lease_blocks_others_until_it_expires() {
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(start(OTHER_LEASE, 30))
            .then_expect_error(JobError::LeaseHeld(at(61)));
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(start(OTHER_LEASE, 61))
            .then_expect_events(vec![started(2, OTHER_LEASE, 61)]);
    }

    #[test]
    fn succeeds_only_under_the_current_lease() {
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(5),
            })
            .then_expect_events(vec![JobEvent::JobSucceeded {
                subscription_id: SUB,
                step: ProvisioningStep::Dns,
                action: JobAction::Provision,
                generation: 0,
                attempt: 1,
                outcome: outcome(),
                succeeded_at: at(5),
            }]);
        Tester::with(())
            .given(vec![
                scheduled(3),
                started(1, LEASE, 1),
                started(2, OTHER_LEASE, 61),
            ])
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(62),
            })
            .then_expect_error(JobError::StaleLease);
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(5),
            })
            .then_expect_error(JobError::StaleLease);
    }

    #[test]
    fn a_succeeded_job_cannot_start_succeed_or_retry_again() {
        let done = JobEvent::JobSucceeded {
            subscription_id: SUB,
            step: ProvisioningStep::Dns,
            action: JobAction::Provision,
            generation: 0,
            attempt: 1,
            outcome: outcome(),
            succeeded_at: at(5),
        };
        let history = vec![scheduled(3), started(1, LEASE, 1), done];
        Tester::with(())
            .given(history.clone())
            .when(start(OTHER_LEASE, 6))
            .then_expect_error(JobError::AlreadySucceeded);
        Tester::with(())
            .given(history.clone())
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(6),
            })
            .then_expect_error(JobError::AlreadySucceeded);
        Tester::with(())
            .given(history)
            .when(JobCommand::Retry {
                requested_by: "admin".into(),
                at: at(7),
            })
            .then_expect_error(JobError::AlreadySucceeded);
    }

    #[test]
    fn a_failed_attempt_waits_for_its_retry_time() {
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(fail(LEASE))
            .then_expect_events(vec![attempt_failed(1, true)]);
        Tester::with(())
            .given(vec![
                scheduled(3),
                started(1, LEASE, 1),
                attempt_failed(1, true),
            ])
            .when(start(OTHER_LEASE, 50))
            .then_expect_error(JobError::NotDue(at(100)));
        Tester::with(())
            .given(vec![
                scheduled(3),
                started(1, LEASE, 1),
                attempt_failed(1, true),
            ])
            .when(start(OTHER_LEASE, 100))
            .then_expect_events(vec![started(2, OTHER_LEASE, 100)]);
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(fail(OTHER_LEASE))
            .then_expect_error(JobError::StaleLease);
    }

    #[test]
    fn a_retry_time_in_the_past_is_clamped_to_now() {
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(JobCommand::FailAttempt {
                lease_id: LEASE,
                error: "x".into(),
                retry_at: at(-500),
                at: at(10),
            })
            .then_expect_events(vec![JobEvent::JobAttemptFailed {
                attempt: 1,
                error: "x".into(),
                failed_at: at(10),
                retry_at: Some(at(10)),
            }]);
    }

    #[test]
    fn the_last_attempt_dead_letters() {
        let dead = JobEvent::JobDeadLettered {
            subscription_id: SUB,
            step: ProvisioningStep::Dns,
            action: JobAction::Provision,
            generation: 0,
            series: 0,
            attempts: 2,
            last_error: "timeout".into(),
            dead_lettered_at: at(10),
        };
        Tester::with(())
            .given(vec![
                scheduled(2),
                started(1, LEASE, 1),
                attempt_failed(1, true),
                started(2, OTHER_LEASE, 100),
            ])
            .when(fail(OTHER_LEASE))
            .then_expect_events(vec![attempt_failed(2, false), dead.clone()]);
        Tester::with(())
            .given(vec![
                scheduled(1),
                started(1, LEASE, 1),
                attempt_failed(1, false),
                dead,
            ])
            .when(start(OTHER_LEASE, 200))
            .then_expect_error(JobError::DeadLettered);
    }

    #[test]
    fn an_operator_retry_starts_a_new_series() {
        let dead = JobEvent::JobDeadLettered {
            subscription_id: SUB,
            step: ProvisioningStep::Dns,
            action: JobAction::Provision,
            generation: 0,
            series: 0,
            attempts: 1,
            last_error: "timeout".into(),
            dead_lettered_at: at(10),
        };
        let retried = JobEvent::JobRetryRequested {
            series: 1,
            requested_by: "admin".into(),
            due_at: at(300),
        };
        let history = vec![
            scheduled(1),
            started(1, LEASE, 1),
            attempt_failed(1, false),
            dead,
        ];
        Tester::with(())
            .given(history.clone())
            .when(JobCommand::Retry {
                requested_by: "admin".into(),
                at: at(300),
            })
            .then_expect_events(vec![retried.clone()]);
        let mut after = history;
        after.push(retried);
        Tester::with(())
            .given(after)
            .when(start(OTHER_LEASE, 300))
            .then_expect_events(vec![started(1, OTHER_LEASE, 300)]);
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(JobCommand::Retry {
                requested_by: "admin".into(),
                at: at(5),
            })
            .then_expect_error(JobError::Running);
        Tester::with(())
            .given_no_previous_events()
            .when(JobCommand::Retry {
                requested_by: "admin".into(),
                at: at(5),
            })
            .then_expect_error(JobError::NotScheduled);
    }

    fn cancel(now: i64) -> JobCommand {
        JobCommand::Cancel {
            reason: "superseded by TERMINATE (generation 1)".into(),
            at: at(now),
        }
    }
    fn cancelled(while_running: bool, now: i64) -> JobEvent {
        JobEvent::JobCancelled {
            reason: "superseded by TERMINATE (generation 1)".into(),
            while_running,
            cancelled_at: at(now),
        }
    }

    #[test]
    fn a_cancelled_job_never_starts_nor_retries() {
        Tester::with(())
            .given(vec![scheduled(3)])
            .when(cancel(1))
            .then_expect_events(vec![cancelled(false, 1)]);
        Tester::with(())
            .given(vec![scheduled(3), cancelled(false, 1)])
            .when(start(LEASE, 2))
            .then_expect_error(JobError::Cancelled);
        Tester::with(())
            .given(vec![scheduled(3), cancelled(false, 1)])
            .when(JobCommand::Retry {
                requested_by: "ops".into(),
                at: at(3),
            })
            .then_expect_error(JobError::Cancelled);
        Tester::with(())
            .given(vec![scheduled(3), cancelled(false, 1)])
            .when(cancel(4))
            .then_expect_events(vec![]);
        let mut job = Job::default();
        job.apply(scheduled(3));
        job.apply(cancelled(false, 1));
        assert_eq!(job.status(), Some(JobStatus::Cancelled));
    }

    #[test]
    fn a_running_attempt_that_is_cancelled_records_its_outcome_but_is_not_retried() {
        let given = vec![scheduled(3), started(1, LEASE, 1), cancelled(true, 2)];
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(cancel(2))
            .then_expect_events(vec![cancelled(true, 2)]);
        Tester::with(())
            .given(given.clone())
            .when(fail(LEASE))
            .then_expect_events(vec![attempt_failed(1, false)]);
        let mut job = Job::default();
        for e in given.clone() {
            job.apply(e);
        }
        assert_eq!(job.status(), Some(JobStatus::Running));
        job.apply(attempt_failed(1, false));
        assert_eq!(job.status(), Some(JobStatus::Cancelled));
        Tester::with(())
            .given(given)
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(5),
            })
            .then_expect_events(vec![JobEvent::JobSucceeded {
                subscription_id: SUB,
                step: ProvisioningStep::Dns,
                action: JobAction::Provision,
                generation: 0,
                attempt: 1,
                outcome: outcome(),
                succeeded_at: at(5),
            }]);
    }

    #[test]
    fn cancelling_a_succeeded_job_is_a_no_op_and_an_expired_lease_is_not_running() {
        Tester::with(())
            .given(vec![
                scheduled(3),
                started(1, LEASE, 1),
                JobEvent::JobSucceeded {
                    subscription_id: SUB,
                    step: ProvisioningStep::Dns,
                    action: JobAction::Provision,
                    generation: 0,
                    attempt: 1,
                    outcome: outcome(),
                    succeeded_at: at(2),
                },
            ])
            .when(cancel(3))
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![scheduled(3), started(1, LEASE, 1)])
            .when(cancel(500))
            .then_expect_events(vec![cancelled(false, 500)]);
    }

    #[test]
    fn a_lifecycle_job_reports_its_action_and_generation() {
        let terminate = ScheduleJob {
            action: JobAction::Terminate,
            generation: 2,
            ..spec(3)
        };
        Tester::with(())
            .given(vec![
                JobEvent::JobScheduled(terminate.clone()),
                started(1, LEASE, 1),
            ])
            .when(JobCommand::Succeed {
                lease_id: LEASE,
                outcome: outcome(),
                at: at(5),
            })
            .then_expect_events(vec![JobEvent::JobSucceeded {
                subscription_id: SUB,
                step: ProvisioningStep::Dns,
                action: JobAction::Terminate,
                generation: 2,
                attempt: 1,
                outcome: outcome(),
                succeeded_at: at(5),
            }]);
        Tester::with(())
            .given(vec![JobEvent::JobScheduled(terminate)])
            .when(JobCommand::Schedule(spec(3)))
            .then_expect_error(JobError::ScheduledDifferently);
    }

    #[test]
    fn events_of_provisioning_jobs_keep_their_stored_shape() {
        let json = serde_json::to_value(scheduled(3)).expect("json");
        assert!(json["JobScheduled"].get("action").is_none());
        assert!(json["JobScheduled"].get("generation").is_none());
        let old: JobEvent = serde_json::from_value(json).expect("read back");
        assert_eq!(old, scheduled(3));
        let terminate = JobEvent::JobScheduled(ScheduleJob {
            action: JobAction::Terminate,
            generation: 1,
            ..spec(3)
        });
        let json = serde_json::to_value(&terminate).expect("json");
        assert_eq!(json["JobScheduled"]["action"], "TERMINATE");
        assert_eq!(json["JobScheduled"]["generation"], 1);
    }

    #[test]
    fn a_lease_taken_with_a_clock_far_ahead_can_be_taken_over() {
        let skewed = JobEvent::JobStarted {
            attempt: 1,
            lease_id: LEASE,
            worker: "ahead".into(),
            started_at: at(1_000_000),
            lease_expires_at: at(1_000_060),
        };
        Tester::with(())
            .given(vec![scheduled(3), skewed])
            .when(start(OTHER_LEASE, 5))
            .then_expect_events(vec![started(2, OTHER_LEASE, 5)]);
        // A lease within twice a fresh one is honoured, even if a little long.
        let long = JobEvent::JobStarted {
            attempt: 1,
            lease_id: LEASE,
            worker: "slow".into(),
            started_at: at(1),
            lease_expires_at: at(5 + 100),
        };
        Tester::with(())
            .given(vec![scheduled(3), long])
            .when(start(OTHER_LEASE, 5))
            .then_expect_error(JobError::LeaseHeld(at(105)));
    }
}
