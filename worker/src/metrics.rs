//! The worker's Prometheus metrics and the small HTTP server that exposes them at `GET /metrics`
//! on WORKER_METRICS_ADDR (each worker process on its own port).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus::{HistogramVec, IntCounterVec, Registry};
use shared::metrics::{self as m, ScrapeGauges};
use tokio_util::sync::CancellationToken;

use crate::Deps;

/// How a job ended, for `sms_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// Finished (including "nothing to do").
    Done,
    /// The handler scheduled its own durable retry (a new job with run_after).
    Retried,
    /// The handler returned an error: apalis retries the job itself.
    Failed,
}

impl JobResult {
    fn label(self) -> &'static str {
        match self {
            JobResult::Done => "done",
            JobResult::Retried => "retried",
            JobResult::Failed => "failed",
        }
    }
}

/// Handler outcomes say whether they were a retry.
pub trait Retried {
    fn retried(&self) -> bool {
        false
    }
}

impl Retried for () {}

pub struct WorkerMetrics {
    registry: Registry,
    scrape: ScrapeGauges,
    jobs: IntCounterVec,
    job_seconds: HistogramVec,
    twilio_sends: IntCounterVec,
    delivery_status: IntCounterVec,
    languages: IntCounterVec,
    numbers: IntCounterVec,
    routes: IntCounterVec,
    route_reruns: IntCounterVec,
    tenant_cache: IntCounterVec,
    reconciler: IntCounterVec,
    backfilled: IntCounterVec,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            scrape: ScrapeGauges::new(&r),
            jobs: m::counter(
                &r,
                "sms_jobs_total",
                "Jobs handled per queue: done, retried (a durable retry was scheduled) or failed.",
                &["queue", "result"],
            ),
            job_seconds: m::histogram(
                &r,
                "sms_job_duration_seconds",
                "Time a handler took per job, by queue.",
                &["queue"],
            ),
            twilio_sends: m::counter(
                &r,
                "sms_twilio_sends_total",
                "Calls to Twilio's Messages API by outcome and Twilio error code (empty when none).",
                &["outcome", "code"],
            ),
            delivery_status: m::counter(
                &r,
                "sms_delivery_status_total",
                "Delivery statuses applied to outbound messages.",
                &["status"],
            ),
            languages: m::counter(
                &r,
                "sms_language_detected_total",
                "Inbound messages by detected language (none when too little evidence).",
                &["language"],
            ),
            numbers: m::counter(
                &r,
                "sms_inbound_numbers_total",
                "Inbound messages whose number resolved to a tenant (known) or not (unknown).",
                &["tenant"],
            ),
            routes: m::counter(
                &r,
                "sms_route_outcomes_total",
                "Route jobs by outcome: delivered, replied, retry, unroutable, already_done, deferred.",
                &["outcome"],
            ),
            route_reruns: m::counter(
                &r,
                "sms_route_reruns_total",
                "Agent calls made again because the run that claimed the message died (at least once delivery).",
                &[],
            ),
            tenant_cache: m::counter(
                &r,
                "sms_tenant_cache_lookups_total",
                "Tenant lookups answered from the cache (hit) or not (miss).",
                &["result"],
            ),
            reconciler: m::counter(
                &r,
                "sms_reconciler_checks_total",
                "Reconciler checks of stuck messages by result: updated, unchanged, not_found, error, gave_up.",
                &["result"],
            ),
            backfilled: m::counter(
                &r,
                "sms_inbound_backfilled_total",
                "Inbound messages stored from Twilio's message log because their webhook never reached us.",
                &[],
            ),
            registry: r,
        }
    }

    pub fn job(&self, queue: &str, result: JobResult, took: Duration) {
        self.jobs.with_label_values(&[queue, result.label()]).inc();
        self.job_seconds
            .with_label_values(&[queue])
            .observe(took.as_secs_f64());
    }

    pub fn twilio_send(&self, outcome: &str, code: Option<&str>) {
        self.twilio_sends
            .with_label_values(&[outcome, code.unwrap_or("")])
            .inc();
    }

    pub fn delivery_status(&self, status: &str) {
        self.delivery_status.with_label_values(&[status]).inc();
    }

    pub fn language(&self, code: Option<&str>) {
        self.languages
            .with_label_values(&[code.unwrap_or("none")])
            .inc();
    }

    pub fn number(&self, known: bool) {
        self.numbers
            .with_label_values(&[if known { "known" } else { "unknown" }])
            .inc();
    }

    pub fn backfilled(&self, n: u64) {
        self.backfilled.with_label_values(&[] as &[&str]).inc_by(n);
    }

    pub fn reconcile(&self, result: &str, n: u64) {
        self.reconciler.with_label_values(&[result]).inc_by(n);
    }

    pub fn route(&self, outcome: &str) {
        self.routes.with_label_values(&[outcome]).inc();
    }

    pub fn route_rerun(&self) {
        self.route_reruns.with_label_values(&[] as &[&str]).inc();
    }

    /// Refreshes the scrape-time values and renders everything.
    pub async fn render(&self, deps: &Deps) -> String {
        self.scrape.refresh(&deps.pool).await;
        // The resolver keeps its own atomics; bring the counters up to them.
        let stats = deps.tenants.stats();
        for (label, now) in [("hit", stats.hits), ("miss", stats.misses)] {
            let c = self.tenant_cache.with_label_values(&[label]);
            c.inc_by(now.saturating_sub(c.get()));
        }
        let mut out = m::render(&self.registry);
        out.push_str(&format!(
            "# HELP sms_tenant_cache_hit_ratio Share of tenant lookups answered from the cache since start.\n\
             # TYPE sms_tenant_cache_hit_ratio gauge\n\
             sms_tenant_cache_hit_ratio {}\n\
             # HELP sms_tenant_shared_number_lookups_total Directory lookups that found the number listed for several tenants (the first listed wins).\n\
             # TYPE sms_tenant_shared_number_lookups_total counter\n\
             sms_tenant_shared_number_lookups_total {}\n",
            stats.hit_rate, stats.shared_numbers
        ));
        out
    }
}

async fn metrics(State(deps): State<Arc<Deps>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, m::CONTENT_TYPE)],
        deps.metrics.render(&deps).await,
    )
}

/// Binds WORKER_METRICS_ADDR now (so a taken port is a start-up error) and serves `/metrics`
/// until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    deps: Arc<Deps>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(deps);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok((bound, task))
}

impl Retried for crate::send::Outcome {
    fn retried(&self) -> bool {
        matches!(self, crate::send::Outcome::Retrying { .. })
    }
}

impl Retried for crate::route::Outcome {
    fn retried(&self) -> bool {
        matches!(
            self,
            crate::route::Outcome::Retrying | crate::route::Outcome::Deferred
        )
    }
}

/// A batch counts as retried when every message of it was (a job that only waits on retries).
impl Retried for Vec<crate::route::Outcome> {
    fn retried(&self) -> bool {
        !self.is_empty() && self.iter().all(Retried::retried)
    }
}

impl Retried for crate::language_notify::Outcome {
    fn retried(&self) -> bool {
        matches!(self, crate::language_notify::Outcome::Rescheduled { .. })
    }
}

impl Retried for crate::status_apply::Outcome {}

/// Logs the tenant cache's hit rate once a minute.
pub async fn report_cache(
    deps: std::sync::Arc<Deps>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let s = deps.tenants.stats();
        tracing::info!(
            hits = s.hits,
            misses = s.misses,
            hit_rate = s.hit_rate,
            monitor_found = s.monitor_found,
            monitor_unavailable = s.monitor_unavailable,
            "tenant cache"
        );
    }
}
