//! Staff views over the read models: orders, subscriptions, jobs, customers, domains, and an
//! order's whole event history; plus the operator's job retry.
//!
//! Authorization and tenant isolation go through [`Caller`] only: `require` for the role (403)
//! and `tenant_filter`/`tenant_scope` for the tenant (another tenant's resource is a 404, so its
//! existence is not revealed). Customers see only their own orders and subscriptions.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use mpanel_domain::ids;
use mpanel_domain::job::{JobCommand, JobError};
use mpanel_domain::values::{DomainName, Email};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::as_of::{self, AtQuery, OrderAsOf, SubscriptionAsOf};
use super::json::parse_uuid;
use super::openapi::{
    Conflict, Forbidden, InvalidParameter, NotFound, RateLimited, Unauthorized, Unavailable,
};
use super::paging::{filtered_page, Page, PageQuery, Paged};
use super::problem::ApiError;
use super::AppState;
use crate::auth::{Caller, Role};
use crate::bus::BusError;
use crate::metadata::EventMetadata;

/// Staff roles that may read a tenant's operational data.
const STAFF_READ: &[Role] = &[Role::Admin, Role::Support, Role::Auditor];
/// Roles that may read orders and subscriptions (customers: their own).
const ORDER_READ: &[Role] = &[Role::Admin, Role::Support, Role::Auditor, Role::Customer];

/// For a customer, the customer id their orders carry; `None` for staff.
async fn own_customer(pool: &PgPool, caller: &Caller) -> Result<Option<Uuid>, ApiError> {
    if caller.role != Role::Customer {
        return Ok(None);
    }
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(caller.user_id)
        .fetch_optional(pool)
        .await?;
    let email = email
        .and_then(|e| Email::parse(&e).ok())
        .ok_or(ApiError::Unauthorized("unknown user"))?;
    let tenant = caller
        .tenant_id
        .ok_or(ApiError::Unauthorized("customer without tenant"))?;
    Ok(Some(ids::customer_id(tenant, &email)))
}

/// An order as listed.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRow {
    pub(super) id: Uuid,
    pub(super) tenant_id: Uuid,
    pub(super) customer_id: Uuid,
    pub(super) customer_email: String,
    pub(super) product_id: Uuid,
    pub(super) product_name: String,
    pub(super) price_id: Uuid,
    pub(super) amount_minor: i64,
    pub(super) currency: String,
    pub(super) interval: String,
    pub(super) domain: Option<String>,
    pub(super) payment_ref: String,
    pub(super) subscription_id: Uuid,
    pub(super) status: String,
    pub(super) placed_at: DateTime<Utc>,
    pub(super) fulfilled_at: Option<DateTime<Utc>>,
    pub(super) cancelled_at: Option<DateTime<Utc>>,
    pub(super) cancel_reason: Option<String>,
}

const ORDER_COLUMNS: &str = "id, tenant_id, customer_id, customer_email, product_id, product_name, price_id, \
    amount_minor, currency, interval, domain, payment_ref, subscription_id, status, placed_at, fulfilled_at, \
    cancelled_at, cancel_reason";

/// `GET /api/orders`.
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of orders, newest first (customers: their own)", body = Paged<OrderRow>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list_orders(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Paged<OrderRow>>, ApiError> {
    caller.require(ORDER_READ)?;
    let page = Page::try_from(&query)?;
    let customer = own_customer(&state.pool, &caller).await?;
    filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM orders WHERE {CUSTOMER_SCOPE}"),
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE {CUSTOMER_SCOPE} ORDER BY placed_at DESC, id LIMIT $3 OFFSET $4"),
        (caller.tenant_filter(), customer),
        page,
    )
    .await
    .map(Json)
}

/// Rows of the caller's tenant (`$1`, NULL for a super admin) and, for a customer, their own
/// (`$2`, NULL for staff).
const CUSTOMER_SCOPE: &str =
    "($1::uuid IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR customer_id = $2)";

/// Rows of the caller's tenant (`$1`, NULL for a super admin); `$2` is always NULL here.
const TENANT_SCOPE: &str = "($1::uuid IS NULL OR tenant_id = $1) AND $2::uuid IS NULL";

