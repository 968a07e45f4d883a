//! Logins: creating users and checking their passwords (argon2id, off the async runtime).

use mpanel_domain::values::Email;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::roles::Role;

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password, in bytes (bounds the hashing work a request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Tenant; `None` for a super admin.
    pub tenant_id: Option<Uuid>,
    /// Login e-mail (lowercased).
    pub email: String,
    /// Role.
    pub role: Role,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    email: String,
    role: String,
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

impl UserRow {
    fn into_user(self) -> Result<User, sqlx::Error> {
        let role = self
            .role
            .parse()
            .map_err(|e: super::roles::UnknownRole| sqlx::Error::Decode(Box::new(e)))?;
        Ok(User {
            id: self.id,
            tenant_id: self.tenant_id,
            email: self.email,
            role,
        })
    }
}

/// The user with id `id`, if they still exist.
///
/// # Errors
/// The database error.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, UserRow>("SELECT id, tenant_id, email, role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(UserRow::into_user)
        .transpose()
}

/// Runs CPU-bound work on the blocking pool, inside the caller's span.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work)).await
}

/// Why credentials could not be checked (as opposed to being wrong).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The database failed.
    #[error("loading the user: {0}")]
    Storage(#[from] sqlx::Error),
    /// The hashing task died.
    #[error("verifying the password: {0}")]
    Hashing(String),
}

/// The user whose e-mail and password these are, or `None`.
///
/// An unknown e-mail is verified against `dummy_hash` (same parameters as real hashes), so both
/// failures take about as long and cannot be told apart by timing.
///
/// # Errors
/// [`CheckError`] when the check itself could not run.
pub async fn check_password(
    pool: &PgPool,
    dummy_hash: &str,
    email: &Email,
    password: &SecretString,
) -> Result<Option<User>, CheckError> {
    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT id, tenant_id, email, role, password_hash FROM users WHERE email = $1",
    )
    .bind(email.as_str())
    .fetch_optional(pool)
    .await?;
    let (user, hash) = match row {
        Some(LoginRow {
            user,
            password_hash,
        }) => (Some(user), password_hash),
        None => (None, dummy_hash.to_owned()),
    };
    let password = password.clone();
    let matches = blocking(move || crate::passwords::verify(password.expose_secret(), &hash))
        .await
        .map_err(|e| CheckError::Hashing(e.to_string()))?;
    match user {
        Some(user) if matches => Ok(Some(user.into_user()?)),
        _ => Ok(None),
    }
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// Shorter than [`MIN_PASSWORD_CHARS`].
    #[error("the password must be at least {MIN_PASSWORD_CHARS} characters long")]
    PasswordTooShort,
    /// Longer than [`MAX_PASSWORD_BYTES`].
    #[error("the password must be at most {MAX_PASSWORD_BYTES} bytes long")]
    PasswordTooLong,
    /// A super admin was given a tenant, or another role none.
    #[error("a super_admin has no tenant; every other role needs one")]
    TenantMismatch,
    /// The tenant does not exist.
    #[error("no such tenant")]
    UnknownTenant,
    /// The e-mail already has a login (409).
    #[error("a user with this e-mail already exists")]
    DuplicateEmail,
    /// Hashing failed.
    #[error("hashing the password: {0}")]
    Hashing(String),
    /// The database failed.
    #[error("storing the user: {0}")]
    Storage(#[from] sqlx::Error),
}

/// Checks a new password against the policy.
///
/// # Errors
/// [`CreateUserError::PasswordTooShort`] or [`CreateUserError::PasswordTooLong`].
pub fn check_policy(password: &SecretString) -> Result<(), CreateUserError> {
    let password = password.expose_secret();
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CreateUserError::PasswordTooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(CreateUserError::PasswordTooShort);
    }
    Ok(())
}

/// Creates a login (for `mpanel users create`); returns its id. Only the argon2id hash is
/// stored.
///
/// # Errors
/// [`CreateUserError`]; a taken e-mail is [`CreateUserError::DuplicateEmail`].
#[tracing::instrument(skip(pool, password), fields(email = %email, role = %role))]
pub async fn create_user(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    email: &Email,
    role: Role,
    password: &SecretString,
) -> Result<Uuid, CreateUserError> {
    check_policy(password)?;
    if role.is_tenant_bound() != tenant_id.is_some() {
        return Err(CreateUserError::TenantMismatch);
    }
    if let Some(tenant) = tenant_id {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
            .bind(tenant)
            .fetch_one(pool)
            .await?;
        if !known {
            return Err(CreateUserError::UnknownTenant);
        }
    }
    let password = password.clone();
    let hash = blocking(move || crate::passwords::hash(password.expose_secret()))
        .await
        .map_err(|e| CreateUserError::Hashing(e.to_string()))?
        .map_err(|e| CreateUserError::Hashing(e.to_string()))?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, tenant_id, email, role, password_hash) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(role.as_str())
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    let id = id.ok_or(CreateUserError::DuplicateEmail)?;
    tracing::info!(user_id = %id, "user created");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_policy_counts_characters_and_caps_bytes() {
        let ok = |p: &str| check_policy(&SecretString::from(p.to_owned())).is_ok();
        assert!(!ok("short"));
        assert!(!ok("elevenchars"));
        assert!(ok("twelve chars"));
        assert!(ok("ééééééééééé€"), "12 characters, more bytes");
        assert!(!ok("éééééééééé"), "10 characters, 20 bytes");
        assert!(ok(&"x".repeat(MAX_PASSWORD_BYTES)));
        assert!(!ok(&"x".repeat(MAX_PASSWORD_BYTES + 1)));
    }
}
