//! `mpanel-eventgen`: writes the events of N fully provisioned orders straight into the event
//! table with `COPY`, for the rebuild benchmark (scripts/bench.sh).
//!
//! The rows are exactly what the command path writes — the payloads are serialised from the
//! domain's own event types — 16 events per order: OrderPlaced, SubscriptionOpened, three jobs
//! each Scheduled/Started/Succeeded, three ProvisioningStepSucceeded, SubscriptionActivated and
//! OrderFulfilled. Catalog ids come from `mpanel seed demo`'s output.

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use clap::Parser;
use cqrs_es::DomainEvent;
use mpanel_domain::ids;
use mpanel_domain::job::{DnsRecord, JobAction, JobEvent, ScheduleJob, StepOutcome};
use mpanel_domain::order::{BillingInterval, OrderEvent, PlaceOrder, PriceSnapshot};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::subscription::SubscriptionEvent;
use mpanel_domain::values::{Currency, DomainName, Email, Money, PaymentReference, TenantSlug};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Bulk event generator.
#[derive(Parser, Debug)]
struct Args {
    /// The database (must be migrated and seeded).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Events to write (rounded up to whole orders of 16 events).
    #[arg(long)]
    events: u64,
    /// The seeded price.
    #[arg(long, env = "DEMO_PRICE_ID")]
    price: Uuid,
    /// The seeded product.
    #[arg(long)]
    product: Uuid,
    /// Events per COPY (one transaction each).
    #[arg(long, default_value_t = 64_000)]
    batch: usize,
}

/// Escapes a value for COPY's text format.
fn copy_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

struct Row {
    aggregate_type: &'static str,
    aggregate_id: Uuid,
    sequence: i64,
    event_type: String,
    payload: serde_json::Value,
    metadata: serde_json::Value,
}

