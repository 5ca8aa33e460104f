//! Traces over OpenTelemetry (`docs/control.md`, "Traces"): the `[telemetry]
//! otlp` endpoint checked, the layer that exports zest's spans over OTLP/HTTP
//! (protobuf), and the W3C trace context a coordinator hands its members, so
//! that one cluster reload is one trace across them.
//!
//! The spans are plain `tracing` spans (`zest.reload` from the runtime's
//! telemetry, `zest.cluster.*` from the cluster layer); this file only sends
//! them on. Export runs on the SDK's own thread (a batch of at most
//! [`BATCH_SIZE`] every [`EXPORT_DELAY`], a blocking HTTP client of its own):
//! a reload only queues its spans, so a collector that is slow or gone never
//! holds one up, and when the queue ([`QUEUE_SIZE`]) is full spans are
//! dropped with a warning in the log. [`Exporting`] flushes what is queued
//! when it is dropped (at shutdown), waiting at most [`FLUSH_TIMEOUT`].

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The service every node's spans are reported under.
pub const SERVICE_NAME: &str = "zest";

/// The W3C header (and `cluster.*` param) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Spans waiting for export at most; past it new ones are dropped (logged).
pub const QUEUE_SIZE: usize = 2048;

/// Spans per export request at most.
pub const BATCH_SIZE: usize = 512;

/// How long a span waits for its batch at most.
pub const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// How long one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a node stopping waits for its last spans to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL spans are posted to, from `[telemetry] otlp`: a collector's base
/// URL, `http://HOST:PORT` (then `/v1/traces` is added), or the full URL of
/// its traces endpoint when it has a path.
pub fn endpoint(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("{text:?}: TLS is not supported yet; use http://HOST:PORT")),
        _ => return Err(format!("{text:?}: an OTLP endpoint is http://HOST:PORT (OTLP/HTTP, port 4318 by default)")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?}: an OTLP endpoint is http://HOST:PORT"));
    };
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(format!("{text:?}: an OTLP endpoint is http://HOST:PORT"));
    }
    if uri.query().is_some() {
        return Err(format!("{text:?}: an OTLP endpoint has no query"));
    }
    match uri.path() {
        "" | "/" => Ok(format!("http://{authority}/v1/traces")),
        path => Ok(format!("http://{authority}{path}")),
    }
}

/// The exporter of a node's spans; flushes them when dropped.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(%err, "the last spans could not all be exported");
        }
    }
}

/// A layer sending zest's spans (targets `zest::*`, level info and up) to
/// `endpoint` (as [`endpoint`] gives it), from a node whose id is `node` (the
/// resource's `service.instance.id`), and what flushes them at the end.
pub fn otlp_layer<S>(endpoint: &str, node: &str) -> Result<(impl Layer<S>, Exporting), String>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|err| format!("cannot export spans to {endpoint}: {err}"))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE_SIZE)
        .with_max_export_batch_size(BATCH_SIZE)
        .with_scheduled_delay(EXPORT_DELAY)
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    let tracer = provider.tracer(SERVICE_NAME);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("zest", tracing::Level::INFO));
    Ok((layer, Exporting { provider }))
}

/// The span of one phase of a cluster reload on member `node` (`prepare`,
/// `commit`, `settle`, `abort`, `catch_up`): `zest.cluster.<phase>` in the
/// exported trace, with the request id; `zest.outcome` (and, for a commit,
/// `zest.revision`) are recorded when known.
pub fn phase_span(phase: &str, request_id: &str, node: &str) -> tracing::Span {
    tracing::info_span!(
        target: "zest::cluster",
        "zest.cluster",
        otel.name = format!("zest.cluster.{phase}").as_str(),
        zest.phase = phase,
        zest.request_id = request_id,
        zest.node = node,
        zest.outcome = tracing::field::Empty,
        zest.revision = tracing::field::Empty,
    )
}

/// The W3C `traceparent` of `span`, when it is exported (none otherwise).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names (another member's),
/// when there is one and it is well formed; otherwise `span` keeps its place.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    use opentelemetry::trace::TraceContextExt as _;
    if !context.span().span_context().is_valid() {
        tracing::debug!(traceparent, "a malformed traceparent is ignored");
        return;
    }
    // Fails only for a span that is not exported (no OpenTelemetry layer).
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_an_http_url_and_gets_the_traces_path() {
        assert_eq!(endpoint("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(endpoint("http://jaeger:4318/").unwrap(), "http://jaeger:4318/v1/traces");
        assert_eq!(endpoint("http://otel:4318/custom/traces").unwrap(), "http://otel:4318/custom/traces");
        for (bad, says) in [
            ("localhost:4318", "an OTLP endpoint is http://HOST:PORT"),
            ("https://otel:4318", "TLS is not supported yet"),
            ("grpc://otel:4317", "an OTLP endpoint is http://HOST:PORT"),
            ("http://", "is not a URL"),
            ("not a url", "is not a URL"),
            ("http://user:pw@otel:4318", "an OTLP endpoint is http://HOST:PORT"),
            ("http://otel:4318/v1/traces?x=1", "has no query"),
        ] {
            let err = endpoint(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_span_that_is_not_exported_has_no_traceparent_and_adopts_nothing() {
        let span = tracing::info_span!("zest.test");
        assert_eq!(traceparent(&span), None);
        adopt(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        adopt(&span, Some("garbage"));
        adopt(&span, None);
    }
}
