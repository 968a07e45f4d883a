//! The Subscription aggregate: what an order bought, and whether it is really provisioned.
//!
//! The invariant of mpanel lives here: a subscription emits [`SubscriptionEvent::SubscriptionActivated`]
//! only from the command that records the success of the last required step. Recording a step
//! twice is a no-op, and nothing sets the status before the work ran.
//!
//! The same rule holds for the lifecycle (suspend, unsuspend, terminate, re-provision): each is
//! an *operation* with a generation number (the order's own provisioning is generation 0, every
//! operation after it takes the next one) and a set of steps whose jobs the saga schedules. The
//! status moves to the operation's in-progress state (SUSPENDING, …) when it is asked for and to
//! its end state (SUSPENDED, …) only when the last of its steps is confirmed. Outcomes of an
//! older generation's jobs are ignored, so a job finishing late cannot undo a newer operation.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{is_first_generation, JobAction};
use crate::step::{normalise_plan, ProvisioningStep};
use crate::values::DomainName;

/// A subscription's status, reflecting confirmed outcomes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    /// Opened; not every required step has succeeded yet.
    Inactive,
    /// A provisioning step (of the order or of a re-provisioning) was dead-lettered; visible
    /// and retryable.
    ProvisioningFailed,
    /// Every required step succeeded.
    Active,
    /// Suspension asked for; not every step has confirmed it yet.
    Suspending,
    /// Out of service (site placeholder, mail login refused), data kept.
    Suspended,
    /// Unsuspension asked for; not every step has confirmed it yet.
    Unsuspending,
    /// Termination asked for; not every step has confirmed the removal yet.
    Terminating,
    /// Everything removed (data archived). Final.
    Terminated,
    /// Re-provisioning asked for; the converging create steps are running again.
    Reprovisioning,
}

impl SubscriptionStatus {
    /// The status while a lifecycle operation doing `action` waits for its steps.
    #[must_use]
    pub fn in_progress(action: JobAction) -> Self {
        match action {
            JobAction::Suspend => Self::Suspending,
            JobAction::Unsuspend => Self::Unsuspending,
            JobAction::Terminate => Self::Terminating,
            JobAction::Provision => Self::Reprovisioning,
        }
    }

    /// The stable name used in the API and read models.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "INACTIVE",
            Self::ProvisioningFailed => "PROVISIONING_FAILED",
            Self::Active => "ACTIVE",
            Self::Suspending => "SUSPENDING",
            Self::Suspended => "SUSPENDED",
            Self::Unsuspending => "UNSUSPENDING",
            Self::Terminating => "TERMINATING",
            Self::Terminated => "TERMINATED",
            Self::Reprovisioning => "REPROVISIONING",
        }
    }
}

