//! `GET /metrics`: the process's Prometheus metrics (text exposition format 0.0.4).
//!
//! Public like the other probes and never rate limited (a scraper polls it every few seconds);
//! it holds counts and latencies, no identifiers. Put it behind the network's scrape ACL when the
//! API is exposed to the internet.

use axum::response::Response;

/// `GET /metrics`: every metric family of this process (see docs/OPERATIONS.md).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "public",
    responses(
        (status = 200, description = "Prometheus text exposition of this process's metrics",
         content_type = "text/plain", body = String,
         example = "# TYPE mpanel_http_requests_total counter\nmpanel_http_requests_total{route=\"/api/orders\",method=\"POST\",status=\"201\"} 3\n")
    )
)]
pub async fn metrics() -> Response {
    crate::metrics::scrape().await
}
