//! Given/when/then for the lifecycle of a subscription: every transition, every refusal, and
//! the generation rule (late outcomes of an older operation change nothing).

use super::tests::{activated, job, opened, step_succeeded, Tester, ORDER};
use super::*;
use crate::order::tests::at;
use crate::step::ProvisioningStep::{Dns, Hosting, Mail};

const ADMIN: &str = "user-1";

fn domain() -> Option<DomainName> {
    Some(DomainName::parse("example.com").expect("valid"))
}

fn request(
    generation: u32,
    steps: &[ProvisioningStep],
    superseded: &[ProvisioningStep],
    reason: Option<&str>,
    when: i64,
) -> OperationRequest {
    OperationRequest {
        generation,
        steps: steps.to_vec(),
        superseded_steps: superseded.to_vec(),
        order_id: ORDER,
        tenant_id: Uuid::from_u128(1),
        domain: domain(),
        reason: reason.map(str::to_owned),
        requested_by: ADMIN.into(),
        requested_at: at(when),
    }
}

/// A subscription of all three steps, provisioned and ACTIVE.
fn active() -> Vec<SubscriptionEvent> {
    vec![
        opened(&[Dns, Hosting, Mail]),
        step_succeeded(Dns),
        step_succeeded(Hosting),
        step_succeeded(Mail),
        activated(),
    ]
}

fn suspend(reason: &str) -> SubscriptionCommand {
    SubscriptionCommand::Suspend {
        reason: reason.into(),
        requested_by: ADMIN.into(),
        at: at(10),
    }
}

fn unsuspend() -> SubscriptionCommand {
    SubscriptionCommand::Unsuspend {
        requested_by: ADMIN.into(),
        at: at(20),
    }
}

fn terminate(reason: &str) -> SubscriptionCommand {
    SubscriptionCommand::Terminate {
        reason: reason.into(),
        requested_by: ADMIN.into(),
        at: at(30),
    }
}

fn reprovision() -> SubscriptionCommand {
    SubscriptionCommand::Reprovision {
        requested_by: ADMIN.into(),
        at: at(40),
    }
}

fn suspension_requested(generation: u32) -> SubscriptionEvent {
    SubscriptionEvent::SubscriptionSuspensionRequested(request(
        generation,
        &[Hosting, Mail],
        &[],
        Some("non-payment"),
        10,
    ))
}

fn op_succeeded(action: JobAction, generation: u32, step: ProvisioningStep) -> SubscriptionEvent {
    SubscriptionEvent::OperationStepSucceeded {
        action,
        generation,
        step,
        job_id: job(step),
        succeeded_at: at(50),
    }
}

fn record(step: ProvisioningStep, generation: u32) -> SubscriptionCommand {
    SubscriptionCommand::RecordStepSucceeded {
        step,
        job_id: job(step),
        generation,
        at: at(50),
    }
}

fn record_failure(step: ProvisioningStep, generation: u32) -> SubscriptionCommand {
    SubscriptionCommand::RecordStepFailed {
        step,
        job_id: job(step),
        generation,
        series: 0,
        error: "ssh: connection refused".into(),
        at: at(50),
    }
}

fn suspended() -> Vec<SubscriptionEvent> {
    let mut events = active();
    events.extend([
        suspension_requested(1),
        op_succeeded(JobAction::Suspend, 1, Hosting),
        op_succeeded(JobAction::Suspend, 1, Mail),
        SubscriptionEvent::SubscriptionSuspended {
            generation: 1,
            suspended_at: at(50),
        },
    ]);
    events
}

fn status_after(events: Vec<SubscriptionEvent>) -> SubscriptionStatus {
    let mut s = Subscription::default();
    for e in events {
        s.apply(e);
    }
    s.status().expect("opened")
}

#[test]
fn suspending_an_active_subscription_asks_hosting_and_mail_but_not_dns() {
    Tester::with(())
        .given(active())
        .when(suspend("  non-payment "))
        .then_expect_events(vec![suspension_requested(1)]);
    let mut events = active();
    events.push(suspension_requested(1));
    assert_eq!(status_after(events), SubscriptionStatus::Suspending);
}

