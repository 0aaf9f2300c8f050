//! `GET /usage?tenant_id=&from=&to=`: messages and segments per tenant, by direction and status,
//! counted from the stored messages themselves (no second source of truth).

use axum::{
    Json,
    extract::{Query, State},
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{AppState, auth::ApiKey, error::ApiError};

#[derive(Debug, Deserialize)]
pub struct UsageParams {
    pub tenant_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UsageRow {
    pub tenant_id: Option<String>,
    pub direction: String,
    pub status: String,
    pub messages: i64,
    pub segments: i64,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tenant_id: Option<String>,
    pub rows: Vec<UsageRow>,
}

fn parse_time(field: &'static str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| ApiError::Validation(vec![(field, "must be RFC 3339 or YYYY-MM-DD".into())]))
}

pub async fn usage(
    State(state): State<AppState>,
    key: ApiKey,
    Query(p): Query<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    key.require("read")?;
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
    // A tenant-scoped key counts only its tenant; asking for another is asking for nothing.
    let tenant = match (&key.tenant_id, p.tenant_id) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError::NotFound("no such tenant"));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let rows = sqlx::query!(
        r#"SELECT c.tenant_id, m.direction, m.delivery_status,
                  count(*) AS "messages!", COALESCE(sum(m.num_segments), 0)::bigint AS "segments!"
           FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id
           WHERE m.created_at >= $1 AND m.created_at < $2 AND ($3::text IS NULL OR c.tenant_id = $3)
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
