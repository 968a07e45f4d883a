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
    /// Signing secret of the Stripe webhook endpoint (`STRIPE_WEBHOOK_SECRET`, `whsec_…`,
    /// ≥ 16 bytes when set). Optional: without it `POST /api/webhooks/stripe` answers 503.
    pub stripe_webhook_secret: Option<SecretString>,
    /// JWT signing secret (`JWT_SECRET`, ≥ 32 bytes).
    pub jwt_secret: SecretString,
    /// Lifetime of an access token (`JWT_ACCESS_EXPIRY`, default 15 minutes).
    pub jwt_access_expiry: std::time::Duration,
    /// Lifetime of a refresh token, renewed on every rotation (`JWT_REFRESH_EXPIRY`, default 7
    /// days).
    pub jwt_refresh_expiry: std::time::Duration,
    /// Attempts per provisioning job series (`JOB_MAX_ATTEMPTS`, default 5).
    pub job_max_attempts: u32,
    /// Redis, the job doorbell (`REDIS_URL`).
    pub redis_url: SecretString,
    /// Prefix of mpanel's Redis keys (`REDIS_KEY_PREFIX`, default `mpanel`).
    pub redis_key_prefix: String,
    /// Provisioning worker settings.
    pub worker: WorkerSettings,
    /// Request rate limits.
    pub rate_limit: RateLimitSettings,
    /// Browser origins allowed to call the API cross-origin (`CORS_ALLOWED_ORIGINS`, a comma
    /// list of `scheme://host[:port]`, or `*` alone; empty or unset: no CORS headers at all).
    pub cors_allowed_origins: Vec<String>,
    /// Readiness, metrics and shutdown of a process.
    pub process: ProcessSettings,
}

/// Readiness, metrics and shutdown settings of any role (`serve`, `api`, `worker`, `runners`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSettings {
    /// `/api/ready` answers 503 when a feed subscriber is more events behind than this
    /// (`READY_MAX_FEED_LAG_EVENTS`, default 10000).
    pub ready_max_feed_lag_events: i64,
    /// Longest a graceful shutdown may take before the process exits anyway
    /// (`SHUTDOWN_TIMEOUT_SECS`, default 30).
    pub shutdown_timeout: std::time::Duration,
    /// Port of a metrics-only listener (`GET /metrics`, `/api/live`) on `HOST`, for roles
    /// without the API (`METRICS_PORT`; unset: none). Roles with the API serve `/metrics` on
    /// `PORT` and ignore it.
    pub metrics_port: Option<u16>,
    /// How often the shared gauges (feed lag, jobs, queue depth) are refreshed
    /// (`METRICS_REFRESH_MS`, default 5000).
    pub metrics_refresh: std::time::Duration,
}

impl ProcessSettings {
    fn load(env: &impl Lookup) -> Result<Self, ConfigError> {
        let positive = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            let n = parsed(env, var, default)?;
            if n == 0 {
                return Err(ConfigError {
                    var,
                    reason: "must be at least 1".into(),
                });
            }
            Ok(n)
        };
        Ok(Self {
            ready_max_feed_lag_events: i64::try_from(positive(
                "READY_MAX_FEED_LAG_EVENTS",
                10_000,
            )?)
            .unwrap_or(i64::MAX),
            shutdown_timeout: std::time::Duration::from_secs(positive(
                "SHUTDOWN_TIMEOUT_SECS",
                30,
            )?),
            metrics_port: env
                .get("METRICS_PORT")
                .map(|v| {
                    v.parse::<u16>().map_err(|e| ConfigError {
                        var: "METRICS_PORT",
                        reason: format!("cannot parse {v:?}: {e}"),
                    })
                })
                .transpose()?,
            metrics_refresh: std::time::Duration::from_millis(positive(
                "METRICS_REFRESH_MS",
                5000,
            )?),
        })
    }
}

