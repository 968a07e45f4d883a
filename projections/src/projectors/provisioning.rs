//! Provisioning read models: domains, DNS zones and records, hosting and mail accounts.
//!
//! Built from job events only: a domain appears when its first job is scheduled; zones and
//! accounts appear (or are refreshed) from the outcome a successful job recorded, so they show
//! what was confirmed on the servers, never what was merely intended. A zone or account belongs
//! to the subscription whose job confirmed it last, under the domain and tenant that job was
//! scheduled for; the `domains` row follows the domain's latest registration (two paid orders
//! may name one domain).
//!
//! A batch is applied set-based (see `batch.rs`): domain registrations and confirmed zones,
//! records and accounts are folded per key in memory, in feed order, and written with one
//! statement per table. A lifecycle change (suspend, terminate) acts on whatever rows a
//! subscription has, so before one the pending rows are written out and the change runs as
//! its own statements: the result is that of applying the events one by one.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mpanel_domain::job::{DnsRecord, JobAction, JobEvent, ScheduleJob, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{self, blame, blame_first, column, distinct, int, text_array};
use crate::runner::BatchFailure;
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

    fn reads_metadata(&self) -> bool {
        false
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        self.apply_batch(tx, std::slice::from_ref(event))
            .await
            .map_err(|f| f.error)
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), BatchFailure> {
        let decoded = batch::decode::<JobEvent>(events, "Job")?.events;
        // Whose resource a confirmed outcome is comes from its own job's `JobScheduled`
        // (domain and tenant), which is in this batch or earlier in the log: never from the
        // `domains` table, whose row follows the domain's latest registration and so may
        // belong to another subscription by then (two orders for one domain).
        let mut pending = Pending::default();
        let mut unknown = Vec::new();
        for (job_id, _, e) in &decoded {
            match e {
                JobEvent::JobScheduled(s) => pending.scheduled(*job_id, s),
                JobEvent::JobSucceeded { outcome, .. }
                    if !matches!(outcome, StepOutcome::Changed { .. })
                        && !pending.job_owners.contains_key(job_id) =>
                {
                    unknown.push(job_id.to_string());
                }
                _ => {}
            }
        }
        if !unknown.is_empty() {
            // One primary-key probe per job, whatever the statistics say: as `aggregate_id =
            // ANY($1)` a young table's stale estimate turned this into a scan of every job's
            // first event (2 ms per batch at 150 orders/s).
            let scheduled: Vec<(String, Json<JobEvent>)> = sqlx::query_as(
                "SELECT k.id, e.payload FROM UNNEST($1::text[]) AS k (id) CROSS JOIN LATERAL \
                   (SELECT payload FROM events \
                    WHERE aggregate_type = 'Job' AND aggregate_id = k.id AND sequence = 1 \
                    LIMIT 1) AS e",
            )
            .bind(distinct(unknown.into_iter()))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| blame_first(events)(e.into()))?;
            for (job_id, Json(event)) in scheduled {
                if let (Ok(job_id), JobEvent::JobScheduled(s)) = (job_id.parse::<Uuid>(), event) {
                    pending.scheduled(job_id, &s);
                }
            }
        }
        for (job_id, event, decoded) in decoded {
            let at = event.recorded_at;
            match decoded {
                JobEvent::JobScheduled(s) => {
                    if let Some(domain) = s.domain {
                        pending.register(
                            domain.as_str(),
                            DomainRow {
                                tenant_id: s.tenant_id,
                                subscription_id: s.subscription_id,
                                order_id: s.order_id,
                                created_at: at,
                                updated_at: at,
                            },
                        );
                    }
                }
                JobEvent::JobSucceeded {
                    subscription_id,
                    step,
                    outcome: StepOutcome::Changed { action, .. },
                    ..
                } => {
                    // Acts on the subscription's rows as they stand: write out what is pending.
                    pending
                        .flush(tx)
                        .await
                        .map_err(|e| blame(event)(e.into()))?;
                    apply_change(tx, subscription_id, step, action, at)
                        .await
                        .map_err(blame(event))?;
                }
                JobEvent::JobSucceeded {
                    subscription_id,
                    outcome,
                    ..
                } => {
                    let Some((domain, tenant_id)) = pending.job_owners.get(&job_id).cloned() else {
                        return Err(blame(event)(SubscriberError::Other(format!(
                            "job {job_id} succeeded with an outcome but was never scheduled for a domain"
                        ))));
                    };
                    let owner = Owner {
                        domain,
                        tenant_id,
                        subscription_id,
                        job_id,
                        at,
                    };
                    pending.confirm(owner, outcome);
                }
                _ => {}
            }
        }
        pending
            .flush(tx)
            .await
            .map_err(|e| blame_first(events)(e.into()))
    }
}

