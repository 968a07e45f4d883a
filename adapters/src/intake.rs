//! Order intake: a paid order from the marketing site (or Stripe) becomes an `OrderPlaced`.
//!
//! The request is parsed into domain types first, the tenant and price are looked up in the
//! catalog read model, and only then does the Order aggregate decide. Nothing is written unless
//! every check passed. The order id is derived from the tenant and the payment reference, so a
//! duplicate webhook lands on the same aggregate: same purchase → no new event (200 with the
//! same body), different purchase → refused (409).

use chrono::Utc;
use mpanel_domain::ids;
use mpanel_domain::order::{
    BillingInterval, OrderCommand, OrderError, OrderStatus, PlaceOrder, PriceSnapshot,
};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::{Currency, DomainName, Email, Money, PaymentReference, TenantSlug};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::{BusError, CommandBus};
use crate::metadata::EventMetadata;

/// A validated order request.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    /// The tenant whose catalog is bought from.
    pub tenant: TenantSlug,
    /// The price bought.
    pub price_id: Uuid,
    /// The customer.
    pub customer_email: Email,
    /// The payment.
    pub payment: PaymentReference,
    /// The domain, when the plan needs one.
    pub domain: Option<DomainName>,
}

/// The answer to an order request (the webhook's response body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedOrder {
    /// The order.
    pub order_id: Uuid,
    /// The subscription it opens.
    pub subscription_id: Uuid,
    /// One provisioning job per step of the plan.
    pub job_ids: Vec<Uuid>,
    /// The order's status now.
    pub status: &'static str,
}

/// How an order request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// A new order was placed.
    Created(PlacedOrder),
    /// This purchase was already placed; nothing was written.
    Duplicate(PlacedOrder),
}

/// Why an order request was refused. Each variant names the request field at fault where there
/// is one.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// No tenant with this slug.
    #[error("unknown tenant")]
    UnknownTenant,
    /// No such price in the tenant's catalog.
    #[error("unknown price for this tenant")]
    UnknownPrice,
    /// The price or its product is no longer sold.
    #[error("price is not active")]
    InactivePrice,
    /// The plan needs a domain and none was given.
    #[error("the product's plan needs a domain")]
    DomainRequired,
    /// The payment already placed a different order.
    #[error("this payment already placed a different order")]
    ConflictingOrder,
    /// The database or event store failed.
    #[error("storage: {0}")]
    Storage(String),
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    tenant_id: Uuid,
    product_id: Uuid,
    product_name: String,
    plan: Vec<String>,
    archived: bool,
    amount_minor: i64,
    currency: String,
    interval: String,
    active: bool,
}

/// Places (or recognises) an order.
///
/// # Errors
/// [`IntakeError`]; nothing is written on any error.
#[tracing::instrument(
    name = "intake.place_order",
    skip_all,
    fields(tenant = %request.tenant, order_id = tracing::field::Empty)
)]
pub async fn place_order(
    pool: &PgPool,
    bus: &CommandBus,
    request: OrderRequest,
    metadata: EventMetadata,
) -> Result<IntakeOutcome, IntakeError> {
    let tenant_id = ids::tenant_id(&request.tenant);
    let known: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(pool)
        .await
        .map_err(storage)?;
    if known.is_none() {
        return Err(IntakeError::UnknownTenant);
    }
    let order_id = ids::order_id(tenant_id, &request.payment);
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let subscription_id = ids::subscription_id(order_id);

    let row: Option<PriceRow> = sqlx::query_as(
        "SELECT pr.tenant_id, pr.product_id, p.name AS product_name, p.plan, p.archived, \
                pr.amount_minor, pr.currency, pr.interval, pr.active \
         FROM prices pr JOIN products p ON p.id = pr.product_id WHERE pr.id = $1",
    )
    .bind(request.price_id)
    .fetch_optional(pool)
    .await
    .map_err(storage)?;
    let row = row
        .filter(|r| r.tenant_id == tenant_id)
        .ok_or(IntakeError::UnknownPrice)?;

    let existing = bus.orders.load(order_id).await.map_err(storage)?;
    if existing.placed().is_none() && (!row.active || row.archived) {
        // A duplicate of an order placed while the price was still sold is still a duplicate.
        return Err(IntakeError::InactivePrice);
    }
    let price = PriceSnapshot {
        price_id: request.price_id,
        product_id: row.product_id,
        product_name: row.product_name,
        amount: Money::new(
            row.amount_minor,
            Currency::parse(&row.currency).map_err(storage)?,
        )
        .map_err(storage)?,
        interval: BillingInterval::from_name(&row.interval)
            .ok_or_else(|| IntakeError::Storage(format!("unknown interval {:?}", row.interval)))?,
        steps: row
            .plan
            .iter()
            .filter_map(|s| ProvisioningStep::from_name(s))
            .collect(),
    };
    let command = OrderCommand::Place(PlaceOrder {
        tenant_id,
        tenant_slug: request.tenant.clone(),
        customer_id: ids::customer_id(tenant_id, &request.customer_email),
        customer_email: request.customer_email,
        price,
        domain: request.domain,
        payment: request.payment,
        placed_at: Utc::now(),
    });
    let executed = bus
        .orders
        .execute(order_id, command, &metadata.correlated(order_id))
        .await
        .map_err(|e| match e {
            BusError::Rejected(OrderError::DifferentPaymentForSameOrder) => {
                IntakeError::ConflictingOrder
            }
            BusError::Rejected(OrderError::DomainRequired) => IntakeError::DomainRequired,
            other => storage(other),
        })?;
    let steps = executed
        .state
        .placed()
        .map(|p| p.price.steps.clone())
        .unwrap_or_default();
    let placed = PlacedOrder {
        order_id,
        subscription_id,
        job_ids: steps
            .iter()
            .map(|s| ids::job_id(subscription_id, *s, 0))
            .collect(),
        status: executed
            .state
            .status()
            .unwrap_or(OrderStatus::Paid)
            .as_str(),
    };
    Ok(if executed.events.is_empty() {
        IntakeOutcome::Duplicate(placed)
    } else {
        IntakeOutcome::Created(placed)
    })
}

fn storage(e: impl std::fmt::Display) -> IntakeError {
    IntakeError::Storage(e.to_string())
}
