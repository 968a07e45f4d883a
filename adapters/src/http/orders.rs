//! `POST /api/orders`: the marketing site's order webhook.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mpanel_domain::values::{DomainName, Email, PaymentReference, TenantSlug};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::json::{object, Fields};
use super::openapi::{BadRequest, Conflict, RateLimited, Unauthorized, Unavailable};
use super::problem::ApiError;
use super::AppState;
use crate::intake::{place_order, IntakeError, IntakeOutcome, OrderRequest};
use crate::metadata::EventMetadata;

/// The header carrying the marketing site's shared secret.
pub const KEY_HEADER: &str = "x-internal-key";

/// The order webhook's body (documentation only: the handler reads it field by field so that
/// every refusal names its field).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OrderWebhookBody {
    /// The tenant's slug.
    #[schema(example = "migrahosting")]
    tenant_slug: String,
    /// A price of the tenant's catalog.
    price_id: Uuid,
    /// The buyer's e-mail.
    #[schema(example = "buyer@example.com")]
    customer_email: String,
    /// The Stripe payment intent; the same intent is the same order.
    #[schema(example = "pi_3Nc0ffee")]
    stripe_payment_intent_id: String,
    /// Required when the product's plan provisions DNS, hosting or mail.
    #[schema(example = "example.com")]
    domain: Option<String>,
}

/// What the webhook answers (the serialized [`crate::intake::PlacedOrder`]; documentation only,
/// kept in step with it by a unit test).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct OrderAccepted {
    /// The order.
    order_id: Uuid,
    /// The subscription it opens.
    subscription_id: Uuid,
    /// One provisioning job per step of the plan.
    job_ids: Vec<Uuid>,
    /// The order's status now.
    #[schema(example = "PAID")]
    status: String,
}

/// Accepts a paid order: 201 new, 200 duplicate (same body), 409 same payment for something
/// else, 422 invalid or unknown, 401 bad key.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body(content = OrderWebhookBody, content_type = "application/json"),
    params(("traceparent" = Option<String>, Header,
            description = "W3C trace context: the request's span continues this trace, and the \
                           events' metadata (so the saga and the worker) carry it on")),
    responses(
        (status = 201, description = "A new order was placed", body = OrderAccepted,
         headers(("Location" = String, description = "/api/orders/{orderId}"))),
        (status = 200, description = "This payment intent already placed this order; same body",
         body = OrderAccepted,
         headers(("Location" = String, description = "/api/orders/{orderId}"))),
        Unauthorized,
        Conflict,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("internalKey" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = headers
        .get(KEY_HEADER)
        .ok_or(ApiError::Unauthorized("missing x-internal-key header"))?;
    if !state.webhook_key_matches(key.as_bytes()) {
        return Err(ApiError::Unauthorized("invalid x-internal-key"));
    }
    let request = parse(&headers, body)?;
    // The request span's context (a child of the caller's `traceparent`, when one was sent):
    // the saga and the worker continue this trace from the events' metadata.
    let metadata = EventMetadata::new("webhook").traced(crate::telemetry::current_traceparent());
    let outcome = place_order(&state.pool, &state.bus, request, metadata)
        .await
        .map_err(|e| intake_error(e, &OrderFields::WEBHOOK))?;
    let (status, placed) = match outcome {
        IntakeOutcome::Created(p) => (StatusCode::CREATED, p),
        IntakeOutcome::Duplicate(p) => (StatusCode::OK, p),
    };
    tracing::info!(order_id = %placed.order_id, status = status.as_u16(), "order webhook accepted");
    let location = format!("/api/orders/{}", placed.order_id);
    Ok((status, [(header::LOCATION, location)], Json(placed)).into_response())
}

fn parse(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<OrderRequest, ApiError> {
    let body = object(headers, body)?;
    order_request(&body, &OrderFields::WEBHOOK)
}

/// Where each part of an order request sits in a source's payload: the marketing webhook and
/// Stripe parse the same value types, and each names the field at fault in its own terms.
pub(super) struct OrderFields {
    /// The tenant's slug.
    pub tenant: &'static str,
    /// The price's id.
    pub price_id: &'static str,
    /// The customer's e-mail.
    pub customer_email: &'static str,
    /// The payment reference (a Stripe payment intent id).
    pub payment: &'static str,
    /// The domain (optional).
    pub domain: &'static str,
}

impl OrderFields {
    /// `POST /api/orders`'s body.
    pub const WEBHOOK: Self = Self {
        tenant: "tenantSlug",
        price_id: "priceId",
        customer_email: "customerEmail",
        payment: "stripePaymentIntentId",
        domain: "domain",
    };
}

/// Parses an order request from `body`, whose keys are `names`.
///
/// # Errors
/// A 422 naming every field at fault.
pub(super) fn order_request(
    body: &Map<String, Value>,
    names: &OrderFields,
) -> Result<OrderRequest, ApiError> {
    let mut fields = Fields::default();
    let tenant = fields.required(body, names.tenant, TenantSlug::parse);
    let price_id = fields.required(body, names.price_id, |s| {
        Uuid::parse_str(s).map_err(|_| "must be a UUID")
    });
    let customer_email = fields.required(body, names.customer_email, Email::parse);
    let payment = fields.required(body, names.payment, PaymentReference::parse);
    let domain = fields.optional(body, names.domain, DomainName::parse);
    fields.finish()?;
    match (tenant, price_id, customer_email, payment, domain) {
        (Some(tenant), Some(price_id), Some(customer_email), Some(payment), Some(domain)) => {
            Ok(OrderRequest {
                tenant,
                price_id,
                customer_email,
                payment,
                domain,
            })
        }
        _ => Err(ApiError::Internal("field parsing lost an error".into())),
    }
}

/// The answer to a refused intake, naming the request field at fault in `names`' terms.
pub(super) fn intake_error(e: IntakeError, names: &OrderFields) -> ApiError {
    match e {
        IntakeError::UnknownTenant => ApiError::field(names.tenant, "no such tenant"),
        IntakeError::UnknownPrice => {
            ApiError::field(names.price_id, "no such price in this tenant's catalog")
        }
        IntakeError::InactivePrice => {
            ApiError::field(names.price_id, "this price is no longer sold")
        }
        IntakeError::DomainRequired => {
            ApiError::field(names.domain, "is required by the product's plan")
        }
        IntakeError::ConflictingOrder => {
            ApiError::Conflict("this payment intent already placed an order with different details")
        }
        IntakeError::Storage(e) => ApiError::Unavailable(e),
    }
}
