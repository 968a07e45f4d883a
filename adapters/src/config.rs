//! Configuration from the environment (DESIGN §7). Bad or missing values fail at start with a
//! message naming the variable; secrets are held as [`SecretString`] so they cannot reach a log
//! through `Debug`.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};

/// Why the configuration is unusable; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Everything `mpanel serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection string (`DATABASE_URL`).
    pub database_url: SecretString,
    /// Pool size (`DATABASE_POOL_MAX`, default 20).
    pub database_pool_max: u32,
    /// Listen address (`HOST`, default 127.0.0.1).
    pub host: IpAddr,
    /// Listen port (`PORT`, default 2271).
    pub port: u16,
    /// Shared secret of the marketing site's order webhook (`MARKETING_WEBHOOK_SECRET`, ≥ 16 bytes).
    pub marketing_webhook_secret: SecretString,
    /// JWT signing secret (`JWT_SECRET`, ≥ 32 bytes).
    pub jwt_secret: SecretString,
    /// Attempts per provisioning job series (`JOB_MAX_ATTEMPTS`, default 5).
    pub job_max_attempts: u32,
}

/// Reads a variable through a lookup function (the environment in production, a map in tests).
pub trait Lookup {
    /// The variable's value, if set and not empty.
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Lookup for Env {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.is_empty())
    }
}

impl<S: std::hash::BuildHasher> Lookup for std::collections::HashMap<&str, &str, S> {
    fn get(&self, var: &str) -> Option<String> {
        std::collections::HashMap::get(self, var)
            .map(|v| (*v).to_owned())
            .filter(|v| !v.is_empty())
    }
}

fn required(env: &impl Lookup, var: &'static str) -> Result<String, ConfigError> {
    env.get(var).ok_or(ConfigError {
        var,
        reason: "must be set".into(),
    })
}

fn parsed<T: std::str::FromStr>(
    env: &impl Lookup,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env.get(var).map_or(Ok(default), |v| {
        v.parse().map_err(|e| ConfigError {
            var,
            reason: format!("cannot parse {v:?}: {e}"),
        })
    })
}

fn secret(
    env: &impl Lookup,
    var: &'static str,
    min_len: usize,
) -> Result<SecretString, ConfigError> {
    let value = required(env, var)?;
    if value.len() < min_len {
        return Err(ConfigError {
            var,
            reason: format!("must be at least {min_len} bytes long"),
        });
    }
    Ok(SecretString::from(value))
}

impl Config {
    /// Reads the configuration.
    ///
    /// # Errors
    /// The first variable that is missing or invalid.
    pub fn load(env: &impl Lookup) -> Result<Self, ConfigError> {
        let database_pool_max = parsed(env, "DATABASE_POOL_MAX", 20u32)?;
        if database_pool_max == 0 {
            return Err(ConfigError {
                var: "DATABASE_POOL_MAX",
                reason: "must be at least 1".into(),
            });
        }
        let job_max_attempts = parsed(env, "JOB_MAX_ATTEMPTS", 5u32)?;
        if job_max_attempts == 0 {
            return Err(ConfigError {
                var: "JOB_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            database_url: database_url(env)?,
            database_pool_max,
            host: parsed(env, "HOST", IpAddr::from([127, 0, 0, 1]))?,
            port: parsed(env, "PORT", 2271u16)?,
            marketing_webhook_secret: secret(env, "MARKETING_WEBHOOK_SECRET", 16)?,
            jwt_secret: secret(env, "JWT_SECRET", 32)?,
            job_max_attempts,
        })
    }
}

/// Reads `DATABASE_URL` alone (for `migrate` and `seed`, which need nothing else).
///
/// # Errors
/// When it is missing or not a postgres URL.
pub fn database_url(env: &impl Lookup) -> Result<SecretString, ConfigError> {
    let url = required(env, "DATABASE_URL")?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError {
            var: "DATABASE_URL",
            reason: "must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(SecretString::from(url))
}

/// Connects a pool of at most `max` connections.
///
/// # Errors
/// The connection error.
pub async fn connect(url: &SecretString, max: u32) -> Result<sqlx::PgPool, sqlx::Error> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url.expose_secret())
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
            ("MARKETING_WEBHOOK_SECRET", "0123456789abcdef0123"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
    }

    #[test]
    fn defaults_apply() {
        let c = Config::load(&base()).expect("valid");
        assert_eq!(c.port, 2271);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.database_pool_max, 20);
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: [(&str, Option<&str>); 6] = [
            ("JWT_SECRET", Some("too-short")),
            ("JWT_SECRET", None),
            ("DATABASE_URL", Some("mysql://x")),
            ("PORT", Some("http")),
            ("MARKETING_WEBHOOK_SECRET", None),
            ("DATABASE_POOL_MAX", Some("0")),
        ];
        for (var, value) in cases {
            let mut env = base();
            match value {
                Some(v) => env.insert(var, v),
                None => env.remove(var),
            };
            let err = Config::load(&env).expect_err(var);
            assert_eq!(err.var, var);
        }
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = Config::load(&base()).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123456789abcdef0123456789abcdef"));
        assert!(!shown.contains("u:p@"));
    }
}
