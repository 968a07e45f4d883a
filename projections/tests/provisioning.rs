//! The provisioning read models when two subscriptions order the same domain, against a real
//! Postgres.
//!
//! Nothing stops two paid orders naming one domain (a customer ordering twice, two customers
//! racing), and their jobs interleave. The projector used to find a confirmed resource's owner
//! through the `domains` row, which follows the domain's *latest* registration: once the second
//! subscription had registered the domain, the first one's successful job had "no domain", the
//! projector failed on it, and the whole provisioning read model stopped at that event for good
//! (a black-box flood of orders for one domain left exactly that behind). The owner now comes
//! from the job's own `JobScheduled`.

use chrono::{DateTime, Utc};
use mpanel_domain::ids;
use mpanel_domain::job::{DnsRecord, JobAction, JobEvent, StepOutcome};
use mpanel_domain::values::{DomainName, PaymentReference};
use mpanel_domain::ProvisioningStep;
use mpanel_projections::audit::read_model_checksums;
use mpanel_projections::rebuild::{self, RebuildOptions};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::{at, commit, job_scheduled, new_event, settle};

/// One subscription's order for `domain`: its ids.
struct Buyer {
    tenant: Uuid,
    order: Uuid,
    subscription: Uuid,
}

impl Buyer {
    fn new(tenant: Uuid, payment: &str) -> Self {
        let order = ids::order_id(tenant, &PaymentReference::parse(payment).expect("payment"));
        Self {
            tenant,
            order,
            subscription: ids::subscription_id(order),
        }
    }

    fn job(&self, step: ProvisioningStep) -> Uuid {
        ids::job_id(self.subscription, step, 0)
    }

    async fn schedule(&self, pool: &PgPool, step: ProvisioningStep, domain: &DomainName) {
        let event = job_scheduled(self.subscription, self.order, self.tenant, step, domain);
        commit(pool, &[new_event("Job", self.job(step), 1, &event)], "saga").await;
    }

    async fn succeed(
        &self,
        pool: &PgPool,
        step: ProvisioningStep,
        outcome: StepOutcome,
        when: DateTime<Utc>,
    ) {
        let job = self.job(step);
        let started = JobEvent::JobStarted {
            attempt: 1,
            lease_id: Uuid::new_v5(&job, b"lease"),
            worker: "worker-1".into(),
            started_at: when,
            lease_expires_at: when,
        };
        let succeeded = JobEvent::JobSucceeded {
            subscription_id: self.subscription,
            step,
            action: JobAction::Provision,
            generation: 0,
            attempt: 1,
            outcome,
            succeeded_at: when,
        };
        commit(pool, &[new_event("Job", job, 2, &started)], "worker").await;
        commit(pool, &[new_event("Job", job, 3, &succeeded)], "worker").await;
    }
}

fn zone(domain: &DomainName, address: &str) -> StepOutcome {
    StepOutcome::Dns {
        zone: domain.fqdn(),
        records: vec![DnsRecord {
            name: domain.fqdn(),
            record_type: "A".into(),
            ttl: 3600,
            contents: vec![address.into()],
        }],
    }
}

fn hosting(domain: &DomainName, user: &str) -> StepOutcome {
    StepOutcome::Hosting {
        server: "web1".into(),
        system_user: user.into(),
        web_root: format!("/srv/www/{domain}/public"),
        vhost_path: format!("/etc/nginx/sites/{domain}.conf"),
    }
}

/// A registers the domain, B registers it too, then A's and B's jobs succeed in turn.
async fn interleave(pool: &PgPool) -> (Buyer, Buyer) {
    let tenant = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"tenant");
    let domain = DomainName::parse("shared.example").expect("domain");
    let (a, b) = (
        Buyer::new(tenant, "pi_first"),
        Buyer::new(tenant, "pi_second"),
    );
    a.schedule(pool, ProvisioningStep::Dns, &domain).await;
    a.schedule(pool, ProvisioningStep::Hosting, &domain).await;
    b.schedule(pool, ProvisioningStep::Dns, &domain).await;
    a.succeed(
        pool,
        ProvisioningStep::Dns,
        zone(&domain, "192.0.2.1"),
        at(5),
    )
    .await;
    b.schedule(pool, ProvisioningStep::Hosting, &domain).await;
    b.succeed(
        pool,
        ProvisioningStep::Dns,
        zone(&domain, "192.0.2.2"),
        at(6),
    )
    .await;
    a.succeed(
        pool,
        ProvisioningStep::Hosting,
        hosting(&domain, "u_a"),
        at(7),
    )
    .await;
    (a, b)
}

#[sqlx::test(migrations = "../migrations")]
async fn two_subscriptions_for_one_domain_do_not_stop_the_provisioning_model(pool: PgPool) {
    let (a, b) = interleave(&pool).await;
    // One event per batch: every owner is found in the log, none in the batch. (`settle`
    // fails the test if a projector fails on an event.)
    settle(&pool, 1).await;

    // The last registration owns the domain; each resource shows the job that confirmed it
    // last, and what that job's outcome said.
    let domain: (Uuid, Uuid) = sqlx::query_as(
        "SELECT subscription_id, order_id FROM domains WHERE domain = 'shared.example'",
    )
    .fetch_one(&pool)
    .await
    .expect("domain row");
    assert_eq!(domain, (b.subscription, b.order));
    let zone: (Uuid, Uuid, String) = sqlx::query_as(
        "SELECT z.subscription_id, z.job_id, r.contents[1] FROM dns_zones z \
         JOIN dns_records r USING (zone) WHERE z.zone = 'shared.example.'",
    )
    .fetch_one(&pool)
    .await
    .expect("zone row");
    assert_eq!(
        zone,
        (
            b.subscription,
            b.job(ProvisioningStep::Dns),
            "192.0.2.2".to_owned()
        )
    );
    let account: (Uuid, String, String) =
        sqlx::query_as("SELECT subscription_id, domain, system_user FROM hosting_accounts")
            .fetch_one(&pool)
            .await
            .expect("hosting row");
    assert_eq!(
        account,
        (
            a.subscription,
            "shared.example".to_owned(),
            "u_a".to_owned()
        )
    );

    // The whole log as one batch (a rebuild) finds every owner in the batch: the same models.
    let before = read_model_checksums(&pool).await.expect("checksums");
    rebuild::rebuild_all(
        &pool,
        &rebuild::select("provisioning").expect("provisioning"),
        &RebuildOptions::default(),
    )
    .await
    .expect("rebuild");
    assert_eq!(
        read_model_checksums(&pool).await.expect("checksums"),
        before
    );
}
