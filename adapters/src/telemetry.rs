//! Telemetry: logs, spans and their export (DESIGN §2, §7; `docs/LOGGING.md`).
//!
//! One `tracing` subscriber carries three layers:
//! - an OpenTelemetry layer (tracing-opentelemetry) that turns every span into an OpenTelemetry
//!   span. The tracer provider is always installed, so every span has a real trace and span id
//!   even when nothing is exported; it exports over OTLP (HTTP/protobuf) **only** when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and then only
//!   to that endpoint;
//! - a small correlation layer that remembers each span's `request_id` field;
//! - the log formatter (JSON lines when stderr is not a terminal, readable text on a terminal)
//!   wrapped so that every line logged inside a span also carries that span's `trace_id`,
//!   `span_id` and, within an HTTP request, the `request_id`.
//!
//! The W3C trace context travels with the work: the HTTP layer continues an incoming
//! `traceparent` header ([`continue_from_headers`]), every command records the current span's
//! context in its events' metadata ([`current_traceparent`]), and the saga runner and the worker
//! continue the trace stored there ([`continue_trace`]). So one trace spans webhook → saga →
//! worker → activation, across processes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::dispatcher::{Dispatch, WeakDispatch};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The variables that switch OTLP export on (either one; the per-signal one wins for the URL).
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// The log filter when `RUST_LOG` is unset. It filters spans too: a span below the filter's
/// level is neither logged nor traced.
pub const DEFAULT_FILTER: &str =
    "info,sqlx=warn,tower_http=info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry-otlp=warn";

/// The instrumentation scope of mpanel's spans.
const TRACER_NAME: &str = "mpanel";

/// Why telemetry could not be set up; names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not an http(s) URL.
    #[error("{var}: {reason}")]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("building the OTLP span exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed (a second `init`).
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(String),
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (services, files, CI).
    Json,
    /// Human-readable lines with colours (a terminal).
    Text,
}

/// Keeps the tracer provider alive; dropping it flushes and shuts down the export, so spans
/// of the last moments before a graceful shutdown reach the collector.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// The tracer provider (e.g. to flush it by hand).
    #[must_use]
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Flushes the batch processor (blocking, bounded by the SDK's 5 s shutdown timeout).
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing telemetry at shutdown failed");
        }
    }
}

/// Installs the process's subscriber (filter from `RUST_LOG`, else [`DEFAULT_FILTER`]; JSON
/// lines on stderr unless stderr is a terminal), the tracer provider (exporting over OTLP when
/// an endpoint is configured) and the W3C trace-context propagator.
///
/// # Errors
/// [`TelemetryError`] naming the variable when the OTLP configuration is invalid, or when a
/// subscriber was already installed.
pub fn init(service_name: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    use std::io::IsTerminal;
    install_propagator();
    let provider = tracer_provider(service_name, export_endpoint()?)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let format = if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    };
    // Also routes `log` records (dependencies using the `log` crate) into tracing.
    subscriber(&provider, filter, format, std::io::stderr)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// Sets the global propagator to W3C Trace Context (`traceparent`/`tracestate`).
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// The configured OTLP endpoint, if export is on.
///
/// # Errors
/// When a set endpoint is not an `http://` or `https://` URL.
fn export_endpoint() -> Result<Option<String>, TelemetryError> {
    for var in ENDPOINT_VARS {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if !(value.starts_with("http://") || value.starts_with("https://")) {
            return Err(TelemetryError::Endpoint {
                var,
                reason: format!(
                    "{value:?} must be an http:// or https:// URL (OTLP over HTTP/protobuf)"
                ),
            });
        }
        return Ok(Some(value.to_owned()));
    }
    Ok(None)
}

/// A tracer provider that exports to `endpoint` when given (the exporter reads the standard
/// `OTEL_EXPORTER_OTLP_*` variables: endpoint, headers, timeout) and to nothing otherwise.
fn tracer_provider(
    service_name: &'static str,
    endpoint: Option<String>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name);
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let Some(endpoint) = endpoint else {
        return Ok(builder.build());
    };
    tracing::debug!(%endpoint, "exporting spans over OTLP");
    // reqwest 0.13 is built without a bundled crypto provider and needs one to build any
    // client, even for http://; use ring, which the rest of the tree (sqlx, reqwest 0.12)
    // already links. One installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// The subscriber `init` installs, over any tracer provider and writer: tests build it with an
