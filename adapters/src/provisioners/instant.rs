//! The bench/test-only provisioner set: every step "succeeds" at once with a synthetic outcome,
//! touching no server.
//!
//! It exists so that scale-out tests and benchmarks can push hundreds of orders through the
//! whole pipeline (webhook → saga → Redis → worker → activation) without creating hundreds of
//! zones, accounts and mailboxes on the shared PowerDNS, sshd and Dovecot. It is chosen with
//! `MPANEL_PROVISIONERS=instant` and **refused by every role** unless
//! `MPANEL_ALLOW_FAKE_PROVISIONERS=1` is set as well: a production process must never mark
//! subscriptions active for work nobody did.
//!
//! Like the real provisioners it is idempotent (the same request always yields the same
//! outcome): provisioning yields the step's synthetic resource, a lifecycle action a
//! [`StepOutcome::Changed`] naming that resource (and, for a terminated web root or mailbox, a
//! fixed archive path). For the tests it can also:
//! - fail every attempt, whatever its action, for a domain whose first label starts with
//!   `fail-` (a transient error, so the job retries and finally dead-letters);
//! - wait `MPANEL_INSTANT_DELAY_MS` per call (default 0), so attempts have a measurable window;
//! - record each call (job, step, process, start, end) in a table `bench_provisioner_runs` when
//!   that table exists (the test creates it), so a test can prove that no job's step ever ran
//!   twice at the same time, across every worker process. Without the table nothing is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use super::{ProvisionError, ProvisionRequest, Provisioner};
use crate::config::{ConfigError, Lookup};
use crate::worker::ProvisionerSet;

/// Selects the provisioner set (`real` or `instant`).
pub const SELECT_VAR: &str = "MPANEL_PROVISIONERS";
/// Must be `1` for `instant` to be accepted.
pub const ALLOW_VAR: &str = "MPANEL_ALLOW_FAKE_PROVISIONERS";
/// Delay per instant call in milliseconds.
pub const DELAY_VAR: &str = "MPANEL_INSTANT_DELAY_MS";

/// Which provisioners a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionerKind {
    /// PowerDNS, SSH hosting and Dovecot (the default).
    Real,
    /// [`InstantProvisioner`] for every step; bench and tests only.
    Instant {
        /// Wait per call.
        delay: Duration,
    },
}

impl ProvisionerKind {
    /// Reads `MPANEL_PROVISIONERS` (`real`, the default, or `instant`).
    ///
    /// # Errors
    /// An unknown value, `instant` without `MPANEL_ALLOW_FAKE_PROVISIONERS=1`, or a bad delay.
    pub fn from_env(env: &impl Lookup) -> Result<Self, ConfigError> {
        match env.get(SELECT_VAR).as_deref() {
            None | Some("real") => Ok(Self::Real),
            Some("instant") => {
                if env.get(ALLOW_VAR).as_deref() != Some("1") {
                    return Err(ConfigError {
                        var: SELECT_VAR,
                        reason: format!(
                            "`instant` provisioners do no real work and are for benchmarks and \
                             tests only; set {ALLOW_VAR}=1 to allow them"
                        ),
                    });
                }
                let delay = env
                    .get(DELAY_VAR)
                    .map_or(Ok(0), |v| v.parse::<u64>())
                    .map_err(|e| ConfigError {
                        var: DELAY_VAR,
                        reason: format!("cannot parse: {e}"),
                    })?;
                Ok(Self::Instant {
                    delay: Duration::from_millis(delay),
                })
            }
            Some(other) => Err(ConfigError {
                var: SELECT_VAR,
                reason: format!("unknown provisioner set {other:?}; use `real` or `instant`"),
            }),
        }
    }
}

/// A provisioner that succeeds at once with a synthetic, deterministic outcome.
pub struct InstantProvisioner {
    step: ProvisioningStep,
    delay: Duration,
    run_log: Option<PgPool>,
    run_log_missing: AtomicBool,
}

impl InstantProvisioner {
    /// The instant provisioner of `step`, recording its calls through `run_log` when given
    /// (and when the table `bench_provisioner_runs` exists).
    #[must_use]
    pub fn new(step: ProvisioningStep, delay: Duration, run_log: Option<PgPool>) -> Self {
        Self {
            step,
            delay,
            run_log,
            run_log_missing: AtomicBool::new(false),
        }
    }

    fn outcome(&self, request: &ProvisionRequest) -> StepOutcome {
        let domain = request.domain.as_str();
        let user = format!("u{}", &request.subscription_id.simple().to_string()[..12]);
        if request.action != JobAction::Provision {
            let (target, archive) = match self.step {
                ProvisioningStep::Dns => (format!("{domain}."), None),
                ProvisioningStep::Hosting => (
                    format!("/srv/instant/{user}/public_html"),
                    Some(format!("/srv/instant/archive/{user}")),
                ),
                ProvisioningStep::Mail => (
                    format!("postmaster@{domain}"),
                    Some(format!("/srv/instant/mail-archive/postmaster@{domain}")),
                ),
            };
            return StepOutcome::Changed {
                action: request.action,
                server: "instant".into(),
                target,
                archived: archive.filter(|_| request.action == JobAction::Terminate),
            };
        }
        match self.step {
            ProvisioningStep::Dns => StepOutcome::Dns {
                zone: format!("{domain}."),
                records: vec![],
            },
            ProvisioningStep::Hosting => StepOutcome::Hosting {
                server: "instant".into(),
                web_root: format!("/srv/instant/{user}/public_html"),
                vhost_path: format!("/etc/instant/vhosts/{domain}.conf"),
                system_user: user,
            },
            ProvisioningStep::Mail => StepOutcome::Mail {
                address: format!("postmaster@{domain}"),
                server: "instant".into(),
                maildir: format!("/srv/instant/mail/{domain}/postmaster"),
            },
        }
    }

