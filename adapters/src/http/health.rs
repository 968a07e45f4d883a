//! Liveness, readiness and health.
//!
//! `/api/live` says the process answers; `/api/ready` says it can do its job (Postgres and Redis
//! reachable, every embedded migration applied, and no feed subscriber more than
//! `READY_MAX_FEED_LAG_EVENTS` behind, so the read models it serves are not badly stale) and is
//! what load balancers and `up.sh --detach` wait for; `/api/health` reports each dependency with
//! its latency and each subscriber's lag, for humans.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::openapi::{RateLimited, Unavailable};
use super::problem::ApiError;
use super::AppState;
use crate::MIGRATOR;

/// `GET /`: name, version, links.
#[utoipa::path(
    get,
    path = "/",
    tag = "public",
    responses(
        (status = 200, description = "Name, version and links to the main endpoints",
         body = Object,
         example = json!({"name": "mpanel", "version": "0.1.0", "links": {"health": "/api/health"}})),
        RateLimited
    )
)]
pub async fn index() -> Json<Value> {
    Json(json!({
        "name": "mpanel",
        "version": env!("CARGO_PKG_VERSION"),
        "links": {
            "health": "/api/health",
            "ready": "/api/ready",
            "live": "/api/live",
            "publicProducts": "/api/public/products?tenant={slug}",
            "orders": "/api/orders"
        }
    }))
}

/// `GET /api/live`: the process is up.
#[utoipa::path(
    get,
    path = "/api/live",
    tag = "public",
    responses((status = 200, description = "The process answers", body = Object,
               example = json!({"status": "ok"})))
)]
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

struct Check {
    ok: bool,
    latency_ms: f64,
    detail: Option<String>,
}

/// Runs a reachability probe, bounded to 2 s: a load balancer's probe must get its 503 quickly
/// while a dependency is down (for Postgres, not after the pool's 10 s acquire timeout).
async fn probe<T, E>(work: impl std::future::Future<Output = Result<T, E>>) -> Check {
    let start = Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(2), work).await;
    let ok = matches!(result, Ok(Ok(_)));
    Check {
        ok,
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        detail: (!ok).then(|| "unreachable".to_owned()),
    }
}

/// `SELECT 1`.
async fn check_postgres(state: &AppState) -> Check {
    probe(sqlx::query("SELECT 1").execute(&state.pool)).await
}

async fn check_migrations(state: &AppState) -> Check {
    let start = Instant::now();
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&state.pool)
            .await;
    let (ok, detail) = match applied {
        Ok(applied) => {
            let missing = MIGRATOR
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .count();
            (
                missing == 0,
                (missing > 0)
                    .then(|| format!("{missing} migration(s) not applied; run `mpanel migrate`")),
            )
        }
        Err(_) => (
            false,
            Some("migrations table missing; run `mpanel migrate`".to_owned()),
        ),
    };
    Check {
        ok,
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        detail,
    }
}

/// `PING`, when the process has a queue.
async fn check_redis(state: &AppState) -> Option<Check> {
    let queue = state.queue.as_ref()?;
    Some(probe(queue.ping()).await)
}

/// Each subscriber's lag, and the ones beyond the readiness threshold.
struct FeedCheck {
    latency_ms: f64,
    subscribers: Vec<mpanel_projections::status::SubscriberStatus>,
    behind: Vec<String>,
    error: Option<String>,
}

impl FeedCheck {
    fn ok(&self) -> bool {
        self.error.is_none() && self.behind.is_empty()
    }

    fn max_lag(&self) -> i64 {
        self.subscribers
            .iter()
            .map(|s| s.lag_events)
            .max()
            .unwrap_or(0)
    }
}

async fn check_feed(state: &AppState) -> FeedCheck {
    let start = Instant::now();
    let result = mpanel_projections::status::status(&state.pool, &["saga"]).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    // Live subscribers only: a rebuild's own checkpoint (`name#rebuild`) lags by design.
    let live: Vec<&str> = mpanel_projections::projectors::all()
        .iter()
        .map(mpanel_projections::runner::Subscriber::name)
        .chain(["saga"])
        .collect();
    match result {
        Ok(mut subscribers) => {
            subscribers.retain(|s| live.contains(&s.name.as_str()));
            let behind = subscribers
                .iter()
                .filter(|s| s.lag_events > state.ready_max_feed_lag)
                .map(|s| format!("{} ({} events)", s.name, s.lag_events))
                .collect();
            FeedCheck {
                latency_ms,
                subscribers,
                behind,
                error: None,
            }
        }
        Err(_) => FeedCheck {
            latency_ms,
            subscribers: vec![],
            behind: vec![],
            error: Some("cannot read checkpoints".into()),
        },
    }
}

