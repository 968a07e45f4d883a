//! Seeding shared by the projection tests: real domain events, serialised as the event store
//! does, inserted raw.
#![allow(dead_code)] // each test crate uses a different part

use chrono::{DateTime, TimeZone, Utc};
use mpanel_domain::ids;
use mpanel_domain::job::{DnsRecord, JobAction, JobEvent, ScheduleJob, StepOutcome};
use mpanel_domain::order::{BillingInterval, OrderEvent, PlaceOrder, PriceSnapshot};
use mpanel_domain::product::{AddPrice, CreateProduct, ProductEvent};
use mpanel_domain::subscription::SubscriptionEvent;
use mpanel_domain::tenant::TenantEvent;
use mpanel_domain::values::{Currency, DomainName, Email, Money, PaymentReference, TenantSlug};
use mpanel_domain::ProvisioningStep;
use mpanel_projections::runner::catch_up;
use mpanel_projections::{projectors, Checkpoint};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Seeding: real domain events, serialised as the event store does, inserted raw.

pub fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 17, minute, 4)
        .single()
        .expect("time")
}

/// One event to append: (aggregate type, aggregate id, sequence, payload).
pub struct NewEvent {
    pub aggregate_type: &'static str,
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub payload: Value,
}

pub fn new_event(
    aggregate_type: &'static str,
    aggregate_id: Uuid,
    sequence: i64,
    event: &impl Serialize,
) -> NewEvent {
    NewEvent {
        aggregate_type,
        aggregate_id,
        sequence,
        payload: serde_json::to_value(event).expect("serialise event"),
    }
}

/// Appends events in the caller's transaction, the way the command bus stores them: the event
/// type is the payload's single (externally tagged) key.
pub async fn append(conn: &mut PgConnection, events: &[NewEvent], actor: &str) -> Vec<i64> {
    let mut positions = vec![];
    for e in events {
        let event_type = e
            .payload
            .as_object()
            .and_then(|o| o.keys().next())
            .expect("externally tagged")
            .clone();
        let metadata = json!({
            "actor": actor,
            "command_id": Uuid::new_v4().to_string(),
            "correlation_id": e.aggregate_id.to_string(),
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        });
        positions.push(
            sqlx::query_scalar(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ($1, $2, $3, $4, '1', $5, $6) RETURNING global_position",
            )
            .bind(e.aggregate_type)
            .bind(e.aggregate_id.to_string())
            .bind(e.sequence)
            .bind(&event_type)
            .bind(&e.payload)
            .bind(&metadata)
            .fetch_one(&mut *conn)
            .await
            .expect("append"),
        );
    }
    positions
}

/// The saga's `JobScheduled` for `step` of a subscription's first generation, due at minute 4.
pub fn job_scheduled(
    subscription: Uuid,
    order: Uuid,
    tenant: Uuid,
    step: ProvisioningStep,
    domain: &DomainName,
) -> JobEvent {
    JobEvent::JobScheduled(ScheduleJob {
        subscription_id: subscription,
        order_id: order,
        tenant_id: tenant,
        step,
        domain: Some(domain.clone()),
        max_attempts: 5,
        due_at: at(4),
        action: JobAction::Provision,
        generation: 0,
    })
}

pub async fn commit(pool: &PgPool, events: &[NewEvent], actor: &str) -> Vec<i64> {
    let mut tx = pool.begin().await.expect("begin");
    let positions = append(&mut tx, events, actor).await;
    tx.commit().await.expect("commit");
    positions
}