#[test]
fn suspended_only_when_the_last_step_confirms() {
    let mut given = active();
    given.push(suspension_requested(1));
    Tester::with(())
        .given(given.clone())
        .when(record(Hosting, 1))
        .then_expect_events(vec![op_succeeded(JobAction::Suspend, 1, Hosting)]);
    given.push(op_succeeded(JobAction::Suspend, 1, Hosting));
    Tester::with(())
        .given(given)
        .when(record(Mail, 1))
        .then_expect_events(vec![
            op_succeeded(JobAction::Suspend, 1, Mail),
            SubscriptionEvent::SubscriptionSuspended {
                generation: 1,
                suspended_at: at(50),
            },
        ]);
    assert_eq!(status_after(suspended()), SubscriptionStatus::Suspended);
}

#[test]
fn suspend_needs_a_reason_and_repeats_are_no_ops() {
    Tester::with(())
        .given(active())
        .when(suspend(" "))
        .then_expect_error(SubscriptionError::ReasonRequired);
    let mut suspending = active();
    suspending.push(suspension_requested(1));
    Tester::with(())
        .given(suspending)
        .when(suspend("again"))
        .then_expect_events(vec![]);
    Tester::with(())
        .given(suspended())
        .when(suspend("again"))
        .then_expect_events(vec![]);
}

#[test]
fn suspend_is_refused_before_activation_and_after_termination() {
    Tester::with(())
        .given(vec![opened(&[Dns, Hosting])])
        .when(suspend("abuse"))
        .then_expect_error(SubscriptionError::NotAllowed {
            operation: "suspend",
            status: SubscriptionStatus::Inactive,
        });
    Tester::with(())
        .given_no_previous_events()
        .when(suspend("abuse"))
        .then_expect_error(SubscriptionError::NotOpened);
    let mut terminated = active();
    terminated.extend([
        SubscriptionEvent::SubscriptionTerminationRequested(request(
            1,
            &[Dns, Hosting, Mail],
            &[],
            Some("closed"),
            30,
        )),
        SubscriptionEvent::SubscriptionTerminated {
            generation: 1,
            terminated_at: at(60),
        },
    ]);
    Tester::with(())
        .given(terminated)
        .when(suspend("abuse"))
        .then_expect_error(SubscriptionError::NotAllowed {
            operation: "suspend",
            status: SubscriptionStatus::Terminated,
        });
}

#[test]
fn a_dns_only_plan_is_suspended_at_once() {
    Tester::with(())
        .given(vec![opened(&[Dns]), step_succeeded(Dns), activated()])
        .when(suspend("abuse"))
        .then_expect_events(vec![
            SubscriptionEvent::SubscriptionSuspensionRequested(request(
                1,
                &[],
                &[],
                Some("abuse"),
                10,
            )),
            SubscriptionEvent::SubscriptionSuspended {
                generation: 1,
                suspended_at: at(10),
            },
        ]);
}

#[test]
fn unsuspend_restores_through_its_own_generation() {
    let unsuspension = SubscriptionEvent::SubscriptionUnsuspensionRequested(request(
        2,
        &[Hosting, Mail],
        &[],
        None,
        20,
    ));
    Tester::with(())
        .given(suspended())
        .when(unsuspend())
        .then_expect_events(vec![unsuspension.clone()]);
    let mut given = suspended();
    given.extend([unsuspension, op_succeeded(JobAction::Unsuspend, 2, Mail)]);
    Tester::with(())
        .given(given.clone())
        .when(record(Hosting, 2))
        .then_expect_events(vec![
            op_succeeded(JobAction::Unsuspend, 2, Hosting),
            SubscriptionEvent::SubscriptionUnsuspended {
                generation: 2,
                unsuspended_at: at(50),
            },
        ]);
    Tester::with(())
        .given(given)
        .when(unsuspend())
        .then_expect_events(vec![]);
    Tester::with(())
        .given(active())
        .when(unsuspend())
        .then_expect_events(vec![]);
    Tester::with(())
        .given(vec![opened(&[Dns])])
        .when(unsuspend())
        .then_expect_error(SubscriptionError::NotAllowed {
            operation: "unsuspend",
            status: SubscriptionStatus::Inactive,
        });
}

