//! Staff catalog endpoints: products and prices, each change a Product aggregate command so it
//! is in the event log with its actor.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use mpanel_domain::ids;
use mpanel_domain::order::BillingInterval;
use mpanel_domain::product::{AddPrice, CreateProduct, Product, ProductCommand, ProductError};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::{Currency, Money, TenantSlug};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::json::{object, parse_uuid, Fields};
use super::openapi::{
    BadRequest, Conflict, Forbidden, InvalidParameter, NotFound, RateLimited, Unauthorized,
    Unavailable,
};
use super::paging::{filtered_page, Page, PageQuery, Paged};
use super::problem::ApiError;
use super::AppState;
use crate::auth::{Caller, Role};
use crate::bus::{BusError, Executed};
use crate::metadata::EventMetadata;

const CATALOG_READ: &[Role] = &[Role::Admin, Role::Support, Role::Auditor];
const CATALOG_WRITE: &[Role] = &[Role::Admin];

/// A product with its prices, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    description: String,
    /// Provisioning steps, in order: `dns`, `hosting`, `mail`.
    #[schema(example = json!(["dns", "hosting", "mail"]))]
    plan: Vec<String>,
    archived: bool,
    prices: Vec<PriceView>,
}

/// A price as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceView {
    id: Uuid,
    #[serde(skip)]
    product_id: Uuid,
    /// Amount in the currency's minor unit (cents).
    #[schema(example = 999)]
    amount_minor: i64,
    /// ISO 4217 code.
    #[schema(example = "USD")]
    currency: String,
    /// `month`, `year` or `one_time`.
    #[schema(example = "month")]
    interval: String,
    active: bool,
}

/// `POST /api/products`'s body (documentation only: fields are read one by one so each
/// refusal names its field).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct CreateProductBody {
    /// 1 to 200 characters.
    name: String,
    /// At most 2000 characters.
    description: Option<String>,
    /// Provisioning steps: `dns`, `hosting`, `mail`.
    #[schema(example = json!(["dns", "hosting", "mail"]))]
    plan: Vec<String>,
    /// The tenant; required for a super admin, else must be the caller's own.
    tenant_slug: Option<String>,
}

/// `PATCH /api/products/{id}`'s body (documentation only); absent fields stay as they are.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct UpdateProductBody {
    name: Option<String>,
    description: Option<String>,
    plan: Option<Vec<String>>,
}

/// `POST /api/products/{id}/prices`'s body (documentation only).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct AddPriceBody {
    /// Non-negative amount in minor units.
    #[schema(minimum = 0, example = 999)]
    amount_minor: i64,
    #[schema(example = "USD")]
    currency: String,
    /// `month`, `year` or `one_time`.
    #[schema(example = "month")]
    interval: String,
}

fn view_of(id: Uuid, product: &Product) -> Option<ProductView> {
    let d = product.details()?;
    Some(ProductView {
        id,
        tenant_id: d.tenant_id,
        name: d.name.clone(),
        description: d.description.clone(),
        plan: d.plan.iter().map(|s| s.as_str().to_owned()).collect(),
        archived: product.is_archived(),
        prices: product
            .prices()
            .map(|(p, active)| PriceView {
                id: p.price_id,
                product_id: id,
                amount_minor: p.amount.amount_minor,
                currency: p.amount.currency.to_string(),
                interval: p.interval.as_str().to_owned(),
                active,
            })
            .collect(),
    })
}

fn domain_error(e: BusError<ProductError>) -> ApiError {
    match e {
        BusError::Rejected(ProductError::NotCreated) => ApiError::NotFound("no such product"),
        BusError::Rejected(ProductError::AlreadyExists) => {
            ApiError::Conflict("a different product exists under this id")
        }
        BusError::Rejected(ProductError::Archived) => ApiError::Conflict("the product is archived"),
        BusError::Rejected(ProductError::InvalidName) => {
            ApiError::field("name", "must be 1 to 200 characters")
        }
        BusError::Rejected(ProductError::DescriptionTooLong) => {
            ApiError::field("description", "must be at most 2000 characters")
        }
        BusError::Rejected(ProductError::UnknownPrice) => ApiError::NotFound("no such price"),
        BusError::Rejected(ProductError::PriceIdTaken) => {
            ApiError::Conflict("a different price exists under this id")
        }
        other => ApiError::Unavailable(other.to_string()),
    }
}

