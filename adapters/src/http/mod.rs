//! The HTTP API (axum). Routes, shared state and the middleware stack.

pub mod auth;
mod catalog;
mod health;
mod json;
mod orders;
pub mod paging;
pub mod problem;
mod public;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::routing::{delete, get, post};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

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
        }
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

/// The API's router with its middleware stack.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ));
    Router::new()
        .route("/", get(health::index))
        .route("/api/live", get(health::live))
        .route("/api/ready", get(health::ready))
        .route("/api/health", get(health::health))
        .route("/api/public/products", get(public::products))
        .route("/api/orders", post(orders::create).get(views::list_orders))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/products", get(catalog::list).post(catalog::create))
        .route(
            "/api/products/{id}",
            get(catalog::get)
                .patch(catalog::update)
                .delete(catalog::archive),
        )
        .route("/api/products/{id}/prices", post(catalog::add_price))
        .route(
            "/api/products/{id}/prices/{price_id}",
            delete(catalog::deactivate_price),
        )
        .route("/api/orders/{id}", get(views::get_order))
        .route("/api/orders/{id}/events", get(views::order_events))
        .route("/api/subscriptions", get(views::list_subscriptions))
        .route("/api/subscriptions/{id}", get(views::get_subscription))
        .route("/api/jobs", get(views::list_jobs))
        .route("/api/jobs/{id}", get(views::get_job))
        .route("/api/jobs/{id}/retry", post(views::retry_job))
        .route("/api/customers", get(views::list_customers))
        .route("/api/customers/{id}", get(views::get_customer))
        .route("/api/domains", get(views::list_domains))
        .route("/api/domains/{domain}", get(views::get_domain))
        .fallback(|| async { ApiError::NotFound("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware)
        .with_state(state)
}
