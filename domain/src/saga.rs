//! The saga's decisions: which command follows which event (DESIGN §4).
//!
//! Pure functions: an event (with the aggregate it happened to and when it was recorded) in,
//! commands out. The runner in `mpanel-adapters` reads the feed and executes them. It delivers
//! at least once; because every target id is derived ([`crate::ids`]) and every target command
//! is idempotent, executing a decision twice has the effect of executing it once. Times in the
//! commands are the triggering event's recorded time, so a replayed decision is the same
//! decision.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ids;
use crate::job::{JobAction, JobCommand, JobEvent, ScheduleJob};
use crate::order::{OrderCommand, OrderEvent};
use crate::subscription::{OperationRequest, SubscriptionCommand, SubscriptionEvent};

/// Settings the saga's decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaPolicy {
    /// Attempts per job series before dead-lettering.
    pub max_attempts: u32,
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self { max_attempts: 5 }
    }
}

/// A command for one aggregate instance.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaCommand {
    /// For an order.
    Order(Uuid, OrderCommand),
    /// For a subscription.
    Subscription(Uuid, SubscriptionCommand),
    /// For a job.
    Job(Uuid, JobCommand),
}

/// An event the saga may react to, with the id of the aggregate it belongs to.
#[derive(Debug, Clone, Copy)]
pub enum SagaEvent<'a> {
    /// An order's event.
    Order(Uuid, &'a OrderEvent),
    /// A subscription's event.
    Subscription(Uuid, &'a SubscriptionEvent),
    /// A job's event.
    Job(Uuid, &'a JobEvent),
}

/// What to do after `event`, recorded at `recorded_at`.
#[must_use]
pub fn react(
    policy: SagaPolicy,
    event: SagaEvent<'_>,
    recorded_at: DateTime<Utc>,
) -> Vec<SagaCommand> {
    match event {
        SagaEvent::Order(order_id, OrderEvent::OrderPlaced(placed)) => {
            vec![SagaCommand::Subscription(
                ids::subscription_id(order_id),
                SubscriptionCommand::Open {
                    order_id,
                    tenant_id: placed.tenant_id,
                    customer_id: placed.customer_id,
                    domain: placed.domain.clone(),
                    steps: placed.price.steps.clone(),
                    at: recorded_at,
                },
            )]
        }
        SagaEvent::Subscription(
            subscription_id,
            SubscriptionEvent::SubscriptionOpened {
                order_id,
                tenant_id,
                domain,
                required_steps,
                ..
            },
        ) => required_steps
            .iter()
            .map(|step| {
                SagaCommand::Job(
                    ids::job_id(subscription_id, *step, 0),
                    JobCommand::Schedule(ScheduleJob {
                        subscription_id,
                        order_id: *order_id,
                        tenant_id: *tenant_id,
                        step: *step,
                        domain: domain.clone(),
                        max_attempts: policy.max_attempts,
                        due_at: recorded_at,
                        action: JobAction::Provision,
                        generation: 0,
                    }),
                )
            })
            .collect(),
        SagaEvent::Subscription(_, SubscriptionEvent::SubscriptionActivated { order_id, .. }) => {
            vec![SagaCommand::Order(
                *order_id,
                OrderCommand::MarkFulfilled {
                    subscription_id: match event {
                        SagaEvent::Subscription(id, _) => id,
                        _ => Uuid::nil(),
                    },
                    at: recorded_at,
                },
            )]
        }
        SagaEvent::Job(
            job_id,
            JobEvent::JobSucceeded {
                subscription_id,
                step,
                generation,
                ..
            },
        ) => vec![SagaCommand::Subscription(
            *subscription_id,
            SubscriptionCommand::RecordStepSucceeded {
                step: *step,
                job_id,
                generation: *generation,
                at: recorded_at,
            },
        )],
        SagaEvent::Job(
            job_id,
            JobEvent::JobDeadLettered {
                subscription_id,
                step,
                generation,
                series,
                last_error,
                ..
            },
        ) => vec![SagaCommand::Subscription(
            *subscription_id,
            SubscriptionCommand::RecordStepFailed {
                step: *step,
                job_id,
                generation: *generation,
                series: *series,
                error: last_error.clone(),
                at: recorded_at,
            },
        )],
        SagaEvent::Order(order_id, OrderEvent::OrderCancelled { reason, .. }) => {
            vec![SagaCommand::Subscription(
                ids::subscription_id(order_id),
                SubscriptionCommand::Terminate {
                    reason: format!("order cancelled: {reason}"),
                    requested_by: format!("order/{order_id}"),
                    at: recorded_at,
                },
            )]
        }
        SagaEvent::Subscription(subscription_id, event) => match event.operation_request() {
            Some((action, request)) => {
                operation_jobs(policy, subscription_id, action, request, recorded_at)
            }
            None => vec![],
        },
        _ => vec![],
    }
}

/// The commands a lifecycle request leads to: first cancel the superseded jobs of the previous
/// generation (so none of them starts again), then schedule one job per step of the new one.
fn operation_jobs(
    policy: SagaPolicy,
    subscription_id: Uuid,
    action: JobAction,
    request: &OperationRequest,
    recorded_at: DateTime<Utc>,
) -> Vec<SagaCommand> {
    let generation = request.generation;
    let previous = generation.saturating_sub(1);
    let cancels = request.superseded_steps.iter().map(|step| {
        SagaCommand::Job(
            ids::job_id(subscription_id, *step, previous),
            JobCommand::Cancel {
                reason: format!("superseded by {action} (generation {generation})"),
                at: recorded_at,
            },
        )
    });
    let schedules = request.steps.iter().map(|step| {
        SagaCommand::Job(
            ids::job_id(subscription_id, *step, generation),
            JobCommand::Schedule(ScheduleJob {
                subscription_id,
                order_id: request.order_id,
                tenant_id: request.tenant_id,
                step: *step,
                domain: request.domain.clone(),
                max_attempts: policy.max_attempts,
                due_at: recorded_at,
                action,
                generation,
            }),
        )
    });
    cancels.chain(schedules).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::tests::{at, place};
    use crate::step::ProvisioningStep;

    const ORDER: Uuid = Uuid::from_u128(10);

    #[test]
    fn an_order_opens_its_subscription_with_the_plan() {
        let placed = OrderEvent::OrderPlaced(place());
        let cmds = react(
            SagaPolicy::default(),
            SagaEvent::Order(ORDER, &placed),
            at(1),
        );
        let [SagaCommand::Subscription(
            id,
            SubscriptionCommand::Open {
                order_id,
                steps,
                at: when,
                ..
            },
        )] = cmds.as_slice()
        else {
            panic!("expected one Open, got {cmds:?}");
        };
        assert_eq!(*id, ids::subscription_id(ORDER));
        assert_eq!(*order_id, ORDER);
        assert_eq!(steps, &ProvisioningStep::ALL.to_vec());
        assert_eq!(*when, at(1));
    }

    #[test]
    fn an_opened_subscription_schedules_one_job_per_step() {
        let sub = ids::subscription_id(ORDER);
        let opened = SubscriptionEvent::SubscriptionOpened {
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            customer_id: Uuid::from_u128(2),
            domain: None,
            required_steps: vec![ProvisioningStep::Dns, ProvisioningStep::Mail],
            opened_at: at(0),
        };
        let cmds = react(
            SagaPolicy { max_attempts: 7 },
            SagaEvent::Subscription(sub, &opened),
            at(2),
        );
        let scheduled: Vec<(Uuid, ProvisioningStep, u32)> = cmds
            .iter()
            .map(|c| match c {
                SagaCommand::Job(id, JobCommand::Schedule(s)) => (*id, s.step, s.max_attempts),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            scheduled,
            vec![
                (
                    ids::job_id(sub, ProvisioningStep::Dns, 0),
                    ProvisioningStep::Dns,
                    7
                ),
                (
                    ids::job_id(sub, ProvisioningStep::Mail, 0),
                    ProvisioningStep::Mail,
                    7
                ),
            ]
        );
    }

    #[test]
    fn job_outcomes_reach_the_subscription_and_activation_fulfils_the_order() {
        let sub = ids::subscription_id(ORDER);
        let job = ids::job_id(sub, ProvisioningStep::Dns, 0);
        let ok = JobEvent::JobSucceeded {
            subscription_id: sub,
            step: ProvisioningStep::Dns,
            action: JobAction::Provision,
            generation: 0,
            attempt: 1,
            outcome: crate::job::StepOutcome::Dns {
                zone: "example.com.".into(),
                records: vec![],
            },
            succeeded_at: at(3),
        };
        assert_eq!(
            react(SagaPolicy::default(), SagaEvent::Job(job, &ok), at(4)),
            vec![SagaCommand::Subscription(
                sub,
                SubscriptionCommand::RecordStepSucceeded {
                    step: ProvisioningStep::Dns,
                    job_id: job,
                    generation: 0,
                    at: at(4)
                }
            )]
        );
        let dead = JobEvent::JobDeadLettered {
            subscription_id: sub,
            step: ProvisioningStep::Dns,
            action: JobAction::Provision,
            generation: 0,
            series: 2,
            attempts: 5,
            last_error: "refused".into(),
            dead_lettered_at: at(5),
        };
        assert_eq!(
            react(SagaPolicy::default(), SagaEvent::Job(job, &dead), at(6)),
            vec![SagaCommand::Subscription(
                sub,
                SubscriptionCommand::RecordStepFailed {
                    step: ProvisioningStep::Dns,
                    job_id: job,
                    generation: 0,
                    series: 2,
                    error: "refused".into(),
                    at: at(6)
                }
            )]
        );
        let activated = SubscriptionEvent::SubscriptionActivated {
            order_id: ORDER,
            activated_at: at(7),
        };
        assert_eq!(
            react(
                SagaPolicy::default(),
                SagaEvent::Subscription(sub, &activated),
                at(8)
            ),
            vec![SagaCommand::Order(
                ORDER,
                OrderCommand::MarkFulfilled {
                    subscription_id: sub,
                    at: at(8)
                }
            )]
        );
    }

    #[test]
    fn other_events_need_nothing() {
        let fulfilled = OrderEvent::OrderFulfilled {
            subscription_id: Uuid::nil(),
            fulfilled_at: at(0),
        };
        assert!(react(
            SagaPolicy::default(),
            SagaEvent::Order(ORDER, &fulfilled),
            at(1)
        )
        .is_empty());
    }

    #[test]
    fn a_lifecycle_request_cancels_the_superseded_jobs_then_schedules_its_own() {
        let sub = ids::subscription_id(ORDER);
        let requested = SubscriptionEvent::SubscriptionTerminationRequested(OperationRequest {
            generation: 2,
            steps: vec![ProvisioningStep::Dns, ProvisioningStep::Mail],
            superseded_steps: vec![ProvisioningStep::Mail],
            order_id: ORDER,
            tenant_id: Uuid::from_u128(1),
            domain: None,
            reason: Some("closed".into()),
            requested_by: "user-1".into(),
            requested_at: at(5),
        });
        let cmds = react(
            SagaPolicy { max_attempts: 4 },
            SagaEvent::Subscription(sub, &requested),
            at(6),
        );
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(matches!(
            &cmds[0],
            SagaCommand::Job(id, JobCommand::Cancel { at: when, .. })
                if *id == ids::job_id(sub, ProvisioningStep::Mail, 1) && *when == at(6)
        ));
        for (cmd, step) in cmds[1..]
            .iter()
            .zip([ProvisioningStep::Dns, ProvisioningStep::Mail])
        {
            let SagaCommand::Job(id, JobCommand::Schedule(spec)) = cmd else {
                panic!("expected a schedule, got {cmd:?}");
            };
            assert_eq!(*id, ids::job_id(sub, step, 2));
            assert_eq!(
                (
                    spec.action,
                    spec.generation,
                    spec.step,
                    spec.max_attempts,
                    spec.due_at
                ),
                (JobAction::Terminate, 2, step, 4, at(6))
            );
        }
    }

    #[test]
    fn a_cancelled_order_terminates_its_subscription() {
        let cancelled = OrderEvent::OrderCancelled {
            reason: "customer changed their mind".into(),
            cancelled_at: at(3),
        };
        let cmds = react(
            SagaPolicy::default(),
            SagaEvent::Order(ORDER, &cancelled),
            at(4),
        );
        let [SagaCommand::Subscription(id, SubscriptionCommand::Terminate { reason, .. })] =
            cmds.as_slice()
        else {
            panic!("expected one Terminate, got {cmds:?}");
        };
        assert_eq!(*id, ids::subscription_id(ORDER));
        assert!(reason.contains("customer changed their mind"));
    }

    #[test]
    fn a_lifecycle_job_outcome_carries_its_generation_to_the_subscription() {
        let sub = ids::subscription_id(ORDER);
        let job = ids::job_id(sub, ProvisioningStep::Hosting, 3);
        let ok = JobEvent::JobSucceeded {
            subscription_id: sub,
            step: ProvisioningStep::Hosting,
            action: JobAction::Suspend,
            generation: 3,
            attempt: 1,
            outcome: crate::job::StepOutcome::Changed {
                action: JobAction::Suspend,
                server: "web1".into(),
                target: "/srv/example.com/public_html".into(),
                archived: None,
            },
            succeeded_at: at(2),
        };
        assert_eq!(
            react(SagaPolicy::default(), SagaEvent::Job(job, &ok), at(3)),
            vec![SagaCommand::Subscription(
                sub,
                SubscriptionCommand::RecordStepSucceeded {
                    step: ProvisioningStep::Hosting,
                    job_id: job,
                    generation: 3,
                    at: at(3),
                }
            )]
        );
    }
}
