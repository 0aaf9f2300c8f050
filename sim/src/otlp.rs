//! An OpenTelemetry collector stand-in: `POST /v1/traces` takes OTLP/HTTP exports (protobuf, or
//! JSON) and keeps their spans, which `GET /_sim/otlp/spans` lists (`?trace_id=` filters) so tests
//! and local runs can see whole traces without a real collector.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value as OtlpValue},
    trace::v1::span::SpanKind,
};
use prost::Message;
use serde::{Deserialize, Serialize};

/// One received span, ids in lowercase hex (as in `traceparent`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, ...
    pub kind: String,
    /// The exporting process's `service.name`.
    pub service_name: String,
    /// The span's attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
}

/// The spans received so far; cheap to clone.
#[derive(Clone, Default)]
pub struct OtlpState {
    spans: Arc<Mutex<Vec<RecordedSpan>>>,
}

impl OtlpState {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<RecordedSpan>> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.lock().clone()
    }

    pub fn reset(&self) {
        self.lock().clear();
    }

    /// Keeps every span of an export.
    pub fn record(&self, export: ExportTraceServiceRequest) {
        let mut spans = Vec::new();
        for rs in export.resource_spans {
            let service_name = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
                spans.push(RecordedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: kind
                        .as_str_name()
                        .trim_start_matches("SPAN_KIND_")
                        .to_ascii_lowercase(),
                    service_name: service_name.clone(),
                    attributes: attributes(&span.attributes),
                });
            }
        }
        self.lock().extend(spans);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(OtlpValue::StringValue(s)) => s.clone(),
        Some(OtlpValue::BoolValue(b)) => b.to_string(),
        Some(OtlpValue::IntValue(i)) => i.to_string(),
        Some(OtlpValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// `POST /v1/traces`: protobuf (`application/x-protobuf`, what our exporter sends) or JSON
/// (`application/json`), answered in kind as the OTLP/HTTP spec asks.
async fn export(State(state): State<OtlpState>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<ExportTraceServiceRequest>(&body) {
            Ok(export) => {
                state.record(export);
                Json(serde_json::json!({})).into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("bad OTLP JSON: {e}")).into_response(),
        }
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                state.record(export);
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
                    .into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("bad OTLP protobuf: {e}")).into_response(),
        }
    }
}

#[derive(Deserialize)]
struct SpansQuery {
    trace_id: Option<String>,
}

async fn list(
    State(state): State<OtlpState>,
    Query(q): Query<SpansQuery>,
) -> Json<Vec<RecordedSpan>> {
    let mut spans = state.spans();
    if let Some(id) = q.trace_id {
        spans.retain(|s| s.trace_id.eq_ignore_ascii_case(&id));
    }
    Json(spans)
}

async fn reset(State(state): State<OtlpState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

/// The OTLP receiver plus its `/_sim/otlp` control API; no fallback, so it merges into
/// [`crate::server::app`].
pub fn otlp_router(state: OtlpState) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .route("/_sim/otlp/spans", get(list))
        .route("/_sim/otlp/reset", post(reset))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };

    use super::*;

    fn export() -> ExportTraceServiceRequest {
        let string = |s: &str| AnyValue {
            value: Some(OtlpValue::StringValue(s.to_owned())),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(string("sms-worker")),
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                        parent_span_id: vec![],
                        name: "process_inbound".into(),
                        kind: SpanKind::Client as i32,
                        attributes: vec![KeyValue {
                            key: "message_id".into(),
                            value: Some(string("m-1")),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn records_spans_with_their_service() {
        let state = OtlpState::new();
        state.record(export());
        let spans = state.spans();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!(s.span_id, "0102030405060708");
        assert_eq!(s.parent_span_id, "");
        assert_eq!(s.name, "process_inbound");
        assert_eq!(s.kind, "client");
        assert_eq!(s.service_name, "sms-worker");
        assert_eq!(s.attributes["message_id"], "m-1");
    }

    #[tokio::test]
    async fn accepts_protobuf_and_json_over_http() {
        let state = OtlpState::new();
        let server = crate::server::SimServer::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::server::app([otlp_router(state.clone())]),
        )
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let url = format!("{}/v1/traces", server.base_url());
        let proto = http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(export().encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(proto.status(), 200);
        let json = http
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&export()).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(json.status(), 200);
        let garbage = http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(vec![0xff; 7])
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), 400);
        let listed: Vec<RecordedSpan> = http
            .get(format!(
                "{}/_sim/otlp/spans?trace_id={}",
                server.base_url(),
                "AB".repeat(16)
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|s| s.service_name == "sms-worker"));
    }
}