/// Commands on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionCommand {
    /// Opens the subscription for an order (idempotent).
    Open {
        /// The order that bought it.
        order_id: Uuid,
        /// The tenant.
        tenant_id: Uuid,
        /// The customer.
        customer_id: Uuid,
        /// The domain the services are for.
        domain: Option<DomainName>,
        /// The steps the plan requires.
        steps: Vec<ProvisioningStep>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Records that a step's job succeeded (idempotent).
    RecordStepSucceeded {
        /// The step.
        step: ProvisioningStep,
        /// The job that did it.
        job_id: Uuid,
        /// The operation the job belongs to (a stale generation is ignored).
        generation: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// Records that a step's job was dead-lettered (idempotent per job attempt series).
    RecordStepFailed {
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// The operation the job belongs to (a stale generation is ignored).
        generation: u32,
        /// The job's attempt series that failed (0 for the first; operator retries add one).
        series: u32,
        /// The last error, for whoever looks at the subscription.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Takes the services out of service, keeping data (non-payment, abuse).
    Suspend {
        /// Why (required; recorded for the customer's file).
        reason: String,
        /// Who asked.
        requested_by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Puts suspended services back in service.
    Unsuspend {
        /// Who asked.
        requested_by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Removes everything (zone deleted, web root and Maildir archived). Also used for an order
    /// cancelled before its provisioning finished.
    Terminate {
        /// Why (required).
        reason: String,
        /// Who asked.
        requested_by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Runs the converging create steps again (repairs drift on the servers).
    Reprovision {
        /// Who asked.
        requested_by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What every lifecycle request records: enough for the saga to schedule the operation's jobs
/// and cancel the superseded ones without reading anything else, and for an auditor to see who
/// asked for what and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRequest {
    /// The operation's generation (the previous operation's plus one).
    pub generation: u32,
    /// The steps whose jobs must confirm the operation, sorted (may be empty).
    pub steps: Vec<ProvisioningStep>,
    /// Steps of the previous operation not confirmed yet: their jobs (of `generation - 1`) are
    /// cancelled.
    pub superseded_steps: Vec<ProvisioningStep>,
    /// The order (correlation for the jobs).
    pub order_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The domain the jobs act on.
    pub domain: Option<DomainName>,
    /// Why (suspend and terminate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asked (a user id, or the process that decided it).
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
}

/// Events of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubscriptionEvent {
    /// The subscription exists, INACTIVE, with the steps that must succeed.
    #[serde(rename_all = "camelCase")]
    SubscriptionOpened {
        /// The order.
        order_id: Uuid,
        /// The tenant.
        tenant_id: Uuid,
        /// The customer.
        customer_id: Uuid,
        /// The domain.
        domain: Option<DomainName>,
        /// Steps required before activation, sorted.
        required_steps: Vec<ProvisioningStep>,
        /// When.
        opened_at: DateTime<Utc>,
    },
    /// One required step was confirmed done.
    #[serde(rename_all = "camelCase")]
    ProvisioningStepSucceeded {
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// When.
        succeeded_at: DateTime<Utc>,
    },
    /// A step's job gave up; the subscription is PROVISIONING_FAILED until a retry succeeds.
    #[serde(rename_all = "camelCase")]
    ProvisioningFailed {
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// The job's attempt series.
        series: u32,
        /// The job's last error.
        error: String,
        /// When.
        failed_at: DateTime<Utc>,
    },
    /// Every required step succeeded: the customer has what they paid for.
    #[serde(rename_all = "camelCase")]
    SubscriptionActivated {
        /// The order to mark fulfilled.
        order_id: Uuid,
        /// When.
        activated_at: DateTime<Utc>,
    },
    /// Suspension asked for: SUSPENDING.
    SubscriptionSuspensionRequested(OperationRequest),
    /// Unsuspension asked for: UNSUSPENDING.
    SubscriptionUnsuspensionRequested(OperationRequest),
    /// Termination asked for: TERMINATING.
    SubscriptionTerminationRequested(OperationRequest),
    /// Re-provisioning asked for: REPROVISIONING.
    SubscriptionReprovisioningRequested(OperationRequest),
    /// One step of a lifecycle operation (generation ≥ 1) was confirmed on its server.
    #[serde(rename_all = "camelCase")]
    OperationStepSucceeded {
        /// The operation.
        action: JobAction,
        /// Its generation.
        generation: u32,
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// When.
        succeeded_at: DateTime<Utc>,
    },
    /// A lifecycle operation's job gave up. A failed re-provisioning makes the subscription
    /// PROVISIONING_FAILED; the other operations stay in their in-progress state with the
    /// failed step shown, until a job retry or a repeat of the operation succeeds.
    #[serde(rename_all = "camelCase")]
    OperationStepFailed {
        /// The operation.
        action: JobAction,
        /// Its generation.
        generation: u32,
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// The job's attempt series.
        series: u32,
        /// The job's last error.
        error: String,
        /// When.
        failed_at: DateTime<Utc>,
    },
    /// Every step confirmed the suspension: SUSPENDED.
    #[serde(rename_all = "camelCase")]
    SubscriptionSuspended {
        /// The operation.
        generation: u32,
        /// When.
        suspended_at: DateTime<Utc>,
    },
    /// Every step confirmed the unsuspension: ACTIVE again.
    #[serde(rename_all = "camelCase")]
    SubscriptionUnsuspended {
        /// The operation.
        generation: u32,
        /// When.
        unsuspended_at: DateTime<Utc>,
    },
    /// Every step confirmed the removal: TERMINATED.
    #[serde(rename_all = "camelCase")]
    SubscriptionTerminated {
        /// The operation.
        generation: u32,
        /// When.
        terminated_at: DateTime<Utc>,
    },
    /// Every create step converged again: ACTIVE.
    #[serde(rename_all = "camelCase")]
    SubscriptionReprovisioned {
        /// The operation.
        generation: u32,
        /// When.
        reprovisioned_at: DateTime<Utc>,
    },
}

impl SubscriptionEvent {
    /// The event that records a request for `action` (the inverse of
    /// [`SubscriptionEvent::operation_request`]).
    #[must_use]
    pub fn requested(action: JobAction, request: OperationRequest) -> Self {
        match action {
            JobAction::Suspend => Self::SubscriptionSuspensionRequested(request),
            JobAction::Unsuspend => Self::SubscriptionUnsuspensionRequested(request),
            JobAction::Terminate => Self::SubscriptionTerminationRequested(request),
            JobAction::Provision => Self::SubscriptionReprovisioningRequested(request),
        }
    }

    /// The lifecycle request this event records, with its action, if it is one.
    #[must_use]
    pub fn operation_request(&self) -> Option<(JobAction, &OperationRequest)> {
        match self {
            Self::SubscriptionSuspensionRequested(r) => Some((JobAction::Suspend, r)),
            Self::SubscriptionUnsuspensionRequested(r) => Some((JobAction::Unsuspend, r)),
            Self::SubscriptionTerminationRequested(r) => Some((JobAction::Terminate, r)),
            Self::SubscriptionReprovisioningRequested(r) => Some((JobAction::Provision, r)),
            _ => None,
        }
    }
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SubscriptionOpened { .. } => "SubscriptionOpened",
            Self::ProvisioningStepSucceeded { .. } => "ProvisioningStepSucceeded",
            Self::ProvisioningFailed { .. } => "ProvisioningFailed",
            Self::SubscriptionActivated { .. } => "SubscriptionActivated",
            Self::SubscriptionSuspensionRequested(_) => "SubscriptionSuspensionRequested",
            Self::SubscriptionUnsuspensionRequested(_) => "SubscriptionUnsuspensionRequested",
            Self::SubscriptionTerminationRequested(_) => "SubscriptionTerminationRequested",
            Self::SubscriptionReprovisioningRequested(_) => "SubscriptionReprovisioningRequested",
            Self::OperationStepSucceeded { .. } => "OperationStepSucceeded",
            Self::OperationStepFailed { .. } => "OperationStepFailed",
            Self::SubscriptionSuspended { .. } => "SubscriptionSuspended",
            Self::SubscriptionUnsuspended { .. } => "SubscriptionUnsuspended",
            Self::SubscriptionTerminated { .. } => "SubscriptionTerminated",
            Self::SubscriptionReprovisioned { .. } => "SubscriptionReprovisioned",
        }
        .into()
    }
    fn event_version(&self) -> String {
        crate::EVENT_VERSION_1.into()
    }
}

/// Why a subscription command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscription was not opened.
    #[error("subscription not found")]
    NotOpened,
    /// The id is taken by a subscription for another order.
    #[error("subscription already opened for another order")]
    OpenedForAnotherOrder,
    /// The step is not part of this subscription's plan.
    #[error("step {0} is not required by this subscription")]
    StepNotRequired(ProvisioningStep),
    /// Suspend and terminate need a reason for the customer's file.
    #[error("a reason is required")]
    ReasonRequired,
    /// The operation makes no sense from the current status (e.g. suspending a terminated
    /// subscription, re-provisioning while the first provisioning still runs).
    #[error("cannot {operation} a subscription that is {}", status.as_str())]
    NotAllowed {
        /// `suspend`, `unsuspend`, `terminate` or `reprovision`.
        operation: &'static str,
        /// Where the subscription is.
        status: SubscriptionStatus,
    },
}

/// The operation in progress (or last completed): what it does, its generation, and the steps
/// that must confirm it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Operation {
    action: JobAction,
    #[serde(default, skip_serializing_if = "is_first_generation")]
    generation: u32,
    steps: BTreeSet<ProvisioningStep>,
    done: BTreeSet<ProvisioningStep>,
    failed: bool,
}

impl Operation {
    fn pending(&self) -> Vec<ProvisioningStep> {
        self.steps.difference(&self.done).copied().collect()
    }
}

/// The subscription's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    order_id: Option<Uuid>,
    status: Option<SubscriptionStatus>,
    required: BTreeSet<ProvisioningStep>,
    failures_seen: BTreeSet<(Uuid, u32)>,
    #[serde(default)]
    operation: Operation,
    /// What views of the subscription show; no decision depends on it.
    #[serde(default)]
    details: SubscriptionDetails,
}