/// A subscription with its step progress.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRow {
    pub(super) id: Uuid,
    pub(super) order_id: Uuid,
    pub(super) tenant_id: Uuid,
    pub(super) customer_id: Uuid,
    pub(super) domain: Option<String>,
    pub(super) status: String,
    pub(super) required_steps: Vec<String>,
    pub(super) succeeded_steps: Vec<String>,
    pub(super) failed_step: Option<String>,
    pub(super) last_error: Option<String>,
    pub(super) opened_at: DateTime<Utc>,
    pub(super) activated_at: Option<DateTime<Utc>>,
    pub(super) updated_at: DateTime<Utc>,
    /// The current (or last) operation: `PROVISION` (the order's, generation 0, or a
    /// re-provisioning), `SUSPEND`, `UNSUSPEND` or `TERMINATE`.
    pub(super) operation: String,
    /// The operation's generation: 0 for the order's provisioning, +1 per lifecycle operation.
    pub(super) generation: i32,
    /// Steps of the current operation not confirmed yet.
    pub(super) pending_steps: Vec<String>,
    /// The reason given for the latest suspension or termination.
    pub(super) status_reason: Option<String>,
    /// Who asked for the latest lifecycle operation (user id, or `order/<id>` for an order
    /// cancellation).
    pub(super) status_changed_by: Option<String>,
}

const SUBSCRIPTION_COLUMNS: &str =
    "id, order_id, tenant_id, customer_id, domain, status, required_steps, \
    succeeded_steps, failed_step, last_error, opened_at, activated_at, updated_at, \
    operation, generation, pending_steps, status_reason, status_changed_by";

/// A job: attempts, last error, next run.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    id: Uuid,
    subscription_id: Uuid,
    order_id: Uuid,
    tenant_id: Uuid,
    step: String,
    domain: Option<String>,
    status: String,
    series: i32,
    attempts: i32,
    max_attempts: i32,
    due_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    worker: Option<String>,
    last_error: Option<String>,
    /// What the provisioner reported on success (step-specific).
    #[schema(value_type = Option<Object>)]
    outcome: Option<Value>,
    scheduled_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// What the job does: `PROVISION`, `SUSPEND`, `UNSUSPEND` or `TERMINATE`.
    action: String,
    /// The subscription operation it belongs to (0: the order's provisioning).
    generation: i32,
    /// A newer operation cancelled it: it will not start or be retried.
    cancelled: bool,
}

const JOB_COLUMNS: &str =
    "id, subscription_id, order_id, tenant_id, step, domain, status, series, attempts, \
    max_attempts, due_at, lease_expires_at, worker, last_error, outcome, scheduled_at, updated_at, \
    action, generation, cancelled";

/// An order with its subscription and jobs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderDetail {
    #[serde(flatten)]
    order: OrderRow,
    subscription: Option<SubscriptionRow>,
    jobs: Vec<JobRow>,
}

/// The tenant and customer rules of the order and subscription views: another tenant's
/// resource, or for a customer someone else's, is `not_found`.
async fn check_visible(
    pool: &PgPool,
    caller: &Caller,
    tenant_id: Uuid,
    customer_id: Uuid,
    not_found: &'static str,
) -> Result<(), ApiError> {
    caller.tenant_scope(tenant_id)?;
    if let Some(own) = own_customer(pool, caller).await? {
        if customer_id != own {
            return Err(ApiError::NotFound(not_found));
        }
    }
    Ok(())
}

async fn visible_order(state: &AppState, caller: &Caller, id: Uuid) -> Result<OrderRow, ApiError> {
    let order: OrderRow =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or(ApiError::NotFound("no such order"))?;
    check_visible(
        &state.pool,
        caller,
        order.tenant_id,
        order.customer_id,
        "no such order",
    )
    .await?;
    Ok(order)
}

/// `GET /api/orders/{id}`: live, or as of a position with `?at=`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderView {
    /// Now, from the read models: with its subscription and jobs.
    Live(OrderDetail),
    /// As of `?at=`, folded from the events: with its subscription, plus `asOf`.
    AsOf(OrderAsOf),
}

/// `GET /api/subscriptions/{id}`: live, or as of a position with `?at=`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SubscriptionView {
    /// Now, from the read model.
    Live(SubscriptionRow),
    /// As of `?at=`, folded from the events, plus `asOf`.
    AsOf(SubscriptionAsOf),
}

