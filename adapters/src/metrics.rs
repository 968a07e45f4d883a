//! Prometheus metrics: one global recorder per process, the metric names, and the collector
//! that refreshes the gauges read from Postgres and Redis.
//!
//! Counters and histograms are recorded where things happen (HTTP middleware, command bus,
//! worker, saga) and so are per process: sum them across instances. The gauges refreshed by
//! [`collect`] (feed lag, jobs by status, queue depth, oldest due job) describe the shared
//! database and Redis, so every process reports the same values: aggregate them with `max`,
//! never `sum`. `mpanel_db_pool_connections` is the process's own pool.
//!
//! Names follow Prometheus conventions (base units, `_total` for counters, `_seconds` for
//! durations); docs/OPERATIONS.md lists each family with its labels.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::queue::JobQueue;

/// Requests answered, by route template, method and status.
pub const HTTP_REQUESTS: &str = "mpanel_http_requests_total";
/// Request latency, by route template and method.
pub const HTTP_DURATION: &str = "mpanel_http_request_duration_seconds";
/// Events committed by this process's command bus, by event type.
pub const EVENTS_APPENDED: &str = "mpanel_events_appended_total";
/// Committed events a subscriber has not processed yet.
pub const FEED_LAG_EVENTS: &str = "mpanel_feed_lag_events";
/// How long the oldest event a subscriber has not processed has waited.
pub const FEED_LAG_SECONDS: &str = "mpanel_feed_lag_seconds";
/// Jobs in the read model, by step and status.
pub const JOBS: &str = "mpanel_jobs";
/// Duration of one provisioning attempt (the provisioner call), by step and outcome.
pub const JOB_ATTEMPT_DURATION: &str = "mpanel_job_attempt_duration_seconds";
/// Jobs this process's workers dead-lettered, by step.
pub const JOBS_DEAD_LETTERED: &str = "mpanel_jobs_dead_lettered_total";
/// Entries in the Redis job stream (`XLEN`; acknowledged entries stay until trimmed).
pub const QUEUE_DEPTH: &str = "mpanel_queue_depth";
/// Age of the oldest job that is due and not running (0 when none is waiting).
pub const OLDEST_DUE_JOB_AGE: &str = "mpanel_oldest_due_job_age_seconds";
/// From `OrderPlaced` to `SubscriptionActivated` (both `recorded_at`).
pub const ORDER_ACTIVATION: &str = "mpanel_order_activation_seconds";
/// This process's Postgres pool, by state (`idle`, `used`).
pub const DB_POOL_CONNECTIONS: &str = "mpanel_db_pool_connections";

/// Histogram buckets for request and attempt latencies (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Histogram buckets for order activation (seconds): provisioning takes seconds to minutes.
const ACTIVATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's global recorder (once; later calls return the same handle) and
/// describes every family. Metrics recorded before this are lost, so roles call it first.
///
/// If another recorder was installed already (a test harness, say), the returned handle
/// renders an empty registry rather than failing the process.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(ORDER_ACTIVATION.into()), ACTIVATION_BUCKETS)
            .and_then(|b| b.set_buckets(LATENCY_BUCKETS));
        let builder = match builder {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metric buckets refused; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = ::metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "a metrics recorder was installed already; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// The Prometheus text exposition of everything recorded in this process.
#[must_use]
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `/metrics` response.
pub async fn scrape() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(CONTENT_TYPE),
        )],
        render(),
    )
        .into_response()
}

/// The tiny listener of roles without the API (`METRICS_PORT`): `GET /metrics` and
/// `GET /api/live`, nothing else.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route(
            "/api/live",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route template and method"
    );
    describe_counter!(
        EVENTS_APPENDED,
        "Events committed by this process, by event type"
    );
    describe_gauge!(
        FEED_LAG_EVENTS,
        "Committed events a feed subscriber has not processed yet"
    );
    describe_gauge!(
        FEED_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event a feed subscriber has not processed (0 when caught up)"
    );
    describe_gauge!(JOBS, "Provisioning jobs by step and status");
    describe_histogram!(
        JOB_ATTEMPT_DURATION,
        Unit::Seconds,
        "Duration of one provisioning attempt, by step and outcome"
    );
    describe_counter!(
        JOBS_DEAD_LETTERED,
        "Jobs dead-lettered by this process's workers, by step"
    );
    describe_gauge!(QUEUE_DEPTH, "Entries in the Redis job stream (XLEN)");
    describe_gauge!(
        OLDEST_DUE_JOB_AGE,
        Unit::Seconds,
        "Age of the oldest due job that no worker runs (0 when none waits)"
    );
    describe_histogram!(
        ORDER_ACTIVATION,
        Unit::Seconds,
        "Time from OrderPlaced to SubscriptionActivated"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Connections of this process's Postgres pool, by state"
    );
}

/// Counts `event_type` once: called by the command bus after a successful commit.
pub fn event_appended(event_type: String) {
    ::metrics::counter!(EVENTS_APPENDED, "event_type" => event_type).increment(1);
}

/// Records one provisioning attempt: `outcome` is `succeeded`, `failed` or `superseded` (its
/// lease was taken over before the outcome could be recorded).
pub fn job_attempt(step: &'static str, outcome: &'static str, duration: Duration) {
    ::metrics::histogram!(JOB_ATTEMPT_DURATION, "step" => step, "outcome" => outcome)
        .record(duration.as_secs_f64());
}

/// Counts a job of `step` dead-lettered by this process.
pub fn job_dead_lettered(step: &'static str) {
    ::metrics::counter!(JOBS_DEAD_LETTERED, "step" => step).increment(1);
}

