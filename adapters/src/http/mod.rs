//! The HTTP API (axum). Routes, shared state and the middleware stack.

mod as_of;
mod audit;
pub mod auth;
mod catalog;
mod edge;
mod health;
mod json;
mod lifecycle;
mod metrics;
pub mod openapi;
mod orders;
pub mod paging;
pub mod problem;
mod public;
pub mod rate_limit;
#[cfg(test)]
mod router_tests;
pub mod stripe;
mod trace;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tower::util::MapResponseLayer;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bus::CommandBus;
pub use problem::{ApiError, FieldError};

/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;
/// Longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The command path.
    pub bus: Arc<CommandBus>,
    /// SHA-256 of the marketing webhook secret: keys are compared digest to digest in constant
    /// time, so neither content nor length leaks through timing.
    webhook_key_digest: [u8; 32],
    /// The job doorbell, checked by readiness (absent in tools that run without Redis).
    pub queue: Option<crate::queue::JobQueue>,
    /// Token keys and lifetimes; without them `/api/auth/*` and staff endpoints answer 503.
    pub auth: Option<Arc<crate::auth::AuthSettings>>,
    /// Stripe's endpoint signing secret; without it `/api/webhooks/stripe` answers 503.
    stripe_secret: Option<Arc<SecretString>>,
    /// Request budgets per client and per credential.
    limiter: Arc<rate_limit::Limiter>,
    /// Origins allowed cross-origin; empty: no CORS.
    cors_origins: Arc<[String]>,
    /// `/api/ready` fails when a feed subscriber lags more events than this.
    pub ready_max_feed_lag: i64,
}

impl AppState {
    /// State for the router.
    #[must_use]
    pub fn new(pool: PgPool, bus: Arc<CommandBus>, webhook_secret: &SecretString) -> Self {
        Self {
            pool,
            bus,
            webhook_key_digest: Sha256::digest(webhook_secret.expose_secret().as_bytes()).into(),
            queue: None,
            auth: None,
            stripe_secret: None,
            limiter: Arc::new(rate_limit::Limiter::new(
                &rate_limit::RateLimitSettings::default(),
            )),
            cors_origins: Arc::from([]),
            ready_max_feed_lag: 10_000,
        }
    }

    /// Sets the feed lag (in events) beyond which `/api/ready` answers 503
    /// (`READY_MAX_FEED_LAG_EVENTS`; default 10000).
    #[must_use]
    pub fn with_ready_max_feed_lag(mut self, events: i64) -> Self {
        self.ready_max_feed_lag = events;
        self
    }

    /// Sets the request rate limits (without it: DESIGN's defaults, 100 requests per client per
    /// 15 minutes).
    #[must_use]
    pub fn with_rate_limit(mut self, settings: &rate_limit::RateLimitSettings) -> Self {
        self.limiter = Arc::new(rate_limit::Limiter::new(settings));
        self
    }

    /// Sets the browser origins allowed cross-origin (`CORS_ALLOWED_ORIGINS`, already validated
    /// by [`crate::config::parse_origins`]); none: no CORS headers.
    #[must_use]
    pub fn with_cors_origins(mut self, origins: &[String]) -> Self {
        self.cors_origins = origins.iter().cloned().collect();
        self
    }

    /// Adds Stripe's endpoint signing secret (`STRIPE_WEBHOOK_SECRET`), enabling
    /// `POST /api/webhooks/stripe`.
    #[must_use]
    pub fn with_stripe_secret(mut self, secret: &SecretString) -> Self {
        self.stripe_secret = Some(Arc::new(SecretString::from(
            secret.expose_secret().to_owned(),
        )));
        self
    }

    /// Adds the auth settings (login, tokens, the `Caller` extractor).
    #[must_use]
    pub fn with_auth(mut self, auth: crate::auth::AuthSettings) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Adds the job queue (readiness then also checks Redis).
    #[must_use]
    pub fn with_queue(mut self, queue: crate::queue::JobQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Whether `presented` is the webhook secret (constant time).
    #[must_use]
    pub fn webhook_key_matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.webhook_key_digest).into()
    }
}

/// Every route with its handler, grouped by path. The same `routes!` calls feed the router and
/// the OpenAPI document (each handler's `#[utoipa::path]`), so a served route is a documented
/// one.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::index))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::health))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(public::products))
        .routes(routes!(orders::create, views::list_orders))
        .routes(routes!(stripe::webhook))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::me))
        .routes(routes!(auth::logout))
        .routes(routes!(catalog::list, catalog::create))
        .routes(routes!(catalog::get, catalog::update, catalog::archive))
        .routes(routes!(catalog::add_price))
        .routes(routes!(catalog::deactivate_price))
        .routes(routes!(views::get_order))
        .routes(routes!(views::order_events))
        .routes(routes!(views::list_subscriptions))
        .routes(routes!(views::get_subscription))
        .routes(routes!(views::list_jobs))
        .routes(routes!(views::get_job))
        .routes(routes!(views::retry_job))
        .routes(routes!(lifecycle::suspend))
        .routes(routes!(lifecycle::unsuspend))
        .routes(routes!(lifecycle::terminate))
        .routes(routes!(lifecycle::reprovision))
        .routes(routes!(lifecycle::cancel_order))
        .routes(routes!(views::list_customers))
        .routes(routes!(views::get_customer))
        .routes(routes!(views::list_domains))
        .routes(routes!(views::get_domain))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::events))
}

/// CORS for the configured origins: the staff UI's methods, and only the `authorization` and
/// `content-type` request headers (`x-internal-key` is server to server and never needs a
/// browser). `None` when no origin is configured, so no CORS header is ever sent.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The security headers every answer carries, unless its handler set them: no MIME sniffing,
/// no framing, no referrer, no active content, HTTPS only. One layer for all five (five
/// `SetResponseHeader` layers cost five future wrappers on every request).
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 5] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    ),
];

/// Adds [`SECURITY_HEADERS`] to `response` where absent.
fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(value);
    }
    response
}

/// The API's router with its middleware stack.
///
/// From the outside in: request id, trace, timeout, security headers, CORS (when configured:
/// preflights are answered before the rate limit), the rate limit, the body limit, the routes.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(trace::layer())
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(MapResponseLayer::new(
            security_headers as fn(axum::response::Response) -> axum::response::Response,
        ));
    let (routes, _) = api_routes().split_for_parts();
    let app = routes
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(edge::EdgeLayer::new(state.clone()));
    let app = match cors(&state.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(middleware).with_state(state)
}