/// `GET /api/orders/{id}`: the order, its subscription `{id, status, steps}` and its jobs; with
/// `?at=N`, the order and its subscription as they were at position N (see [`as_of`]).
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order"), AtQuery),
    responses(
        (status = 200, description = "The order with its subscription and jobs; with `at`, the order and its subscription as of that position, with `asOf` (404 if it did not exist yet)", body = OrderView),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get_order(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(at): Query<AtQuery>,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(ORDER_READ)?;
    let id = parse_uuid("id", &id)?;
    if let Some(at) = at.position()? {
        let (order, subscription) = as_of::order(&state.pool, id, at)
            .await?
            .ok_or(ApiError::NotFound("no such order at that position"))?;
        check_visible(
            &state.pool,
            &caller,
            order.tenant_id,
            order.customer_id,
            "no such order",
        )
        .await?;
        return Ok(Json(OrderView::AsOf(OrderAsOf {
            order,
            subscription,
            as_of: at,
        })));
    }
    let order = visible_order(&state, &caller, id).await?;
    let subscription: Option<SubscriptionRow> = sqlx::query_as(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"
    ))
    .bind(order.subscription_id)
    .fetch_optional(&state.pool)
    .await?;
    let jobs: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE order_id = $1 ORDER BY generation, step, series"
    ))
    .bind(order.id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(OrderView::Live(OrderDetail {
        order,
        subscription,
        jobs,
    })))
}

/// One event of an order's history.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    actor: Option<String>,
    recorded_at: DateTime<Utc>,
    /// The event's payload (see docs/EVENTS.md).
    #[schema(value_type = Object)]
    payload: Value,
    /// Actor, correlation and trace ids.
    #[schema(value_type = Object)]
    metadata: Value,
}

/// `GET /api/orders/{id}/events`: the order's whole history across its subscription and jobs,
/// in feed (commit) order, with actor and time.
#[utoipa::path(
    get,
    path = "/api/orders/{id}/events",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order")),
    responses(
        (status = 200, description = "The order's events across its subscription and jobs, in commit order", body = Vec<HistoryEvent>),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn order_events(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<HistoryEvent>>, ApiError> {
    caller.require(STAFF_READ)?;
    let order = visible_order(&state, &caller, parse_uuid("id", &id)?).await?;
    let mut aggregates = vec![order.id.to_string(), order.subscription_id.to_string()];
    let jobs: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs WHERE order_id = $1")
        .bind(order.id)
        .fetch_all(&state.pool)
        .await?;
    aggregates.extend(jobs.iter().map(Uuid::to_string));
    let events: Vec<HistoryEvent> = sqlx::query_as(
        "SELECT global_position AS position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
           metadata->>'actor' AS actor, recorded_at, payload, metadata \
         FROM events WHERE aggregate_id = ANY($1) \
           AND aggregate_type IN ('Order', 'Subscription', 'Job') \
         ORDER BY tx_id, global_position",
    )
    .bind(&aggregates)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(events))
}

/// `GET /api/subscriptions`.
#[utoipa::path(
    get,
    path = "/api/subscriptions",
    tag = "operations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of subscriptions, newest first (customers: their own)", body = Paged<SubscriptionRow>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list_subscriptions(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Paged<SubscriptionRow>>, ApiError> {
    caller.require(ORDER_READ)?;
    let page = Page::try_from(&query)?;
    let customer = own_customer(&state.pool, &caller).await?;
    filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM subscriptions WHERE {CUSTOMER_SCOPE}"),
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE {CUSTOMER_SCOPE} ORDER BY opened_at DESC, id LIMIT $3 OFFSET $4"),
        (caller.tenant_filter(), customer),
        page,
    )
    .await
    .map(Json)
}

/// `GET /api/subscriptions/{id}`.
#[utoipa::path(
    get,
    path = "/api/subscriptions/{id}",
    tag = "operations",
    params(("id" = Uuid, Path, description = "The subscription"), AtQuery),
    responses(
        (status = 200, description = "The subscription with its step progress; with `at`, as of that position, with `asOf` (404 if it was not opened yet)", body = SubscriptionView),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get_subscription(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(at): Query<AtQuery>,
) -> Result<Json<SubscriptionView>, ApiError> {
    caller.require(ORDER_READ)?;
    let id = parse_uuid("id", &id)?;
    let (row, as_of) = match at.position()? {
        Some(at) => (
            as_of::subscription(&state.pool, id, at)
                .await?
                .ok_or(ApiError::NotFound("no such subscription at that position"))?,
            Some(at),
        ),
        None => (
            sqlx::query_as(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or(ApiError::NotFound("no such subscription"))?,
            None,
        ),
    };
    check_visible(
        &state.pool,
        &caller,
        row.tenant_id,
        row.customer_id,
        "no such subscription",
    )
    .await?;
    Ok(Json(match as_of {
        Some(as_of) => SubscriptionView::AsOf(SubscriptionAsOf {
            subscription: row,
            as_of,
        }),
        None => SubscriptionView::Live(row),
    }))
}

/// `GET /api/jobs`.
#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "operations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of provisioning jobs, newest first", body = Paged<JobRow>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Paged<JobRow>>, ApiError> {
    caller.require(STAFF_READ)?;
    let page = Page::try_from(&query)?;
    filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM jobs WHERE {TENANT_SCOPE}"),
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {TENANT_SCOPE} ORDER BY scheduled_at DESC, id LIMIT $3 OFFSET $4"),
        (caller.tenant_filter(), None::<Uuid>),
        page,
    )
    .await
    .map(Json)
}

async fn visible_job(state: &AppState, caller: &Caller, id: Uuid) -> Result<JobRow, ApiError> {
    let row: JobRow = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound("no such job"))?;
    caller.tenant_scope(row.tenant_id)?;
    Ok(row)
}

