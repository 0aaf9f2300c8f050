//! Liveness (`/health`, no I/O) and readiness (`/health/ready`, probes with short timeouts).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use shared::db::Fault;

use crate::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub ok: bool,
    #[schema(example = "sms-ingress")]
    pub service: &'static str,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether the replica takes traffic: the database answered and it is not draining.
    pub ok: bool,
    pub version: &'static str,
    pub checks: ReadinessChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok`, `unreachable` (no answer in time, connection failed), `refused` (the server or a
    /// pooler refused us: credentials, database, a startup parameter, too many clients),
    /// `transaction_pooler` (statements fail as behind a transaction pooler while
    /// `DATABASE_POOL_MODE` says session) or `error`.
    #[schema(example = "ok")]
    pub database: &'static str,
    /// What the database or the connection said, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(null))]
    pub database_reason: Option<String>,
    /// `DATABASE_POOL_MODE` in effect: `session` or `transaction`.
    #[schema(example = "session")]
    pub database_pool_mode: &'static str,
    /// `ok`, `unreachable` or `not_configured` (no `MONITOR_API_URL`); never makes the ingress
    /// unready.
    #[schema(example = "not_configured")]
    pub monitor: &'static str,
    /// `running`, or `draining` after SIGTERM: the replica still answers but is leaving
    /// rotation (answered 503 so load balancers stop sending to it).
    #[schema(example = "running")]
    pub shutdown: &'static str,
}

/// Liveness
///
/// Answers without any I/O.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    responses((status = 200, description = "The process is up.", body = Health))
)]
pub async fn health() -> Json<Health> {
    Json(Health {
        ok: true,
        service: "sms-ingress",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness
///
/// Probes the database (and the Collections Monitor, when configured) with 1 s timeouts. An
/// unreachable Monitor is reported but does not make the ingress unready: inbound messages are
/// still stored and attached to their tenant later.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    operation_id = "ready",
    responses(
        (status = 200, description = "The database answers. On this listener the checks say only \
            what failed; the reason (a database error's text) is given on `METRICS_ADDR`, the \
            operations listener.", body = Readiness),
        (status = 503, description = "The database is unreachable, or the replica is draining \
            after SIGTERM (`checks.shutdown`).", body = Readiness,
         example = json!({"ok": false, "version": "0.1.0",
                          "checks": {"database": "unreachable", "database_pool_mode": "session",
                                     "monitor": "ok", "shutdown": "running"}})),
    )
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (status, Json(mut readiness)) = readiness(&state).await;
    // Error text names hosts, users and databases: not for the listener anyone can reach.
    readiness.checks.database_reason = None;
    (status, Json(readiness))
}

/// Readiness with the database's reason, for the operations listener.
pub async fn ready_detailed(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    readiness(&state).await
}

async fn readiness(state: &AppState) -> (StatusCode, Json<Readiness>) {
    let db = probe_database(state).await;
    // The Monitor is optional for the ingress (workers treat its absence as "unknown tenant"), so
    // it is reported but does not make the ingress unready.
    let monitor = match &state.cfg.monitor.api_url {
        None => "not_configured",
        Some(url) => {
            let reachable = tokio::time::timeout(PROBE_TIMEOUT, state.http.get(url).send())
                .await
                .is_ok_and(|r| r.is_ok());
            if reachable { "ok" } else { "unreachable" }
        }
    };
    let draining = state.draining.is_cancelled();
    let ok = db.is_ok() && !draining;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ok,
            version: env!("CARGO_PKG_VERSION"),
            checks: ReadinessChecks {
                database: db.as_ref().map_or_else(Fault::kind, |()| "ok"),
                database_reason: db.err().map(|f| f.reason().to_owned()),
                database_pool_mode: shared::pool_mode::effective(
                    state.cfg.common.database_pool_mode,
                )
                .as_str(),
                monitor,
                shutdown: if draining { "draining" } else { "running" },
            },
        }),
    )
}

/// A statement with a parameter, so it goes through the extended protocol as every query does
/// (a pooler that splits prepared statements fails here, not only later).
async fn probe_database(state: &AppState) -> Result<(), Fault> {
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query_scalar!(r#"SELECT $1::int AS "one!""#, 1).fetch_one(&state.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            shared::pool_mode::observe(&e);
            Err(Fault::of(&e))
        }
        Err(_) => Err(Fault::Unreachable(format!(
            "no answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        ))),
    }
}
