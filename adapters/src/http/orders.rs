//! `POST /api/orders`: the marketing site's order webhook.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mpanel_domain::values::{DomainName, Email, PaymentReference, TenantSlug};
use uuid::Uuid;

use super::json::{object, Fields};
use super::problem::ApiError;
use super::AppState;
use crate::intake::{place_order, IntakeError, IntakeOutcome, OrderRequest};
use crate::metadata::EventMetadata;

/// The header carrying the marketing site's shared secret.
pub const KEY_HEADER: &str = "x-internal-key";

/// Accepts a paid order: 201 new, 200 duplicate (same body), 409 same payment for something
/// else, 422 invalid or unknown, 401 bad key.
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
    let metadata = EventMetadata::new("webhook").traced(traceparent(&headers));
    let outcome = place_order(&state.pool, &state.bus, request, metadata)
        .await
        .map_err(|e| match e {
            IntakeError::UnknownTenant => ApiError::field("tenantSlug", "no such tenant"),
            IntakeError::UnknownPrice => {
                ApiError::field("priceId", "no such price in this tenant's catalog")
            }
            IntakeError::InactivePrice => {
                ApiError::field("priceId", "this price is no longer sold")
            }
            IntakeError::DomainRequired => {
                ApiError::field("domain", "is required by the product's plan")
            }
            IntakeError::ConflictingOrder => ApiError::Conflict(
                "this payment intent already placed an order with different details",
            ),
            IntakeError::Storage(e) => ApiError::Unavailable(e),
        })?;
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
    let mut fields = Fields::default();
    let tenant = fields.required(&body, "tenantSlug", TenantSlug::parse);
    let price_id = fields.required(&body, "priceId", |s| {
        Uuid::parse_str(s).map_err(|_| "must be a UUID")
    });
    let customer_email = fields.required(&body, "customerEmail", Email::parse);
    let payment = fields.required(&body, "stripePaymentIntentId", PaymentReference::parse);
    let domain = fields.optional(&body, "domain", DomainName::parse);
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

/// The W3C trace context of the request, if it sent a well-formed one.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let ok = value.len() == 55 && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then(|| value.to_owned())
}