/// `GET /api/ready`: 200 when Postgres and Redis answer, migrations are applied and every feed
/// subscriber is within `READY_MAX_FEED_LAG_EVENTS` of the head; else 503 naming what is wrong.
#[utoipa::path(
    get,
    path = "/api/ready",
    tag = "public",
    responses(
        (status = 200, description = "Postgres and Redis answer, every migration is applied and \
         no feed subscriber lags more than READY_MAX_FEED_LAG_EVENTS",
         body = Object, example = json!({"status": "ready"})),
        Unavailable
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let pg = check_postgres(&state).await;
    if !pg.ok {
        return Err(ApiError::NotReady("postgres unreachable".into()));
    }
    if check_redis(&state).await.is_some_and(|r| !r.ok) {
        return Err(ApiError::NotReady("redis unreachable".into()));
    }
    let migrations = check_migrations(&state).await;
    if !migrations.ok {
        return Err(ApiError::NotReady(migrations.detail.unwrap_or_default()));
    }
    let feed = check_feed(&state).await;
    if let Some(error) = feed.error {
        return Err(ApiError::NotReady(error));
    }
    if !feed.behind.is_empty() {
        return Err(ApiError::NotReady(format!(
            "feed lag over {} events: {}",
            state.ready_max_feed_lag,
            feed.behind.join(", ")
        )));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /api/health`: each dependency with status and latency, and each feed subscriber's lag.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "public",
    responses(
        (status = 200, description = "Every dependency is up", body = Object,
         example = json!({"status": "ok", "version": "0.1.0", "checks": {
             "postgres": {"status": "ok", "latencyMs": 0.4, "detail": null},
             "migrations": {"status": "ok", "latencyMs": 0.6, "detail": null},
             "redis": {"status": "ok", "latencyMs": 0.2, "detail": null},
             "feed": {"status": "ok", "latencyMs": 1.1, "detail": null, "maxLagEvents": 0,
                      "readyMaxLagEvents": 10000, "subscribers": [
                 {"name": "saga", "lagEvents": 0, "lagSeconds": 0.0, "failing": false}]}}})),
        (status = 503, description = "Some dependency is down (same body, `status: degraded`)",
         body = Object)
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let pg = check_postgres(&state).await;
    let migrations = if pg.ok {
        check_migrations(&state).await
    } else {
        Check {
            ok: false,
            latency_ms: 0.0,
            detail: Some("postgres unreachable".into()),
        }
    };
    let redis = check_redis(&state).await;
    let feed = if pg.ok {
        check_feed(&state).await
    } else {
        FeedCheck {
            latency_ms: 0.0,
            subscribers: vec![],
            behind: vec![],
            error: Some("postgres unreachable".into()),
        }
    };
    let ok = pg.ok && migrations.ok && redis.as_ref().is_none_or(|r| r.ok) && feed.ok();
    let render = |c: &Check| json!({ "status": if c.ok { "ok" } else { "down" }, "latencyMs": c.latency_ms, "detail": c.detail });
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {
            "postgres": render(&pg),
            "migrations": render(&migrations),
            "redis": redis.as_ref().map(render),
            "feed": {
                "status": if feed.ok() { "ok" } else { "down" },
                "latencyMs": feed.latency_ms,
                "detail": feed.error.clone().or_else(|| (!feed.behind.is_empty())
                    .then(|| format!("lagging: {}", feed.behind.join(", ")))),
                "maxLagEvents": feed.max_lag(),
                "readyMaxLagEvents": state.ready_max_feed_lag,
                "subscribers": feed.subscribers.iter().map(|s| json!({
                    "name": s.name,
                    "lagEvents": s.lag_events,
                    "lagSeconds": s.lag_seconds,
                    // Whether it is stuck on an event; the error itself is for
                    // `mpanel projections status`, not a public endpoint.
                    "failing": s.last_error.is_some(),
                })).collect::<Vec<_>>(),
            },
        }
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
