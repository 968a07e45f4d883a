//! Order intake: a paid order from the marketing site (or Stripe) becomes an `OrderPlaced`.
//!
//! The request is parsed into domain types first, the tenant and price are looked up in the
//! catalog read model (or a cache of it whose every use is re-checked by the append, ADR 0017),
//! and only then does the Order aggregate decide. Nothing is written unless
//! every check passed. The order id is derived from the tenant and the payment reference, so a
//! duplicate webhook lands on the same aggregate: same purchase → no new event (200 with the
//! same body), different purchase → refused (409).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use mpanel_domain::ids;
use mpanel_domain::order::{
    BillingInterval, Order, OrderCommand, OrderError, OrderStatus, PlaceOrder, PriceSnapshot,
};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::{Currency, DomainName, Email, Money, PaymentReference, TenantSlug};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::{BusError, CommandBus};
use crate::group_commit::Grouped;
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

#[derive(Debug, Clone, sqlx::FromRow)]
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

impl PriceRow {
    fn sold(&self) -> bool {
        self.active && !self.archived
    }
}

/// How long a looked-up price is reused. Staleness cannot place a wrong order (the append
/// re-checks the snapshot, see [`SNAPSHOT_STILL_SOLD`]); the bound only keeps memory fresh.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many (tenant, price) pairs are remembered; beyond, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// The prices the webhook recently sold, so that a new order costs one round trip (the
/// append) instead of a tenant and a price lookup first (docs/adr/0017). Only sold prices are
/// remembered; every order placed from a remembered price is appended under
/// [`SNAPSHOT_STILL_SOLD`], so a catalog change (price deactivated, product archived or
/// renamed, amount changed) is honoured exactly as by a fresh lookup: the append writes
/// nothing, the entry is dropped and the order takes the ordinary path.
#[derive(Debug, Default)]
pub struct CatalogCache {
    entries: Mutex<HashMap<(Uuid, Uuid), Sold>>,
}

/// A sold price as the cache holds it: the row, and the snapshot [`SNAPSHOT_STILL_SOLD`]
/// compares, serialised once for every order placed from it (and shared by them, so a group
/// of such orders evaluates it once).
#[derive(Debug, Clone)]
struct Sold {
    at: Instant,
    row: PriceRow,
    want: Arc<RawValue>,
}

impl CatalogCache {
    fn get(&self, tenant_id: Uuid, price_id: Uuid) -> Option<Sold> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(&(tenant_id, price_id))
            .filter(|sold| sold.at.elapsed() < CACHE_TTL)
            .cloned()
    }

    fn put(&self, price_id: Uuid, sold: &Sold) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
            entries.insert((sold.row.tenant_id, price_id), sold.clone());
        }
    }

    fn forget(&self, tenant_id: Uuid, price_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&(tenant_id, price_id));
        }
    }
}

/// The append's precondition on the fast path: the price is still sold, with exactly the
/// snapshot the order carries (`want`, from [`still_sold`]) — checked by the inserting
/// statement itself ([`crate::group_commit`]). The tenant is the price's (tenants are never
/// removed, so the price row vouches for it), and the plan is compared as jsonb: two primary-key
/// probes and no sub-select, evaluated once per group of orders for the same price.
pub const SNAPSHOT_STILL_SOLD: &str = "EXISTS (SELECT 1 FROM prices pr \
       JOIN products p ON p.id = pr.product_id \
     WHERE pr.id = (want->>'priceId')::uuid AND pr.tenant_id = (want->>'tenantId')::uuid \
       AND pr.active AND NOT p.archived AND p.id = (want->>'productId')::uuid \
       AND p.name = want->>'productName' AND to_jsonb(p.plan) = want->'plan' \
       AND pr.amount_minor = (want->>'amountMinor')::bigint AND pr.currency = want->>'currency' \
       AND pr.interval = want->>'interval')";

/// The snapshot [`SNAPSHOT_STILL_SOLD`] compares with the catalog, as JSON text.
fn still_sold(price_id: Uuid, row: &PriceRow) -> Result<Arc<RawValue>, IntakeError> {
    let want = serde_json::json!({
        "tenantId": row.tenant_id,
        "priceId": price_id,
        "productId": row.product_id,
        "productName": row.product_name,
        "plan": row.plan,
        "amountMinor": row.amount_minor,
        "currency": row.currency,
        "interval": row.interval,
    });
    Ok(serde_json::value::to_raw_value(&want)
        .map_err(storage)?
        .into())
}