/// in-memory exporter and a buffer.
pub fn subscriber<W>(
    provider: &SdkTracerProvider,
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
) -> impl Subscriber + Send + Sync + for<'a> LookupSpan<'a>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch: Arc<OnceLock<WeakDispatch>> = Arc::default();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME));
    let correlation = CorrelationLayer {
        dispatch: dispatch.clone(),
    };
    let lines = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .event_format(Correlated {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
                dispatch,
                format,
            })
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(Correlated {
                // Buffered lines go through a plain `Writer`: ask for colours explicitly.
                inner: tracing_subscriber::fmt::format().with_ansi(true),
                dispatch,
                format,
            })
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(correlation)
        .with(lines)
}

/// The W3C `traceparent` of `span` (`None` when the span is disabled or has no valid context).
#[must_use]
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The W3C `traceparent` of the current span, for the metadata of the events a command writes.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// Makes `span` continue the trace of a stored W3C `traceparent` (event metadata); a missing or
/// malformed one leaves the span a new root.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    set_parent(span, TraceContextPropagator::new().extract(&carrier));
}

/// Makes `span` continue the trace an HTTP request carries (`traceparent` header), through the
/// global propagator.
pub fn continue_from_headers(span: &Span, headers: &http::HeaderMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    set_parent(span, parent);
}

fn set_parent(span: &Span, parent: Context) {
    if !parent.span().span_context().is_valid() {
        return;
    }
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "could not continue the incoming trace");
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
#[must_use]
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    parts.next().filter(|t| t.len() == 32)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A span's `request_id` field, kept in the span's extensions for the log formatter.
struct RequestId(String);

/// Remembers each span's `request_id` and the dispatch, which the formatter needs to read a
/// span's OpenTelemetry context.
struct CorrelationLayer {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

struct RequestIdVisitor(Option<String>);

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "request_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "request_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for CorrelationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut visitor = RequestIdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(request_id), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(RequestId(request_id));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let mut visitor = RequestIdVisitor(None);
        values.record(&mut visitor);
        if let (Some(request_id), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().replace(RequestId(request_id));
        }
    }
}

/// A log line formatter that appends `trace_id`, `span_id` and `request_id` to what `inner`
/// writes (as JSON fields or as `key=value` text).
struct Correlated<F> {
    inner: F,
    dispatch: Arc<OnceLock<WeakDispatch>>,
    format: LogFormat,
}

impl<F> Correlated<F> {
    /// The ids of the event's innermost span, and the innermost `request_id` around it.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Vec<(&'static str, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let Some(scope) = ctx.event_scope() else {
            return vec![];
        };
        let mut leaf = None;
        let mut request_id = None;
        for span in scope {
            if leaf.is_none() {
                leaf = Some(span.id());
            }
            if let Some(RequestId(id)) = span.extensions().get::<RequestId>() {
                request_id = Some(id.clone());
                break;
            }
        }
        let mut ids = Vec::with_capacity(3);
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        if let (Some(leaf), Some(dispatch)) = (leaf, dispatch) {
            if let Some(context) = tracing_opentelemetry::get_otel_context(&leaf, &dispatch) {
                let span = context.span();
                let span_context = span.span_context();
                if span_context.is_valid() {
                    ids.push(("trace_id", span_context.trace_id().to_string()));
                    ids.push(("span_id", span_context.span_id().to_string()));
                }
            }
        }
        if let Some(request_id) = request_id {
            ids.push(("request_id", request_id));
        }
        ids
    }
}

impl<S, N, F> FormatEvent<S, N> for Correlated<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ids = self.ids(ctx);
        if ids.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        match self.format {
            LogFormat::Json => {
                let Some(object) = body.strip_suffix('}') else {
                    return writer.write_str(&line);
                };
                writer.write_str(object)?;
                let mut separator = if object.ends_with('{') { "" } else { "," };
                for (key, value) in ids {
                    let value = serde_json::to_string(&value).map_err(|_| std::fmt::Error)?;
                    write!(writer, "{separator}\"{key}\":{value}")?;
                    separator = ",";
                }
                writer.write_str("}\n")
            }
            LogFormat::Text => {
                writer.write_str(body)?;
                for (key, value) in ids {
                    write!(writer, " {key}={value}")?;
                }
                writer.write_char('\n')
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_parses() {
        EnvFilter::try_new(DEFAULT_FILTER).expect("a valid filter");
    }

    #[test]
    fn the_trace_id_is_the_second_part_of_a_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-short-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(""), None);
    }
}
