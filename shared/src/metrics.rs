//! Prometheus building blocks shared by the ingress and the workers: a per-process registry
//! (per instance, not global, so several apps in one test process keep their own counts), the
//! queue gauges read from Postgres at scrape time, and database pool use.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};
use sqlx::PgPool;

use crate::jobs;

/// Latency buckets in seconds: 1 ms to ~16 s, doubling.
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid bucket parameters")
}

/// Registers `metric` (built from a definition in this file, so valid and registered once).
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

pub fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    register(registry, HistogramVec::new(opts, labels))
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

/// Gauges refreshed on each scrape: the job queues (from Postgres) and the pool.
#[derive(Clone)]
pub struct ScrapeGauges {
    queue_jobs: IntGaugeVec,
    queue_oldest: GaugeVec,
    queue_scrape_errors: IntCounter,
    pool: IntGaugeVec,
}

impl ScrapeGauges {
    pub fn new(registry: &Registry) -> Self {
        Self {
            queue_jobs: int_gauge(
                registry,
                "sms_queue_jobs",
                "Unfinished jobs per queue: pending (due now), scheduled (due later), running.",
                &["queue", "state"],
            ),
            queue_oldest: gauge(
                registry,
                "sms_queue_oldest_pending_seconds",
                "How long the oldest due job of each queue has been waiting (0 when none).",
                &["queue"],
            ),
            queue_scrape_errors: register(
                registry,
                IntCounter::new(
                    "sms_queue_scrape_errors_total",
                    "Scrapes whose queue query failed (e.g. the database was down).",
                ),
            ),
            pool: int_gauge(
                registry,
                "sms_db_pool_connections",
                "Database pool connections by state (max is the configured size).",
                &["state"],
            ),
        }
    }

    /// Reads the queues and the pool into the gauges. A database error keeps the last values
    /// and is counted, so /metrics still answers while Postgres is down.
    pub async fn refresh(&self, pool: &PgPool) {
        let size = pool.size() as i64;
        let idle = pool.num_idle() as i64;
        self.pool.with_label_values(&["open"]).set(size);
        self.pool.with_label_values(&["idle"]).set(idle);
        self.pool.with_label_values(&["in_use"]).set(size - idle);
        self.pool
            .with_label_values(&["max"])
            .set(pool.options().get_max_connections() as i64);

        let rows = jobs::depths(pool).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "queue metrics query failed");
                self.queue_scrape_errors.inc();
                return;
            }
        };
        for queue in jobs::ALL_QUEUES {
            let row = rows.iter().find(|r| r.queue == *queue);
            let (pending, scheduled, running, oldest) = row
                .map(|r| (r.pending, r.scheduled, r.running, r.oldest_due_secs))
                .unwrap_or_default();
            self.queue_jobs
                .with_label_values(&[*queue, "pending"])
                .set(pending);
            self.queue_jobs
                .with_label_values(&[*queue, "scheduled"])
                .set(scheduled);
            self.queue_jobs
                .with_label_values(&[*queue, "running"])
                .set(running);
            self.queue_oldest.with_label_values(&[*queue]).set(oldest);
        }
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