/// The facts of a subscription that only views need (who, what, when, the last failure), kept
/// beside the decision state so a subscription can be shown as of any point of its history.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDetails {
    /// The tenant.
    pub tenant_id: Option<Uuid>,
    /// The customer.
    pub customer_id: Option<Uuid>,
    /// The domain.
    pub domain: Option<DomainName>,
    /// Required steps that succeeded in the order's provisioning, in the order they did.
    pub succeeded_in_order: Vec<ProvisioningStep>,
    /// The step whose job gave up, until its operation completes.
    pub failed_step: Option<ProvisioningStep>,
    /// That job's last error (kept after activation, as the read model does).
    pub last_error: Option<String>,
    /// The reason given for the latest suspension or termination.
    pub status_reason: Option<String>,
    /// Who asked for the latest lifecycle operation.
    pub status_changed_by: Option<String>,
    /// When it was opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// When it became active.
    pub activated_at: Option<DateTime<Utc>>,
    /// The time of its latest event.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Subscription {
    /// The status, `None` before opening.
    #[must_use]
    pub fn status(&self) -> Option<SubscriptionStatus> {
        self.status
    }

    /// The order that bought it, `None` before opening.
    #[must_use]
    pub fn order_id(&self) -> Option<Uuid> {
        self.order_id
    }

    /// The steps required before activation, sorted.
    #[must_use]
    pub fn required_steps(&self) -> Vec<ProvisioningStep> {
        self.required.iter().copied().collect()
    }

    /// The current (or last) operation: its action and generation.
    #[must_use]
    pub fn operation(&self) -> (JobAction, u32) {
        (self.operation.action, self.operation.generation)
    }

    /// Steps of the current operation not confirmed yet, sorted.
    #[must_use]
    pub fn pending_steps(&self) -> Vec<ProvisioningStep> {
        self.operation.pending()
    }

    /// Who, what, when and the last failure, for views.
    #[must_use]
    pub fn details(&self) -> &SubscriptionDetails {
        &self.details
    }

    fn opened_status(&self) -> Result<SubscriptionStatus, SubscriptionError> {
        self.status.ok_or(SubscriptionError::NotOpened)
    }

    /// Checks a step outcome's operation: `Ok(false)` when it is of an older generation (ignored).
    fn current_step(
        &self,
        step: ProvisioningStep,
        generation: u32,
    ) -> Result<bool, SubscriptionError> {
        self.opened_status()?;
        if generation != self.operation.generation {
            return Ok(false);
        }
        if !self.operation.steps.contains(&step) {
            return Err(SubscriptionError::StepNotRequired(step));
        }
        Ok(true)
    }

    /// The event that starts `action` as the next generation, and with no step to wait for,
    /// the event that completes it at once.
    fn start(
        &self,
        action: JobAction,
        reason: Option<String>,
        requested_by: String,
        at: DateTime<Utc>,
    ) -> Vec<SubscriptionEvent> {
        let generation = self.operation.generation + 1;
        let request = OperationRequest {
            generation,
            steps: self
                .required
                .iter()
                .copied()
                .filter(|s| action.applies_to(*s))
                .collect(),
            superseded_steps: self.operation.pending(),
            order_id: self.order_id.unwrap_or_default(),
            tenant_id: self.details.tenant_id.unwrap_or_default(),
            domain: self.details.domain.clone(),
            reason,
            requested_by,
            requested_at: at,
        };
        let nothing_to_do = request.steps.is_empty();
        let mut events = vec![SubscriptionEvent::requested(action, request)];
        if nothing_to_do {
            events.push(completed(action, generation, at));
        }
        events
    }

    fn decide(
        &self,
        command: SubscriptionCommand,
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        use SubscriptionStatus as S;
        match command {
            SubscriptionCommand::Open {
                order_id,
                tenant_id,
                customer_id,
                domain,
                steps,
                at,
            } => {
                if let Some(existing) = self.order_id {
                    return if existing == order_id {
                        Ok(vec![])
                    } else {
                        Err(SubscriptionError::OpenedForAnotherOrder)
                    };
                }
                let required_steps = normalise_plan(&steps);
                let nothing_to_do = required_steps.is_empty();
                let mut events = vec![SubscriptionEvent::SubscriptionOpened {
                    order_id,
                    tenant_id,
                    customer_id,
                    domain,
                    required_steps,
                    opened_at: at,
                }];
                if nothing_to_do {
                    events.push(SubscriptionEvent::SubscriptionActivated {
                        order_id,
                        activated_at: at,
                    });
                }
                Ok(events)
            }
            SubscriptionCommand::RecordStepSucceeded {
                step,
                job_id,
                generation,
                at,
            } => {
                if !self.current_step(step, generation)? || self.operation.done.contains(&step) {
                    return Ok(vec![]);
                }
                let action = self.operation.action;
                let mut events = vec![if generation == 0 {
                    SubscriptionEvent::ProvisioningStepSucceeded {
                        step,
                        job_id,
                        succeeded_at: at,
                    }
                } else {
                    SubscriptionEvent::OperationStepSucceeded {
                        action,
                        generation,
                        step,
                        job_id,
                        succeeded_at: at,
                    }
                }];
                let all_done = self
                    .operation
                    .steps
                    .iter()
                    .all(|s| *s == step || self.operation.done.contains(s));
                if all_done {
                    if generation == 0 {
                        if let Some(order_id) = self.order_id {
                            events.push(SubscriptionEvent::SubscriptionActivated {
                                order_id,
                                activated_at: at,
                            });
                        }
                    } else {
                        events.push(completed(action, generation, at));
                    }
                }
                Ok(events)
            }
            SubscriptionCommand::RecordStepFailed {
                step,
                job_id,
                generation,
                series,
                error,
                at,
            } => {
                if !self.current_step(step, generation)?
                    || self.operation.done.contains(&step)
                    || self.failures_seen.contains(&(job_id, series))
                {
                    return Ok(vec![]);
                }
                Ok(vec![if generation == 0 {
                    SubscriptionEvent::ProvisioningFailed {
                        step,
                        job_id,
                        series,
                        error,
                        failed_at: at,
                    }
                } else {
                    SubscriptionEvent::OperationStepFailed {
                        action: self.operation.action,
                        generation,
                        step,
                        job_id,
                        series,
                        error,
                        failed_at: at,
                    }
                }])
            }
            SubscriptionCommand::Suspend {
                reason,
                requested_by,
                at,
            } => {
                let reason = required_reason(reason)?;
                match self.opened_status()? {
                    S::Active | S::Unsuspending => {
                        Ok(self.start(JobAction::Suspend, Some(reason), requested_by, at))
                    }
                    S::Suspending if self.operation.failed => {
                        Ok(self.start(JobAction::Suspend, Some(reason), requested_by, at))
                    }
                    S::Suspending | S::Suspended => Ok(vec![]),
                    status => Err(not_allowed("suspend", status)),
                }
            }
            SubscriptionCommand::Unsuspend { requested_by, at } => match self.opened_status()? {
                S::Suspended | S::Suspending => {
                    Ok(self.start(JobAction::Unsuspend, None, requested_by, at))
                }
                S::Unsuspending if self.operation.failed => {
                    Ok(self.start(JobAction::Unsuspend, None, requested_by, at))
                }
                S::Unsuspending | S::Active => Ok(vec![]),
                status => Err(not_allowed("unsuspend", status)),
            },
            SubscriptionCommand::Terminate {
                reason,
                requested_by,
                at,
            } => {
                let reason = required_reason(reason)?;
                match self.opened_status()? {
                    S::Terminated => Ok(vec![]),
                    S::Terminating if !self.operation.failed => Ok(vec![]),
                    _ => Ok(self.start(JobAction::Terminate, Some(reason), requested_by, at)),
                }
            }
            SubscriptionCommand::Reprovision { requested_by, at } => match self.opened_status()? {
                S::Active | S::ProvisioningFailed => {
                    Ok(self.start(JobAction::Provision, None, requested_by, at))
                }
                S::Reprovisioning => Ok(vec![]),
                status => Err(not_allowed("reprovision", status)),
            },
        }
    }

    fn begin(&mut self, action: JobAction, request: OperationRequest) {
        self.operation = Operation {
            action,
            generation: request.generation,
            steps: request.steps.into_iter().collect(),
            done: BTreeSet::new(),
            failed: false,
        };
        self.status = Some(SubscriptionStatus::in_progress(action));
        let d = &mut self.details;
        d.failed_step = None;
        if request.reason.is_some() {
            d.status_reason = request.reason;
        }
        d.status_changed_by = Some(request.requested_by);
        d.updated_at = Some(request.requested_at);
    }

    fn finish(&mut self, status: SubscriptionStatus, at: DateTime<Utc>) {
        self.status = Some(status);
        self.details.failed_step = None;
        self.details.updated_at = Some(at);
    }

    fn step_failed(
        &mut self,
        step: ProvisioningStep,
        job_id: Uuid,
        series: u32,
        error: String,
        at: DateTime<Utc>,
    ) {
        self.failures_seen.insert((job_id, series));
        self.operation.failed = true;
        let d = &mut self.details;
        d.failed_step = Some(step);
        d.last_error = Some(error);
        d.updated_at = Some(at);
    }
}

