//! Access tokens: short-lived HS256 JWTs.
//!
//! Validation is pinned to HS256: `alg: none`, every asymmetric algorithm (whose "public key"
//! an attacker could substitute with our HMAC secret) and the other HMAC sizes are refused
//! before the signature is looked at. Issuer, audience, `exp` and `nbf` are required and checked
//! with a small leeway for clock skew. Passing here proves only that we signed the token; the
//! caller then checks the user and session still exist ([`super::session::authenticate`]).

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::roles::Role;

/// The `iss` of every token mpanel signs.
pub const ISSUER: &str = "mpanel";
/// The `aud` of access tokens for the API.
pub const AUDIENCE: &str = "mpanel-api";
/// The only signing algorithm.
pub const ALGORITHM: Algorithm = Algorithm::HS256;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// Their tenant; absent for a super admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
    /// Their role when the token was issued.
    pub role: Role,
    /// The refresh-token family (session) this token belongs to; revoking it ends the token.
    pub sid: Uuid,
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires at.
    pub exp: u64,
    /// This token's id.
    pub jti: Uuid,
}

/// Why a token was refused. Only ever logged at debug level and never shown to the client,
/// which sees one generic 401 whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past `exp` (plus leeway).
    #[error("expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// Not HS256.
    #[error("algorithm not accepted")]
    Algorithm,
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// Wrong issuer or audience.
    #[error("wrong issuer or audience")]
    WrongParty,
    /// Not a JWT, or claims missing or of the wrong shape.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// The signing key and the validation rules, built once from `JWT_SECRET`.
pub struct AccessKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeys")
            .field("algorithm", &ALGORITHM)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl AccessKeys {
    /// Keys for `secret`; tokens live for `lifetime`.
    #[must_use]
    pub fn new(secret: &SecretString, lifetime: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(ALGORITHM);
        validation.algorithms = vec![ALGORITHM];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"]
            .into_iter()
            .map(str::to_owned)
            .collect::<HashSet<_>>();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            lifetime,
        }
    }

    /// How long an access token lives.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs an access token for `user` in session `sid`, issued at `now` (seconds).
    ///
    /// # Errors
    /// When signing fails (not expected with an HMAC key).
    pub fn issue(
        &self,
        user: Uuid,
        tenant: Option<Uuid>,
        role: Role,
        sid: Uuid,
        now: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = AccessClaims {
            sub: user,
            tid: tenant,
            role,
            sid,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.lifetime.as_secs()),
            jti: Uuid::new_v4(),
        };
        jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
    }

    /// Checks a token's algorithm, signature, issuer, audience and times.
    ///
    /// # Errors
    /// [`TokenError`] saying which check failed.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.into_kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::WrongParty,
                other => TokenError::Malformed(format!("{other:?}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn keys() -> AccessKeys {
        AccessKeys::new(&SecretString::from(SECRET), Duration::from_secs(900))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    fn claims() -> AccessClaims {
        let now = now();
        AccessClaims {
            sub: Uuid::new_v4(),
            tid: Some(Uuid::new_v4()),
            role: Role::Admin,
            sid: Uuid::new_v4(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            nbf: now,
            exp: now + 900,
            jti: Uuid::new_v4(),
        }
    }

    fn signed(alg: Algorithm, secret: &str, claims: &AccessClaims) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("signs")
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let keys = keys();
        let (user, tenant, sid, now) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), now());
        let token = keys
            .issue(user, Some(tenant), Role::Support, sid, now)
            .expect("issues");
        let claims = keys.verify(&token).expect("valid");
        assert_eq!(claims.sub, user);
        assert_eq!(claims.tid, Some(tenant));
        assert_eq!(claims.role, Role::Support);
        assert_eq!(claims.sid, sid);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
        assert_eq!(claims.exp, now + 900);
        let root = keys
            .issue(user, None, Role::SuperAdmin, sid, now)
            .expect("issues");
        assert_eq!(keys.verify(&root).expect("valid").tid, None);
        assert!(!root.contains("tid"), "no tenant claim is written");
    }

    #[test]
    fn only_hs256_with_our_secret_is_accepted() {
        let keys = keys();
        let c = claims();
        assert!(keys.verify(&signed(Algorithm::HS256, SECRET, &c)).is_ok());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                keys.verify(&signed(alg, SECRET, &c)),
                Err(TokenError::Algorithm)
            );
        }
        assert_eq!(
            keys.verify(&signed(
                Algorithm::HS256,
                "another-secret-of-enough-length!!",
                &c
            )),
            Err(TokenError::Signature)
        );
        let payload = b64(&serde_json::to_vec(&c).expect("json"));
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(keys.verify(&none).is_err());
        let good = signed(Algorithm::HS256, SECRET, &c);
        let signature = good.rsplit('.').next().expect("signature");
        for alg in ["RS256", "ES256", "PS256", "EdDSA"] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            let forged = format!("{header}.{payload}.{signature}");
            assert_eq!(keys.verify(&forged), Err(TokenError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn times_issuer_and_audience_are_enforced() {
        let keys = keys();
        let now = now();
        type Change = fn(&mut AccessClaims, u64);
        let cases: [(&str, Change, TokenError); 5] = [
            ("expired", |c, now| c.exp = now - 31, TokenError::Expired),
            (
                "nbf ahead",
                |c, now| c.nbf = now + 60,
                TokenError::NotYetValid,
            ),
            (
                "issuer",
                |c, _| c.iss = "other".into(),
                TokenError::WrongParty,
            ),
            (
                "audience",
                |c, _| c.aud = "mpanel-admin".into(),
                TokenError::WrongParty,
            ),
            (
                "exp within leeway is still fine, past it is not",
                |c, now| c.exp = now - 60,
                TokenError::Expired,
            ),
        ];
        for (what, change, expected) in cases {
            let mut c = claims();
            change(&mut c, now);
            assert_eq!(
                keys.verify(&signed(Algorithm::HS256, SECRET, &c)),
                Err(expected),
                "{what}"
            );
        }
        let mut skewed = claims();
        skewed.exp = now - 5;
        skewed.nbf = now + 5;
        assert!(keys
            .verify(&signed(Algorithm::HS256, SECRET, &skewed))
            .is_ok());
    }

    #[test]
    fn missing_claims_and_tampering_are_refused() {
        let keys = keys();
        let mut no_nbf = serde_json::to_value(claims()).expect("json");
        no_nbf.as_object_mut().expect("object").remove("nbf");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &no_nbf,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        assert!(matches!(keys.verify(&token), Err(TokenError::Malformed(_))));

        let good = signed(Algorithm::HS256, SECRET, &claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut promoted = claims();
        promoted.role = Role::SuperAdmin;
        let payload = b64(&serde_json::to_vec(&promoted).expect("json"));
        parts[1] = &payload;
        assert_eq!(keys.verify(&parts.join(".")), Err(TokenError::Signature));
        assert!(keys.verify("not.a.jwt").is_err());
        assert!(keys.verify("").is_err());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        assert!(!format!("{:?}", keys()).contains(SECRET));
    }
}
