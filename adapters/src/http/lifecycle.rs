//! Subscription lifecycle and order cancellation (issue #10): staff ask, the saga schedules one
//! converging job per step, and the status follows confirmed outcomes only (SUSPENDING until
//! every step confirmed, then SUSPENDED, and so on).
//!
//! Every endpoint answers 202 with the subscription's status when it started an operation, and
//! 200 with the same body when there was nothing to do (already suspended, already being
//! terminated…), so a client retrying after a timeout converges instead of failing. The
//! permission check and the tenant check read the aggregate, not a read model, so a
//! subscription opened a moment ago can already be acted on.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use mpanel_domain::ids;
use mpanel_domain::order::{OrderCommand, OrderError};
use mpanel_domain::subscription::{Subscription, SubscriptionCommand, SubscriptionError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::json::{object, parse_uuid, Fields};
use super::openapi::{
    BadRequest, Conflict, Forbidden, InvalidParameter, NotFound, RateLimited, Unauthorized,
    Unavailable,
};
use super::problem::ApiError;
use super::AppState;
use crate::auth::{Caller, Role};
use crate::bus::{BusError, Executed};
use crate::metadata::EventMetadata;

/// Who may suspend and unsuspend (support handles non-payment and abuse desks).
const SUSPENDERS: &[Role] = &[Role::Admin, Role::Support];
/// Who may terminate, re-provision and cancel orders.
const ADMINS: &[Role] = &[Role::Admin];

/// The longest reason kept (a sentence or two for the customer's file).
const MAX_REASON_CHARS: usize = 500;

/// What every lifecycle endpoint answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleAccepted {
    /// The subscription.
    subscription_id: Uuid,
    /// Its status after the request (e.g. `SUSPENDING`; `SUSPENDED` once every step confirms).
    #[schema(example = "SUSPENDING")]
    status: String,
    /// The operation in progress or last completed (`SUSPEND`, `UNSUSPEND`, `TERMINATE`,
    /// `PROVISION`).
    #[schema(example = "SUSPEND")]
    operation: String,
    /// Its generation: the jobs of this operation carry it.
    generation: u32,
    /// Steps whose jobs have not confirmed the operation yet.
    pending_steps: Vec<String>,
    /// Whether this request started the operation (`false`: it was already in that state or
    /// under way, and nothing was recorded).
    started: bool,
}

/// A body with a required reason.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReasonBody {
    /// Why (1–500 characters), recorded with the actor in the event log.
    #[schema(example = "unpaid invoice 2026-11")]
    reason: String,
}

/// Reads `{"reason": "..."}`: present, not blank, at most [`MAX_REASON_CHARS`] characters,
/// no control characters (the reason ends up in logs and on screens).
fn reason(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let body = object(headers, body)?;
    let mut fields = Fields::default();
    let reason = fields.required(&body, "reason", |raw| {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            Err("must not be blank")
        } else if trimmed.chars().count() > MAX_REASON_CHARS {
            Err("must be at most 500 characters")
        } else if trimmed.chars().any(char::is_control) {
            Err("must not contain control characters")
        } else {
            Ok(trimmed.to_owned())
        }
    });
    fields.finish()?;
    reason.ok_or(ApiError::Internal("field parsing lost an error".into()))
}

