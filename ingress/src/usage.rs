//! `GET /usage?tenant_id=&from=&to=`: messages and segments per tenant, by direction and status,
//! counted from the stored messages themselves (no second source of truth).

use crate::extract::Query;
use axum::{Json, extract::State};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{AppState, auth::ApiKey, error::ApiError};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Count only this tenant (a tenant-scoped key always counts only its own).
    #[param(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
    /// Start, inclusive: RFC 3339 or YYYY-MM-DD (default: 30 days before `to`).
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline, example = "2026-11-01")]
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or YYYY-MM-DD (default: now).
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline, example = "2026-12-01")]
    pub to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub tenant_id: Option<String>,
    pub direction: String,
    pub status: String,
    pub messages: i64,
    pub segments: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tenant_id: Option<String>,
    pub rows: Vec<UsageRow>,
}

pub(crate) fn parse_time(field: &'static str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| ApiError::Validation(vec![(field, "must be RFC 3339 or YYYY-MM-DD".into())]))
}

/// Usage
///
/// Messages and segments by tenant, direction and delivery status, counted from the stored
/// messages.
#[utoipa::path(
    get,
    path = "/usage",
    tag = "tenants",
    operation_id = "usage",
    security(("api_key" = ["read"])),
    params(UsageParams),
    responses(
        (status = 200, description = "The counts.", body = Usage),
        (status = 400, description = "`invalid_request` with `errors` for `from` / `to` (not a \
            time, or `from` after `to`); `invalid_query`: a query that does not parse.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: a tenant-scoped key asking for another tenant.",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    key: ApiKey,
    Query(p): Query<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    // A tenant-scoped key counts only its tenant; asking for another is asking for nothing.
    let tenant = crate::policy::confine(&key, crate::policy::Action::Read, p.tenant_id)?;
    let to =
        p.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or_else(Utc::now);
    let from = p
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - Duration::days(30));
    if from > to {
        return Err(ApiError::Validation(vec![(
            "from",
            "must not be after to".into(),
        )]));
    }
    let rows = sqlx::query!(
        // Each message counts for the tenant it belonged to (a number's past stays its past
        // tenant's); as before, only messages linked to a conversation.
        r#"SELECT m.tenant_id, m.direction, m.delivery_status,
                  count(*) AS "messages!", COALESCE(sum(m.num_segments), 0)::bigint AS "segments!"
           FROM sms_messages m
           WHERE m.created_at >= $1 AND m.created_at < $2 AND m.conversation_id IS NOT NULL
             AND ($3::text IS NULL OR m.tenant_id = $3)
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"#,
        from,
        to,
        tenant
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Usage {
        from,
        to,
        tenant_id: tenant,
        rows: rows
            .into_iter()
            .map(|r| UsageRow {
                tenant_id: r.tenant_id,
                direction: r.direction,
                status: r.delivery_status,
                messages: r.messages,
                segments: r.segments,
            })
            .collect(),
    }))
}