/// `GET /api/jobs/{id}`.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "operations",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 200, description = "The job", body = JobRow),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRow>, ApiError> {
    caller.require(STAFF_READ)?;
    Ok(Json(
        visible_job(&state, &caller, parse_uuid("id", &id)?).await?,
    ))
}

/// What `POST /api/jobs/{id}/retry` answers.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RetryAccepted {
    job_id: Uuid,
    /// The new attempt series.
    series: u32,
    #[schema(example = "SCHEDULED")]
    status: String,
}

/// `POST /api/jobs/{id}/retry` (admin, support): starts a new attempt series; 202.
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/retry",
    tag = "operations",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 202, description = "A new attempt series is scheduled", body = RetryAccepted),
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
pub async fn retry_job(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin, Role::Support])?;
    let job = visible_job(&state, &caller, parse_uuid("id", &id)?).await?;
    let actor = caller.user_id.to_string();
    let command = JobCommand::Retry {
        requested_by: actor.clone(),
        at: Utc::now(),
    };
    let metadata = EventMetadata::new(actor).correlated(job.order_id);
    let executed = state
        .bus
        .jobs
        .execute(job.id, command, &metadata)
        .await
        .map_err(|e| match e {
            BusError::Rejected(JobError::AlreadySucceeded) => {
                ApiError::Conflict("the job already succeeded")
            }
            BusError::Rejected(JobError::Running) => {
                ApiError::Conflict("the job is running; wait for its outcome")
            }
            BusError::Rejected(JobError::NotScheduled) => ApiError::NotFound("no such job"),
            other => ApiError::Unavailable(other.to_string()),
        })?;
    let body = RetryAccepted {
        job_id: job.id,
        series: executed.state.series(),
        status: "SCHEDULED".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// A customer as listed.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerRow {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    first_order_id: Uuid,
    orders_count: i32,
    created_at: DateTime<Utc>,
}

const CUSTOMER_COLUMNS: &str = "id, tenant_id, email, first_order_id, orders_count, created_at";

/// `GET /api/customers`.
#[utoipa::path(
    get,
    path = "/api/customers",
    tag = "operations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of customers, newest first", body = Paged<CustomerRow>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list_customers(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Paged<CustomerRow>>, ApiError> {
    caller.require(STAFF_READ)?;
    let page = Page::try_from(&query)?;
    filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM customers WHERE {TENANT_SCOPE}"),
        &format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customers \
             WHERE {TENANT_SCOPE} ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"
        ),
        (caller.tenant_filter(), None::<Uuid>),
        page,
    )
    .await
    .map(Json)
}

