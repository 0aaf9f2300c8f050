//! The ingress's Prometheus metrics at `GET /metrics`: webhook outcomes, request latency, the job
//! queues and the database pool.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{HistogramVec, IntCounterVec, Registry};
use shared::metrics::{self as m, ScrapeGauges};

use crate::AppState;

struct Inner {
    registry: Registry,
    scrape: ScrapeGauges,
    webhooks: IntCounterVec,
    status_callbacks: IntCounterVec,
    requests: HistogramVec,
}

/// Per app instance (not a global recorder), so tests running several apps count separately.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        Self(Arc::new(Inner {
            scrape: ScrapeGauges::new(&r),
            webhooks: m::counter(
                &r,
                "sms_webhooks_total",
                "Twilio webhooks: inbound SMS stored or duplicate; rejected (bad signature) and \
                 rate_limited count both webhook endpoints.",
                &["outcome"],
            ),
            status_callbacks: m::counter(
                &r,
                "sms_status_callbacks_total",
                "Twilio status callbacks stored, or skipped as duplicates.",
                &["outcome"],
            ),
            requests: m::histogram(
                &r,
                "sms_http_request_duration_seconds",
                "HTTP request latency by route, method and status.",
                &["route", "method", "status"],
            ),
            registry: r,
        }))
    }
}

impl Metrics {
    pub fn webhook_stored(&self) {
        self.webhook("stored");
    }
    pub fn webhook_duplicate(&self) {
        self.webhook("duplicate");
    }
    pub fn webhook_rejected(&self) {
        self.webhook("rejected");
    }
    pub fn webhook_rate_limited(&self) {
        self.webhook("rate_limited");
    }
    fn webhook(&self, outcome: &str) {
        self.0.webhooks.with_label_values(&[outcome]).inc();
    }
    pub fn status_callback(&self, duplicate: bool) {
        let outcome = if duplicate { "duplicate" } else { "stored" };
        self.0.status_callbacks.with_label_values(&[outcome]).inc();
    }

    pub async fn render(&self, pool: &sqlx::PgPool) -> String {
        self.0.scrape.refresh(pool).await;
        m::render(&self.0.registry)
    }
}

/// Middleware: observes each routed request's latency under its route template (not the raw
/// path, which would carry phone numbers and ids).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .0
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics
///
/// Prometheus text format. Service-wide figures: on this listener (the one Twilio reaches) they
/// need an API key without a tenant and with the `read` scope (Prometheus: `authorization:
/// credentials_file`); on `METRICS_ADDR`, the operations listener, no key.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    security(("api_key" = ["read"])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.",
         content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    key: crate::auth::ApiKey,
) -> Result<Response, crate::error::ApiError> {
    use crate::policy::{self, Action, Owner};
    policy::authorize(&key, Action::Read, Owner::Global, "")?;
    Ok(exposition(State(state)).await)
}

/// The exposition itself, without a key: for the operations listener only.
pub async fn exposition(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, m::CONTENT_TYPE)],
        state.metrics.render(&state.pool).await,
    )
        .into_response()
}
