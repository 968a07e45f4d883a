//! Authentication and authorization of staff and customers (DESIGN §5, ADR 0008).
//!
//! - [`users`]: logins (argon2id) and [`create_user`] for `mpanel users create`.
//! - [`jwt`]: 15-minute HS256 access tokens, validation pinned to HS256.
//! - [`refresh`]: opaque, hashed, rotated refresh tokens with reuse detection.
//! - [`session`]: login, refresh, logout and turning a bearer token into a [`Caller`].
//! - [`roles`]: [`Role`], [`Caller`] and the one place that decides what a caller may do
//!   ([`Caller::require`], 403) and which tenant's data they may see ([`Caller::tenant_scope`],
//!   404). Staff endpoints take a `Caller` argument (the HTTP layer extracts it) and call both.
//!
//! No password, token or secret is ever logged or returned in an error: secrets travel as
//! [`secrecy::SecretString`], types holding keys have redacting `Debug`s, and every refusal is
//! one generic 401 whose reason is logged only at debug level.

pub mod jwt;
pub mod refresh;
pub mod roles;
pub mod session;
pub mod users;

use std::time::Duration;

pub use roles::{Caller, Denied, Role, TenantScope};
pub use session::{AuthError, Session};
pub use users::{create_user, CreateUserError, User};

/// The type of [`create_user`]'s password, re-exported so callers need not name `secrecy`.
pub use secrecy::SecretString;

/// Re-exported so black-box tests can forge hostile tokens with the very library that checks
/// them.
pub use jsonwebtoken;

/// Keys and lifetimes of the auth endpoints, built once at start.
pub struct AuthSettings {
    access: jwt::AccessKeys,
    refresh_lifetime: Duration,
    /// An argon2id hash of a random password nobody knows, with the same parameters as real
    /// hashes: unknown e-mails are verified against it so they take as long as wrong passwords.
    dummy_hash: String,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("access", &self.access)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .finish_non_exhaustive()
    }
}

impl AuthSettings {
    /// Settings signing with `jwt_secret`. Hashes the dummy password (some tens of ms, once).
    #[must_use]
    pub fn new(
        jwt_secret: &SecretString,
        access_lifetime: Duration,
        refresh_lifetime: Duration,
    ) -> Self {
        let random = refresh::generate();
        let dummy_hash = crate::passwords::hash(secrecy::ExposeSecret::expose_secret(
            &random.secret,
        ))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot hash the dummy password; unknown e-mails will answer faster");
            String::new()
        });
        Self {
            access: jwt::AccessKeys::new(jwt_secret, access_lifetime),
            refresh_lifetime,
            dummy_hash,
        }
    }

    /// Settings from `JWT_SECRET`, `JWT_ACCESS_EXPIRY` and `JWT_REFRESH_EXPIRY`.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            &config.jwt_secret,
            config.jwt_access_expiry,
            config.jwt_refresh_expiry,
        )
    }

    /// The access-token keys.
    #[must_use]
    pub fn access(&self) -> &jwt::AccessKeys {
        &self.access
    }

    /// How long a refresh token lives (renewed by each rotation).
    #[must_use]
    pub fn refresh_lifetime(&self) -> Duration {
        self.refresh_lifetime
    }

    pub(crate) fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }
}
