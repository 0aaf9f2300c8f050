//! Logging, trace export and process signals shared by the binaries.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! `tracing` spans are also exported as OpenTelemetry spans over OTLP/HTTP (protobuf), in batches.
//! A trace crosses process boundaries as a W3C `traceparent` (plus `tracestate`): taken from
//! incoming requests, carried in job payloads ([`TraceContext`]) and sent on outgoing requests.

use std::collections::HashMap;

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{ConfigError, LogFormat, Source};

/// JSON lines in production, readable text locally; `RUST_LOG` filters (default `info`). Logs
/// only: see [`init_with_traces`] for the services.
pub fn init(format: LogFormat) {
    install(format, None);
}

/// Trace export settings (standard `OTEL_*` variables); `None` when no OTLP endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// `service.name`: `OTEL_SERVICE_NAME`, else the binary's own name (unless
    /// `OTEL_RESOURCE_ATTRIBUTES` names one).
    pub service_name: String,
}

impl OtlpSettings {
    /// The rest (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`) is read by the OpenTelemetry SDK itself.
    pub fn load(
        src: &dyn Source,
        default_service_name: &'static str,
    ) -> Result<Option<Self>, ConfigError> {
        if src
            .get("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let mut configured = false;
        for key in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            if let Some(v) = src.get(key) {
                // The SDK would quietly fall back to localhost on a bad value: refuse it here.
                match url::Url::parse(v.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => configured = true,
                    _ => {
                        return Err(ConfigError::new(
                            key,
                            format!("expected an http(s) URL, got {v:?}"),
                        ));
                    }
                }
            }
        }
        if !configured {
            return Ok(None);
        }
        for key in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if let Some(v) = src.get(key)
                && v.trim() != "http/protobuf"
            {
                return Err(ConfigError::new(
                    key,
                    format!("only http/protobuf is supported, got {v:?}"),
                ));
            }
        }
        Ok(Some(Self {
            service_name: src
                .get("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| default_service_name.to_owned()),
        }))
    }
}

/// Keeps the trace exporter alive; dropping it flushes the spans still batched (so a graceful
/// stop loses none).
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// [`init`] plus span export when the `OTEL_*` settings ask for it; `default_service_name` is
/// the binary's (`sms-ingress`, `sms-worker`).
pub fn init_with_traces(
    format: LogFormat,
    src: &dyn Source,
    default_service_name: &'static str,
) -> Result<Telemetry, ConfigError> {
    let provider = match OtlpSettings::load(src, default_service_name)? {
        None => None,
        Some(settings) => Some(tracer_provider(&settings).map_err(|e| {
            ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", format!("exporter: {e}"))
        })?),
    };
    install(format, provider.clone());
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(settings: &OtlpSettings) -> anyhow::Result<SdkTracerProvider> {
    // HTTP/protobuf; the endpoint, headers and timeout come from the OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    // The SDK's own detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; only when
    // neither names the service does it get the binary's name.
    let mut resource = Resource::builder();
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str() == "unknown_service");
    if unnamed {
        resource = resource.with_service_name(settings.service_name.clone());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

fn install(format: LogFormat, provider: Option<SdkTracerProvider>) {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match format {
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
        LogFormat::Pretty => logs.compact().boxed(),
    };
    // Spans are exported at info whatever RUST_LOG says (quiet logs must not cut traces short),
    // except the exporter's own stack, which would otherwise trace its own exports. Without
    // context activation a span's remote parent can still be set on its first line
    // (`continue_trace`) after `#[instrument]` has entered it.
    let traces = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sms-foundation"))
            .with_context_activation(false)
            .with_filter(EnvFilter::new(
                "info,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,\
                 opentelemetry_http=off,reqwest=off,hyper=off,hyper_util=off,h2=off",
            ))
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(log_filter))
        .with(traces)
        .try_init();
}

/// A W3C trace context (`traceparent`, `tracestate`): how a trace crosses a queue or a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The current span's context, to carry into a job or a request; `None` when traces are not
    /// exported (or the span is not sampled in).
    pub fn current() -> Option<Self> {
        Self::of(&tracing::Span::current())
    }

    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        Some(Self {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        })
    }

    /// From request headers; `None` without a well-formed `traceparent`.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let tc = Self {
            traceparent: get("traceparent")?.to_owned(),
            tracestate: get("tracestate").map(str::to_owned),
        };
        tc.context().is_some().then_some(tc)
    }

    fn context(&self) -> Option<opentelemetry::Context> {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.insert("tracestate".to_owned(), state.clone());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        cx.span().span_context().is_valid().then_some(cx)
    }
}

/// Makes `span` a child of `trace` (a job's or a request's remote parent). Call it before the span
/// has children: first thing in an `#[instrument]`ed function. No-op for `None` or when traces
/// are not exported.
pub fn continue_trace_in(span: &tracing::Span, trace: Option<&TraceContext>) {
    if let Some(cx) = trace.and_then(TraceContext::context) {
        // Fails only without the export layer, or on a span already started: nothing to do.
        let _ = span.set_parent(cx);
    }
}

/// [`continue_trace_in`] the current span.
pub fn continue_trace(trace: Option<&TraceContext>) {
    continue_trace_in(&tracing::Span::current(), trace);
}

/// Adds `span`'s `traceparent` (and `tracestate`) to an outgoing request.
pub fn inject(req: reqwest::RequestBuilder, span: &tracing::Span) -> reqwest::RequestBuilder {
    match TraceContext::of(span) {
        Some(tc) => {
            let req = req.header("traceparent", tc.traceparent);
            match tc.tracestate {
                Some(state) => req.header("tracestate", state),
                None => req,
            }
        }
        None => req,
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_is_on_only_with_an_endpoint() {
        assert_eq!(OtlpSettings::load(&env(&[]), "svc").unwrap(), None);
        let on = OtlpSettings::load(
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            "svc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.service_name, "svc");
        let named = OtlpSettings::load(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SERVICE_NAME", "sms-ingress-eu"),
            ]),
            "svc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(named.service_name, "sms-ingress-eu");
        let off = OtlpSettings::load(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
            "svc",
        )
        .unwrap();
        assert_eq!(off, None);
    }

    #[test]
    fn bad_otlp_settings_are_refused() {
        let err = OtlpSettings::load(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector")]), "s")
            .unwrap_err();
        assert_eq!(err.setting, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let err = OtlpSettings::load(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
            "s",
        )
        .unwrap_err();
        assert_eq!(err.setting, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn trace_context_from_headers_needs_a_valid_traceparent() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&headers), None);
        headers.insert("traceparent", "not-a-traceparent".parse().unwrap());
        assert_eq!(TraceContext::from_headers(&headers), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", tp.parse().unwrap());
        headers.insert("tracestate", "vendor=x".parse().unwrap());
        let tc = TraceContext::from_headers(&headers).unwrap();
        assert_eq!(tc.traceparent, tp);
        assert_eq!(tc.tracestate.as_deref(), Some("vendor=x"));
    }

    #[test]
    fn no_context_without_the_export_layer() {
        let span = tracing::info_span!("plain");
        assert_eq!(TraceContext::of(&span), None);
    }
}