    async fn record(
        &self,
        request: &ProvisionRequest,
        started: chrono::DateTime<chrono::Utc>,
        finished: chrono::DateTime<chrono::Utc>,
    ) {
        let Some(pool) = &self.run_log else { return };
        if self.run_log_missing.load(Ordering::Relaxed) {
            return;
        }
        let result = sqlx::query(
            "INSERT INTO bench_provisioner_runs (job_id, step, pid, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(request.job_id)
        .bind(self.step.as_str())
        .bind(i64::from(std::process::id()))
        .bind(started)
        .bind(finished)
        .execute(pool)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                self.run_log_missing.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "instant provisioner: cannot record its run"),
        }
    }
}

#[async_trait]
impl Provisioner for InstantProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError> {
        let started = chrono::Utc::now();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let result = if request.domain.as_str().starts_with("fail-") {
            Err(ProvisionError::Transient(
                "instant provisioner: domains starting with fail- always fail".into(),
            ))
        } else {
            Ok(self.outcome(request))
        };
        self.record(request, started, chrono::Utc::now()).await;
        result
    }
}

/// The instant set for every step. `database_url` is used (lazily, two connections at most)
/// only to record calls in `bench_provisioner_runs` when that table exists.
///
/// # Errors
/// When `database_url` cannot be parsed.
pub fn instant_set(
    database_url: &SecretString,
    delay: Duration,
) -> Result<ProvisionerSet, ConfigError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(database_url.expose_secret())
        .map_err(|e| ConfigError {
            var: "DATABASE_URL",
            reason: e.to_string(),
        })?;
    Ok(ProvisioningStep::ALL
        .iter()
        .fold(ProvisionerSet::default(), |set, step| {
            set.with(
                *step,
                Arc::new(InstantProvisioner::new(*step, delay, Some(pool.clone()))),
            )
        }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mpanel_domain::values::DomainName;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn instant_is_refused_without_the_allow_flag() {
        let env = HashMap::from([(SELECT_VAR, "instant")]);
        let err = ProvisionerKind::from_env(&env).expect_err("refused");
        assert_eq!(err.var, SELECT_VAR);
        assert!(err.reason.contains(ALLOW_VAR));
        let env = HashMap::from([(SELECT_VAR, "instant"), (ALLOW_VAR, "yes")]);
        assert!(ProvisionerKind::from_env(&env).is_err());
        let env = HashMap::from([(SELECT_VAR, "instant"), (ALLOW_VAR, "1")]);
        assert_eq!(
            ProvisionerKind::from_env(&env).expect("allowed"),
            ProvisionerKind::Instant {
                delay: Duration::ZERO
            }
        );
        let env: HashMap<&str, &str> = HashMap::new();
        assert_eq!(
            ProvisionerKind::from_env(&env).expect("default"),
            ProvisionerKind::Real
        );
        let env = HashMap::from([(SELECT_VAR, "fake")]);
        assert!(ProvisionerKind::from_env(&env).is_err());
    }

    #[tokio::test]
    async fn instant_outcomes_are_deterministic_and_fail_domains_fail() {
        let p = InstantProvisioner::new(ProvisioningStep::Hosting, Duration::ZERO, None);
        let request = ProvisionRequest {
            job_id: Uuid::new_v4(),
            subscription_id: Uuid::new_v4(),
            step: ProvisioningStep::Hosting,
            domain: DomainName::parse("shop.example.com").expect("domain"),
            action: JobAction::Provision,
        };
        let first = p.provision(&request).await.expect("succeeds");
        assert_eq!(p.provision(&request).await.expect("again"), first);
        let failing = ProvisionRequest {
            domain: DomainName::parse("fail-shop.example.com").expect("domain"),
            ..request.clone()
        };
        assert!(matches!(
            p.provision(&failing).await,
            Err(ProvisionError::Transient(_))
        ));

        let terminate = ProvisionRequest {
            action: JobAction::Terminate,
            ..request.clone()
        };
        let terminated = p.provision(&terminate).await.expect("terminated");
        assert_eq!(p.provision(&terminate).await.expect("again"), terminated);
        let StepOutcome::Changed {
            action,
            server,
            target,
            archived,
        } = terminated
        else {
            panic!("a lifecycle action reports Changed: {terminated:?}");
        };
        assert_eq!((action, server.as_str()), (JobAction::Terminate, "instant"));
        let StepOutcome::Hosting { web_root, .. } = first else {
            panic!("hosting outcome");
        };
        assert_eq!(target, web_root);
        assert!(archived.is_some());
        let suspend = ProvisionRequest {
            action: JobAction::Suspend,
            ..request.clone()
        };
        assert!(matches!(
            p.provision(&suspend).await,
            Ok(StepOutcome::Changed {
                action: JobAction::Suspend,
                archived: None,
                ..
            })
        ));
        let failing_terminate = ProvisionRequest {
            domain: DomainName::parse("fail-shop.example.com").expect("domain"),
            ..terminate
        };
        assert!(matches!(
            p.provision(&failing_terminate).await,
            Err(ProvisionError::Transient(_))
        ));
    }
}
