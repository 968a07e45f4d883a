//! Time travel: an order or subscription as it was at a position of the log
//! (`GET /api/orders/{id}?at=N`, `GET /api/subscriptions/{id}?at=N`).
//!
//! Read models only know the present, so these views fold the aggregate's own events with the
//! domain's `apply` — the same fold the command bus uses before every decision — up to the
//! event at position `N` **in feed order** `(tx_id, global_position)`: exactly what a
//! subscriber whose checkpoint is that event had seen. Read-only; nothing is written.

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::Aggregate;
use mpanel_domain::ids;
use mpanel_domain::order::Order;
use mpanel_domain::subscription::Subscription;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::problem::ApiError;
use super::views::{OrderRow, SubscriptionRow};

/// `?at=`: a global position of the event log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// Show the entity as it was once the event at this global position was committed (a
    /// position from `GET /api/orders/{id}/events` or the audit log). Without it: now.
    #[param(value_type = Option<i64>, minimum = 1)]
    at: Option<String>,
}

impl AtQuery {
    /// The requested position, if any.
    ///
    /// # Errors
    /// 422 when `at` is not a positive whole number.
    pub fn position(&self) -> Result<Option<i64>, ApiError> {
        self.at
            .as_deref()
            .map(|raw| match raw.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(ApiError::field("at", "must be a positive whole number")),
            })
            .transpose()
    }
}

/// An order as of a position: the order's fields and its subscription as of the same position
/// (jobs are not folded: see the live view for them).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderAsOf {
    #[serde(flatten)]
    pub(super) order: OrderRow,
    /// The subscription as of the same position (null before it was opened).
    pub(super) subscription: Option<SubscriptionRow>,
    /// The position this view is as of.
    pub(super) as_of: i64,
}

/// A subscription as of a position.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionAsOf {
    #[serde(flatten)]
    pub(super) subscription: SubscriptionRow,
    /// The position this view is as of.
    pub(super) as_of: i64,
}

/// Event payloads keep a time's nanoseconds, read models (Postgres) its microseconds; views as
/// of a position show what the live view would have shown.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// Folds aggregate `A`'s events up to the event at `at` in feed order. `None` when it had no
/// events by then (it did not exist yet).
async fn fold<A: Aggregate>(pool: &PgPool, id: Uuid, at: i64) -> Result<Option<A>, ApiError> {
    let tx_id: Option<i64> =
        sqlx::query_scalar("SELECT tx_id::text::bigint FROM events WHERE global_position = $1")
            .bind(at)
            .fetch_optional(pool)
            .await?;
    let tx_id = tx_id.ok_or_else(|| ApiError::field("at", "no event has this position"))?;
    let payloads: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT global_position, payload FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 \
           AND (tx_id, global_position) <= ($3::bigint::text::xid8, $4) \
         ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(id.to_string())
    .bind(tx_id)
    .bind(at)
    .fetch_all(pool)
    .await?;
    if payloads.is_empty() {
        return Ok(None);
    }
    let mut aggregate = A::default();
    for (position, payload) in payloads {
        let event: A::Event = serde_json::from_value(payload)
            .map_err(|e| ApiError::Internal(format!("event {position} does not decode: {e}")))?;
        aggregate.apply(event);
    }
    Ok(Some(aggregate))
}

/// The order and its subscription as of `at`; `None` if the order was not placed by then.
///
/// # Errors
/// 422 when no event has position `at`; database errors.
pub async fn order(
    pool: &PgPool,
    id: Uuid,
    at: i64,
) -> Result<Option<(OrderRow, Option<SubscriptionRow>)>, ApiError> {
    let Some(order) = fold::<Order>(pool, id, at).await? else {
        return Ok(None);
    };
    let (Some(placed), Some(status)) = (order.placed(), order.status()) else {
        return Ok(None);
    };
    let subscription_id = ids::subscription_id(id);
    let cancelled = order.cancelled();
    let row = OrderRow {
        id,
        tenant_id: placed.tenant_id,
        customer_id: placed.customer_id,
        customer_email: placed.customer_email.as_str().to_owned(),
        product_id: placed.price.product_id,
        product_name: placed.price.product_name.clone(),
        price_id: placed.price.price_id,
        amount_minor: placed.price.amount.amount_minor,
        currency: placed.price.amount.currency.as_str().to_owned(),
        interval: placed.price.interval.as_str().to_owned(),
        domain: placed.domain.as_ref().map(|d| d.as_str().to_owned()),
        payment_ref: placed.payment.as_str().to_owned(),
        subscription_id,
        status: status.as_str().to_owned(),
        placed_at: micros(placed.placed_at),
        fulfilled_at: order.fulfilled_at().map(micros),
        cancelled_at: cancelled.map(|(_, at)| micros(at)),
        cancel_reason: cancelled.map(|(reason, _)| reason.to_owned()),
    };
    let subscription = subscription(pool, subscription_id, at).await?;
    Ok(Some((row, subscription)))
}

/// The subscription as of `at`; `None` if it was not opened by then.
///
/// # Errors
/// 422 when no event has position `at`; database errors.
pub async fn subscription(
    pool: &PgPool,
    id: Uuid,
    at: i64,
) -> Result<Option<SubscriptionRow>, ApiError> {
    let Some(s) = fold::<Subscription>(pool, id, at).await? else {
        return Ok(None);
    };
    let (Some(status), Some(order_id)) = (s.status(), s.order_id()) else {
        return Ok(None);
    };
    let d = s.details();
    let names = |steps: &[mpanel_domain::ProvisioningStep]| {
        steps.iter().map(|s| s.as_str().to_owned()).collect()
    };
    Ok(Some(SubscriptionRow {
        id,
        order_id,
        tenant_id: d.tenant_id.unwrap_or_default(),
        customer_id: d.customer_id.unwrap_or_default(),
        domain: d.domain.as_ref().map(|d| d.as_str().to_owned()),
        status: status.as_str().to_owned(),
        required_steps: names(&s.required_steps()),
        succeeded_steps: names(&d.succeeded_in_order),
        failed_step: d.failed_step.map(|s| s.as_str().to_owned()),
        last_error: d.last_error.clone(),
        opened_at: micros(d.opened_at.unwrap_or_default()),
        activated_at: d.activated_at.map(micros),
        updated_at: micros(d.updated_at.unwrap_or_default()),
        operation: s.operation().0.as_str().to_owned(),
        generation: i32::try_from(s.operation().1).unwrap_or(i32::MAX),
        pending_steps: names(&s.pending_steps()),
        status_reason: d.status_reason.clone(),
        status_changed_by: d.status_changed_by.clone(),
    }))
}