#[test]
fn unsuspending_while_suspending_supersedes_the_unfinished_steps() {
    let mut given = active();
    given.extend([
        suspension_requested(1),
        op_succeeded(JobAction::Suspend, 1, Hosting),
    ]);
    Tester::with(())
        .given(given)
        .when(unsuspend())
        .then_expect_events(vec![SubscriptionEvent::SubscriptionUnsuspensionRequested(
            request(2, &[Hosting, Mail], &[Mail], None, 20),
        )]);
}

#[test]
fn a_late_outcome_of_an_older_generation_changes_nothing() {
    let mut given = active();
    given.extend([
        suspension_requested(1),
        SubscriptionEvent::SubscriptionUnsuspensionRequested(request(
            2,
            &[Hosting, Mail],
            &[Hosting, Mail],
            None,
            20,
        )),
    ]);
    Tester::with(())
        .given(given.clone())
        .when(record(Hosting, 1))
        .then_expect_events(vec![]);
    Tester::with(())
        .given(given)
        .when(record_failure(Mail, 1))
        .then_expect_events(vec![]);
    // The order's own provisioning finishing after a termination does not activate it.
    Tester::with(())
        .given(vec![
            opened(&[Dns, Hosting]),
            SubscriptionEvent::SubscriptionTerminationRequested(request(
                1,
                &[Dns, Hosting],
                &[Dns, Hosting],
                Some("order cancelled"),
                30,
            )),
        ])
        .when(SubscriptionCommand::RecordStepSucceeded {
            step: Dns,
            job_id: job(Dns),
            generation: 0,
            at: at(31),
        })
        .then_expect_events(vec![]);
}

#[test]
fn terminating_while_provisioning_supersedes_the_pending_create_steps() {
    Tester::with(())
        .given(vec![opened(&[Dns, Hosting, Mail]), step_succeeded(Hosting)])
        .when(terminate("order cancelled"))
        .then_expect_events(vec![SubscriptionEvent::SubscriptionTerminationRequested(
            request(
                1,
                &[Dns, Hosting, Mail],
                &[Dns, Mail],
                Some("order cancelled"),
                30,
            ),
        )]);
}

#[test]
fn terminated_only_when_every_removal_is_confirmed_and_then_final() {
    let mut given = suspended();
    given.push(SubscriptionEvent::SubscriptionTerminationRequested(
        request(2, &[Dns, Hosting, Mail], &[], Some("contract ended"), 30),
    ));
    given.push(op_succeeded(JobAction::Terminate, 2, Dns));
    given.push(op_succeeded(JobAction::Terminate, 2, Mail));
    assert_eq!(status_after(given.clone()), SubscriptionStatus::Terminating);
    Tester::with(())
        .given(given.clone())
        .when(record(Hosting, 2))
        .then_expect_events(vec![
            op_succeeded(JobAction::Terminate, 2, Hosting),
            SubscriptionEvent::SubscriptionTerminated {
                generation: 2,
                terminated_at: at(50),
            },
        ]);
    given.push(op_succeeded(JobAction::Terminate, 2, Hosting));
    given.push(SubscriptionEvent::SubscriptionTerminated {
        generation: 2,
        terminated_at: at(50),
    });
    Tester::with(())
        .given(given.clone())
        .when(terminate("again"))
        .then_expect_events(vec![]);
    for (command, operation) in [(unsuspend(), "unsuspend"), (reprovision(), "reprovision")] {
        Tester::with(())
            .given(given.clone())
            .when(command)
            .then_expect_error(SubscriptionError::NotAllowed {
                operation,
                status: SubscriptionStatus::Terminated,
            });
    }
    Tester::with(())
        .given(active())
        .when(terminate(""))
        .then_expect_error(SubscriptionError::ReasonRequired);
}