/// The event that completes `action` (generation ≥ 1).
fn completed(action: JobAction, generation: u32, at: DateTime<Utc>) -> SubscriptionEvent {
    match action {
        JobAction::Suspend => SubscriptionEvent::SubscriptionSuspended {
            generation,
            suspended_at: at,
        },
        JobAction::Unsuspend => SubscriptionEvent::SubscriptionUnsuspended {
            generation,
            unsuspended_at: at,
        },
        JobAction::Terminate => SubscriptionEvent::SubscriptionTerminated {
            generation,
            terminated_at: at,
        },
        JobAction::Provision => SubscriptionEvent::SubscriptionReprovisioned {
            generation,
            reprovisioned_at: at,
        },
    }
}

fn required_reason(reason: String) -> Result<String, SubscriptionError> {
    let reason = reason.trim();
    if reason.is_empty() {
        Err(SubscriptionError::ReasonRequired)
    } else {
        Ok(reason.to_owned())
    }
}

fn not_allowed(operation: &'static str, status: SubscriptionStatus) -> SubscriptionError {
    SubscriptionError::NotAllowed { operation, status }
}

impl Aggregate for Subscription {
    const TYPE: &'static str = "Subscription";
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type Error = SubscriptionError;
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
            SubscriptionEvent::SubscriptionOpened {
                order_id,
                tenant_id,
                customer_id,
                domain,
                required_steps,
                opened_at,
            } => {
                self.order_id = Some(order_id);
                self.required = required_steps.into_iter().collect();
                self.operation = Operation {
                    steps: self.required.clone(),
                    ..Operation::default()
                };
                self.status = Some(SubscriptionStatus::Inactive);
                let d = &mut self.details;
                d.tenant_id = Some(tenant_id);
                d.customer_id = Some(customer_id);
                d.domain = domain;
                d.opened_at = Some(opened_at);
                d.updated_at = Some(opened_at);
            }
            SubscriptionEvent::ProvisioningStepSucceeded {
                step, succeeded_at, ..
            } => {
                if self.operation.done.insert(step) {
                    self.details.succeeded_in_order.push(step);
                }
                self.details.updated_at = Some(succeeded_at);
            }
            SubscriptionEvent::OperationStepSucceeded {
                step, succeeded_at, ..
            } => {
                self.operation.done.insert(step);
                self.details.updated_at = Some(succeeded_at);
            }
            SubscriptionEvent::ProvisioningFailed {
                step,
                job_id,
                series,
                error,
                failed_at,
            } => {
                self.step_failed(step, job_id, series, error, failed_at);
                self.status = Some(SubscriptionStatus::ProvisioningFailed);
            }
            SubscriptionEvent::OperationStepFailed {
                action,
                step,
                job_id,
                series,
                error,
                failed_at,
                ..
            } => {
                self.step_failed(step, job_id, series, error, failed_at);
                if action == JobAction::Provision {
                    self.status = Some(SubscriptionStatus::ProvisioningFailed);
                }
            }
            SubscriptionEvent::SubscriptionActivated { activated_at, .. } => {
                self.finish(SubscriptionStatus::Active, activated_at);
                self.details.activated_at = Some(activated_at);
            }
            SubscriptionEvent::SubscriptionSuspensionRequested(r) => {
                self.begin(JobAction::Suspend, r);
            }
            SubscriptionEvent::SubscriptionUnsuspensionRequested(r) => {
                self.begin(JobAction::Unsuspend, r);
            }
            SubscriptionEvent::SubscriptionTerminationRequested(r) => {
                self.begin(JobAction::Terminate, r);
            }
            SubscriptionEvent::SubscriptionReprovisioningRequested(r) => {
                self.begin(JobAction::Provision, r);
            }
            SubscriptionEvent::SubscriptionSuspended { suspended_at, .. } => {
                self.finish(SubscriptionStatus::Suspended, suspended_at);
            }
            SubscriptionEvent::SubscriptionUnsuspended { unsuspended_at, .. } => {
                self.finish(SubscriptionStatus::Active, unsuspended_at);
            }
            SubscriptionEvent::SubscriptionTerminated { terminated_at, .. } => {
                self.finish(SubscriptionStatus::Terminated, terminated_at);
            }
            SubscriptionEvent::SubscriptionReprovisioned {
                reprovisioned_at, ..
            } => {
                self.finish(SubscriptionStatus::Active, reprovisioned_at);
            }
        }
    }
}