fn plan_field(
    fields: &mut Fields,
    body: &Map<String, Value>,
    required: bool,
) -> Option<Option<Vec<ProvisioningStep>>> {
    match body.get("plan") {
        None | Some(Value::Null) if !required => Some(None),
        None | Some(Value::Null) => {
            fields.push("plan", "is required");
            None
        }
        Some(Value::Array(items)) => {
            let steps: Option<Vec<ProvisioningStep>> = items
                .iter()
                .map(|v| v.as_str().and_then(ProvisioningStep::from_name))
                .collect();
            if steps.is_none() {
                fields.push("plan", "must be a list of \"dns\", \"hosting\", \"mail\"");
            }
            steps.map(Some)
        }
        Some(_) => {
            fields.push("plan", "must be a list of \"dns\", \"hosting\", \"mail\"");
            None
        }
    }
}

/// Loads a product for a write, refusing other tenants' products as not found.
async fn owned_product(state: &AppState, caller: &Caller, id: Uuid) -> Result<Product, ApiError> {
    let product = state.bus.products.load(id).await.map_err(domain_error)?;
    let details = product
        .details()
        .ok_or(ApiError::NotFound("no such product"))?;
    caller.tenant_scope(details.tenant_id)?;
    Ok(product)
}

fn metadata(caller: &Caller) -> EventMetadata {
    EventMetadata::new(caller.user_id.to_string())
}

fn respond(
    status: StatusCode,
    id: Uuid,
    executed: &Executed<Product>,
) -> Result<Response, ApiError> {
    let view = view_of(id, &executed.state).ok_or(ApiError::Internal("product vanished".into()))?;
    let location = format!("/api/products/{id}");
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

/// `POST /api/products` `{name, description?, plan, tenantSlug?}` (admin; a super admin names
/// the tenant) → 201.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "catalog",
    request_body(content = CreateProductBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The new product", body = ProductView,
         headers(("Location" = String, description = "/api/products/{id}"))),
        Unauthorized,
        Forbidden,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(CATALOG_WRITE)?;
    let body = object(&headers, body)?;
    let mut fields = Fields::default();
    let name = fields.required(&body, "name", |s| Ok::<_, String>(s.to_owned()));
    let description = fields.optional(&body, "description", |s| Ok::<_, String>(s.to_owned()));
    let plan = plan_field(&mut fields, &body, true);
    let slug = fields.optional(&body, "tenantSlug", TenantSlug::parse);
    fields.finish()?;
    let (Some(name), Some(description), Some(Some(plan)), Some(slug)) =
        (name, description, plan, slug)
    else {
        return Err(ApiError::Internal("field parsing lost an error".into()));
    };
    let tenant_id = match (caller.tenant_id, slug) {
        (Some(own), None) => own,
        (Some(own), Some(slug)) if ids::tenant_id(&slug) == own => own,
        (Some(_), Some(_)) => return Err(ApiError::field("tenantSlug", "must be your own tenant")),
        (None, Some(slug)) => ids::tenant_id(&slug),
        (None, None) => {
            return Err(ApiError::field(
                "tenantSlug",
                "is required for a super admin",
            ))
        }
    };
    let known: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(&state.pool)
        .await?;
    if known.is_none() {
        return Err(ApiError::field("tenantSlug", "no such tenant"));
    }
    let id = Uuid::new_v4();
    let command = ProductCommand::Create(CreateProduct {
        tenant_id,
        name,
        description: description.unwrap_or_default(),
        plan,
        created_at: Utc::now(),
    });
    let executed = state
        .bus
        .products
        .execute(id, command, &metadata(&caller))
        .await
        .map_err(domain_error)?;
    respond(StatusCode::CREATED, id, &executed)
}

