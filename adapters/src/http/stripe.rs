//! `POST /api/webhooks/stripe`: Stripe's `payment_intent.succeeded` becomes an order (ADR 0009).
//!
//! The raw body is authenticated first (`Stripe-Signature`, v1 = HMAC-SHA256 over `t.body`,
//! 300 s tolerance) and parsed only then. A handled event goes through the same intake as the
//! marketing webhook ([`place_order`], actor `stripe`) and is recorded in `stripe_events` after
//! the intake succeeded, so a replayed event id is answered without touching intake while a
//! failed one stays retryable by Stripe.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::{Choice, ConstantTimeEq};
use uuid::Uuid;

use super::json;
use super::orders::{intake_error, order_request, OrderFields};
use super::problem::{ApiError, PROBLEM_JSON};
use super::AppState;
use crate::intake::{place_order, IntakeOutcome};
use crate::metadata::EventMetadata;

/// The header carrying Stripe's signature.
pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// How far (seconds) a signature's timestamp may be from our clock, either way. Stripe's own
/// libraries use 300 s: long enough for clock skew and slow delivery, short enough that a
/// captured request cannot be replayed later.
pub const TOLERANCE_SECS: u64 = 300;

/// The one event type that places an order; every other type is acknowledged and ignored.
pub const PAYMENT_INTENT_SUCCEEDED: &str = "payment_intent.succeeded";

/// The actor recorded in the metadata of the events a Stripe delivery causes.
pub const ACTOR: &str = "stripe";

/// Where a `payment_intent.succeeded` carries the order, named as a 422 names them. The
/// e-mail is the intent's `receipt_email`, or `metadata.customerEmail` when that is unset.
const INTENT_FIELDS: OrderFields = OrderFields {
    tenant: "metadata.tenantSlug",
    price_id: "metadata.priceId",
    customer_email: "receipt_email",
    payment: "id",
    domain: "metadata.domain",
};

