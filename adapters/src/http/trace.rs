//! The request span: one `http.request` span per request, continuing the caller's trace.
//!
//! Built by tower-http's `TraceLayer`, which sits inside `SetRequestIdLayer` so the span can
//! carry the request id (the caller's `x-request-id`, else a fresh UUID). An incoming W3C
//! `traceparent` header becomes the span's parent, so an upstream trace (the marketing site's)
//! continues here and, through the events' metadata, into the saga and the worker. The route
//! template is only known after routing; [`record_route`] fills it in from inside the router.

use std::time::Duration;

use http::HeaderName;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnRequest, MakeSpan, OnResponse, TraceLayer};
use tracing::field::Empty;
use tracing::Span;

use crate::telemetry;

/// The request id header (set by `SetRequestIdLayer` before the span is made).
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The configured trace layer.
pub(super) type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, DefaultOnRequest, Finished>;

/// `TraceLayer` with mpanel's span and an `info` line per finished request.
pub(super) fn layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_response(Finished)
}

/// Makes the `http.request` span.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "http.request",
            otel.kind = "server",
            method = %request.method(),
            route = Empty,
            path = %request.uri().path(),
            request_id = %request_id,
            status = Empty,
            otel.status_code = Empty,
        );
        telemetry::continue_from_headers(&span, request.headers());
        span
    }
}

/// Records the status on the span and logs one line per request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Finished;

impl<B> OnResponse<B> for Finished {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        span.record("status", status);
        if response.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(parent: span, status, latency_ms, "request finished");
    }
}

/// Records the matched route template (`/api/orders/{id}`) on the request span; unmatched
/// requests (404) keep it empty. Called by the router's inner middleware (`super::edge`).
pub(super) fn record_route(route: Option<&str>) {
    if let Some(route) = route {
        Span::current().record("route", route);
    }
}
