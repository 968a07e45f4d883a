//! Provisioners: the code that makes a step real on a server (DESIGN §4).
//!
//! Each provisioner is idempotent and converges to a desired state: running it again after a
//! success, or after a crash half-way, repairs and never fails with "already exists" nor leaves
//! a duplicate. Each returns the [`StepOutcome`] that the job records and the read models are
//! built from. Values that reach a remote shell or a DNS name are domain types
//! ([`DomainName`]), validated at the edge.

use async_trait::async_trait;
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use uuid::Uuid;

/// What a provisioner is asked to make real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    /// The job doing it (for logs and idempotency keys).
    pub job_id: Uuid,
    /// The subscription it belongs to.
    pub subscription_id: Uuid,
    /// The step.
    pub step: ProvisioningStep,
    /// The customer's domain.
    pub domain: DomainName,
    /// What to do: provision (converge to existing and in service), suspend (out of service,
    /// data kept), unsuspend (back in service) or terminate (removed, data archived). Every
    /// action converges: running it again after a success, or after a crash half-way, succeeds.
    pub action: JobAction,
}

/// Why a provisioning attempt failed. The message is what operators see in the job's events,
/// so it must never contain a secret (API key, password, private key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// Worth retrying: the server was unreachable, timed out or answered 5xx.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying the same request will not help (bad input, refused by the server's rules).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// One step's provisioner.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Makes the request's desired state real (per its [`JobAction`]), or repairs it, and
    /// reports what now exists ([`StepOutcome::Changed`] for the lifecycle actions).
    ///
    /// # Errors
    /// [`ProvisionError`] with a secret-free message.
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError>;
}

pub mod dns;
pub mod hosting;
pub mod instant;
pub mod mail;
pub mod ssh;
