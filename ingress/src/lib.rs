//! `sms-ingress`: Twilio webhooks and the HTTP API. Thin by design: verify, store, enqueue, answer.

pub mod agent_routes;
pub mod api_keys;
pub mod auth;
pub mod cli;
pub mod console;
pub mod conversations;
pub mod error;
pub mod extract;
pub mod group_commit;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod opt_outs;
pub mod policy;
pub mod rate_limit;
pub mod send;
pub mod server;
pub mod status;
pub mod tenants;
pub mod unroutable;
pub mod usage;
pub mod webhook;

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit};
use shared::config;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use crate::server::serve;
use crate::{
    group_commit::{GroupCommit, InboundWebhooks, StatusCallbacks},
    metrics::Metrics,
    rate_limit::InvalidSignatureLimit,
};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<config::Ingress>,
    pub pool: PgPool,
    pub inbound: GroupCommit<InboundWebhooks>,
    pub callbacks: GroupCommit<StatusCallbacks>,
    pub http: reqwest::Client,
    pub metrics: Metrics,
    /// None when INVALID_SIGNATURE_LIMIT is 0.
    pub invalid_signatures: Option<Arc<InvalidSignatureLimit>>,
    /// Cancelled on SIGTERM: readiness answers `draining` and connections close after each
    /// answer, until the server stops (see `server::drain_on`).
    pub draining: CancellationToken,
}

impl AppState {
    pub fn new(cfg: config::Ingress, pool: PgPool) -> Self {
        let inbound = GroupCommit::start(
            pool.clone(),
            cfg.group_commit_writers,
            cfg.group_commit_max_batch,
        );
        let callbacks = GroupCommit::start(
            pool.clone(),
            cfg.group_commit_writers,
            cfg.group_commit_max_batch,
        );
        let invalid_signatures =
            InvalidSignatureLimit::new(cfg.invalid_signature_limit, cfg.invalid_signature_window)
                .map(Arc::new);
        Self {
            invalid_signatures,
            cfg: Arc::new(cfg),
            pool,
            inbound,
            callbacks,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("TLS backend initialises"),
            metrics: Metrics::default(),
            draining: CancellationToken::new(),
        }
    }
}

/// A span per request carrying its id, so every log line of the request has it.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let path = masked_path(req.uri().path());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %path, otel.kind = "server");
    // A caller's `traceparent` makes this request part of its trace.
    let caller = shared::telemetry::TraceContext::from_headers(req.headers());
    shared::telemetry::continue_trace_in(&span, caller.as_ref());
    span
}

/// The path for logs and traces, with any segment that looks like a phone number masked to its
/// last four digits: 7 or more digits and no letter, whatever the punctuation
/// (`/conversations/+15551230001`, `/conversations/415-555-0202`, `(415)%20555-0202`). Ids
/// (UUIDs, tenant ids) carry letters and are kept.
fn masked_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let digits = seg.chars().filter(char::is_ascii_digit).count();
            // `%2B` and `%20` are an encoded + and space, not letters.
            let letters = seg
                .replace("%2B", "")
                .replace("%2b", "")
                .replace("%20", "")
                .chars()
                .any(|c| c.is_ascii_alphabetic());
            if digits >= 7 && !letters {
                shared::phone::mask(seg)
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every route, each registered with its OpenAPI description: `routes!` takes the path and
/// method from the handler's `#[utoipa::path]`, so a route cannot be served undocumented (the
/// `openapi` integration test also refuses plain `.route(...)` calls).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(webhook::inbound_sms))
        .routes(routes!(status::status_callback))
        .routes(routes!(send::send))
        .routes(routes!(send::cancel))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(agent_routes::list, agent_routes::create))
        .routes(routes!(agent_routes::delete))
        .routes(routes!(unroutable::list))
        .routes(routes!(unroutable::replay))
        .routes(routes!(usage::usage))
        .routes(routes!(opt_outs::list, opt_outs::record))
        .routes(routes!(tenants::list, tenants::add))
        .routes(routes!(tenants::remove))
        .routes(routes!(api_keys::list, api_keys::create))
        .routes(routes!(api_keys::delete))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::docs))
}

pub fn router(state: AppState) -> Router {
    let limit = state.cfg.max_body_bytes;
    // Outermost first: take or make X-Request-Id, open the request's span, and return the id.
    let request_ids = tower::ServiceBuilder::new()
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(log_failure),
        )
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id());
    Router::from(api())
        .merge(console::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.cfg.request_timeout,
            server::deadline,
        ))
        .layer(axum::middleware::from_fn(server::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.draining.clone(),
            server::close_while_draining,
        ))
        .layer(request_ids)
        .with_state(state)
}

/// The operations listener (`METRICS_ADDR`): `/metrics` and detailed `/health/ready` without a
/// key, and `/health`. Bound to a private address, off the one Twilio reaches.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics::exposition))
        .route("/health", axum::routing::get(health::health))
        .route("/health/ready", axum::routing::get(health::ready_detailed))
        .layer(axum::middleware::from_fn(server::security_headers))
        .with_state(state)
}

/// A 503 is the service saying "not now, retry" (database down, pool exhausted, a commit whose
/// outcome is unknown), already logged with its cause: a warning. Any other server error is an
/// error.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass::StatusCode as Status;
    let latency_ms = latency.as_millis() as u64;
    match class {
        Status(code) if code == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(
                status = 503,
                latency_ms,
                "response failed: service unavailable"
            )
        }
        other => tracing::error!(classification = %other, latency_ms, "response failed"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phone_numbers_in_paths_are_masked_ids_are_not() {
        // (path, logged as)
        let table = [
            ("/conversations/+15551230001", "/conversations/********0001"),
            (
                "/tenants/t-1/phones/%2B15551230001",
                "/tenants/t-1/phones/**********0001",
            ),
            ("/conversations/415-555-0202", "/conversations/********0202"),
            (
                "/conversations/(415)%20555-0202",
                "/conversations/************0202",
            ),
            (
                "/routes/0193b0a4-1c2d-7e3f-8a9b-0c1d2e3f4a5b",
                "/routes/0193b0a4-1c2d-7e3f-8a9b-0c1d2e3f4a5b",
            ),
            ("/tenants/t-1001", "/tenants/t-1001"),
        ];
        for (path, logged) in table {
            assert_eq!(super::masked_path(path), logged, "{path}");
        }
    }
}