/// The `v1` signature of `body` sent at `timestamp` (unix seconds), as lowercase hex:
/// HMAC-SHA256 keyed with the whole endpoint secret (`whsec_…` included) over `"{timestamp}."`
/// followed by the raw body bytes.
///
/// Public so tests and operators' tooling can sign a payload exactly as Stripe does; the header
/// Stripe sends is `t={timestamp},v1={sign(..)}`.
#[must_use]
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret.as_bytes(), timestamp, body))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Why a delivery's signature was refused. The messages never contain the header, the
/// signatures or the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("missing Stripe-Signature header")]
    Missing,
    /// The header does not have the `t=…,v1=…` shape.
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` signature matches the body under our secret.
    #[error("no v1 signature matches the body")]
    Mismatch,
    /// The signature is valid but its timestamp is more than [`TOLERANCE_SECS`] from our clock.
    #[error("signature timestamp is outside the tolerance")]
    OutsideTolerance,
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SignatureHeader {
    timestamp: i64,
    /// The `v1` values that decode as 32 bytes of hex; others cannot match and are dropped.
    v1: Vec<[u8; 32]>,
}

/// Parses `t=<unix>,v1=<hex>[,v1=<hex>…]`; other schemes (`v0`, future ones) are ignored, as
/// Stripe's libraries do, so a signature scheme Stripe adds later does not break delivery.
fn parse_header(value: &str) -> Result<SignatureHeader, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut any_v1 = false;
    for item in value.split(',') {
        let (key, val) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an element has no '='"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one timestamp"));
                }
                let t = val
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("the timestamp is not an integer"))?;
                timestamp = Some(t);
            }
            "v1" => {
                any_v1 = true;
                let mut bytes = [0u8; 32];
                if hex::decode_to_slice(val, &mut bytes).is_ok() {
                    v1.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
    if !any_v1 {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// Checks a delivery: some `v1` in `header` is the signature of `body` under `secret`
/// (compared in constant time, every candidate checked), and its timestamp is within
/// [`TOLERANCE_SECS`] of `now` (unix seconds). The tolerance is checked after the signature,
/// so only a holder of the secret learns that the clocks disagree.
///
/// # Errors
/// [`SignatureError`].
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let parsed = parse_header(header)?;
    let expected = mac(secret, parsed.timestamp, body);
    let matched = parsed.v1.iter().fold(Choice::from(0), |acc, candidate| {
        acc | expected.ct_eq(candidate)
    });
    if !bool::from(matched) {
        return Err(SignatureError::Mismatch);
    }
    if now.abs_diff(parsed.timestamp) > TOLERANCE_SECS {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(())
}

/// What the Stripe endpoint answers besides success: a refused signature is a 400 (what Stripe
/// recommends), everything else is an [`ApiError`].
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The delivery is not authentic (or too old).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Any other refusal or failure.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for StripeError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Signature(e) => {
                tracing::warn!(reason = %e, "stripe webhook signature refused");
                let body = json!({
                    "type": "urn:mpanel:problem:invalid-signature",
                    "title": "Invalid signature",
                    "status": StatusCode::BAD_REQUEST.as_u16(),
                    "detail": e.to_string(),
                });
                let mut response = (StatusCode::BAD_REQUEST, body.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
                response
            }
        }
    }
}

/// An authenticated Stripe event.
#[derive(Debug)]
struct StripeEvent {
    id: String,
    kind: String,
    /// `data.object` (the payment intent, for the type we handle).
    object: Option<Map<String, Value>>,
}

/// Receives a Stripe event: 200 `{received, …}` when handled, ignored or a replay; 400 for a
/// bad signature; 422 for a payment intent whose metadata cannot place an order; 409 when the
/// intent already placed a different order; 503 when not configured or storage is down.
///
/// # Errors
/// [`StripeError`].
#[utoipa::path(
    post,
    path = "/api/webhooks/stripe",
    tag = "orders",
    params((
        "Stripe-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">` (several v1 allowed)"
    )),
    request_body(content = Object, content_type = "application/json",
                 description = "A Stripe event; `payment_intent.succeeded` places an order"),
    responses(
        (status = 200, description = "Handled, ignored (other event types) or a replay", body = Object),
        (status = 400, description = "Missing, malformed, stale or wrong signature",
         body = super::problem::Problem, content_type = "application/problem+json"),
        super::openapi::Conflict,
        super::openapi::BadRequest,
        super::openapi::RateLimited,
        super::openapi::Unavailable
    )
)]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, StripeError> {
    let Some(secret) = state.stripe_secret.clone() else {
        return Err(ApiError::Unavailable("STRIPE_WEBHOOK_SECRET is not configured".into()).into());
    };
    let body = json::bytes(body)?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .ok_or(SignatureError::Missing)?
        .to_str()
        .map_err(|_| SignatureError::Malformed("not visible ASCII"))?;
    verify(
        secret.expose_secret().as_bytes(),
        signature,
        &body,
        chrono::Utc::now().timestamp(),
    )?;

    let event = parse_event(&body)?;
    if let Some(order_id) = recorded(&state.pool, &event.id).await? {
        tracing::info!(event_id = %event.id, "stripe event replayed");
        let mut answer = json!({ "received": true, "duplicate": true });
        if let Some(order_id) = order_id {
            answer["orderId"] = json!(order_id);
        }
        return Ok(Json(answer).into_response());
    }
    if event.kind != PAYMENT_INTENT_SUCCEEDED {
        record(&state.pool, &event, None).await?;
        tracing::info!(event_id = %event.id, event_type = %event.kind, "stripe event ignored");
        return Ok(Json(json!({ "received": true, "ignored": true })).into_response());
    }

    let (fields, names) = intent_fields(event.object.as_ref());
    let request = order_request(&fields, &names)?;
    let metadata = EventMetadata::new(ACTOR).traced(crate::telemetry::current_traceparent());
    let outcome = place_order(&state.pool, &state.bus, request, metadata)
        .await
        .map_err(|e| intake_error(e, &names))?;
    let (created, placed) = match outcome {
        IntakeOutcome::Created(p) => (true, p),
        IntakeOutcome::Duplicate(p) => (false, p),
    };
    record(&state.pool, &event, Some(placed.order_id)).await?;
    tracing::info!(
        event_id = %event.id,
        order_id = %placed.order_id,
        created,
        "stripe payment accepted"
    );
    let mut answer = serde_json::to_value(&placed)
        .map_err(|e| ApiError::Internal(format!("serialising the placed order: {e}")))?;
    answer["received"] = json!(true);
    answer["duplicate"] = json!(false);
    answer["created"] = json!(created);
    Ok(Json(answer).into_response())
}

