//! `GET /api/public/products?tenant=slug`: what the marketing site may sell.

use axum::extract::{Query, State};
use axum::Json;
use mpanel_domain::ids;
use mpanel_domain::values::TenantSlug;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::openapi::{InvalidParameter, NotFound, RateLimited, Unavailable};
use super::problem::ApiError;
use super::AppState;

/// Query parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductsQuery {
    /// The tenant's slug (required).
    #[param(required = true, example = "migrahosting")]
    tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublicCatalog {
    tenant: PublicTenant,
    products: Vec<PublicProduct>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PublicTenant {
    slug: String,
    name: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PublicProduct {
    id: Uuid,
    name: String,
    description: String,
    plan: Vec<String>,
    prices: Vec<PublicPrice>,
}

#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PublicPrice {
    id: Uuid,
    #[serde(skip)]
    product_id: Uuid,
    amount_minor: i64,
    currency: String,
    interval: String,
}

/// Active products with their active prices.
#[utoipa::path(
    get,
    path = "/api/public/products",
    tag = "public",
    params(ProductsQuery),
    responses(
        (status = 200, description = "The tenant and its active products with their active prices",
         body = PublicCatalog),
        InvalidParameter,
        NotFound,
        RateLimited,
        Unavailable
    )
)]
pub async fn products(
    State(state): State<AppState>,
    Query(query): Query<ProductsQuery>,
) -> Result<Json<PublicCatalog>, ApiError> {
    let slug = query
        .tenant
        .ok_or_else(|| ApiError::field("tenant", "is required"))
        .and_then(|t| {
            TenantSlug::parse(&t).map_err(|e| ApiError::field("tenant", e.to_string()))
        })?;
    let tenant_id = ids::tenant_id(&slug);
    let tenant: Option<(String, String)> =
        sqlx::query_as("SELECT slug, name FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&state.pool)
            .await?;
    let (slug, name) = tenant.ok_or(ApiError::NotFound("no such tenant"))?;
    let products: Vec<(Uuid, String, String, Vec<String>)> = sqlx::query_as(
        "SELECT id, name, description, plan FROM products WHERE tenant_id = $1 AND NOT archived ORDER BY created_at, id",
    )
    .bind(tenant_id)
    .fetch_all(&state.pool)
    .await?;
    let prices: Vec<PublicPrice> = sqlx::query_as(
        "SELECT id, product_id, amount_minor, currency, interval FROM prices \
         WHERE tenant_id = $1 AND active ORDER BY added_at, id",
    )
    .bind(tenant_id)
    .fetch_all(&state.pool)
    .await?;
    let mut by_product: std::collections::HashMap<Uuid, Vec<PublicPrice>> =
        std::collections::HashMap::new();
    for price in prices {
        by_product.entry(price.product_id).or_default().push(price);
    }
    let products = products
        .into_iter()
        .filter_map(|(id, name, description, plan)| {
            let prices = by_product.remove(&id)?;
            Some(PublicProduct {
                id,
                name,
                description,
                plan,
                prices,
            })
        })
        .collect();
    Ok(Json(PublicCatalog {
        tenant: PublicTenant { slug, name },
        products,
    }))
}
