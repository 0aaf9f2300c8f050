//! The quarantine of messages that could not be routed: `GET /unroutable` lists them (newest
//! first), `POST /unroutable/{message_id}/replay` routes one again (after adding a route, or once
//! the agent is back). A tenant-scoped key sees only its tenant's.

use crate::extract::{Path, Query};
use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::{
    AppState,
    auth::ApiKey,
    error::ApiError,
    policy::{self, Action, Owner},
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Also list messages already replayed (default false).
    #[serde(default)]
    pub include_replayed: bool,
    /// Only this reason: `unknown_number`, `no_route`, `agent_rejected`, `agent_unavailable`.
    #[param(pattern = "^(unknown_number|no_route|agent_rejected|agent_unavailable)$")]
    pub reason: Option<String>,
}

/// The quarantine's reasons.
pub const REASONS: &[&str] = &[
    "unknown_number",
    "no_route",
    "agent_rejected",
    "agent_unavailable",
];

/// Which quarantined messages: of a tenant, for a reason, replayed ones too.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub include_replayed: bool,
}

impl Filter {
    fn check(&self) -> Result<(), ApiError> {
        match &self.reason {
            Some(r) if !REASONS.contains(&r.as_str()) => Err(ApiError::Validation(vec![(
                "reason",
                format!("one of {}", REASONS.join(", ")),
            )])),
            _ => Ok(()),
        }
    }
}

/// The quarantined messages matching `f`, newest first.
pub async fn quarantined(
    pool: &sqlx::PgPool,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Unroutable>, ApiError> {
    f.check()?;
    let rows = sqlx::query!(
        r#"SELECT u.message_id, u.tenant_id, u.reason, u.detail, u.created_at, u.replayed_at,
                  m.from_number, m.message_content
           FROM sms_unroutable u JOIN sms_messages m ON m.id = u.message_id
           WHERE ($1 OR u.replayed_at IS NULL) AND ($2::text IS NULL OR u.tenant_id = $2)
             AND ($3::text IS NULL OR u.reason = $3)
           ORDER BY u.created_at DESC LIMIT $4"#,
        f.include_replayed,
        f.tenant,
        f.reason,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
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
        .collect())
}

/// How many messages `f` matches (what "replay all" would replay, replayed ones aside).
pub async fn count(pool: &sqlx::PgPool, f: &Filter) -> Result<i64, ApiError> {
    f.check()?;
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM sms_unroutable
           WHERE replayed_at IS NULL AND ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR reason = $2)"#,
        f.tenant,
        f.reason
    )
    .fetch_one(pool)
    .await?)
}

/// Routes one quarantined message again (of `tenant` only, when given); false when it is not in
/// the quarantine (or already replayed, or another tenant's).
pub async fn replay_one(
    pool: &sqlx::PgPool,
    key: &ApiKey,
    message_id: Uuid,
) -> Result<bool, ApiError> {
    policy::require(key, Action::Administer)?;
    let mut tx = pool.begin().await?;
    let Some(entry) = sqlx::query!(
        "SELECT tenant_id FROM sms_unroutable WHERE message_id = $1 AND replayed_at IS NULL FOR UPDATE",
        message_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    policy::authorize(
        key,
        Action::Administer,
        Owner::record(entry.tenant_id.as_deref()),
        "no such unroutable message",
    )?;
    sqlx::query!(
        "UPDATE sms_unroutable SET replayed_at = now() WHERE message_id = $1",
        message_id
    )
    .execute(&mut *tx)
    .await?;
    shared::routing::replay(&mut tx, message_id).await?;
    crate::error::commit(tx).await?;
    tracing::info!(%message_id, "unroutable message replayed");
    Ok(true)
}

/// Routes again every quarantined message `f` matches (not yet replayed), in one transaction;
/// returns how many. With `expected` (the count an operator confirmed), nothing is replayed when
/// the quarantine changed since: 409 `count_changed`.
pub async fn replay_matching(
    pool: &sqlx::PgPool,
    f: &Filter,
    expected: Option<u64>,
) -> Result<u64, ApiError> {
    f.check()?;
    let mut tx = pool.begin().await?;
    let ids = sqlx::query_scalar!(
        r#"UPDATE sms_unroutable SET replayed_at = now()
           WHERE replayed_at IS NULL AND ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR reason = $2)
           RETURNING message_id"#,
        f.tenant,
        f.reason
    )
    .fetch_all(&mut *tx)
    .await?;
    if let Some(n) = expected
        && n != ids.len() as u64
    {
        return Err(ApiError::Conflict {
            code: "count_changed",
            detail: format!(
                "{} messages match now, not the {n} confirmed; nothing was replayed: look again",
                ids.len()
            ),
        });
    }
    for id in &ids {
        shared::routing::replay(&mut tx, *id).await?;
    }
    crate::error::commit(tx).await?;
    tracing::info!(replayed = ids.len(), reason = ?f.reason, tenant = ?f.tenant, "unroutable messages replayed");
    Ok(ids.len() as u64)
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
        (status = 400, description = "`invalid_limit`; `invalid_request` with `errors.reason` \
            for an unknown reason; `invalid_query`: a `limit` or `include_replayed` that does not \
            parse.", body = crate::error::ErrorBody),
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
    let tenant = policy::confine(&key, Action::Administer, None)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be from 1 to 1000",
        ));
    }
    let filter = Filter {
        tenant,
        reason: p.reason,
        include_replayed: p.include_replayed,
    };
    Ok(Json(quarantined(&state.pool, &filter, limit).await?))
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
    if !replay_one(&state.pool, &key, message_id).await? {
        return Err(ApiError::NotFound("no such unroutable message"));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            message_id,
            status: "replayed",
        }),
    ))
}
