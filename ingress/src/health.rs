//! Liveness (`/health`, no I/O) and readiness (`/health/ready`, probes with short timeouts).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn health() -> Json<Value> {
    Json(json!({"ok": true, "service": "sms-ingress", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool))
        .await
        .is_ok_and(|r| r.is_ok());
    // The Monitor is optional for the ingress (workers treat its absence as "unknown tenant"), so
    // it is reported but does not make the ingress unready.
    let monitor = match &state.cfg.monitor.api_url {
        None => Value::String("not_configured".into()),
        Some(url) => {
            let reachable = tokio::time::timeout(PROBE_TIMEOUT, state.http.get(url).send())
                .await
                .is_ok_and(|r| r.is_ok());
            Value::String(if reachable { "ok" } else { "unreachable" }.into())
        }
    };
    let status = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ok": db,
            "version": env!("CARGO_PKG_VERSION"),
            "checks": {"database": if db { "ok" } else { "unreachable" }, "monitor": monitor}
        })),
    )
}
