//! The Subscription aggregate: what an order bought, and whether it is really provisioned.
//!
//! The invariant of mpanel lives here: a subscription emits [`SubscriptionEvent::SubscriptionActivated`]
//! only from the command that records the success of the last required step. Recording a step
//! twice is a no-op, and nothing sets the status before the work ran.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::step::{normalise_plan, ProvisioningStep};
use crate::values::DomainName;

/// A subscription's status, reflecting confirmed outcomes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    /// Opened; not every required step has succeeded yet.
    Inactive,
    /// A step was dead-lettered; visible and retryable.
    ProvisioningFailed,
    /// Every required step succeeded.
    Active,
}

impl SubscriptionStatus {
    /// The stable name used in the API and read models.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "INACTIVE",
            Self::ProvisioningFailed => "PROVISIONING_FAILED",
            Self::Active => "ACTIVE",
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
        /// When.
        at: DateTime<Utc>,
    },
    /// Records that a step's job was dead-lettered (idempotent per job attempt series).
    RecordStepFailed {
        /// The step.
        step: ProvisioningStep,
        /// The job.
        job_id: Uuid,
        /// The job's attempt series that failed (0 for the first; operator retries add one).
        series: u32,
        /// The last error, for whoever looks at the subscription.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
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
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SubscriptionOpened { .. } => "SubscriptionOpened",
            Self::ProvisioningStepSucceeded { .. } => "ProvisioningStepSucceeded",
            Self::ProvisioningFailed { .. } => "ProvisioningFailed",
            Self::SubscriptionActivated { .. } => "SubscriptionActivated",
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
}

/// The subscription's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    order_id: Option<Uuid>,
    status: Option<SubscriptionStatus>,
    required: BTreeSet<ProvisioningStep>,
    succeeded: BTreeSet<ProvisioningStep>,
    failures_seen: BTreeSet<(Uuid, u32)>,
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
    /// Required steps that succeeded, in the order they did.
    pub succeeded_in_order: Vec<ProvisioningStep>,
    /// The step whose job gave up, until the subscription is activated.
    pub failed_step: Option<ProvisioningStep>,
    /// That job's last error (kept after activation, as the read model does).
    pub last_error: Option<String>,
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

    /// Who, what, when and the last failure, for views.
    #[must_use]
    pub fn details(&self) -> &SubscriptionDetails {
        &self.details
    }

    fn require_step(&self, step: ProvisioningStep) -> Result<(), SubscriptionError> {
        if self.status.is_none() {
            return Err(SubscriptionError::NotOpened);
        }
        if !self.required.contains(&step) {
            return Err(SubscriptionError::StepNotRequired(step));
        }
        Ok(())
    }

    fn decide(
        &self,
        command: SubscriptionCommand,
    ) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
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
            SubscriptionCommand::RecordStepSucceeded { step, job_id, at } => {
                self.require_step(step)?;
                if self.succeeded.contains(&step) {
                    return Ok(vec![]);
                }
                let mut events = vec![SubscriptionEvent::ProvisioningStepSucceeded {
                    step,
                    job_id,
                    succeeded_at: at,
                }];
                let all_done = self
                    .required
                    .iter()
                    .all(|s| *s == step || self.succeeded.contains(s));
                if all_done {
                    if let Some(order_id) = self.order_id {
                        events.push(SubscriptionEvent::SubscriptionActivated {
                            order_id,
                            activated_at: at,
                        });
                    }
                }
                Ok(events)
            }
            SubscriptionCommand::RecordStepFailed {
                step,
                job_id,
                series,
                error,
                at,
            } => {
                self.require_step(step)?;
                if self.succeeded.contains(&step) || self.failures_seen.contains(&(job_id, series))
                {
                    return Ok(vec![]);
                }
                Ok(vec![SubscriptionEvent::ProvisioningFailed {
                    step,
                    job_id,
                    series,
                    error,
                    failed_at: at,
                }])
            }
        }
    }
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
                if self.succeeded.insert(step) {
                    self.details.succeeded_in_order.push(step);
                }
                self.details.updated_at = Some(succeeded_at);
            }
            SubscriptionEvent::ProvisioningFailed {
                step,
                job_id,
                series,
                error,
                failed_at,
            } => {
                self.failures_seen.insert((job_id, series));
                self.status = Some(SubscriptionStatus::ProvisioningFailed);
                let d = &mut self.details;
                d.failed_step = Some(step);
                d.last_error = Some(error);
                d.updated_at = Some(failed_at);
            }
            SubscriptionEvent::SubscriptionActivated { activated_at, .. } => {
                self.status = Some(SubscriptionStatus::Active);
                let d = &mut self.details;
                d.failed_step = None;
                d.activated_at = Some(activated_at);
                d.updated_at = Some(activated_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProvisioningStep::{Dns, Hosting, Mail};
    use super::*;
    use crate::order::tests::at;
    use cqrs_es::test::TestFramework;

    type Tester = TestFramework<Subscription>;

    const ORDER: Uuid = Uuid::from_u128(10);

    fn job(step: ProvisioningStep) -> Uuid {
        Uuid::from_u128(100 + step as u128)
    }

    fn open(steps: &[ProvisioningStep]) -> SubscriptionCommand {
        SubscriptionCommand::Open {
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            domain: Some(DomainName::parse("example.com").expect("valid")),
            steps: steps.to_vec(),
            at: at(0),
        }
    }

    fn opened(steps: &[ProvisioningStep]) -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionOpened {
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            domain: Some(DomainName::parse("example.com").expect("valid")),
            required_steps: normalise_plan(steps),
            opened_at: at(0),
        }
    }

    fn succeed(step: ProvisioningStep) -> SubscriptionCommand {
        SubscriptionCommand::RecordStepSucceeded {
            step,
            job_id: job(step),
            at: at(1),
        }
    }

    fn step_succeeded(step: ProvisioningStep) -> SubscriptionEvent {
        SubscriptionEvent::ProvisioningStepSucceeded {
            step,
            job_id: job(step),
            succeeded_at: at(1),
        }
    }

    fn activated() -> SubscriptionEvent {
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
