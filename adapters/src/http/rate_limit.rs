//! Request rate limits (DESIGN §5): per client address for anonymous callers, per credential
//! for callers presenting a valid webhook key or staff token.
//!
//! A request is charged to exactly one budget:
//!
//! - a valid `x-internal-key` → the webhook credential's budget;
//! - else a bearer token whose signature, issuer, audience and times check out → that user's
//!   budget (one per user, so refreshing tokens does not reset it);
//! - else the client address's budget (IPv6 addresses by their /64, which one host controls).
//!
//! The credential checks are cheap on purpose (a SHA-256 compare, an HMAC): whether the session
//! behind a token is still live is the handler's business. A presented but invalid credential is
//! charged to the address, so a flood of bad keys is throttled like any other anonymous flood,
//! while a marketing site behind one address keeps placing paid orders under its own, larger
//! budget. No secret is kept: the keys of the budgets are an address, a user id, or the single
//! webhook credential.
//!
//! Each budget is a GCRA (the `governor` crate): a burst of `max` requests, refilled at
//! `max` per window. Probes (`/api/live`, `/api/ready`, `/api/health`, `/metrics`) are never
//! limited: a load balancer polling them must not be refused, nor use up a client's budget.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::problem::ApiError;
use super::AppState;
pub use crate::config::RateLimitSettings;

/// Paths that are never limited.
pub const EXEMPT_PATHS: &[&str] = &["/api/live", "/api/ready", "/api/health", "/metrics"];

/// Stale budgets are dropped after this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Whom a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charge {
    /// An anonymous (or badly credentialed) client, by address.
    Client(IpAddr),
    /// The marketing webhook's shared key.
    WebhookKey,
    /// A staff user or customer with a validly signed access token.
    User(Uuid),
}

/// The budgets of all clients and credentials.
pub struct Limiter {
    clients: DefaultKeyedRateLimiter<IpAddr>,
    credentials: DefaultKeyedRateLimiter<Charge>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("clients", &self.clients.len())
            .field("credentials", &self.credentials.len())
            .finish_non_exhaustive()
    }
}

/// A burst of `max` requests, refilled at `max` per `window`.
fn quota(window: Duration, max: u32) -> Quota {
    let max = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
    let period = (window / max.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(max))
        .allow_burst(max)
}

impl Limiter {
    /// Budgets as `settings` say.
    #[must_use]
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            clients: RateLimiter::keyed(quota(settings.window, settings.max_requests)),
            credentials: RateLimiter::keyed(quota(
                settings.window,
                settings.credential_max_requests,
            )),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from `charge`'s budget.
    ///
    /// # Errors
    /// How long until the budget allows a request again, when it is used up.
    pub fn check(&self, charge: Charge) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.clients.retain_recent();
            self.credentials.retain_recent();
            self.clients.shrink_to_fit();
            self.credentials.shrink_to_fit();
        }
        let outcome = match charge {
            Charge::Client(ip) => self.clients.check_key(&ip),
            other => self.credentials.check_key(&other),
        };
        outcome.map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The budget key of an address: itself for IPv4, its /64 network for IPv6 (IPv4-mapped IPv6
/// addresses count as the IPv4 address).
#[must_use]
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whom a request with `headers`, from `peer`, is charged to.
fn charge(state: &AppState, headers: &HeaderMap, peer: Option<IpAddr>) -> Charge {
    if headers
        .get(super::orders::KEY_HEADER)
        .is_some_and(|key| state.webhook_key_matches(key.as_bytes()))
    {
        return Charge::WebhookKey;
    }
    if let (Some(auth), Some(token)) = (state.auth.as_deref(), super::auth::bearer(headers)) {
        if let Ok(claims) = auth.access().verify(token) {
            return Charge::User(claims.sub);
        }
    }
    Charge::Client(client_key(peer.unwrap_or(IpAddr::from([0, 0, 0, 0]))))
}

/// Round a wait up to whole seconds for `Retry-After` (at least 1).
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Charges the request to its budget (client address, webhook key or user): `Err` is the 429
/// to answer (problem+json with `Retry-After`). Health and metrics paths are never charged.
/// Called by the router's one inner middleware (`super::edge`).
pub(super) fn admit(state: &AppState, request: &Request) -> Result<(), ApiError> {
    if EXEMPT_PATHS.contains(&request.uri().path()) {
        return Ok(());
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let charge = charge(state, request.headers(), peer);
    state.limiter.check(charge).map_err(|wait| {
        let kind = match charge {
            Charge::Client(_) => "client",
            Charge::WebhookKey => "webhook_key",
            Charge::User(_) => "user",
        };
        tracing::warn!(
            budget = kind,
            client_addr = %peer.map(|ip| ip.to_string()).unwrap_or_default(),
            path = request.uri().path(),
            "rate limited"
        );
        ApiError::RateLimited(retry_after_secs(wait))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u32, credential_max: u32) -> RateLimitSettings {
        RateLimitSettings {
            window: Duration::from_secs(60),
            max_requests: max,
            credential_max_requests: credential_max,
        }
    }

    #[test]
    fn a_client_gets_its_budget_then_waits_about_window_over_max() {
        let limiter = Limiter::new(&settings(3, 100));
        let client = Charge::Client(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..3 {
            assert_eq!(limiter.check(client), Ok(()));
        }
        let wait = limiter.check(client).expect_err("fourth is refused");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        assert_eq!(retry_after_secs(wait), wait.as_secs() + 1);
    }

    #[test]
    fn budgets_are_separate_per_client_and_credential() {
        let limiter = Limiter::new(&settings(1, 5));
        let a = Charge::Client(IpAddr::from([192, 0, 2, 1]));
        let b = Charge::Client(IpAddr::from([192, 0, 2, 2]));
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        for _ in 0..5 {
            assert!(limiter.check(Charge::WebhookKey).is_ok());
        }
        assert!(limiter.check(Charge::WebhookKey).is_err());
        let user = Charge::User(Uuid::new_v4());
        assert!(limiter.check(user).is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_key(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[test]
    fn tiny_windows_and_huge_budgets_still_make_a_quota() {
        let q = quota(Duration::from_millis(1), u32::MAX);
        assert_eq!(q.burst_size().get(), u32::MAX);
        let q = quota(Duration::from_secs(900), 0);
        assert_eq!(q.burst_size().get(), 1);
    }
}