#[test]
fn a_failed_step_keeps_the_operation_in_progress_and_a_repeat_starts_it_again() {
    let mut given = active();
    given.push(SubscriptionEvent::SubscriptionTerminationRequested(
        request(1, &[Dns, Hosting, Mail], &[], Some("closed"), 30),
    ));
    let failed = SubscriptionEvent::OperationStepFailed {
        action: JobAction::Terminate,
        generation: 1,
        step: Mail,
        job_id: job(Mail),
        series: 0,
        error: "ssh: connection refused".into(),
        failed_at: at(50),
    };
    Tester::with(())
        .given(given.clone())
        .when(record_failure(Mail, 1))
        .then_expect_events(vec![failed.clone()]);
    given.push(failed);
    let mut s = Subscription::default();
    for e in given.clone() {
        s.apply(e);
    }
    assert_eq!(s.status(), Some(SubscriptionStatus::Terminating));
    assert_eq!(s.details().failed_step, Some(Mail));
    Tester::with(())
        .given(given)
        .when(terminate("closed"))
        .then_expect_events(vec![SubscriptionEvent::SubscriptionTerminationRequested(
            request(
                2,
                &[Dns, Hosting, Mail],
                &[Dns, Hosting, Mail],
                Some("closed"),
                30,
            ),
        )]);
}

#[test]
fn reprovision_reruns_every_create_step_and_reactivates() {
    let requested = SubscriptionEvent::SubscriptionReprovisioningRequested(request(
        1,
        &[Dns, Hosting, Mail],
        &[],
        None,
        40,
    ));
    Tester::with(())
        .given(active())
        .when(reprovision())
        .then_expect_events(vec![requested.clone()]);
    let mut given = active();
    given.extend([
        requested,
        op_succeeded(JobAction::Provision, 1, Dns),
        op_succeeded(JobAction::Provision, 1, Hosting),
    ]);
    Tester::with(())
        .given(given.clone())
        .when(reprovision())
        .then_expect_events(vec![]);
    Tester::with(())
        .given(given)
        .when(record(Mail, 1))
        .then_expect_events(vec![
            op_succeeded(JobAction::Provision, 1, Mail),
            SubscriptionEvent::SubscriptionReprovisioned {
                generation: 1,
                reprovisioned_at: at(50),
            },
        ]);
}

#[test]
fn a_failed_reprovisioning_is_provisioning_failed_and_can_be_asked_again() {
    let mut given = active();
    given.extend([
        SubscriptionEvent::SubscriptionReprovisioningRequested(request(
            1,
            &[Dns, Hosting, Mail],
            &[],
            None,
            40,
        )),
        SubscriptionEvent::OperationStepFailed {
            action: JobAction::Provision,
            generation: 1,
            step: Dns,
            job_id: job(Dns),
            series: 0,
            error: "pdns: 500".into(),
            failed_at: at(50),
        },
    ]);
    assert_eq!(
        status_after(given.clone()),
        SubscriptionStatus::ProvisioningFailed
    );
    Tester::with(())
        .given(given)
        .when(reprovision())
        .then_expect_events(vec![
            SubscriptionEvent::SubscriptionReprovisioningRequested(request(
                2,
                &[Dns, Hosting, Mail],
                &[Dns, Hosting, Mail],
                None,
                40,
            )),
        ]);
}

#[test]
fn reprovision_is_refused_while_provisioning_runs_or_while_suspended() {
    Tester::with(())
        .given(vec![opened(&[Dns, Hosting])])
        .when(reprovision())
        .then_expect_error(SubscriptionError::NotAllowed {
            operation: "reprovision",
            status: SubscriptionStatus::Inactive,
        });
    Tester::with(())
        .given(suspended())
        .when(reprovision())
        .then_expect_error(SubscriptionError::NotAllowed {
            operation: "reprovision",
            status: SubscriptionStatus::Suspended,
        });
}

#[test]
fn views_keep_who_asked_and_why() {
    let mut s = Subscription::default();
    for e in suspended() {
        s.apply(e);
    }
    assert_eq!(s.details().status_reason.as_deref(), Some("non-payment"));
    assert_eq!(s.details().status_changed_by.as_deref(), Some(ADMIN));
    assert_eq!(s.operation(), (JobAction::Suspend, 1));
    assert!(s.pending_steps().is_empty());
}
