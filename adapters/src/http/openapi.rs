//! The OpenAPI document, served at `GET /api/openapi.json`.
//!
//! Nothing here lists an endpoint: every operation comes from the `#[utoipa::path]` annotation
//! on its handler, collected by the same `routes!` calls that build the router (see
//! [`super::api_routes`]), so a route cannot be served without being documented. This module only
//! holds what is shared: the document's header, the two security schemes, and the problem+json
//! error responses the handlers list.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::problem::{FieldError, Problem};

/// Name of the bearer (JWT access token) security scheme staff endpoints require.
pub const BEARER: &str = "bearer";
/// Name of the `x-internal-key` security scheme of the marketing order webhook.
pub const INTERNAL_KEY: &str = "internalKey";

/// The document's fixed parts; paths are merged in from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mpanel",
        description = "Hosting control panel API. JSON is camelCase; every error is an RFC 9457 \
                       `application/problem+json` document with a stable `type`. Public and login \
                       endpoints are rate limited per client, credentialed calls per credential \
                       (429 with `Retry-After`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "public", description = "No credentials: the marketing site and probes"),
        (name = "auth", description = "Login, token refresh, the caller, logout"),
        (name = "orders", description = "The order webhook and staff order views"),
        (name = "catalog", description = "Products and prices (staff)"),
        (name = "operations", description = "Subscriptions, jobs, customers, domains (staff)"),
        (name = "lifecycle", description = "Suspend, unsuspend, terminate and re-provision subscriptions; cancel orders (staff). Each starts converging jobs; the status follows confirmed outcomes"),
        (name = "audit", description = "The hash-chained event log: verification and paged export (auditors)")
    )
)]
pub struct ApiDoc;

/// Adds the bearer and `x-internal-key` security schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Access token from POST /api/auth/login or /api/auth/refresh (15 min)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            INTERNAL_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::orders::KEY_HEADER,
                "The marketing site's shared secret (MARKETING_WEBHOOK_SECRET); server to server only",
            ))),
        );
    }
}

/// The whole document: [`ApiDoc`] plus every annotated handler of the router.
#[must_use]
pub fn document() -> utoipa::openapi::OpenApi {
    super::api_routes().split_for_parts().1
}

/// The document rendered once; it depends only on the code, not on configuration.
static DOCUMENT_JSON: LazyLock<Vec<u8>> = LazyLock::new(|| {
    serde_json::to_vec(&document()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render the OpenAPI document");
        b"{}".to_vec()
    })
});

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "public",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json",
         body = Object),
        RateLimited
    )
)]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT_JSON.as_slice(),
    )
        .into_response()
}

/// 401: missing, invalid or expired credentials.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "Missing, invalid or expired credentials",
    content_type = "application/problem+json"
)]
pub struct Unauthorized(#[allow(dead_code)] Problem<'static>);

/// 403: the caller's role may not do this.
#[derive(IntoResponses)]
#[response(
    status = 403,
    description = "The caller's role may not do this",
    content_type = "application/problem+json"
)]
pub struct Forbidden(#[allow(dead_code)] Problem<'static>);

/// 404: no such resource, or not visible to the caller (another tenant's).
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such resource, or not visible to the caller",
    content_type = "application/problem+json"
)]
pub struct NotFound(#[allow(dead_code)] Problem<'static>);

/// 409: contradicts what is already recorded.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "The request contradicts what is already recorded",
    content_type = "application/problem+json"
)]
pub struct Conflict(#[allow(dead_code)] Problem<'static>);

/// 413 / 415 / 422: an unreadable or invalid body or query.
#[derive(IntoResponses)]
pub enum BadRequest {
    /// The body exceeds the size limit.
    #[response(
        status = 413,
        description = "The body exceeds the 64 KiB limit",
        content_type = "application/problem+json"
    )]
    TooLarge(#[allow(dead_code)] Problem<'static>),
    /// The body is not `application/json`.
    #[response(
        status = 415,
        description = "The body is not application/json",
        content_type = "application/problem+json"
    )]
    MediaType(#[allow(dead_code)] Problem<'static>),
    /// A field is missing or invalid; `errors` names each.
    #[response(
        status = 422,
        description = "Invalid fields; `errors` names each with a reason",
        content_type = "application/problem+json"
    )]
    Invalid(#[allow(dead_code)] Problem<'static>),
}

/// 422 for a query or path parameter.
#[derive(IntoResponses)]
#[response(
    status = 422,
    description = "An invalid query or path parameter; `errors` names it",
    content_type = "application/problem+json"
)]
pub struct InvalidParameter(#[allow(dead_code)] Problem<'static>);

/// 429: over the rate limit.
#[derive(IntoResponses)]
#[response(
    status = 429,
    description = "Over the rate limit of this client or credential",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds until a request will be accepted"))
)]
pub struct RateLimited(#[allow(dead_code)] Problem<'static>);

/// 503: a dependency (Postgres, Redis, auth configuration) is unavailable.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "A dependency is unavailable; try again shortly",
    content_type = "application/problem+json"
)]
pub struct Unavailable(#[allow(dead_code)] Problem<'static>);
