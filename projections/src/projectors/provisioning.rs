//! Provisioning read models: domains, DNS zones and records, hosting and mail accounts.
//!
//! Built from job events only: a domain appears when its first job is scheduled; zones and
//! accounts appear (or are refreshed) from the outcome a successful job recorded, so they show
//! what was confirmed on the servers, never what was merely intended.

use async_trait::async_trait;
use mpanel_domain::job::{JobAction, JobEvent, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use sqlx::PgConnection;
use uuid::Uuid;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `domains`, `dns_zones`, `dns_records`, `hosting_accounts` and `mail_accounts`.
pub struct ProvisioningProjector;

#[async_trait]
impl Projector for ProvisioningProjector {
    fn name(&self) -> &'static str {
        "provisioning"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "domains",
            "dns_zones",
            "dns_records",
            "hosting_accounts",
            "mail_accounts",
        ]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.aggregate_type != "Job" {
            return Ok(());
        }
        let job_id = aggregate_uuid(event)?;
        let at = event.recorded_at;
        match event.decode::<JobEvent>()? {
            JobEvent::JobScheduled(s) => {
                if let Some(domain) = s.domain {
                    sqlx::query(
                        "INSERT INTO domains (domain, tenant_id, subscription_id, order_id, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $5) \
                         ON CONFLICT (domain) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                           subscription_id = EXCLUDED.subscription_id, order_id = EXCLUDED.order_id, updated_at = $5",
                    )
                    .bind(domain.as_str())
                    .bind(s.tenant_id)
                    .bind(s.subscription_id)
                    .bind(s.order_id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            JobEvent::JobSucceeded {
                subscription_id,
                step,
                outcome: StepOutcome::Changed { action, .. },
                ..
            } => apply_change(tx, subscription_id, step, action, at).await?,
            JobEvent::JobSucceeded {
                subscription_id,
                outcome,
                ..
            } => apply_outcome(tx, job_id, subscription_id, outcome, at).await?,
            _ => {}
        }
        Ok(())
    }
}

async fn owner(
    tx: &mut PgConnection,
    subscription_id: Uuid,
) -> Result<Option<(String, Uuid)>, SubscriberError> {
    Ok(
        sqlx::query_as("SELECT domain, tenant_id FROM domains WHERE subscription_id = $1 LIMIT 1")
            .bind(subscription_id)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

async fn apply_outcome(
    tx: &mut PgConnection,
    job_id: Uuid,
    subscription_id: Uuid,
    outcome: StepOutcome,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), SubscriberError> {
    let Some((domain, tenant_id)) = owner(tx, subscription_id).await? else {
        return Err(SubscriberError::Other(format!(
            "job {job_id} succeeded for subscription {subscription_id} whose domain is unknown"
        )));
    };
    match outcome {
        StepOutcome::Dns { zone, records } => {
            sqlx::query(
                "INSERT INTO dns_zones (zone, domain, tenant_id, subscription_id, job_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (zone) DO UPDATE SET domain = $2, tenant_id = $3, subscription_id = $4, job_id = $5, updated_at = $6",
            )
            .bind(&zone)
            .bind(&domain)
            .bind(tenant_id)
            .bind(subscription_id)
            .bind(job_id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM dns_records WHERE zone = $1")
                .bind(&zone)
                .execute(&mut *tx)
                .await?;
            for r in records {
                sqlx::query(
                    "INSERT INTO dns_records (zone, name, record_type, ttl, contents) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (zone, name, record_type) DO UPDATE SET ttl = $4, contents = $5",
                )
                .bind(&zone)
                .bind(&r.name)
                .bind(&r.record_type)
                .bind(i32::try_from(r.ttl).unwrap_or(i32::MAX))
                .bind(&r.contents)
                .execute(&mut *tx)
                .await?;
            }
        }
        StepOutcome::Hosting {
            server,
            system_user,
            web_root,
            vhost_path,
        } => {
            sqlx::query(
                "INSERT INTO hosting_accounts (domain, tenant_id, subscription_id, job_id, server, system_user, web_root, vhost_path, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (domain) DO UPDATE SET tenant_id = $2, subscription_id = $3, job_id = $4, server = $5, \
                   system_user = $6, web_root = $7, vhost_path = $8, updated_at = $9",
            )
            .bind(&domain)
            .bind(tenant_id)
            .bind(subscription_id)
            .bind(job_id)
            .bind(server)
            .bind(system_user)
            .bind(web_root)
            .bind(vhost_path)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        StepOutcome::Mail {
            address,
            server,
            maildir,
        } => {
            sqlx::query(
                "INSERT INTO mail_accounts (address, domain, tenant_id, subscription_id, job_id, server, maildir, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (address) DO UPDATE SET domain = $2, tenant_id = $3, subscription_id = $4, job_id = $5, \
                   server = $6, maildir = $7, updated_at = $8",
            )
            .bind(address)
            .bind(&domain)
            .bind(tenant_id)
            .bind(subscription_id)
            .bind(job_id)
            .bind(server)
            .bind(maildir)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        // Handled by `apply_change`.
        StepOutcome::Changed { .. } => {}
    }
    Ok(())
}

/// A confirmed lifecycle change: a terminated step's zone or account is gone from the servers
/// (its data archived, as the job's outcome says), a suspended account is flagged.
async fn apply_change(
    tx: &mut PgConnection,
    subscription_id: Uuid,
    step: ProvisioningStep,
    action: JobAction,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), SubscriberError> {
    let table = match step {
        ProvisioningStep::Dns => None,
        ProvisioningStep::Hosting => Some("hosting_accounts"),
        ProvisioningStep::Mail => Some("mail_accounts"),
    };
    match (action, table) {
        (JobAction::Terminate, None) => {
            sqlx::query(
                "DELETE FROM dns_records WHERE zone IN (SELECT zone FROM dns_zones WHERE subscription_id = $1)",
            )
            .bind(subscription_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM dns_zones WHERE subscription_id = $1")
                .bind(subscription_id)
                .execute(&mut *tx)
                .await?;
        }
        (JobAction::Terminate, Some(table)) => {
            sqlx::query(&format!("DELETE FROM {table} WHERE subscription_id = $1"))
                .bind(subscription_id)
                .execute(&mut *tx)
                .await?;
        }
        (JobAction::Suspend | JobAction::Unsuspend, Some(table)) => {
            sqlx::query(&format!(
                "UPDATE {table} SET suspended = $2, updated_at = $3 WHERE subscription_id = $1"
            ))
            .bind(subscription_id)
            .bind(action == JobAction::Suspend)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