/// `GET /api/customers/{id}`.
#[utoipa::path(
    get,
    path = "/api/customers/{id}",
    tag = "operations",
    params(("id" = Uuid, Path, description = "The customer")),
    responses(
        (status = 200, description = "The customer", body = CustomerRow),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get_customer(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CustomerRow>, ApiError> {
    caller.require(STAFF_READ)?;
    let row: CustomerRow = sqlx::query_as(&format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1"
    ))
    .bind(parse_uuid("id", &id)?)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("no such customer"))?;
    caller.tenant_scope(row.tenant_id)?;
    Ok(Json(row))
}

/// A domain and what was provisioned for it.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainRow {
    domain: String,
    tenant_id: Uuid,
    subscription_id: Uuid,
    order_id: Uuid,
    created_at: DateTime<Utc>,
    zone: Option<String>,
    web_root: Option<String>,
    mailbox: Option<String>,
}

const DOMAIN_SELECT: &str =
    "SELECT d.domain, d.tenant_id, d.subscription_id, d.order_id, d.created_at, \
    z.zone, h.web_root, m.address AS mailbox \
    FROM domains d \
    LEFT JOIN dns_zones z ON z.domain = d.domain \
    LEFT JOIN hosting_accounts h ON h.domain = d.domain \
    LEFT JOIN mail_accounts m ON m.domain = d.domain";

/// `GET /api/domains`.
#[utoipa::path(
    get,
    path = "/api/domains",
    tag = "operations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of domains, by name", body = Paged<DomainRow>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list_domains(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Paged<DomainRow>>, ApiError> {
    caller.require(STAFF_READ)?;
    let page = Page::try_from(&query)?;
    filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM domains WHERE {TENANT_SCOPE}"),
        &format!(
            "{DOMAIN_SELECT} WHERE ($1::uuid IS NULL OR d.tenant_id = $1) AND $2::uuid IS NULL \
             ORDER BY d.domain LIMIT $3 OFFSET $4"
        ),
        (caller.tenant_filter(), None::<Uuid>),
        page,
    )
    .await
    .map(Json)
}

/// What `GET /api/domains/{domain}` answers (documentation only: the handler adds `records` to
/// the serialized [`DomainRow`]).
#[derive(ToSchema)]
#[allow(dead_code)]
struct DomainDetail {
    #[serde(flatten)]
    domain: DomainRow,
    records: Vec<DnsRecordView>,
}

/// One DNS record of a domain's zone (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
struct DnsRecordView {
    #[schema(example = "www.example.com.")]
    name: String,
    #[serde(rename = "type")]
    #[schema(example = "A")]
    record_type: String,
    ttl: i32,
    contents: Vec<String>,
}

/// `GET /api/domains/{domain}` (also with DNS records).
#[utoipa::path(
    get,
    path = "/api/domains/{domain}",
    tag = "operations",
    params(("domain" = String, Path, description = "The domain name")),
    responses(
        (status = 200, description = "The domain, what was provisioned for it and its DNS records", body = DomainDetail),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get_domain(
    caller: Caller,
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(STAFF_READ)?;
    let domain =
        DomainName::parse(&domain).map_err(|e| ApiError::field("domain", e.to_string()))?;
    let row: DomainRow = sqlx::query_as(&format!("{DOMAIN_SELECT} WHERE d.domain = $1"))
        .bind(domain.as_str())
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound("no such domain"))?;
    caller.tenant_scope(row.tenant_id)?;
    let records: Vec<(String, String, i32, Vec<String>)> = sqlx::query_as(
        "SELECT name, record_type, ttl, contents FROM dns_records WHERE zone = $1 ORDER BY name, record_type",
    )
    .bind(domain.fqdn())
    .fetch_all(&state.pool)
    .await?;
    let mut body = serde_json::to_value(&row).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["records"] = records
        .into_iter()
        .map(|(name, record_type, ttl, contents)| {
            serde_json::json!({ "name": name, "type": record_type, "ttl": ttl, "contents": contents })
        })
        .collect();
    Ok(Json(body))
}
