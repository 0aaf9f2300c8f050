//! Counters exposed at `GET /metrics` in Prometheus text format.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{extract::State, http::header, response::IntoResponse};

use crate::AppState;

#[derive(Debug, Default)]
struct Counters {
    stored: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Counters>);

impl Metrics {
    pub fn webhook_stored(&self) {
        self.0.stored.fetch_add(1, Ordering::Relaxed);
    }
    pub fn webhook_duplicate(&self) {
        self.0.duplicate.fetch_add(1, Ordering::Relaxed);
    }
    pub fn webhook_rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pool: &sqlx::PgPool) -> String {
        let c = &self.0;
        format!(
            "# HELP sms_webhooks_total Inbound SMS webhooks by outcome.\n\
             # TYPE sms_webhooks_total counter\n\
             sms_webhooks_total{{outcome=\"stored\"}} {}\n\
             sms_webhooks_total{{outcome=\"duplicate\"}} {}\n\
             sms_webhooks_total{{outcome=\"rejected\"}} {}\n\
             # HELP sms_db_pool_connections Database pool connections by state.\n\
             # TYPE sms_db_pool_connections gauge\n\
             sms_db_pool_connections{{state=\"open\"}} {}\n\
             sms_db_pool_connections{{state=\"idle\"}} {}\n",
            c.stored.load(Ordering::Relaxed),
            c.duplicate.load(Ordering::Relaxed),
            c.rejected.load(Ordering::Relaxed),
            pool.size(),
            pool.num_idle(),
        )
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.pool),
    )
}
