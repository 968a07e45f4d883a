//! Catalog read model: tenants, products and prices.

use async_trait::async_trait;
use mpanel_domain::product::ProductEvent;
use mpanel_domain::tenant::TenantEvent;
use sqlx::PgConnection;

use super::aggregate_uuid;
use crate::{FeedEvent, Projector, SubscriberError};

/// Builds `tenants`, `products` and `prices`.
pub struct CatalogProjector;

#[async_trait]
impl Projector for CatalogProjector {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenants", "products", "prices"]
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        match event.aggregate_type.as_str() {
            "Tenant" => apply_tenant(tx, event).await,
            "Product" => apply_product(tx, event).await,
            _ => Ok(()),
        }
    }
}

async fn apply_tenant(tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
    let id = aggregate_uuid(event)?;
    match event.decode::<TenantEvent>()? {
        TenantEvent::TenantRegistered {
            slug,
            name,
            registered_at,
        } => {
            sqlx::query(
                "INSERT INTO tenants (id, slug, name, registered_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET slug = EXCLUDED.slug, name = EXCLUDED.name",
            )
            .bind(id)
            .bind(slug.as_str())
            .bind(name)
            .bind(registered_at)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn apply_product(tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
    let id = aggregate_uuid(event)?;
    match event.decode::<ProductEvent>()? {
        ProductEvent::ProductCreated(created) => {
            let plan: Vec<&str> = created.plan.iter().map(|s| s.as_str()).collect();
            sqlx::query(
                "INSERT INTO products (id, tenant_id, name, description, plan, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(created.tenant_id)
            .bind(&created.name)
            .bind(&created.description)
            .bind(&plan)
            .bind(created.created_at)
            .execute(&mut *tx)
            .await?;
        }
        ProductEvent::ProductUpdated {
            name,
            description,
            plan,
            updated_at,
        } => {
            let plan: Vec<&str> = plan.iter().map(|s| s.as_str()).collect();
            sqlx::query(
                "UPDATE products SET name = $2, description = $3, plan = $4, updated_at = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(name)
            .bind(description)
            .bind(&plan)
            .bind(updated_at)
            .execute(&mut *tx)
            .await?;
        }
        ProductEvent::PriceAdded(added) => {
            sqlx::query(
                "INSERT INTO prices (id, product_id, tenant_id, amount_minor, currency, interval, added_at) \
                 SELECT $1, $2, p.tenant_id, $3, $4, $5, $6 FROM products p WHERE p.id = $2 \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(added.price_id)
            .bind(id)
            .bind(added.amount.amount_minor)
            .bind(added.amount.currency.as_str())
            .bind(added.interval.as_str())
            .bind(added.added_at)
            .execute(&mut *tx)
            .await?;
        }
        ProductEvent::PriceDeactivated { price_id, .. } => {
            sqlx::query("UPDATE prices SET active = false WHERE id = $1 AND product_id = $2")
                .bind(price_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        ProductEvent::ProductArchived { archived_at } => {
            sqlx::query("UPDATE products SET archived = true, updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(archived_at)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