/// A `domains` row as a registration writes it (`created_at` only when the row is new).
struct DomainRow {
    tenant_id: Uuid,
    subscription_id: Uuid,
    order_id: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Whose resource a confirmed outcome is: the job, its subscription and the domain's owner.
struct Owner {
    domain: String,
    tenant_id: Uuid,
    subscription_id: Uuid,
    job_id: Uuid,
    at: DateTime<Utc>,
}

/// A confirmed zone, with its records as the outcome listed them.
struct Zone {
    owner: Owner,
    records: Vec<DnsRecord>,
}

/// A confirmed hosting account.
struct Hosting {
    owner: Owner,
    server: String,
    system_user: String,
    web_root: String,
    vhost_path: String,
}

/// A confirmed mailbox.
struct Mail {
    owner: Owner,
    server: String,
    maildir: String,
}

/// What the batch has folded but not yet written, by key (last write wins, as the one-by-one
/// upserts would), plus the domain and tenant each job of the batch was scheduled for.
#[derive(Default)]
struct Pending {
    domains: HashMap<String, DomainRow>,
    zones: HashMap<String, Zone>,
    hosting: HashMap<String, Hosting>,
    mail: HashMap<String, Mail>,
    /// job → (domain, tenant), from its `JobScheduled`.
    job_owners: HashMap<Uuid, (String, Uuid)>,
}

impl Pending {
    /// Job `job_id` was scheduled as `s`: its outcome belongs to `s`'s domain and tenant.
    fn scheduled(&mut self, job_id: Uuid, s: &ScheduleJob) {
        if let Some(domain) = &s.domain {
            self.job_owners
                .insert(job_id, (domain.as_str().to_owned(), s.tenant_id));
        }
    }

    /// A job for `domain` was scheduled: the domain belongs to its subscription from now on.
    fn register(&mut self, domain: &str, row: DomainRow) {
        match self.domains.get_mut(domain) {
            Some(existing) => {
                existing.tenant_id = row.tenant_id;
                existing.subscription_id = row.subscription_id;
                existing.order_id = row.order_id;
                existing.updated_at = row.updated_at;
            }
            None => {
                self.domains.insert(domain.to_owned(), row);
            }
        }
    }

    /// A successful job's outcome: the zone or account as the server confirmed it.
    fn confirm(&mut self, owner: Owner, outcome: StepOutcome) {
        match outcome {
            StepOutcome::Dns { zone, records } => {
                self.zones.insert(zone, Zone { owner, records });
            }
            StepOutcome::Hosting {
                server,
                system_user,
                web_root,
                vhost_path,
            } => {
                self.hosting.insert(
                    owner.domain.clone(),
                    Hosting {
                        owner,
                        server,
                        system_user,
                        web_root,
                        vhost_path,
                    },
                );
            }
            StepOutcome::Mail {
                address,
                server,
                maildir,
            } => {
                self.mail.insert(
                    address,
                    Mail {
                        owner,
                        server,
                        maildir,
                    },
                );
            }
            // Applied as it comes, after a flush.
            StepOutcome::Changed { .. } => {}
        }
    }