fn rows_for(order_no: u64, price: Uuid, product: Uuid, tenant: &TenantSlug) -> Result<Vec<Row>> {
    let tenant_id = ids::tenant_id(tenant);
    let tag = format!("{order_no:012}");
    let email = Email::parse(&format!("gen{tag}@example.com"))?;
    let customer_id = ids::customer_id(tenant_id, &email);
    let domain = DomainName::parse(&format!("gen{tag}.bench.example"))?;
    let payment = PaymentReference::parse(&format!("pi_gen_{tag}"))?;
    let order_id = ids::order_id(tenant_id, &payment);
    let sub_id = ids::subscription_id(order_id);
    let now = Utc::now();
    let meta = |actor: &str| json!({ "actor": actor, "command_id": Uuid::new_v4().to_string(), "correlation_id": order_id.to_string() });
    let mut rows = Vec::with_capacity(16);
    let placed = OrderEvent::OrderPlaced(PlaceOrder {
        tenant_id,
        tenant_slug: tenant.clone(),
        customer_id,
        customer_email: email,
        price: PriceSnapshot {
            price_id: price,
            product_id: product,
            product_name: "Starter Hosting".into(),
            amount: Money::new(999, Currency::parse("USD")?)?,
            interval: BillingInterval::Month,
            steps: ProvisioningStep::ALL.to_vec(),
        },
        domain: Some(domain.clone()),
        payment,
        placed_at: now,
    });
    rows.push(Row {
        aggregate_type: "Order",
        aggregate_id: order_id,
        sequence: 1,
        event_type: placed.event_type(),
        payload: serde_json::to_value(&placed)?,
        metadata: meta("webhook"),
    });
    let mut sub_seq = 0;
    let mut sub_event = |e: SubscriptionEvent, rows: &mut Vec<Row>| -> Result<()> {
        sub_seq += 1;
        rows.push(Row {
            aggregate_type: "Subscription",
            aggregate_id: sub_id,
            sequence: sub_seq,
            event_type: e.event_type(),
            payload: serde_json::to_value(&e)?,
            metadata: meta("saga"),
        });
        Ok(())
    };
    sub_event(
        SubscriptionEvent::SubscriptionOpened {
            order_id,
            tenant_id,
            customer_id,
            domain: Some(domain.clone()),
            required_steps: ProvisioningStep::ALL.to_vec(),
            opened_at: now,
        },
        &mut rows,
    )?;
    for step in ProvisioningStep::ALL {
        let job_id = ids::job_id(sub_id, step, 0);
        let outcome = match step {
            ProvisioningStep::Dns => StepOutcome::Dns {
                zone: domain.fqdn(),
                records: vec![DnsRecord {
                    name: format!("www.{}", domain.fqdn()),
                    record_type: "A".into(),
                    ttl: 3600,
                    contents: vec!["127.0.0.1".into()],
                }],
            },
            ProvisioningStep::Hosting => StepOutcome::Hosting {
                server: "web1".into(),
                system_user: format!("h{}", &tag[..12]),
                web_root: format!("/srv/{domain}/public_html"),
                vhost_path: format!("/srv/vhosts/{domain}.conf"),
            },
            ProvisioningStep::Mail => StepOutcome::Mail {
                address: format!("postmaster@{domain}"),
                server: "mail1".into(),
                maildir: format!("/var/mail/{domain}/postmaster"),
            },
        };
        let lease = Uuid::new_v4();
        let events = [
            JobEvent::JobScheduled(ScheduleJob {
                subscription_id: sub_id,
                order_id,
                tenant_id,
                step,
                domain: Some(domain.clone()),
                max_attempts: 5,
                due_at: now,
                action: JobAction::Provision,
                generation: 0,
            }),
            JobEvent::JobStarted {
                attempt: 1,
                lease_id: lease,
                worker: "bench".into(),
                started_at: now,
                lease_expires_at: now + Duration::seconds(120),
            },
            JobEvent::JobSucceeded {
                subscription_id: sub_id,
                step,
                action: JobAction::Provision,
                generation: 0,
                attempt: 1,
                outcome,
                succeeded_at: now,
            },
        ];
        for (i, e) in events.into_iter().enumerate() {
            rows.push(Row {
                aggregate_type: "Job",
                aggregate_id: job_id,
                sequence: i64::try_from(i).unwrap_or(0) + 1,
                event_type: e.event_type(),
                payload: serde_json::to_value(&e)?,
                metadata: meta("worker"),
            });
        }
        sub_event(
            SubscriptionEvent::ProvisioningStepSucceeded {
                step,
                job_id,
                succeeded_at: now,
            },
            &mut rows,
        )?;
    }
    sub_event(
        SubscriptionEvent::SubscriptionActivated {
            order_id,
            activated_at: now,
        },
        &mut rows,
    )?;
    let fulfilled = OrderEvent::OrderFulfilled {
        subscription_id: sub_id,
        fulfilled_at: now,
    };
    rows.push(Row {
        aggregate_type: "Order",
        aggregate_id: order_id,
        sequence: 2,
        event_type: fulfilled.event_type(),
        payload: serde_json::to_value(&fulfilled)?,
        metadata: meta("saga"),
    });
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .context("connecting")?;
    let tenant = TenantSlug::parse("migrahosting")?;
    let orders = args.events.div_ceil(16);
    let started = std::time::Instant::now();
    let mut buffer = String::new();
    let mut in_batch = 0usize;
    let mut written = 0u64;
    for n in 0..orders {
        for row in rows_for(n, args.price, args.product, &tenant)? {
            buffer.push_str(&format!(
                "{}\t{}\t{}\t{}\t1\t{}\t{}\n",
                row.aggregate_type,
                row.aggregate_id,
                row.sequence,
                row.event_type,
                copy_escape(&row.payload.to_string()),
                copy_escape(&row.metadata.to_string()),
            ));
            in_batch += 1;
            written += 1;
        }
        if in_batch >= args.batch || n + 1 == orders {
            let mut conn = pool.acquire().await?;
            let mut copy = conn
                .copy_in_raw("COPY events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) FROM STDIN")
                .await?;
            copy.send(buffer.as_bytes()).await?;
            copy.finish().await?;
            buffer.clear();
            in_batch = 0;
        }
    }
    println!(
        "{}",
        json!({ "events": written, "orders": orders, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}