#[cfg(test)]
#[path = "subscription_lifecycle_tests.rs"]
mod lifecycle_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::ProvisioningStep::{Dns, Hosting, Mail};
    use super::*;
    use crate::order::tests::at;
    use cqrs_es::test::TestFramework;

    pub(super) type Tester = TestFramework<Subscription>;

    pub(super) const ORDER: Uuid = Uuid::from_u128(10);

    pub(super) fn job(step: ProvisioningStep) -> Uuid {
        Uuid::from_u128(100 + step as u128)
    }

    pub(super) fn open(steps: &[ProvisioningStep]) -> SubscriptionCommand {
        SubscriptionCommand::Open {
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            domain: Some(DomainName::parse("example.com").expect("valid")),
            steps: steps.to_vec(),
            at: at(0),
        }
    }

    pub(super) fn opened(steps: &[ProvisioningStep]) -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionOpened {
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            domain: Some(DomainName::parse("example.com").expect("valid")),
            required_steps: normalise_plan(steps),
            opened_at: at(0),
        }
    }

    pub(super) fn succeed(step: ProvisioningStep) -> SubscriptionCommand {
        SubscriptionCommand::RecordStepSucceeded {
            step,
            job_id: job(step),
            generation: 0,
            at: at(1),
        }
    }

    pub(super) fn step_succeeded(step: ProvisioningStep) -> SubscriptionEvent {
        SubscriptionEvent::ProvisioningStepSucceeded {
            step,
            job_id: job(step),
            succeeded_at: at(1),
        }
    }

    pub(super) fn activated() -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionActivated {
            order_id: ORDER,
            activated_at: at(1),
        }
    }

    #[test]
    fn the_fold_keeps_what_views_show_as_of_each_event() {
        let mut s = Subscription::default();
        s.apply(opened(&[Dns, Hosting]));
        assert_eq!(s.status(), Some(SubscriptionStatus::Inactive));
        assert_eq!(s.details().opened_at, Some(at(0)));
        assert_eq!(s.details().tenant_id, Some(Uuid::from_u128(1)));
        s.apply(step_succeeded(Hosting));
        s.apply(SubscriptionEvent::ProvisioningFailed {
            step: Dns,
            job_id: job(Dns),
            series: 0,
            error: "zone refused".into(),
            failed_at: at(2),
        });
        assert_eq!(s.details().failed_step, Some(Dns));
        assert_eq!(s.details().last_error.as_deref(), Some("zone refused"));
        s.apply(step_succeeded(Dns));
        s.apply(SubscriptionEvent::SubscriptionActivated {
            order_id: ORDER,
            activated_at: at(3),
        });
        let d = s.details();
        assert_eq!(s.status(), Some(SubscriptionStatus::Active));
        assert_eq!(d.succeeded_in_order, vec![Hosting, Dns]);
        assert_eq!(d.failed_step, None, "activation clears the failed step");
        assert_eq!(d.last_error.as_deref(), Some("zone refused"));
        assert_eq!((d.activated_at, d.updated_at), (Some(at(3)), Some(at(3))));
        assert_eq!(s.required_steps(), vec![Dns, Hosting]);
        assert_eq!(s.order_id(), Some(ORDER));
    }

    fn fail(step: ProvisioningStep, series: u32) -> SubscriptionCommand {
        SubscriptionCommand::RecordStepFailed {
            step,
            job_id: job(step),
            generation: 0,
            series,
            error: "connection refused".into(),
            at: at(2),
        }
    }

    fn failed(step: ProvisioningStep, series: u32) -> SubscriptionEvent {
        SubscriptionEvent::ProvisioningFailed {
            step,
            job_id: job(step),
            series,
            error: "connection refused".into(),
            failed_at: at(2),
        }
    }

    #[test]
    fn opens_inactive_with_a_normalised_plan() {
        Tester::with(())
            .given_no_previous_events()
            .when(open(&[Mail, Dns, Hosting, Dns]))
            .then_expect_events(vec![opened(&[Dns, Hosting, Mail])]);
    }

    #[test]
    fn opening_again_is_a_no_op_but_not_for_another_order() {
        Tester::with(())
            .given(vec![opened(&[Dns])])
            .when(open(&[Dns]))
            .then_expect_events(vec![]);
        let SubscriptionCommand::Open {
            tenant_id,
            customer_id,
            domain,
            steps,
            at,
            ..
        } = open(&[Dns])
        else {
            unreachable!()
        };
        Tester::with(())
            .given(vec![opened(&[Dns])])
            .when(SubscriptionCommand::Open {
                order_id: Uuid::from_u128(11),
                tenant_id,
                customer_id,
                domain,
                steps,
                at,
            })
            .then_expect_error(SubscriptionError::OpenedForAnotherOrder);
    }

    #[test]
    fn a_plan_without_steps_is_active_at_once() {
        Tester::with(())
            .given_no_previous_events()
            .when(open(&[]))
            .then_expect_events(vec![
                opened(&[]),
                SubscriptionEvent::SubscriptionActivated {
                    order_id: ORDER,
                    activated_at: at(0),
                },
            ]);
    }

    #[test]
    fn a_step_that_is_not_the_last_does_not_activate() {
        Tester::with(())
            .given(vec![opened(&[Dns, Hosting, Mail])])
            .when(succeed(Dns))
            .then_expect_events(vec![step_succeeded(Dns)]);
    }

    #[test]
    fn last_step_activates_subscription() {
        Tester::with(())
            .given(vec![
                opened(&[Dns, Hosting, Mail]),
                step_succeeded(Dns),
                step_succeeded(Mail),
            ])
            .when(succeed(Hosting))
            .then_expect_events(vec![step_succeeded(Hosting), activated()]);
    }

    #[test]
    fn recording_a_step_twice_is_a_no_op() {
        Tester::with(())
            .given(vec![opened(&[Dns, Hosting]), step_succeeded(Dns)])
            .when(succeed(Dns))
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![opened(&[Dns]), step_succeeded(Dns), activated()])
            .when(succeed(Dns))
            .then_expect_events(vec![]);
    }

    #[test]
    fn steps_outside_the_plan_and_unopened_subscriptions_are_refused() {
        Tester::with(())
            .given(vec![opened(&[Dns])])
            .when(succeed(Mail))
            .then_expect_error(SubscriptionError::StepNotRequired(Mail));
        Tester::with(())
            .given_no_previous_events()
            .when(succeed(Dns))
            .then_expect_error(SubscriptionError::NotOpened);
        Tester::with(())
            .given_no_previous_events()
            .when(fail(Dns, 0))
            .then_expect_error(SubscriptionError::NotOpened);
        Tester::with(())
            .given(vec![opened(&[Dns])])
            .when(fail(Mail, 0))
            .then_expect_error(SubscriptionError::StepNotRequired(Mail));
    }

    #[test]
    fn a_dead_lettered_step_fails_the_subscription_once_per_series() {
        Tester::with(())
            .given(vec![opened(&[Dns, Mail])])
            .when(fail(Mail, 0))
            .then_expect_events(vec![failed(Mail, 0)]);
        Tester::with(())
            .given(vec![opened(&[Dns, Mail]), failed(Mail, 0)])
            .when(fail(Mail, 0))
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![opened(&[Dns, Mail]), failed(Mail, 0)])
            .when(fail(Mail, 1))
            .then_expect_events(vec![failed(Mail, 1)]);
    }

    #[test]
    fn a_failure_reported_after_success_is_ignored() {
        Tester::with(())
            .given(vec![opened(&[Dns, Mail]), step_succeeded(Mail)])
            .when(fail(Mail, 0))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_retried_step_that_succeeds_activates_a_failed_subscription() {
        Tester::with(())
            .given(vec![
                opened(&[Dns, Mail]),
                step_succeeded(Dns),
                failed(Mail, 0),
            ])
            .when(succeed(Mail))
            .then_expect_events(vec![step_succeeded(Mail), activated()]);
    }
}