/// Parses the authenticated body's envelope: `{id, type, data: {object}}`.
fn parse_event(body: &[u8]) -> Result<StripeEvent, ApiError> {
    let mut event = json::parse_object(body)?;
    let id = match event.remove("id") {
        Some(Value::String(id)) if is_event_id(&id) => id,
        _ => {
            return Err(ApiError::field(
                "body",
                "the event's id must be 1 to 255 letters, digits, '_' or '-'",
            ))
        }
    };
    let kind = match event.remove("type") {
        Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= 255 => kind,
        _ => return Err(ApiError::field("body", "the event has no type")),
    };
    let object = match event.remove("data") {
        Some(Value::Object(mut data)) => match data.remove("object") {
            Some(Value::Object(object)) => Some(object),
            _ => None,
        },
        _ => None,
    };
    Ok(StripeEvent { id, kind, object })
}

fn is_event_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The payment intent's order fields, flattened under the names a 422 uses, and those names.
fn intent_fields(intent: Option<&Map<String, Value>>) -> (Map<String, Value>, OrderFields) {
    let empty = Map::new();
    let intent = intent.unwrap_or(&empty);
    let metadata = intent
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut names = INTENT_FIELDS;
    let mut fields = Map::new();
    let mut copy = |name: &'static str, value: Option<&Value>| {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            fields.insert(name.to_owned(), v.clone());
        }
    };
    copy(names.tenant, metadata.get("tenantSlug"));
    copy(names.price_id, metadata.get("priceId"));
    copy(names.domain, metadata.get("domain"));
    copy(names.payment, intent.get("id"));
    if intent.get("receipt_email").is_none_or(Value::is_null) {
        names.customer_email = "metadata.customerEmail";
        copy(names.customer_email, metadata.get("customerEmail"));
    } else {
        copy(names.customer_email, intent.get("receipt_email"));
    }
    (fields, names)
}