/// Records how long an order took from placed to active.
pub fn order_activated(after: Duration) {
    ::metrics::histogram!(ORDER_ACTIVATION).record(after.as_secs_f64());
}

/// Counts and times one answered request by its route *template* (`/api/orders/{id}`, never
/// the raw URI, so label cardinality stays bounded; `None`: unmatched) — called by the
/// router's inner middleware, which sits inside routing so the template is known. The method
/// and status labels of ordinary requests are static strings: this runs for every request.
pub fn record_http(route: Option<&str>, method: &Method, status: StatusCode, elapsed: Duration) {
    let route = route.map_or(SharedString::const_str("unmatched"), |r| {
        SharedString::from(r.to_owned())
    });
    let method = match *method {
        Method::GET => SharedString::const_str("GET"),
        Method::POST => SharedString::const_str("POST"),
        Method::PATCH => SharedString::const_str("PATCH"),
        Method::DELETE => SharedString::const_str("DELETE"),
        Method::PUT => SharedString::const_str("PUT"),
        Method::OPTIONS => SharedString::const_str("OPTIONS"),
        Method::HEAD => SharedString::const_str("HEAD"),
        ref other => SharedString::from(other.as_str().to_owned()),
    };
    let status = match status.as_u16() {
        200 => SharedString::const_str("200"),
        201 => SharedString::const_str("201"),
        204 => SharedString::const_str("204"),
        _ => SharedString::from(status.as_str().to_owned()),
    };
    ::metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    ::metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
}

/// Refreshes the shared gauges every `interval` until `shutdown`: feed lag per subscriber,
/// jobs by step and status, the oldest due job, the stream length, and this process's pool.
/// A failing source is logged at debug and skipped; the other gauges still refresh.
pub async fn collect(
    pool: PgPool,
    queue: Option<JobQueue>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen_jobs: BTreeSet<(String, String)> = BTreeSet::new();
    while !*shutdown.borrow() {
        refresh(&pool, queue.as_ref(), &mut seen_jobs).await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One refresh of every gauge.
async fn refresh(
    pool: &PgPool,
    queue: Option<&JobQueue>,
    seen_jobs: &mut BTreeSet<(String, String)>,
) {
    #[allow(clippy::cast_precision_loss)]
    let as_f64 = |n: i64| n as f64;
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    ::metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    ::metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "used")
        .set(f64::from(size.saturating_sub(idle)));

    match mpanel_projections::status::status(pool, &["saga"]).await {
        Ok(subscribers) => {
            for s in subscribers {
                ::metrics::gauge!(FEED_LAG_EVENTS, "subscriber" => s.name.clone())
                    .set(as_f64(s.lag_events));
                ::metrics::gauge!(FEED_LAG_SECONDS, "subscriber" => s.name).set(s.lag_seconds);
            }
        }
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read feed status"),
    }

    let jobs: Result<Vec<(String, String, i64)>, _> =
        sqlx::query_as("SELECT step, status, count(*) FROM jobs GROUP BY step, status")
            .fetch_all(pool)
            .await;
    match jobs {
        Ok(rows) => {
            let now: BTreeSet<(String, String)> = rows
                .iter()
                .map(|(s, t, _)| (s.clone(), t.clone()))
                .collect();
            // A (step, status) that emptied must read 0, not its last count.
            for (step, status) in seen_jobs.difference(&now) {
                ::metrics::gauge!(JOBS, "step" => step.clone(), "status" => status.clone())
                    .set(0.0);
            }
            for (step, status, n) in rows {
                ::metrics::gauge!(JOBS, "step" => step, "status" => status).set(as_f64(n));
            }
            seen_jobs.extend(now);
        }
        Err(e) => tracing::debug!(error = %e, "metrics: cannot count jobs"),
    }

    let oldest: Result<Option<f64>, _> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(due_at))::float8 FROM jobs \
         WHERE status IN ('SCHEDULED', 'RETRY_WAITING') AND due_at <= now()",
    )
    .fetch_one(pool)
    .await;
    match oldest {
        Ok(age) => ::metrics::gauge!(OLDEST_DUE_JOB_AGE).set(age.unwrap_or(0.0).max(0.0)),
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read the oldest due job"),
    }

    if let Some(queue) = queue {
        match queue.depth().await {
            #[allow(clippy::cast_precision_loss)]
            Ok(depth) => ::metrics::gauge!(QUEUE_DEPTH).set(depth as f64),
            Err(e) => tracing::debug!(error = %e, "metrics: cannot read the queue depth"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_recorded_families() {
        let first: *const PrometheusHandle = install();
        let second: *const PrometheusHandle = install();
        assert_eq!(first, second);
        event_appended("OrderPlaced".into());
        job_attempt("dns", "succeeded", Duration::from_millis(3));
        job_dead_lettered("mail");
        order_activated(Duration::from_secs(2));
        let text = render();
        assert!(text.contains("mpanel_events_appended_total{event_type=\"OrderPlaced\"}"));
        assert!(text.contains(
            "mpanel_job_attempt_duration_seconds_bucket{step=\"dns\",outcome=\"succeeded\""
        ));
        assert!(text.contains("mpanel_jobs_dead_lettered_total{step=\"mail\"} 1"));
        assert!(text.contains("mpanel_order_activation_seconds_bucket{le=\"2.5\"} 1"));
        assert!(text.contains("# TYPE mpanel_events_appended_total counter"));
    }
}