/// Request rate limits (DESIGN §5): a burst of `max` requests, refilled at `max` per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// The window (`RATE_LIMIT_WINDOW_MS`, default 900000 = 15 minutes).
    pub window: std::time::Duration,
    /// Requests per window of one anonymous client address (`RATE_LIMIT_MAX_REQUESTS`, default
    /// 100).
    pub max_requests: u32,
    /// Requests per window of one credential: the webhook key, or one user's access tokens
    /// (`RATE_LIMIT_CREDENTIAL_MAX_REQUESTS`, default 10000).
    pub credential_max_requests: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            window: std::time::Duration::from_secs(15 * 60),
            max_requests: 100,
            credential_max_requests: 10_000,
        }
    }
}

/// Parses `CORS_ALLOWED_ORIGINS`: a comma list of origins (`https://shop.example.com`,
/// `http://localhost:3000`), or `*` alone for any origin. Blank entries are ignored.
///
/// # Errors
/// A reason naming the entry at fault (not the variable: the caller knows it).
pub fn parse_origins(input: &str) -> Result<Vec<String>, String> {
    let origins: Vec<String> = input
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            return Err("`*` must stand alone".into());
        }
        return Ok(origins);
    }
    for origin in &origins {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("{origin:?} must start with https:// or http://"))?;
        let valid = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(format!(
                "{origin:?} is not an origin: scheme://host[:port], without path or trailing slash"
            ));
        }
    }
    Ok(origins)
}

/// Provisioning worker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Jobs run at once per process (`WORKER_CONCURRENCY`, default 4).
    pub concurrency: usize,
    /// Lease per attempt (`JOB_LEASE_SECS`, default 120).
    pub lease: std::time::Duration,
    /// First retry delay, doubling per attempt (`JOB_BACKOFF_BASE_MS`, default 2000).
    pub backoff_base: std::time::Duration,
    /// Longest retry delay (`JOB_BACKOFF_CAP_MS`, default 300000).
    pub backoff_cap: std::time::Duration,
    /// How often the sweeper looks for due jobs (`SWEEP_INTERVAL_MS`, default 1000).
    pub sweep_interval: std::time::Duration,
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

/// Parses a lifetime: whole seconds (`900`) or a number with one unit suffix, `s`, `m`, `h` or
/// `d` (`15m`, `7d`, `3600s`). Zero is refused: a token that is born expired is a typo.
///
/// # Errors
/// A reason naming what is wrong (not the variable: the caller knows it).
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let text = input.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        other => return Err(format!("unknown unit {other:?}; use s, m, h or d")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "cannot parse {input:?}: expected seconds or a number with s, m, h or d (15m, 7d)"
        ));
    }
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("cannot parse {input:?}: number too large"))?;
    let secs = amount
        .checked_mul(per_unit)
        .ok_or_else(|| format!("cannot parse {input:?}: number too large"))?;
    if secs == 0 {
        return Err("must be at least 1 second".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn duration(
    env: &impl Lookup,
    var: &'static str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    env.get(var).map_or(Ok(default), |v| {
        parse_duration(&v).map_err(|reason| ConfigError { var, reason })
    })
}

fn secret(
    env: &impl Lookup,
    var: &'static str,
    min_len: usize,
) -> Result<SecretString, ConfigError> {
    let value = required(env, var)?;
    secret_of_length(var, value, min_len)
}

fn optional_secret(
    env: &impl Lookup,
    var: &'static str,
    min_len: usize,
) -> Result<Option<SecretString>, ConfigError> {
    env.get(var)
        .map(|value| secret_of_length(var, value, min_len))
        .transpose()
}