/// A tenant with a product and a price, and one order provisioned through DNS and hosting to an
/// active subscription: every read model gets rows. Returns the tenant id.
pub async fn seed_tenant(pool: &PgPool, slug: &str, payment: &str, domain: &str) -> Uuid {
    let slug = TenantSlug::parse(slug).expect("slug");
    let tenant = ids::tenant_id(&slug);
    let product = Uuid::new_v5(&tenant, b"product");
    let price = Uuid::new_v5(&tenant, b"price");
    let usd = Currency::parse("USD").expect("currency");
    let amount = Money::new(999, usd).expect("money");
    let plan = vec![ProvisioningStep::Dns, ProvisioningStep::Hosting];
    let email = Email::parse("jane@example.com").expect("email");
    let payment = PaymentReference::parse(payment).expect("payment");
    let domain = DomainName::parse(domain).expect("domain");
    let order = ids::order_id(tenant, &payment);
    let customer = ids::customer_id(tenant, &email);
    let subscription = ids::subscription_id(order);
    let dns_job = ids::job_id(subscription, ProvisioningStep::Dns, 0);
    let hosting_job = ids::job_id(subscription, ProvisioningStep::Hosting, 0);

    commit(
        pool,
        &[new_event(
            "Tenant",
            tenant,
            1,
            &TenantEvent::TenantRegistered {
                slug: slug.clone(),
                name: format!("{slug} \"Hosting\" — ünïcode"),
                registered_at: at(1),
            },
        )],
        "seed",
    )
    .await;
    // Two events in one commit.
    commit(
        pool,
        &[
            new_event(
                "Product",
                product,
                1,
                &ProductEvent::ProductCreated(CreateProduct {
                    tenant_id: tenant,
                    name: "Starter Hosting".into(),
                    description: "Web, DNS\nand more".into(),
                    plan: plan.clone(),
                    created_at: at(2),
                }),
            ),
            new_event(
                "Product",
                product,
                2,
                &ProductEvent::PriceAdded(AddPrice {
                    price_id: price,
                    amount: amount.clone(),
                    interval: BillingInterval::Month,
                    added_at: at(2),
                }),
            ),
        ],
        "seed",
    )
    .await;
    commit(
        pool,
        &[new_event(
            "Order",
            order,
            1,
            &OrderEvent::OrderPlaced(PlaceOrder {
                tenant_id: tenant,
                tenant_slug: slug.clone(),
                customer_id: customer,
                customer_email: email,
                price: PriceSnapshot {
                    price_id: price,
                    product_id: product,
                    product_name: "Starter Hosting".into(),
                    amount,
                    interval: BillingInterval::Month,
                    steps: plan.clone(),
                },
                domain: Some(domain.clone()),
                payment,
                placed_at: at(3),
            }),
        )],
        "webhook",
    )
    .await;
    commit(
        pool,
        &[new_event(
            "Subscription",
            subscription,
            1,
            &SubscriptionEvent::SubscriptionOpened {
                order_id: order,
                tenant_id: tenant,
                customer_id: customer,
                domain: Some(domain.clone()),
                required_steps: plan.clone(),
                opened_at: at(3),
            },
        )],
        "saga",
    )
    .await;
    for (job, step) in [
        (dns_job, ProvisioningStep::Dns),
        (hosting_job, ProvisioningStep::Hosting),
    ] {
        commit(
            pool,
            &[new_event(
                "Job",
                job,
                1,
                &job_scheduled(subscription, order, tenant, step, &domain),
            )],
            "saga",
        )
        .await;
    }
    let outcomes = [
        (
            dns_job,
            ProvisioningStep::Dns,
            StepOutcome::Dns {
                zone: domain.fqdn(),
                records: vec![
                    DnsRecord {
                        name: domain.fqdn(),
                        record_type: "A".into(),
                        ttl: 3600,
                        contents: vec!["192.0.2.10".into()],
                    },
                    DnsRecord {
                        name: format!("www.{}", domain.fqdn()),
                        record_type: "A".into(),
                        ttl: 3600,
                        contents: vec!["192.0.2.10".into()],
                    },
                ],
            },
        ),
        (
            hosting_job,
            ProvisioningStep::Hosting,
            StepOutcome::Hosting {
                server: "web1".into(),
                system_user: "u_example".into(),
                web_root: format!("/srv/www/{domain}/public"),
                vhost_path: format!("/etc/nginx/sites/{domain}.conf"),
            },
        ),
    ];
    for (job, step, outcome) in outcomes {
        let lease = Uuid::new_v5(&job, b"lease");
        commit(
            pool,
            &[new_event(
                "Job",
                job,
                2,
                &JobEvent::JobStarted {
                    attempt: 1,
                    lease_id: lease,
                    worker: "worker-1".into(),
                    started_at: at(5),
                    lease_expires_at: at(10),
                },
            )],
            "worker",
        )
        .await;
        commit(
            pool,
            &[new_event(
                "Job",
                job,
                3,
                &JobEvent::JobSucceeded {
                    subscription_id: subscription,
                    step,
                    action: JobAction::Provision,
                    generation: 0,
                    attempt: 1,
                    outcome,
                    succeeded_at: at(6),
                },
            )],
            "worker",
        )
        .await;
    }
    commit(
        pool,
        &[
            new_event(
                "Subscription",
                subscription,
                2,
                &SubscriptionEvent::ProvisioningStepSucceeded {
                    step: ProvisioningStep::Dns,
                    job_id: dns_job,
                    succeeded_at: at(7),
                },
            ),
            new_event(
                "Subscription",
                subscription,
                3,
                &SubscriptionEvent::ProvisioningStepSucceeded {
                    step: ProvisioningStep::Hosting,
                    job_id: hosting_job,
                    succeeded_at: at(7),
                },
            ),
            new_event(
                "Subscription",
                subscription,
                4,
                &SubscriptionEvent::SubscriptionActivated {
                    order_id: order,
                    activated_at: at(7),
                },
            ),
        ],
        "saga",
    )
    .await;
    // A late commit: this transaction takes its id first but inserts after another one
    // committed, so in feed order its (higher) position comes before the other's lower one.
    let mut late = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *late)
        .await
        .expect("take an xid");
    commit(
        pool,
        &[new_event(
            "Order",
            order,
            2,
            &OrderEvent::OrderFulfilled {
                subscription_id: subscription,
                fulfilled_at: at(8),
            },
        )],
        "saga",
    )
    .await;
    append(
        &mut late,
        &[new_event(
            "Job",
            dns_job,
            4,
            &JobEvent::JobRetryRequested {
                series: 1,
                requested_by: "operator".into(),
                due_at: at(9),
            },
        )],
        "cli",
    )
    .await;
    late.commit().await.expect("commit late");
    tenant
}

// ---------------------------------------------------------------------------------------------
// Waiting for the projectors.

/// The newest event in feed order, visible to the feed yet or not (`None` for an empty log).
pub async fn log_head(pool: &PgPool) -> Option<Checkpoint> {
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT tx_id::text::bigint, global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .expect("head")
    .map(|(tx_id, position)| Checkpoint { tx_id, position })
}

/// Catches every projector (and the sealer) up to the last event, `batch` events at a time.
/// Snapshots are cluster-wide, so a transaction of a test running in parallel may hold the
/// feed back for a moment: this waits for delivery (bounded).
pub async fn settle(pool: &PgPool, batch: i64) {
    let Some(head) = log_head(pool).await else {
        return;
    };
    for _ in 0..1000 {
        let mut done = true;
        for sub in projectors::all() {
            done &= catch_up(pool, &sub, batch).await.expect("catch up") == head;
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("projectors did not reach the head");
}