/// Places (or recognises) an order.
///
/// The common case — a new payment for a price that is sold — costs no query of its own: the
/// price comes from [`CatalogCache`] and the `OrderPlaced` is appended at sequence 1 without
/// loading the (empty) aggregate, together with concurrent webhooks' orders
/// ([`crate::group_commit`]), under a precondition that re-checks the price. Anything else (the
/// order exists: a duplicate webhook; the price changed; the plan needs a domain) takes the
/// ordinary path — fresh lookups, load, decide — so duplicate semantics (docs/adr/0005) are
/// decided by the aggregate exactly as before.
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
    let order_id = ids::order_id(tenant_id, &request.payment);
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let metadata = metadata.correlated(order_id);

    let sold = match bus.catalog.get(tenant_id, request.price_id) {
        Some(sold) => Some(sold),
        None => {
            let row = lookup(pool, tenant_id, request.price_id).await?;
            if row.sold() {
                let sold = Sold {
                    at: Instant::now(),
                    want: still_sold(request.price_id, &row)?,
                    row,
                };
                bus.catalog.put(request.price_id, &sold);
                Some(sold)
            } else {
                None
            }
        }
    };
    if let Some(Sold { row, want, .. }) = sold {
        let command = place_command(&request, tenant_id, &row)?;
        let grouped = bus
            .order_intake
            .create(order_id, command, &metadata, want)
            .await
            .map_err(storage)?;
        match grouped {
            Grouped::Appended(executed) => {
                return Ok(IntakeOutcome::Created(answer(order_id, &executed.state)));
            }
            // The order exists (a duplicate) or the catalog changed: the statement does not
            // say which, so the cached price is dropped either way (a lookup is cheap).
            Grouped::NotWritten => bus.catalog.forget(tenant_id, request.price_id),
            Grouped::NotDecided => {}
        }
    }
    place_loaded(pool, bus, &request, tenant_id, order_id, &metadata).await
}

/// The ordinary path: fresh catalog lookups, the order aggregate loaded, the command decided
/// against its real state.
async fn place_loaded(
    pool: &PgPool,
    bus: &CommandBus,
    request: &OrderRequest,
    tenant_id: Uuid,
    order_id: Uuid,
    metadata: &EventMetadata,
) -> Result<IntakeOutcome, IntakeError> {
    let row = lookup(pool, tenant_id, request.price_id).await?;
    let existing = bus.orders.load(order_id).await.map_err(storage)?;
    if existing.placed().is_none() && !row.sold() {
        // A duplicate of an order placed while the price was still sold is still a duplicate.
        return Err(IntakeError::InactivePrice);
    }
    let command = place_command(request, tenant_id, &row)?;
    let executed = bus
        .orders
        .execute(order_id, command, metadata)
        .await
        .map_err(|e| match e {
            BusError::Rejected(OrderError::DifferentPaymentForSameOrder) => {
                IntakeError::ConflictingOrder
            }
            BusError::Rejected(OrderError::DomainRequired) => IntakeError::DomainRequired,
            other => storage(other),
        })?;
    let placed = answer(order_id, &executed.state);
    Ok(if executed.events.is_empty() {
        IntakeOutcome::Duplicate(placed)
    } else {
        IntakeOutcome::Created(placed)
    })
}

/// The tenant and the price, from the catalog read model.
async fn lookup(pool: &PgPool, tenant_id: Uuid, price_id: Uuid) -> Result<PriceRow, IntakeError> {
    let known: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(pool)
        .await
        .map_err(storage)?;
    if known.is_none() {
        return Err(IntakeError::UnknownTenant);
    }
    let row: Option<PriceRow> = sqlx::query_as(
        "SELECT pr.tenant_id, pr.product_id, p.name AS product_name, p.plan, p.archived, \
                pr.amount_minor, pr.currency, pr.interval, pr.active \
         FROM prices pr JOIN products p ON p.id = pr.product_id WHERE pr.id = $1",
    )
    .bind(price_id)
    .fetch_optional(pool)
    .await
    .map_err(storage)?;
    row.filter(|r| r.tenant_id == tenant_id)
        .ok_or(IntakeError::UnknownPrice)
}

fn place_command(
    request: &OrderRequest,
    tenant_id: Uuid,
    row: &PriceRow,
) -> Result<OrderCommand, IntakeError> {
    let price = PriceSnapshot {
        price_id: request.price_id,
        product_id: row.product_id,
        product_name: row.product_name.clone(),
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
    Ok(OrderCommand::Place(PlaceOrder {
        tenant_id,
        tenant_slug: request.tenant.clone(),
        customer_id: ids::customer_id(tenant_id, &request.customer_email),
        customer_email: request.customer_email.clone(),
        price,
        domain: request.domain.clone(),
        payment: request.payment.clone(),
        placed_at: Utc::now(),
    }))
}

/// The webhook's answer for the order in `state`.
fn answer(order_id: Uuid, state: &Order) -> PlacedOrder {
    let subscription_id = ids::subscription_id(order_id);
    let steps = state
        .placed()
        .map(|p| p.price.steps.clone())
        .unwrap_or_default();
    PlacedOrder {
        order_id,
        subscription_id,
        job_ids: steps
            .iter()
            .map(|s| ids::job_id(subscription_id, *s, 0))
            .collect(),
        status: state.status().unwrap_or(OrderStatus::Paid).as_str(),
    }
}

fn storage(e: impl std::fmt::Display) -> IntakeError {
    IntakeError::Storage(e.to_string())
}