fn secret_of_length(
    var: &'static str,
    value: String,
    min_len: usize,
) -> Result<SecretString, ConfigError> {
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
        let millis =
            |var: &'static str, default: u64| -> Result<std::time::Duration, ConfigError> {
                let ms = parsed(env, var, default)?;
                if ms == 0 {
                    return Err(ConfigError {
                        var,
                        reason: "must be at least 1".into(),
                    });
                }
                Ok(std::time::Duration::from_millis(ms))
            };
        let worker = WorkerSettings {
            concurrency: parsed(env, "WORKER_CONCURRENCY", 4usize)?.max(1),
            lease: millis("JOB_LEASE_SECS", 120)?.saturating_mul(1000),
            backoff_base: millis("JOB_BACKOFF_BASE_MS", 2000)?,
            backoff_cap: millis("JOB_BACKOFF_CAP_MS", 300_000)?,
            sweep_interval: millis("SWEEP_INTERVAL_MS", 1000)?,
        };
        let defaults = RateLimitSettings::default();
        let at_least_one = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            let n = parsed(env, var, default)?;
            if n == 0 {
                return Err(ConfigError {
                    var,
                    reason: "must be at least 1".into(),
                });
            }
            Ok(n)
        };
        let window_ms = parsed(
            env,
            "RATE_LIMIT_WINDOW_MS",
            u64::try_from(defaults.window.as_millis()).unwrap_or(u64::MAX),
        )?;
        if window_ms == 0 {
            return Err(ConfigError {
                var: "RATE_LIMIT_WINDOW_MS",
                reason: "must be at least 1".into(),
            });
        }
        let rate_limit = RateLimitSettings {
            window: std::time::Duration::from_millis(window_ms),
            max_requests: at_least_one("RATE_LIMIT_MAX_REQUESTS", defaults.max_requests)?,
            credential_max_requests: at_least_one(
                "RATE_LIMIT_CREDENTIAL_MAX_REQUESTS",
                defaults.credential_max_requests,
            )?,
        };
        let cors_allowed_origins = env
            .get("CORS_ALLOWED_ORIGINS")
            .map_or(Ok(Vec::new()), |v| parse_origins(&v))
            .map_err(|reason| ConfigError {
                var: "CORS_ALLOWED_ORIGINS",
                reason,
            })?;
        let redis_url = required(env, "REDIS_URL")?;
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(ConfigError {
                var: "REDIS_URL",
                reason: "must start with redis:// or rediss://".into(),
            });
        }
        let redis_key_prefix = env
            .get("REDIS_KEY_PREFIX")
            .unwrap_or_else(|| "mpanel".to_owned());
        if !redis_key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
        {
            return Err(ConfigError {
                var: "REDIS_KEY_PREFIX",
                reason: "may contain only letters, digits, '-', '_' and ':'".into(),
            });
        }
        let jwt_access_expiry = duration(
            env,
            "JWT_ACCESS_EXPIRY",
            std::time::Duration::from_secs(15 * 60),
        )?;
        if jwt_access_expiry > std::time::Duration::from_secs(86_400) {
            return Err(ConfigError {
                var: "JWT_ACCESS_EXPIRY",
                reason: "must be at most 1 day: access tokens cannot be revoked early".into(),
            });
        }
        let jwt_refresh_expiry = duration(
            env,
            "JWT_REFRESH_EXPIRY",
            std::time::Duration::from_secs(7 * 86_400),
        )?;
        if jwt_refresh_expiry > std::time::Duration::from_secs(365 * 86_400) {
            return Err(ConfigError {
                var: "JWT_REFRESH_EXPIRY",
                reason: "must be at most 365 days".into(),
            });
        }
        if jwt_refresh_expiry <= jwt_access_expiry {
            return Err(ConfigError {
                var: "JWT_REFRESH_EXPIRY",
                reason: "must be longer than JWT_ACCESS_EXPIRY".into(),
            });
        }
        Ok(Self {
            jwt_access_expiry,
            jwt_refresh_expiry,
            redis_url: SecretString::from(redis_url),
            redis_key_prefix,
            worker,
            database_url: database_url(env)?,
            database_pool_max,
            host: parsed(env, "HOST", IpAddr::from([127, 0, 0, 1]))?,
            port: parsed(env, "PORT", 2271u16)?,
            marketing_webhook_secret: secret(env, "MARKETING_WEBHOOK_SECRET", 16)?,
            stripe_webhook_secret: optional_secret(env, "STRIPE_WEBHOOK_SECRET", 16)?,
            jwt_secret: secret(env, "JWT_SECRET", 32)?,
            job_max_attempts,
            rate_limit,
            cors_allowed_origins,
            process: ProcessSettings::load(env)?,
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
/// Every connection runs with `jit = off` (ADR 0020): mpanel's statements are short, and
/// Postgres compiles any plan whose *estimated* cost passes `jit_above_cost` — the feed-status
/// query behind `/api/ready` and the metrics gauges was estimated at 2 M, ran in 0.02 ms and
/// then spent 200–300 ms of CPU compiling itself, every time. The setting travels in the
/// startup packet (no extra round trip), and every pool or connection derived from this one's
/// options (rebuilds, leader locks) inherits it.
///
/// # Errors
/// The connection error (an unparsable URL is one).
pub async fn connect(url: &SecretString, max: u32) -> Result<sqlx::PgPool, sqlx::Error> {
    let options: sqlx::postgres::PgConnectOptions = url.expose_secret().parse()?;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options.options([("jit", "off")]))
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
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ])
    }

    #[test]
    fn defaults_apply() {
        let c = Config::load(&base()).expect("valid");
        assert_eq!(c.port, 2271);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.database_pool_max, 20);
        assert_eq!(c.redis_key_prefix, "mpanel");
        assert_eq!(c.worker.concurrency, 4);
        assert_eq!(c.worker.lease, std::time::Duration::from_secs(120));
        assert_eq!(c.jwt_access_expiry, std::time::Duration::from_secs(900));
        assert_eq!(
            c.jwt_refresh_expiry,
            std::time::Duration::from_secs(7 * 86_400)
        );
    }

    #[test]
    fn durations_take_seconds_or_a_unit() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("900"), Ok(900));
        assert_eq!(secs("3600s"), Ok(3600));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("7D"), Ok(604_800));
        assert_eq!(secs(" 15m "), Ok(900));
        let huge = "99999999999999999999d";
        for bad in ["", "m", "0", "0m", "15x", "-5", "1.5h", "15 m", "1e3", huge] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn token_lifetimes_come_from_the_environment() {
        let mut env = base();
        env.insert("JWT_ACCESS_EXPIRY", "5m");
        env.insert("JWT_REFRESH_EXPIRY", "1d");
        let c = Config::load(&env).expect("valid");
        assert_eq!(c.jwt_access_expiry, std::time::Duration::from_secs(300));
        assert_eq!(c.jwt_refresh_expiry, std::time::Duration::from_secs(86_400));
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: [(&str, Option<&str>); 14] = [
            ("JWT_REFRESH_EXPIRY", Some("366d")),
            ("JWT_ACCESS_EXPIRY", Some("15 minutes")),
            ("JWT_ACCESS_EXPIRY", Some("2d")),
            ("JWT_REFRESH_EXPIRY", Some("0")),
            ("JWT_REFRESH_EXPIRY", Some("10m")),
            ("REDIS_URL", None),
            ("REDIS_URL", Some("http://x")),
            ("JOB_BACKOFF_BASE_MS", Some("0")),
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
    fn the_stripe_secret_is_optional_but_not_short() {
        assert!(Config::load(&base())
            .expect("valid")
            .stripe_webhook_secret
            .is_none());
        let mut env = base();
        env.insert("STRIPE_WEBHOOK_SECRET", "");
        assert!(Config::load(&env)
            .expect("valid")
            .stripe_webhook_secret
            .is_none());
        env.insert("STRIPE_WEBHOOK_SECRET", "whsec_0123456789abcdef");
        let c = Config::load(&env).expect("valid");
        assert_eq!(
            c.stripe_webhook_secret
                .as_ref()
                .map(ExposeSecret::expose_secret),
            Some("whsec_0123456789abcdef")
        );
        assert!(!format!("{c:?}").contains("whsec_0123456789abcdef"));
        env.insert("STRIPE_WEBHOOK_SECRET", "whsec_short");
        assert_eq!(
            Config::load(&env).expect_err("short").var,
            "STRIPE_WEBHOOK_SECRET"
        );
    }

    #[test]
    fn rate_limits_and_cors_origins_come_from_the_environment() {
        let c = Config::load(&base()).expect("valid");
        assert_eq!(c.rate_limit, RateLimitSettings::default());
        assert_eq!(c.rate_limit.window, std::time::Duration::from_secs(900));
        assert_eq!(c.rate_limit.max_requests, 100);
        assert!(c.rate_limit.credential_max_requests > c.rate_limit.max_requests);
        assert!(c.cors_allowed_origins.is_empty());

        let mut env = base();
        env.insert("RATE_LIMIT_WINDOW_MS", "60000");
        env.insert("RATE_LIMIT_MAX_REQUESTS", "5");
        env.insert("RATE_LIMIT_CREDENTIAL_MAX_REQUESTS", "50");
        env.insert(
            "CORS_ALLOWED_ORIGINS",
            " https://shop.example.com, http://localhost:3000 ,",
        );
        let c = Config::load(&env).expect("valid");
        assert_eq!(
            c.rate_limit,
            RateLimitSettings {
                window: std::time::Duration::from_secs(60),
                max_requests: 5,
                credential_max_requests: 50,
            }
        );
        assert_eq!(
            c.cors_allowed_origins,
            ["https://shop.example.com", "http://localhost:3000"]
        );
        env.insert("CORS_ALLOWED_ORIGINS", "");
        assert!(Config::load(&env)
            .expect("valid")
            .cors_allowed_origins
            .is_empty());
        env.insert("CORS_ALLOWED_ORIGINS", "*");
        assert_eq!(
            Config::load(&env).expect("valid").cors_allowed_origins,
            ["*"]
        );
    }

    #[test]
    fn bad_rate_limits_and_origins_are_named() {
        let cases = [
            ("RATE_LIMIT_WINDOW_MS", "0"),
            ("RATE_LIMIT_WINDOW_MS", "15m"),
            ("RATE_LIMIT_MAX_REQUESTS", "0"),
            ("RATE_LIMIT_MAX_REQUESTS", "-1"),
            ("RATE_LIMIT_CREDENTIAL_MAX_REQUESTS", "0"),
            ("RATE_LIMIT_CREDENTIAL_MAX_REQUESTS", "lots"),
            ("CORS_ALLOWED_ORIGINS", "shop.example.com"),
            ("CORS_ALLOWED_ORIGINS", "https://shop.example.com/"),
            ("CORS_ALLOWED_ORIGINS", "https://shop.example.com/path"),
            ("CORS_ALLOWED_ORIGINS", "https://"),
            ("CORS_ALLOWED_ORIGINS", "*, https://shop.example.com"),
            ("CORS_ALLOWED_ORIGINS", "https://a b.example.com"),
        ];
        for (var, value) in cases {
            let mut env = base();
            env.insert(var, value);
            let err = Config::load(&env).expect_err(value);
            assert_eq!(err.var, var, "{value:?}");
        }
    }

    #[test]
    fn process_settings_have_defaults_and_name_bad_values() {
        let c = Config::load(&base()).expect("valid");
        assert_eq!(c.process.ready_max_feed_lag_events, 10_000);
        assert_eq!(
            c.process.shutdown_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(c.process.metrics_port, None);
        let mut env = base();
        env.insert("METRICS_PORT", "9464");
        env.insert("SHUTDOWN_TIMEOUT_SECS", "5");
        env.insert("READY_MAX_FEED_LAG_EVENTS", "7");
        let c = Config::load(&env).expect("valid");
        assert_eq!(c.process.metrics_port, Some(9464));
        assert_eq!(
            c.process.shutdown_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(c.process.ready_max_feed_lag_events, 7);
        for (var, value) in [
            ("METRICS_PORT", "70000"),
            ("SHUTDOWN_TIMEOUT_SECS", "0"),
            ("READY_MAX_FEED_LAG_EVENTS", "many"),
            ("METRICS_REFRESH_MS", "0"),
        ] {
            let mut env = base();
            env.insert(var, value);
            assert_eq!(Config::load(&env).expect_err(value).var, var);
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
