//! Errors as RFC 9457 `application/problem+json`, with a stable `type` per kind.
//!
//! Handlers return [`ApiError`]; none builds a status code by hand. A 500 never carries the
//! underlying error (it is logged instead), so database messages cannot leak to clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One field's problem in a request body or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name as the client sent it (`customerEmail`), or `body`.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller is known but its role may not do this (`auth::Caller::require`).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The body or query is invalid; each field says why.
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// The body is not JSON.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// The body is larger than the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// No such resource (or not visible to the caller).
    #[error("{0}")]
    NotFound(&'static str),
    /// The request contradicts what is already recorded.
    #[error("{0}")]
    Conflict(&'static str),
    /// As [`ApiError::Conflict`], with a detail built from recorded state (e.g. the status
    /// that refuses an operation); never from a driver error.
    #[error("{0}")]
    StateConflict(String),
    /// A dependency is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The process is not ready to serve (`/api/ready`). Unlike [`ApiError::Unavailable`], the
    /// reason is shown: it is built from fixed texts and subscriber names, never from a driver
    /// error, and tells the operator what to fix.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The client or credential used up its request budget; it may retry after this many
    /// seconds (sent as `Retry-After`).
    #[error("rate limited for {0} s")]
    RateLimited(u64),
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A validation error for one field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, reason)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) | Self::StateConflict(_) => {
                (StatusCode::CONFLICT, "conflict", "Conflict")
            }
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            // Same stable type as `Unavailable`: only the detail differs.
            Self::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

/// An RFC 9457 problem document, the body of every error (`application/problem+json`).
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    /// A stable URN per kind of problem, e.g. `urn:mpanel:problem:validation`.
    #[serde(rename = "type")]
    #[schema(example = "urn:mpanel:problem:validation")]
    kind: String,
    /// A short, human-readable summary of the kind.
    title: &'a str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong with this request (never internal details).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// For `validation` problems: each field at fault and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    errors: Option<&'a [FieldError]>,
}

/// The `application/problem+json` content type.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            Self::Unauthorized(d) | Self::Forbidden(d) | Self::NotFound(d) | Self::Conflict(d) => {
                Some((*d).to_owned())
            }
            Self::Validation(errors) => Some(
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Self::Unavailable(d) => {
                tracing::warn!(error = %d, "dependency unavailable");
                Some("a dependency is unavailable; try again shortly".to_owned())
            }
            Self::NotReady(d) | Self::StateConflict(d) => Some(d.clone()),
            Self::Internal(d) => {
                tracing::error!(error = %d, "internal error");
                None
            }
            Self::UnsupportedMediaType => Some("send the body as application/json".to_owned()),
            Self::PayloadTooLarge => Some("the request body exceeds the size limit".to_owned()),
            Self::RateLimited(secs) => {
                Some(format!("too many requests; retry after {secs} second(s)"))
            }
        };
        let errors = match &self {
            Self::Validation(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let body = Problem {
            kind: format!("urn:mpanel:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, bytes).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Self::RateLimited(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable(e.to_string())
            }
            // A server going away answers a query in flight with an error of its own, not an
            // I/O error: `57P01 terminating connection due to administrator command` from a
            // fast shutdown, `57P02`/`57P03` around a crash or start, `08xxx` connection
            // failures, `53xxx` out of connections or memory. The request may succeed once the
            // server is back, so it is a 503 like the others, not a 500.
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| server_unavailable(&c)) => {
                Self::Unavailable(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// SQLSTATEs that mean "the database server is unavailable right now", not "this query is
/// wrong": classes 08 (connection exception) and 53 (insufficient resources), and 57P
/// (shutdown, crash, cannot connect now — but not 57014, a cancelled query).
fn server_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || sqlstate.starts_with("53") || sqlstate.starts_with("57P")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error with a given SQLSTATE, as the Postgres driver would return it.
    #[derive(Debug)]
    struct ServerSaid(&'static str);

    impl std::fmt::Display for ServerSaid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server said {}", self.0)
        }
    }

    impl std::error::Error for ServerSaid {}

    impl sqlx::error::DatabaseError for ServerSaid {
        fn message(&self) -> &str {
            "server said"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn status_of(sqlstate: &'static str) -> StatusCode {
        ApiError::from(sqlx::Error::Database(Box::new(ServerSaid(sqlstate))))
            .into_response()
            .status()
    }

    #[test]
    fn a_server_going_away_mid_query_is_503_and_a_bad_query_is_500() {
        // Fast shutdown, crash, starting up, connection failure, too many connections.
        for sqlstate in ["57P01", "57P02", "57P03", "08006", "53300"] {
            assert_eq!(
                status_of(sqlstate),
                StatusCode::SERVICE_UNAVAILABLE,
                "{sqlstate}"
            );
        }
        // Undefined column, unique violation, a cancelled statement: bugs, not outages.
        for sqlstate in ["42703", "23505", "57014"] {
            assert_eq!(
                status_of(sqlstate),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{sqlstate}"
            );
        }
    }

    #[test]
    fn rate_limited_is_429_problem_json_with_retry_after() {
        let response = ApiError::RateLimited(12).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header(header::RETRY_AFTER).as_deref(), Some("12"));
        assert_eq!(header(header::CONTENT_TYPE).as_deref(), Some(PROBLEM_JSON));
    }
}
