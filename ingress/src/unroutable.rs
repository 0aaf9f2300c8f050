//! The quarantine of messages that could not be routed: `GET /unroutable` lists them (newest
//! first), `POST /unroutable/{message_id}/replay` routes one again (after adding a route, or once
//! the agent is back). A tenant-scoped key sees only its tenant's.

use crate::extract::{Path, Query};
use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::{AppState, auth::ApiKey, error::ApiError};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Also list messages already replayed (default false).
    #[serde(default)]
    pub include_replayed: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Unroutable {
    pub message_id: Uuid,
    pub tenant_id: Option<String>,
    /// Why it was not routed (unknown number, no route, agent refused or never took it).
    pub reason: String,
    pub detail: Option<String>,
    pub from: Option<String>,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// List unroutable messages
///
/// The quarantine, newest first: messages from unknown numbers, without a route, or that their
/// agent refused or never took.
#[utoipa::path(
    get,
    path = "/unroutable",
    tag = "routing",
    operation_id = "listUnroutable",
    security(("api_key" = ["admin"])),
    params(ListParams),
    responses(
        (status = 200, description = "The quarantined messages.", body = Vec<Unroutable>),
        (status = 400, description = "`invalid_limit`, or `invalid_query`: a `limit` or \
            `include_replayed` that does not parse.", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
    Query(p): Query<ListParams>,
) -> Result<Json<Vec<Unroutable>>, ApiError> {
    key.require("admin")?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be from 1 to 1000",
        ));
    }
    let rows = sqlx::query!(
        r#"SELECT u.message_id, u.tenant_id, u.reason, u.detail, u.created_at, u.replayed_at,
                  m.from_number, m.message_content
           FROM sms_unroutable u JOIN sms_messages m ON m.id = u.message_id
           WHERE ($1 OR u.replayed_at IS NULL) AND ($2::text IS NULL OR u.tenant_id = $2)
           ORDER BY u.created_at DESC LIMIT $3"#,
        p.include_replayed,
        key.tenant_id,
        limit
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Unroutable {
                message_id: r.message_id,
                tenant_id: r.tenant_id,
                reason: r.reason,
                detail: r.detail,
                from: r.from_number,
                content: r.message_content,
                created_at: r.created_at,
                replayed_at: r.replayed_at,
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub message_id: Uuid,
    /// `replayed`.
    #[schema(example = "replayed")]
    pub status: &'static str,
}

/// Replay an unroutable message
///
/// Routes it again (after adding a route, or once the agent is back).
#[utoipa::path(
    post,
    path = "/unroutable/{message_id}/replay",
    tag = "routing",
    operation_id = "replayUnroutable",
    security(("api_key" = ["admin"])),
    params(("message_id" = Uuid, Path, description = "The quarantined message's id.")),
    responses(
        (status = 202, description = "Queued for routing again.", body = Replayed),
        (status = 400, description = "`invalid_path`: `message_id` is not a UUID.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: not in the quarantine, already replayed, or \
            another tenant's.", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    key: ApiKey,
    Path(message_id): Path<Uuid>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    key.require("admin")?;
    let mut tx = state.pool.begin().await?;
    let found = sqlx::query!(
        r#"UPDATE sms_unroutable SET replayed_at = now()
           WHERE message_id = $1 AND replayed_at IS NULL AND ($2::text IS NULL OR tenant_id = $2)
           RETURNING message_id"#,
        message_id,
        key.tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Err(ApiError::NotFound("no such unroutable message"));
    }
    shared::routing::replay(&mut tx, message_id).await?;
    crate::error::commit(tx).await?;
    tracing::info!(%message_id, "unroutable message replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            message_id,
            status: "replayed",
        }),
    ))
}