/// `PATCH /api/products/{id}` `{name?, description?, plan?}` (admin).
#[utoipa::path(
    patch,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = Uuid, Path, description = "The product")),
    request_body(content = UpdateProductBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated product", body = ProductView,
         headers(("Location" = String, description = "/api/products/{id}"))),
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
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(CATALOG_WRITE)?;
    let id = parse_uuid("id", &id)?;
    let body = object(&headers, body)?;
    let mut fields = Fields::default();
    let name = fields.optional(&body, "name", |s| Ok::<_, String>(s.to_owned()));
    let description = fields.optional(&body, "description", |s| Ok::<_, String>(s.to_owned()));
    let plan = plan_field(&mut fields, &body, false);
    fields.finish()?;
    let (Some(name), Some(description), Some(plan)) = (name, description, plan) else {
        return Err(ApiError::Internal("field parsing lost an error".into()));
    };
    owned_product(&state, &caller, id).await?;
    let command = ProductCommand::Update {
        name,
        description,
        plan,
        at: Utc::now(),
    };
    let executed = state
        .bus
        .products
        .execute(id, command, &metadata(&caller))
        .await
        .map_err(domain_error)?;
    respond(StatusCode::OK, id, &executed)
}

/// `DELETE /api/products/{id}` (admin): archives; orders keep their snapshot. 204.
#[utoipa::path(
    delete,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = Uuid, Path, description = "The product")),
    responses(
        (status = 204, description = "Archived"),
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
pub async fn archive(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(CATALOG_WRITE)?;
    let id = parse_uuid("id", &id)?;
    owned_product(&state, &caller, id).await?;
    state
        .bus
        .products
        .execute(
            id,
            ProductCommand::Archive { at: Utc::now() },
            &metadata(&caller),
        )
        .await
        .map_err(domain_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/products/{id}/prices` `{amountMinor, currency, interval}` (admin) → 201.
#[utoipa::path(
    post,
    path = "/api/products/{id}/prices",
    tag = "catalog",
    params(("id" = Uuid, Path, description = "The product")),
    request_body(content = AddPriceBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The new price", body = PriceView),
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
pub async fn add_price(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(CATALOG_WRITE)?;
    let id = parse_uuid("id", &id)?;
    let body = object(&headers, body)?;
    let mut fields = Fields::default();
    let amount = match body.get("amountMinor").and_then(Value::as_i64) {
        Some(a) if a >= 0 => Some(a),
        _ => {
            fields.push(
                "amountMinor",
                "must be a non-negative whole number of minor units",
            );
            None
        }
    };
    let currency = fields.required(&body, "currency", Currency::parse);
    let interval = fields.required(&body, "interval", |s| {
        BillingInterval::from_name(s).ok_or("must be \"month\", \"year\" or \"one_time\"")
    });
    fields.finish()?;
    let (Some(amount), Some(currency), Some(interval)) = (amount, currency, interval) else {
        return Err(ApiError::Internal("field parsing lost an error".into()));
    };
    let amount =
        Money::new(amount, currency).map_err(|e| ApiError::field("amountMinor", e.to_string()))?;
    owned_product(&state, &caller, id).await?;
    let price_id = Uuid::new_v4();
    let command = ProductCommand::AddPrice(AddPrice {
        price_id,
        amount,
        interval,
        added_at: Utc::now(),
    });
    let executed = state
        .bus
        .products
        .execute(id, command, &metadata(&caller))
        .await
        .map_err(domain_error)?;
    let view = view_of(id, &executed.state).ok_or(ApiError::Internal("product vanished".into()))?;
    let price = view
        .prices
        .into_iter()
        .find(|p| p.id == price_id)
        .ok_or(ApiError::Internal("price vanished".into()))?;
    Ok((StatusCode::CREATED, Json(price)).into_response())
}

/// `DELETE /api/products/{id}/prices/{price_id}` (admin): stops selling the price. 204.
#[utoipa::path(
    delete,
    path = "/api/products/{id}/prices/{price_id}",
    tag = "catalog",
    params(
        ("id" = Uuid, Path, description = "The product"),
        ("price_id" = Uuid, Path, description = "The price")
    ),
    responses(
        (status = 204, description = "The price is no longer sold"),
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
pub async fn deactivate_price(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, price_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(CATALOG_WRITE)?;
    let id = parse_uuid("id", &id)?;
    let price_id = parse_uuid("priceId", &price_id)?;
    owned_product(&state, &caller, id).await?;
    state
        .bus
        .products
        .execute(
            id,
            ProductCommand::DeactivatePrice {
                price_id,
                at: Utc::now(),
            },
            &metadata(&caller),
        )
        .await
        .map_err(domain_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the product list.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(flatten)]
    page: PageQuery,
    active: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    description: String,
    plan: Vec<String>,
    archived: bool,
}

const PRODUCT_COLUMNS: &str = "id, tenant_id, name, description, plan, archived";

async fn with_prices(
    state: &AppState,
    rows: Vec<ProductRow>,
) -> Result<Vec<ProductView>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let prices: Vec<PriceView> = sqlx::query_as(
        "SELECT id, product_id, amount_minor, currency, interval, active FROM prices \
         WHERE product_id = ANY($1) ORDER BY added_at, id",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let mut by_product: std::collections::HashMap<Uuid, Vec<PriceView>> =
        std::collections::HashMap::new();
    for p in prices {
        by_product.entry(p.product_id).or_default().push(p);
    }
    Ok(rows
        .into_iter()
        .map(|r| ProductView {
            prices: by_product.remove(&r.id).unwrap_or_default(),
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            description: r.description,
            plan: r.plan,
            archived: r.archived,
        })
        .collect())
}

/// `GET /api/products?active=true|false&page=&perPage=` (staff).
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "catalog",
    params(
        PageQuery,
        ("active" = Option<bool>, Query,
         description = "true: only products on sale; false: only archived ones")
    ),
    responses(
        (status = 200, description = "A page of products", body = Paged<ProductView>),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Paged<ProductView>>, ApiError> {
    caller.require(CATALOG_READ)?;
    let page = Page::try_from(&query.page)?;
    let archived: Option<bool> = match query.active.as_deref() {
        None => None,
        Some("true") => Some(false),
        Some("false") => Some(true),
        Some(_) => return Err(ApiError::field("active", "must be true or false")),
    };
    let filter = "($1::uuid IS NULL OR tenant_id = $1) AND ($2::boolean IS NULL OR archived = $2)";
    let rows: Paged<ProductRow> = filtered_page(
        &state.pool,
        &format!("SELECT count(*) FROM products WHERE {filter}"),
        &format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE {filter} \
             ORDER BY created_at, id LIMIT $3 OFFSET $4"
        ),
        (caller.tenant_filter(), archived),
        page,
    )
    .await?;
    Ok(Json(Paged::new(
        with_prices(&state, rows.items).await?,
        page,
        rows.total,
    )))
}

/// `GET /api/products/{id}` (staff).
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = Uuid, Path, description = "The product")),
    responses(
        (status = 200, description = "The product with all its prices", body = ProductView),
        Unauthorized,
        Forbidden,
        NotFound,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    caller.require(CATALOG_READ)?;
    let id = parse_uuid("id", &id)?;
    let row: ProductRow = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("no such product"))?;
    caller.tenant_scope(row.tenant_id)?;
    with_prices(&state, vec![row])
        .await?
        .pop()
        .map(Json)
        .ok_or(ApiError::NotFound("no such product"))
}
