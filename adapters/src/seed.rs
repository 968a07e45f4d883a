//! `mpanel seed demo`: the demo tenant, its admin and one sellable product — idempotent.
//!
//! Everything goes through the command bus, so the demo catalog is in the event log like any
//! other; ids are derived from fixed names so a second run changes nothing. The admin's
//! password comes from the caller (an environment variable, never argv) and only its argon2id
//! hash is stored.

use chrono::Utc;
use mpanel_domain::ids;
use mpanel_domain::order::BillingInterval;
use mpanel_domain::product::{AddPrice, CreateProduct, ProductCommand};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::tenant::TenantCommand;
use mpanel_domain::values::{Currency, Email, Money, TenantSlug};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::CommandBus;
use crate::metadata::EventMetadata;

/// The demo tenant's slug.
pub const DEMO_TENANT: &str = "migrahosting";

/// What the seed created (printed as JSON by the CLI, read by `scripts/up.sh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seeded {
    /// Tenant slug.
    pub tenant: String,
    /// Tenant id.
    pub tenant_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// Its monthly price.
    pub price_id: Uuid,
    /// The admin's login.
    pub admin_email: String,
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
#[error("seeding {step}: {reason}")]
pub struct SeedError {
    step: &'static str,
    reason: String,
}

fn failed(step: &'static str) -> impl Fn(String) -> SeedError {
    move |reason| SeedError { step, reason }
}

/// Seeds the demo tenant (idempotent).
///
/// # Errors
/// The step that failed.
pub async fn demo(
    pool: &PgPool,
    bus: &CommandBus,
    admin_email: &Email,
    admin_password: &SecretString,
) -> Result<Seeded, SeedError> {
    let slug = TenantSlug::parse(DEMO_TENANT).map_err(|e| failed("tenant slug")(e.to_string()))?;
    let tenant_id = ids::tenant_id(&slug);
    let product_id = Uuid::new_v5(
        &ids::NAMESPACE,
        format!("seed/{slug}/product/starter-hosting").as_bytes(),
    );
    let price_id = Uuid::new_v5(
        &ids::NAMESPACE,
        format!("seed/{slug}/price/starter-hosting-monthly").as_bytes(),
    );
    let meta = EventMetadata::new("seed");
    let now = Utc::now();

    bus.tenants
        .execute(
            tenant_id,
            TenantCommand::Register {
                slug: slug.clone(),
                name: "MigraHosting".into(),
                at: now,
            },
            &meta,
        )
        .await
        .map_err(|e| failed("tenant")(e.to_string()))?;
    let create = ProductCommand::Create(CreateProduct {
        tenant_id,
        name: "Starter Hosting".into(),
        description: "One website with its own domain's DNS zone and a mailbox.".into(),
        plan: ProvisioningStep::ALL.to_vec(),
        created_at: now,
    });
    bus.products
        .execute(product_id, create, &meta)
        .await
        .map_err(|e| failed("product")(e.to_string()))?;
    let usd = Currency::parse("USD").map_err(|e| failed("price")(e.to_string()))?;
    let add = ProductCommand::AddPrice(AddPrice {
        price_id,
        amount: Money::new(999, usd).map_err(|e| failed("price")(e.to_string()))?,
        interval: BillingInterval::Month,
        added_at: now,
    });
    bus.products
        .execute(product_id, add, &meta)
        .await
        .map_err(|e| failed("price")(e.to_string()))?;

    let password = admin_password.clone();
    let hash =
        crate::auth::users::blocking(move || crate::passwords::hash(password.expose_secret()))
            .await
            .map_err(|e| failed("admin password")(e.to_string()))?
            .map_err(|e| failed("admin password")(e.to_string()))?;
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, role, password_hash) VALUES ($1, $2, $3, 'admin', $4) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(Uuid::new_v5(&ids::NAMESPACE, format!("user/{}", admin_email).as_bytes()))
    .bind(tenant_id)
    .bind(admin_email.as_str())
    .bind(hash)
    .execute(pool)
    .await
    .map_err(|e| failed("admin user")(e.to_string()))?;

    // Project the catalog now, so the API can sell the price as soon as it starts.
    let catalog = mpanel_projections::runner::Subscriber::Projector(std::sync::Arc::new(
        mpanel_projections::projectors::CatalogProjector,
    ));
    mpanel_projections::runner::catch_up(pool, &catalog, 500)
        .await
        .map_err(|f| failed("catalog projection")(f.error.to_string()))?;

    Ok(Seeded {
        tenant: slug.to_string(),
        tenant_id,
        product_id,
        price_id,
        admin_email: admin_email.to_string(),
    })
}
