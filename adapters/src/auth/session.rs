//! Sessions: login, refresh, logout, and the check behind every bearer token.

use chrono::Utc;
use mpanel_domain::values::Email;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use super::jwt::TokenError;
use super::refresh::{self, RefreshError};
use super::roles::{Caller, Role};
use super::users::{self, CheckError, User};
use super::AuthSettings;

/// A signed-in session as handed to the client.
pub struct Session {
    /// The JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// The opaque token for `/api/auth/refresh`.
    pub refresh_token: SecretString,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Who signed in.
    pub user: User,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Why a request was not authenticated. The client sees one generic message per kind; the
/// reason inside is for debug logs only and never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong e-mail or password (indistinguishable on purpose).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The access token is unusable.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// The refresh token is unknown, expired, revoked or was reused.
    #[error("invalid refresh token: {0}")]
    InvalidRefreshToken(&'static str),
    /// The database failed.
    #[error("auth storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Something that should not happen (hashing or signing failed).
    #[error("auth internal: {0}")]
    Internal(String),
}

impl From<CheckError> for AuthError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Storage(e) => Self::Storage(e),
            CheckError::Hashing(e) => Self::Internal(e),
        }
    }
}

fn unix_now() -> (chrono::DateTime<Utc>, u64) {
    let now = Utc::now();
    (now, u64::try_from(now.timestamp()).unwrap_or_default())
}

fn access_token(settings: &AuthSettings, user: &User, sid: Uuid) -> Result<String, AuthError> {
    let (_, now) = unix_now();
    settings
        .access()
        .issue(user.id, user.tenant_id, user.role, sid, now)
        .map_err(|e| AuthError::Internal(format!("signing an access token: {e}")))
}

/// Writes a login attempt to `login_audit` (never a password or token).
async fn record_attempt(
    pool: &PgPool,
    email: &Email,
    user_id: Option<Uuid>,
) -> Result<(), AuthError> {
    sqlx::query("INSERT INTO login_audit (email, user_id, succeeded) VALUES ($1, $2, $3)")
        .bind(email.as_str())
        .bind(user_id)
        .bind(user_id.is_some())
        .execute(pool)
        .await?;
    Ok(())
}

/// Checks e-mail and password and opens a session (a new refresh-token family).
///
/// # Errors
/// [`AuthError::InvalidCredentials`] for an unknown e-mail or a wrong password alike.
#[tracing::instrument(skip_all)]
pub async fn login(
    pool: &PgPool,
    settings: &AuthSettings,
    email: &Email,
    password: &SecretString,
) -> Result<Session, AuthError> {
    let Some(user) = users::check_password(pool, settings.dummy_hash(), email, password).await?
    else {
        tracing::info!("login refused");
        record_attempt(pool, email, None).await?;
        return Err(AuthError::InvalidCredentials);
    };
    record_attempt(pool, email, Some(user.id)).await?;
    let family = Uuid::new_v4();
    let token = refresh::generate();
    let mut conn = pool.acquire().await?;
    let (now, _) = unix_now();
    refresh::insert(
        &mut conn,
        user.id,
        family,
        &token,
        now,
        settings.refresh_lifetime(),
    )
    .await?;
    let access_token = access_token(settings, &user, family)?;
    tracing::info!(user_id = %user.id, session_id = %family, "login succeeded");
    Ok(Session {
        access_token,
        refresh_token: token.secret,
        expires_in: settings.access().lifetime().as_secs(),
        user,
    })
}

/// Exchanges a refresh token for a new pair (the presented one is rotated).
///
/// # Errors
/// [`AuthError::InvalidRefreshToken`] for an unknown, expired, revoked or reused token; reuse
/// has revoked the whole family.
#[tracing::instrument(skip_all)]
pub async fn refresh(
    pool: &PgPool,
    settings: &AuthSettings,
    presented: &SecretString,
) -> Result<Session, AuthError> {
    let rotated = refresh::rotate(pool, presented, settings.refresh_lifetime())
        .await
        .map_err(|e| match e {
            RefreshError::Storage(e) => AuthError::Storage(e),
            RefreshError::Unknown => AuthError::InvalidRefreshToken("unknown"),
            RefreshError::Expired => AuthError::InvalidRefreshToken("expired"),
            RefreshError::Revoked => AuthError::InvalidRefreshToken("revoked"),
            RefreshError::Reused { family_id, user_id } => {
                tracing::warn!(
                    user_id = %user_id,
                    session_id = %family_id,
                    "rotated refresh token presented again; session revoked"
                );
                AuthError::InvalidRefreshToken("reused")
            }
        })?;
    let user = users::find(pool, rotated.user_id)
        .await?
        .ok_or(AuthError::InvalidRefreshToken("user gone"))?;
    let access_token = access_token(settings, &user, rotated.family_id)?;
    tracing::info!(user_id = %user.id, session_id = %rotated.family_id, "session refreshed");
    Ok(Session {
        access_token,
        refresh_token: rotated.token.secret,
        expires_in: settings.access().lifetime().as_secs(),
        user,
    })
}