/// Loads the subscription and checks the caller may act on it (another tenant's is 404).
async fn visible_subscription(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Subscription, ApiError> {
    let subscription = state
        .bus
        .subscriptions
        .load(id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let tenant = subscription
        .status()
        .and(subscription.details().tenant_id)
        .ok_or(ApiError::NotFound("no such subscription"))?;
    caller.tenant_scope(tenant)?;
    Ok(subscription)
}

/// Runs one lifecycle command and answers 202 (started) or 200 (nothing to do).
async fn run(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    command: SubscriptionCommand,
) -> Result<Response, ApiError> {
    let subscription = visible_subscription(state, caller, id).await?;
    let mut metadata = EventMetadata::new(caller.user_id.to_string());
    if let Some(order) = subscription.order_id() {
        metadata = metadata.correlated(order);
    }
    let executed = state
        .bus
        .subscriptions
        .execute(id, command, &metadata)
        .await
        .map_err(subscription_error)?;
    Ok(answer(id, &executed))
}

fn answer(id: Uuid, executed: &Executed<Subscription>) -> Response {
    let state = &executed.state;
    let (action, generation) = state.operation();
    let started = !executed.events.is_empty();
    let body = LifecycleAccepted {
        subscription_id: id,
        status: state.status().map_or("UNKNOWN", |s| s.as_str()).to_owned(),
        operation: action.as_str().to_owned(),
        generation,
        pending_steps: state
            .pending_steps()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        started,
    };
    accepted_or_ok(started, body)
}

/// 202 when the request started something, 200 when there was nothing to do: a client that
/// retries after a timeout converges instead of failing.
fn accepted_or_ok(started: bool, body: impl Serialize) -> Response {
    let status = if started {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

fn subscription_error(error: BusError<SubscriptionError>) -> ApiError {
    match error {
        BusError::Rejected(SubscriptionError::NotOpened) => {
            ApiError::NotFound("no such subscription")
        }
        BusError::Rejected(SubscriptionError::ReasonRequired) => {
            ApiError::field("reason", "is required")
        }
        BusError::Rejected(refused @ SubscriptionError::NotAllowed { .. }) => {
            ApiError::StateConflict(refused.to_string())
        }
        BusError::Rejected(other) => ApiError::Internal(other.to_string()),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// `POST /api/subscriptions/{id}/suspend` `{reason}` (admin, support).
#[utoipa::path(
    post,
    path = "/api/subscriptions/{id}/suspend",
    tag = "lifecycle",
    params(("id" = Uuid, Path, description = "The subscription")),
    request_body(content = ReasonBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Suspension started: SUSPENDING until the site and mailbox confirm, then SUSPENDED", body = LifecycleAccepted),
        (status = 200, description = "Already suspended or suspending: nothing recorded", body = LifecycleAccepted),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn suspend(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(SUSPENDERS)?;
    let id = parse_uuid("id", &id)?;
    let reason = reason(&headers, body)?;
    let command = SubscriptionCommand::Suspend {
        reason,
        requested_by: caller.user_id.to_string(),
        at: Utc::now(),
    };
    run(&state, &caller, id, command).await
}

/// `POST /api/subscriptions/{id}/unsuspend` (admin, support).
#[utoipa::path(
    post,
    path = "/api/subscriptions/{id}/unsuspend",
    tag = "lifecycle",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses(
        (status = 202, description = "Unsuspension started: UNSUSPENDING, then ACTIVE", body = LifecycleAccepted),
        (status = 200, description = "Already active or unsuspending: nothing recorded", body = LifecycleAccepted),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn unsuspend(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(SUSPENDERS)?;
    let id = parse_uuid("id", &id)?;
    let command = SubscriptionCommand::Unsuspend {
        requested_by: caller.user_id.to_string(),
        at: Utc::now(),
    };
    run(&state, &caller, id, command).await
}

/// `POST /api/subscriptions/{id}/terminate` `{reason}` (admin).
#[utoipa::path(
    post,
    path = "/api/subscriptions/{id}/terminate",
    tag = "lifecycle",
    params(("id" = Uuid, Path, description = "The subscription")),
    request_body(content = ReasonBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Termination started: pending jobs cancelled, TERMINATING until the zone, account and mailbox are removed (data archived), then TERMINATED", body = LifecycleAccepted),
        (status = 200, description = "Already terminated or terminating: nothing recorded", body = LifecycleAccepted),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn terminate(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(ADMINS)?;
    let id = parse_uuid("id", &id)?;
    let reason = reason(&headers, body)?;
    let command = SubscriptionCommand::Terminate {
        reason,
        requested_by: caller.user_id.to_string(),
        at: Utc::now(),
    };
    run(&state, &caller, id, command).await
}

/// `POST /api/subscriptions/{id}/reprovision` (admin).
#[utoipa::path(
    post,
    path = "/api/subscriptions/{id}/reprovision",
    tag = "lifecycle",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses(
        (status = 202, description = "Re-provisioning started: every create step runs again (converging), REPROVISIONING, then ACTIVE", body = LifecycleAccepted),
        (status = 200, description = "Already re-provisioning: nothing recorded", body = LifecycleAccepted),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn reprovision(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(ADMINS)?;
    let id = parse_uuid("id", &id)?;
    let command = SubscriptionCommand::Reprovision {
        requested_by: caller.user_id.to_string(),
        at: Utc::now(),
    };
    run(&state, &caller, id, command).await
}

/// What `POST /api/orders/{id}/cancel` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// The order.
    order_id: Uuid,
    /// Always `CANCELLED`.
    #[schema(example = "CANCELLED")]
    status: String,
    /// Its subscription, which is being terminated (follow it for the outcome).
    subscription_id: Uuid,
    /// Whether this request cancelled it (`false`: it already was).
    cancelled_now: bool,
}

/// `POST /api/orders/{id}/cancel` `{reason}` (admin): cancels an order whose provisioning has
/// not finished; its pending jobs are cancelled and the steps already done are undone (the
/// subscription is terminated). A fulfilled order is 409: terminate its subscription instead.
#[utoipa::path(
    post,
    path = "/api/orders/{id}/cancel",
    tag = "lifecycle",
    params(("id" = Uuid, Path, description = "The order")),
    request_body(content = ReasonBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Cancelled; its subscription is being terminated", body = OrderCancelled),
        (status = 200, description = "Already cancelled: nothing recorded", body = OrderCancelled),
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn cancel_order(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(ADMINS)?;
    let id = parse_uuid("id", &id)?;
    let reason = reason(&headers, body)?;
    let order = state
        .bus
        .orders
        .load(id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let tenant = order
        .placed()
        .map(|p| p.tenant_id)
        .ok_or(ApiError::NotFound("no such order"))?;
    caller.tenant_scope(tenant)?;
    let metadata = EventMetadata::new(caller.user_id.to_string()).correlated(id);
    let command = OrderCommand::Cancel {
        reason,
        at: Utc::now(),
    };
    let executed = state
        .bus
        .orders
        .execute(id, command, &metadata)
        .await
        .map_err(|e| match e {
            BusError::Rejected(OrderError::AlreadyFulfilled) => {
                ApiError::Conflict("the order is fulfilled; terminate its subscription instead")
            }
            BusError::Rejected(OrderError::NotPlaced) => ApiError::NotFound("no such order"),
            BusError::Rejected(OrderError::ReasonRequired) => {
                ApiError::field("reason", "is required")
            }
            BusError::Rejected(other) => ApiError::Internal(other.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        })?;
    let cancelled_now = !executed.events.is_empty();
    let body = OrderCancelled {
        order_id: id,
        status: "CANCELLED".into(),
        subscription_id: ids::subscription_id(id),
        cancelled_now,
    };
    Ok(accepted_or_ok(cancelled_now, body))
}