/// Whether the event id was already handled (`Some`, with the order it placed, if any).
async fn recorded(pool: &PgPool, event_id: &str) -> Result<Option<Option<Uuid>>, ApiError> {
    sqlx::query_scalar("SELECT order_id FROM stripe_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| storage(&format!("looking up stripe event {event_id}"), e))
}

/// Records a handled event; a concurrent delivery of the same id may have recorded it first.
async fn record(
    pool: &PgPool,
    event: &StripeEvent,
    order_id: Option<Uuid>,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO stripe_events (event_id, event_type, order_id) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(order_id)
    .execute(pool)
    .await
    .map_err(|e| storage(&format!("recording stripe event {}", event.id), e))?;
    Ok(())
}

/// A storage failure with what was being done; always 5xx, so Stripe retries.
fn storage(doing: &str, e: sqlx::Error) -> ApiError {
    match ApiError::from(e) {
        ApiError::Unavailable(m) => ApiError::Unavailable(format!("{doing}: {m}")),
        ApiError::Internal(m) => ApiError::Internal(format!("{doing}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret_0123456789";
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;
    const T: i64 = 1_700_000_000;

    fn header_for(secret: &str, t: i64, body: &[u8]) -> String {
        format!("t={t},v1={}", sign(secret, t, body))
    }

    #[test]
    fn sign_is_hmac_sha256_over_timestamp_dot_body() {
        // Computed independently: python3 hmac.new(secret, b"1700000000." + body, sha256).
        assert_eq!(
            sign(SECRET, T, BODY),
            "7e9a82a20098cf01f04d9c09f5a7459669bfecf51392ce3adb1445906fceff61"
        );
    }

    #[test]
    fn a_header_parses_into_timestamp_and_v1_signatures() {
        let a = "a".repeat(64);
        let b = "0B".repeat(32);
        let parsed = parse_header(&format!("t=12, v1={a},v0=zz,v1={b},v9=x")).expect("parses");
        assert_eq!(parsed.timestamp, 12);
        assert_eq!(parsed.v1, vec![[0xaa; 32], [0x0b; 32]]);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v1 = "a".repeat(64);
        for bad in [
            String::new(),
            format!("v1={v1}"),
            "t=12".to_owned(),
            "t=12,v0=abc".to_owned(),
            format!("t=abc,v1={v1}"),
            format!("t=12.5,v1={v1}"),
            format!("t=1,t=2,v1={v1}"),
            format!("t=12,v1{v1}"),
            format!("t=12;v1={v1}"),
        ] {
            assert!(
                matches!(parse_header(&bad), Err(SignatureError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_valid_signature_within_the_tolerance_verifies() {
        let header = header_for(SECRET, T, BODY);
        assert_eq!(verify(SECRET.as_bytes(), &header, BODY, T), Ok(()));
        assert_eq!(verify(SECRET.as_bytes(), &header, BODY, T + 300), Ok(()));
        assert_eq!(verify(SECRET.as_bytes(), &header, BODY, T - 300), Ok(()));
    }

    #[test]
    fn a_timestamp_beyond_300_seconds_either_way_is_refused() {
        let header = header_for(SECRET, T, BODY);
        for now in [T + 301, T - 301, i64::MAX, i64::MIN] {
            assert_eq!(
                verify(SECRET.as_bytes(), &header, BODY, now),
                Err(SignatureError::OutsideTolerance)
            );
        }
    }

    #[test]
    fn a_tampered_body_another_secret_or_a_moved_timestamp_is_refused() {
        let header = header_for(SECRET, T, BODY);
        let tampered = br#"{"id":"evt_2"}"#;
        assert_eq!(
            verify(SECRET.as_bytes(), &header, tampered, T),
            Err(SignatureError::Mismatch)
        );
        let other = header_for("whsec_another_secret_0000", T, BODY);
        assert_eq!(
            verify(SECRET.as_bytes(), &other, BODY, T),
            Err(SignatureError::Mismatch)
        );
        let moved = format!("t={},v1={}", T + 1, sign(SECRET, T, BODY));
        assert_eq!(
            verify(SECRET.as_bytes(), &moved, BODY, T),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_one_matching_v1_among_several_is_enough() {
        let good = sign(SECRET, T, BODY);
        let wrong = sign("whsec_rolled_secret_000000", T, BODY);
        for header in [
            format!("t={T},v1={wrong},v1={good}"),
            format!("t={T},v1={good},v1={wrong}"),
            format!("t={T},v1=not-hex,v0={wrong},v1={good}"),
            format!("v1={good},t={T}"),
        ] {
            assert_eq!(
                verify(SECRET.as_bytes(), &header, BODY, T),
                Ok(()),
                "{header}"
            );
        }
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                &format!("t={T},v1={wrong},v1=xyz"),
                BODY,
                T
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                &format!("t={T},v1={}", &good[..62]),
                BODY,
                T
            ),
            Err(SignatureError::Mismatch),
            "a truncated signature never matches"
        );
    }

    #[test]
    fn errors_never_echo_the_header() {
        let good = sign(SECRET, T, BODY);
        for header in [format!("t=x,v1={good}"), format!("t={T},v1={good}")] {
            if let Err(e) = verify(SECRET.as_bytes(), &header, b"other", T) {
                assert!(!e.to_string().contains(&good));
            }
        }
    }

    #[test]
    fn the_envelope_is_parsed_and_bad_ids_refused() {
        let event = parse_event(
            br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1"}}}"#,
        )
        .expect("parses");
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.kind, PAYMENT_INTENT_SUCCEEDED);
        assert_eq!(event.object.expect("object")["id"], "pi_1");
        for bad in [
            &br#"{"type":"x"}"#[..],
            br#"{"id":"evt 1","type":"x"}"#,
            br#"{"id":"","type":"x"}"#,
            br#"{"id":7,"type":"x"}"#,
            br#"{"id":"evt_1"}"#,
            br#"[1]"#,
            br#"{"id":"#,
        ] {
            assert!(
                parse_event(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_email_is_the_receipt_email_else_the_metadata() {
        let intent = json!({
            "id": "pi_1",
            "receipt_email": "jane@example.com",
            "metadata": {"tenantSlug": "t", "priceId": "p", "customerEmail": "other@example.com"}
        });
        let (fields, names) = intent_fields(intent.as_object());
        assert_eq!(names.customer_email, "receipt_email");
        assert_eq!(fields["receipt_email"], "jane@example.com");
        assert_eq!(fields["id"], "pi_1");
        assert_eq!(fields["metadata.tenantSlug"], "t");
        assert!(!fields.contains_key("metadata.domain"));

        let intent = json!({
            "id": "pi_1",
            "receipt_email": null,
            "metadata": {"customerEmail": "other@example.com"}
        });
        let (fields, names) = intent_fields(intent.as_object());
        assert_eq!(names.customer_email, "metadata.customerEmail");
        assert_eq!(fields["metadata.customerEmail"], "other@example.com");
    }

    #[test]
    fn missing_metadata_is_refused_naming_each_field() {
        let intent = json!({"id": "pi_1", "metadata": {"priceId": "nope"}});
        let (fields, names) = intent_fields(intent.as_object());
        let Err(ApiError::Validation(errors)) = order_request(&fields, &names) else {
            panic!("accepted");
        };
        let named: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "metadata.tenantSlug",
                "metadata.priceId",
                "metadata.customerEmail"
            ]
        );
    }
}
