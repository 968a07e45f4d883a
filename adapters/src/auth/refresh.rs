//! Refresh tokens: opaque, stored hashed, rotated on every use, reuse revokes the family.
//!
//! The client holds 32 random bytes (hex); the `refresh_tokens` table holds only their SHA-256,
//! so neither a database dump nor a log of the table can be replayed. A login starts a family;
//! every refresh marks the presented token rotated and issues its successor in the same
//! transaction, the presented row locked `FOR UPDATE`, so two refreshes of one token are
//! serialised and the second sees it already rotated. A rotated token presented again means
//! two parties hold the family (theft, or a client racing itself): every token of the family is
//! revoked, and the access tokens of the session with it (they carry the family as `sid`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Length of a refresh token in random bytes (64 hex characters on the wire).
pub const TOKEN_BYTES: usize = 32;

/// A freshly generated refresh token: the secret for the client, the digest for the table.
pub struct NewToken {
    /// What the client gets, once.
    pub secret: SecretString,
    /// What is stored.
    pub digest: [u8; 32],
}

/// Generates a token from the OS random source.
#[must_use]
pub fn generate() -> NewToken {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let digest = digest(&secret);
    NewToken {
        secret: SecretString::from(secret),
        digest,
    }
}

/// The stored form of a presented token.
#[must_use]
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` has the shape of one we issue (64 lowercase hex digits). Anything else is
/// refused without a query.
#[must_use]
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_BYTES * 2
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a refresh was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Not a token we know.
    #[error("unknown refresh token")]
    Unknown,
    /// Past its expiry.
    #[error("refresh token expired")]
    Expired,
    /// Its family was revoked (logout, or an earlier reuse).
    #[error("refresh token revoked")]
    Revoked,
    /// Already rotated: the family has just been revoked.
    #[error("refresh token reused; family {family_id} of user {user_id} revoked")]
    Reused {
        /// The revoked family.
        family_id: Uuid,
        /// Its user.
        user_id: Uuid,
    },
    /// The database failed.
    #[error("refresh token storage: {0}")]
    Storage(#[from] sqlx::Error),
}

/// A successful rotation.
pub struct Rotated {
    /// The token's user.
    pub user_id: Uuid,
    /// The family (session), unchanged.
    pub family_id: Uuid,
    /// The successor token.
    pub token: NewToken,
}

/// Stores a new token of `family_id` for `user_id`, valid for `lifetime` from `now`.
///
/// # Errors
/// The database error.
pub async fn insert(
    conn: &mut PgConnection,
    user_id: Uuid,
    family_id: Uuid,
    token: &NewToken,
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let expires_at =
        now + chrono::Duration::from_std(lifetime).unwrap_or_else(|_| chrono::Duration::days(7));
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(user_id)
    .bind(family_id)
    .bind(token.digest.as_slice())
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    expires_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Exchanges `presented` for its successor (same family, fresh lifetime).
///
/// # Errors
/// [`RefreshError`]; on [`RefreshError::Reused`] the family is already revoked.
pub async fn rotate(
    pool: &PgPool,
    presented: &SecretString,
    lifetime: Duration,
) -> Result<Rotated, RefreshError> {
    let presented = presented.expose_secret();
    if !well_formed(presented) {
        return Err(RefreshError::Unknown);
    }
    let mut tx = pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, user_id, family_id, expires_at, rotated_at, revoked_at \
         FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(digest(presented).as_slice())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(RefreshError::Unknown);
    };
    let now = Utc::now();
    if row.revoked_at.is_some() {
        return Err(RefreshError::Revoked);
    }
    if row.rotated_at.is_some() {
        revoke_family_in(&mut tx, row.family_id, now).await?;
        tx.commit().await?;
        return Err(RefreshError::Reused {
            family_id: row.family_id,
            user_id: row.user_id,
        });
    }
    if row.expires_at <= now {
        return Err(RefreshError::Expired);
    }
    let token = generate();
    let next = insert(&mut tx, row.user_id, row.family_id, &token, now, lifetime).await?;
    sqlx::query("UPDATE refresh_tokens SET rotated_at = $2, replaced_by = $3 WHERE id = $1")
        .bind(row.id)
        .bind(now)
        .bind(next)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Rotated {
        user_id: row.user_id,
        family_id: row.family_id,
        token,
    })
}

async fn revoke_family_in(
    conn: &mut PgConnection,
    family_id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Revokes the family of `presented`, if it is `user_id`'s (a user cannot end someone else's
/// session by presenting their token). Returns the family, if one was found.
///
/// # Errors
/// The database error.
pub async fn revoke_family_of(
    pool: &PgPool,
    user_id: Uuid,
    presented: &SecretString,
) -> Result<Option<Uuid>, sqlx::Error> {
    let presented = presented.expose_secret();
    if !well_formed(presented) {
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    let family: Option<Uuid> = sqlx::query_scalar(
        "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2",
    )
    .bind(digest(presented).as_slice())
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(family) = family {
        revoke_family_in(&mut tx, family, Utc::now()).await?;
    }
    tx.commit().await?;
    Ok(family)
}

/// Revokes every refresh token of `user_id` (log out everywhere).
///
/// # Errors
/// The database error.
pub async fn revoke_user(pool: &PgPool, user_id: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_stored_as_their_digest() {
        let a = generate();
        let b = generate();
        let secret = a.secret.expose_secret();
        assert!(well_formed(secret));
        assert_ne!(secret, b.secret.expose_secret());
        assert_eq!(a.digest, digest(secret));
        assert_ne!(hex::encode(a.digest), secret);
    }

    #[test]
    fn only_our_shape_is_looked_up() {
        assert!(!well_formed(""));
        assert!(!well_formed(&"A".repeat(64)));
        assert!(!well_formed(&"a".repeat(63)));
        assert!(!well_formed(&"g".repeat(64)));
        assert!(well_formed(&"0a".repeat(32)));
    }
}