    /// Writes everything pending: one statement per table (two for records: the zones' old
    /// records go, the confirmed ones come).
    async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.domains.is_empty() {
            let rows: Vec<(String, DomainRow)> = self.domains.drain().collect();
            sqlx::query(
                "INSERT INTO domains (domain, tenant_id, subscription_id, order_id, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::timestamptz[]) \
                 ON CONFLICT (domain) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                   subscription_id = EXCLUDED.subscription_id, order_id = EXCLUDED.order_id, \
                   updated_at = EXCLUDED.updated_at",
            )
            .bind(column(&rows, |(d, _)| d.as_str()))
            .bind(column(&rows, |(_, r)| r.tenant_id))
            .bind(column(&rows, |(_, r)| r.subscription_id))
            .bind(column(&rows, |(_, r)| r.order_id))
            .bind(column(&rows, |(_, r)| r.created_at))
            .bind(column(&rows, |(_, r)| r.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        if !self.zones.is_empty() {
            let zones: Vec<(String, Zone)> = self.zones.drain().collect();
            // `xmax <> 0` marks a row the upsert updated rather than inserted: only a zone that
            // was already there can have records to replace (records come and go with their
            // zone). Deleting by the whole batch's zones instead scanned all of `dns_records`
            // per batch in a rebuild, where every zone is new.
            let existed: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
                "INSERT INTO dns_zones (zone, domain, tenant_id, subscription_id, job_id, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::timestamptz[]) \
                 ON CONFLICT (zone) DO UPDATE SET domain = EXCLUDED.domain, tenant_id = EXCLUDED.tenant_id, \
                   subscription_id = EXCLUDED.subscription_id, job_id = EXCLUDED.job_id, \
                   updated_at = EXCLUDED.updated_at \
                 RETURNING CASE WHEN xmax <> 0 THEN zone END",
            )
            .bind(column(&zones, |(z, _)| z.as_str()))
            .bind(column(&zones, |(_, z)| z.owner.domain.as_str()))
            .bind(column(&zones, |(_, z)| z.owner.tenant_id))
            .bind(column(&zones, |(_, z)| z.owner.subscription_id))
            .bind(column(&zones, |(_, z)| z.owner.job_id))
            .bind(column(&zones, |(_, z)| z.owner.at))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .flatten()
            .collect();
            if !existed.is_empty() {
                sqlx::query("DELETE FROM dns_records WHERE zone = ANY($1)")
                    .persistent(false)
                    .bind(&existed)
                    .execute(&mut *tx)
                    .await?;
            }
            // One row per (zone, name, type); a later record of an outcome replaces an earlier.
            let mut records: Vec<(&str, &DnsRecord)> = Vec::new();
            let mut index: HashMap<(&str, &str, &str), usize> = HashMap::new();
            for (zone, z) in &zones {
                for r in &z.records {
                    let key = (zone.as_str(), r.name.as_str(), r.record_type.as_str());
                    match index.get(&key) {
                        Some(&i) => records[i] = (zone.as_str(), r),
                        None => {
                            index.insert(key, records.len());
                            records.push((zone.as_str(), r));
                        }
                    }
                }
            }
            if !records.is_empty() {
                sqlx::query(
                    "INSERT INTO dns_records (zone, name, record_type, ttl, contents) \
                     SELECT zone, name, record_type, ttl, ARRAY(SELECT jsonb_array_elements_text(contents)) \
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::jsonb[]) \
                       AS u (zone, name, record_type, ttl, contents)",
                )
                .bind(column(&records, |(z, _)| *z))
                .bind(column(&records, |(_, r)| r.name.as_str()))
                .bind(column(&records, |(_, r)| r.record_type.as_str()))
                .bind(column(&records, |(_, r)| int(r.ttl)))
                .bind(
                    column(&records, |(_, r)| text_array(&r.contents)),
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        if !self.hosting.is_empty() {
            let rows: Vec<Hosting> = self.hosting.drain().map(|(_, h)| h).collect();
            sqlx::query(
                "INSERT INTO hosting_accounts (domain, tenant_id, subscription_id, job_id, server, system_user, web_root, vhost_path, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[]) \
                 ON CONFLICT (domain) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, \
                   subscription_id = EXCLUDED.subscription_id, job_id = EXCLUDED.job_id, server = EXCLUDED.server, \
                   system_user = EXCLUDED.system_user, web_root = EXCLUDED.web_root, \
                   vhost_path = EXCLUDED.vhost_path, updated_at = EXCLUDED.updated_at",
            )
            .bind(column(&rows, |h| h.owner.domain.as_str()))
            .bind(column(&rows, |h| h.owner.tenant_id))
            .bind(column(&rows, |h| h.owner.subscription_id))
            .bind(column(&rows, |h| h.owner.job_id))
            .bind(column(&rows, |h| h.server.as_str()))
            .bind(column(&rows, |h| h.system_user.as_str()))
            .bind(column(&rows, |h| h.web_root.as_str()))
            .bind(column(&rows, |h| h.vhost_path.as_str()))
            .bind(column(&rows, |h| h.owner.at))
            .execute(&mut *tx)
            .await?;
        }
        if !self.mail.is_empty() {
            let rows: Vec<(String, Mail)> = self.mail.drain().collect();
            sqlx::query(
                "INSERT INTO mail_accounts (address, domain, tenant_id, subscription_id, job_id, server, maildir, updated_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::timestamptz[]) \
                 ON CONFLICT (address) DO UPDATE SET domain = EXCLUDED.domain, tenant_id = EXCLUDED.tenant_id, \
                   subscription_id = EXCLUDED.subscription_id, job_id = EXCLUDED.job_id, \
                   server = EXCLUDED.server, maildir = EXCLUDED.maildir, updated_at = EXCLUDED.updated_at",
            )
            .bind(column(&rows, |(a, _)| a.as_str()))
            .bind(column(&rows, |(_, m)| m.owner.domain.as_str()))
            .bind(column(&rows, |(_, m)| m.owner.tenant_id))
            .bind(column(&rows, |(_, m)| m.owner.subscription_id))
            .bind(column(&rows, |(_, m)| m.owner.job_id))
            .bind(column(&rows, |(_, m)| m.server.as_str()))
            .bind(column(&rows, |(_, m)| m.maildir.as_str()))
            .bind(column(&rows, |(_, m)| m.owner.at))
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
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