/// Ends the session of `presented` (if it is the caller's), or all of the caller's sessions.
///
/// # Errors
/// The database error.
#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
pub async fn logout(
    pool: &PgPool,
    caller: &Caller,
    presented: Option<&SecretString>,
) -> Result<(), AuthError> {
    match presented {
        Some(token) => {
            let family = refresh::revoke_family_of(pool, caller.user_id, token).await?;
            tracing::info!(session_id = ?family, "logged out of one session");
        }
        None => {
            let revoked = refresh::revoke_user(pool, caller.user_id).await?;
            tracing::info!(revoked, "logged out of every session");
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Standing {
    tenant_id: Option<Uuid>,
    role: String,
    session_live: bool,
}

/// The caller behind a bearer token: the token must verify, its user still exist with the same
/// role and tenant, and its session must not be revoked.
///
/// # Errors
/// [`AuthError::InvalidToken`] naming the failed check (for logs only).
pub async fn authenticate(
    pool: &PgPool,
    settings: &AuthSettings,
    bearer: &str,
) -> Result<Caller, AuthError> {
    let claims = settings
        .access()
        .verify(bearer)
        .map_err(|e| AuthError::InvalidToken(token_reason(&e)))?;
    let standing: Option<Standing> = sqlx::query_as(
        "SELECT u.tenant_id, u.role, EXISTS (SELECT 1 FROM refresh_tokens r \
           WHERE r.family_id = $2 AND r.user_id = u.id AND r.revoked_at IS NULL) AS session_live \
         FROM users u WHERE u.id = $1",
    )
    .bind(claims.sub)
    .bind(claims.sid)
    .fetch_optional(pool)
    .await?;
    let standing = standing.ok_or(AuthError::InvalidToken("user no longer exists"))?;
    if !standing.session_live {
        return Err(AuthError::InvalidToken("session revoked"));
    }
    let role: Role = standing
        .role
        .parse()
        .map_err(|_| AuthError::Internal("a user has an unknown role".into()))?;
    if role != claims.role || standing.tenant_id != claims.tid {
        return Err(AuthError::InvalidToken(
            "role or tenant changed since issue",
        ));
    }
    Caller::new(claims.sub, claims.tid, role)
        .ok_or(AuthError::InvalidToken("role and tenant disagree"))
}

fn token_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Expired => "expired",
        TokenError::NotYetValid => "not yet valid",
        TokenError::Algorithm => "algorithm not accepted",
        TokenError::Signature => "bad signature",
        TokenError::WrongParty => "wrong issuer or audience",
        TokenError::Malformed(_) => "malformed",
    }
}

/// Parses a presented password: present, not empty, within the size limit. Used at the edge so
/// the value is wrapped in a secret straight away.
///
/// # Errors
/// A reason that never contains the password.
pub fn presented_password(input: &str) -> Result<SecretString, &'static str> {
    if input.is_empty() {
        return Err("must not be empty");
    }
    if input.len() > users::MAX_PASSWORD_BYTES {
        return Err("is too long");
    }
    Ok(SecretString::from(input.to_owned()))
}

/// Parses a presented refresh token (shape only; whether it is known is checked later).
///
/// # Errors
/// A reason that never contains the token.
pub fn presented_refresh_token(input: &str) -> Result<SecretString, &'static str> {
    if input.is_empty() {
        return Err("must not be empty");
    }
    if input.len() > 256 {
        return Err("is too long");
    }
    Ok(SecretString::from(input.to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn presented_secrets_are_checked_without_echoing_them() {
        assert_eq!(presented_password("").err(), Some("must not be empty"));
        let long = "p".repeat(users::MAX_PASSWORD_BYTES + 1);
        assert_eq!(presented_password(&long).err(), Some("is too long"));
        assert_eq!(
            presented_password("hunter2").map(|s| s.expose_secret().to_owned()),
            Ok("hunter2".to_owned())
        );
        assert!(presented_refresh_token(&"a".repeat(257)).is_err());
        assert!(presented_refresh_token("").is_err());
    }
}
