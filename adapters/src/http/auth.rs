//! `/api/auth/*` and the [`Caller`] extractor every staff endpoint uses.
//!
//! A handler that takes `caller: Caller` only runs for a valid, live bearer token; anything else
//! is answered 401 before the handler starts. Authorization then goes through
//! [`Caller::require`] (403) and [`Caller::tenant_scope`] (404), whose [`Denied`] converts into
//! [`ApiError`] with `?`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mpanel_domain::values::Email;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::json::{object, Fields};
use super::openapi::{BadRequest, RateLimited, Unauthorized, Unavailable};
use super::problem::ApiError;
use super::AppState;
use crate::auth::session::{self, presented_password, presented_refresh_token};
use crate::auth::{AuthError, AuthSettings, Caller, Denied, Role, Session, User};

const BAD_CREDENTIALS: &str = "invalid email or password";
const BAD_TOKEN: &str = "missing, invalid or expired access token";
const BAD_REFRESH: &str = "invalid or expired refresh token";

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Forbidden => ApiError::Forbidden("your role may not do this"),
            Denied::NotFound => ApiError::NotFound("no such resource"),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => ApiError::Unauthorized(BAD_CREDENTIALS),
            AuthError::InvalidToken(reason) => {
                tracing::debug!(reason, "access token refused");
                ApiError::Unauthorized(BAD_TOKEN)
            }
            AuthError::InvalidRefreshToken(reason) => {
                tracing::info!(reason, "refresh token refused");
                ApiError::Unauthorized(BAD_REFRESH)
            }
            AuthError::Storage(e) => e.into(),
            AuthError::Internal(e) => ApiError::Internal(e),
        }
    }
}

fn settings(state: &AppState) -> Result<&AuthSettings, ApiError> {
    state
        .auth
        .as_deref()
        .ok_or_else(|| ApiError::Unavailable("authentication is not configured".into()))
}

/// The token of an `Authorization: Bearer …` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let settings = settings(state)?;
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized(BAD_TOKEN))?;
        Ok(session::authenticate(&state.pool, settings, token).await?)
    }
}

/// A user as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    id: Uuid,
    email: String,
    /// `super_admin`, `admin`, `support`, `auditor` or `customer`.
    #[schema(value_type = String, example = "admin")]
    role: Role,
    /// The user's tenant; absent (null) for a super admin.
    tenant_id: Option<Uuid>,
}

impl From<User> for UserBody {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: u.role,
            tenant_id: u.tenant_id,
        }
    }
}

/// A new session: a short-lived access token and the refresh token that renews it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionBody<'a> {
    /// JWT for `Authorization: Bearer …`.
    access_token: &'a str,
    /// Opaque; spent by its first use on `/api/auth/refresh`.
    refresh_token: &'a str,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds the access token lives.
    #[schema(example = 900)]
    expires_in: u64,
    user: UserBody,
}

/// `POST /api/auth/login`'s body (documentation only: fields are read one by one).
#[derive(ToSchema)]
#[allow(dead_code)]
struct LoginBody {
    #[schema(example = "admin@example.com")]
    email: String,
    #[schema(format = Password)]
    password: String,
}

/// `POST /api/auth/refresh`'s body (documentation only).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/auth/logout`'s optional body (documentation only): without it, every session of
/// the caller ends.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// A session as JSON; never cached (it holds credentials).
fn session_response(session: Session) -> Response {
    let body = SessionBody {
        access_token: &session.access_token,
        refresh_token: session.refresh_token.expose_secret(),
        token_type: "Bearer",
        expires_in: session.expires_in,
        user: session.user.clone().into(),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /api/auth/login` `{email, password}`: 200 with a session, 401 for an unknown e-mail
/// or a wrong password alike, 422 for a malformed body.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body(content = LoginBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A new session (`Cache-Control: no-store`)", body = SessionBody),
        Unauthorized,
        BadRequest,
        RateLimited,
        Unavailable
    )
)]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = settings(&state)?;
    let body = object(&headers, body)?;
    let mut fields = Fields::default();
    let email = fields.required(&body, "email", Email::parse);
    let password = fields.required(&body, "password", presented_password);
    fields.finish()?;
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Internal("field parsing lost an error".into()));
    };
    let session = session::login(&state.pool, settings, &email, &password).await?;
    Ok(session_response(session))
}

/// `POST /api/auth/refresh` `{refreshToken}`: a new pair; the presented token is spent.
#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = "auth",
    request_body(content = RefreshBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A new session; the presented refresh token is spent \
                                      (reusing it revokes the whole session)", body = SessionBody),
        Unauthorized,
        BadRequest,
        RateLimited,
        Unavailable
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = settings(&state)?;
    let body = object(&headers, body)?;
    let mut fields = Fields::default();
    let token = fields.required(&body, "refreshToken", presented_refresh_token);
    fields.finish()?;
    let Some(token) = token else {
        return Err(ApiError::Internal("field parsing lost an error".into()));
    };
    let session = session::refresh(&state.pool, settings, &token).await?;
    Ok(session_response(session))
}

/// `GET /api/auth/me`: the caller.
#[utoipa::path(
    get,
    path = "/api/auth/me",
    tag = "auth",
    responses(
        (status = 200, description = "The caller", body = UserBody),
        Unauthorized,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn me(caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    let user = crate::auth::users::find(&state.pool, caller.user_id)
        .await?
        .ok_or(ApiError::Unauthorized(BAD_TOKEN))?;
    Ok(Json(UserBody::from(user)).into_response())
}

/// `POST /api/auth/logout` (optional `{refreshToken}`): ends that token's session, or all of the
/// caller's sessions; 204 either way.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutBody>, content_type = "application/json"),
    responses(
        (status = 204, description = "The session (or every session of the caller) ended"),
        Unauthorized,
        BadRequest,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn logout(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let empty = body
        .as_ref()
        .is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace));
    let token: Option<SecretString> = if empty {
        None
    } else {
        let body = object(&headers, body)?;
        let mut fields = Fields::default();
        let token = fields.optional(&body, "refreshToken", presented_refresh_token);
        fields.finish()?;
        token.flatten()
    };
    session::logout(&state.pool, &caller, token.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            bearer(&h).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc.def.ghi"), Some("abc.def.ghi".into()));
        assert_eq!(with("bearer abc"), Some("abc".into()));
        assert_eq!(with("Basic dXNlcjpwYXNz"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Bearer"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn denials_become_403_and_404() {
        let status = |e: ApiError| e.into_response().status();
        assert_eq!(status(Denied::Forbidden.into()), StatusCode::FORBIDDEN);
        assert_eq!(status(Denied::NotFound.into()), StatusCode::NOT_FOUND);
    }
}
