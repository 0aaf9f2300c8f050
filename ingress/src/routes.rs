//! `/routes`: which agent serves a tenant, a workflow type, or everyone else. Creating and
//! deleting need the `admin` scope; a tenant-scoped key sees only its tenant's route, and other
//! routes do not exist for it (404). Signing secrets are write-only.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{AppState, auth::ApiKey, error::ApiError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    pub tenant_id: Option<String>,
    pub workflow_type: Option<String>,
    #[serde(default)]
    pub default: bool,
    pub agent_url: String,
    pub signing_secret: String,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub workflow_type: Option<String>,
    pub default: bool,
    pub agent_url: String,
}

pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
) -> Result<Json<Vec<RouteView>>, ApiError> {
    key.require("read")?;
    let rows = sqlx::query!(
        r#"SELECT id, tenant_id, workflow_type, is_default, agent_url FROM agent_routes
           WHERE $1::text IS NULL OR tenant_id = $1
           ORDER BY tenant_id NULLS LAST, workflow_type NULLS LAST"#,
        key.tenant_id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| RouteView {
                id: r.id,
                tenant_id: r.tenant_id,
                workflow_type: r.workflow_type,
                default: r.is_default,
                agent_url: r.agent_url,
            })
            .collect(),
    ))
}

pub async fn create(
    State(state): State<AppState>,
    key: ApiKey,
    body: Result<Json<NewRoute>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    key.require("admin")?;
    let Json(r) = body.map_err(|e| ApiError::bad_request("malformed_body", e.body_text()))?;
    let mut errors = Vec::new();
    let targets = r.tenant_id.is_some() as u8 + r.workflow_type.is_some() as u8 + r.default as u8;
    if targets != 1 {
        errors.push((
            "tenant_id",
            "give exactly one of tenant_id, workflow_type, default".to_owned(),
        ));
    }
    match url::Url::parse(&r.agent_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => errors.push(("agent_url", "must be an http(s) URL".to_owned())),
    }
    if r.signing_secret.len() < 16 {
        errors.push((
            "signing_secret",
            "must be at least 16 characters".to_owned(),
        ));
    }
    if let (Some(own), Some(t)) = (&key.tenant_id, &r.tenant_id)
        && own != t
    {
        return Err(ApiError::NotFound("no such tenant"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // One route per target: creating again replaces the agent.
    let id = sqlx::query_scalar!(
        r#"WITH gone AS (
               DELETE FROM agent_routes
               WHERE ($1::text IS NOT NULL AND tenant_id = $1) OR ($2::text IS NOT NULL AND workflow_type = $2)
                  OR ($3 AND is_default)
           )
           INSERT INTO agent_routes (tenant_id, workflow_type, is_default, agent_url, signing_secret)
           VALUES ($1, $2, $3, $4, $5) RETURNING id"#,
        r.tenant_id,
        r.workflow_type,
        r.default,
        r.agent_url,
        r.signing_secret
    )
    .fetch_one(&state.pool)
    .await;
    let id = match id {
        Ok(id) => id,
        // A concurrent create for the same target: the unique index keeps one.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            return Err(ApiError::Conflict {
                code: "route_exists",
                detail: "a route for this target was created at the same time; retry".into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(route_id = %id, tenant_id = ?r.tenant_id, workflow_type = ?r.workflow_type, default = r.default, "route saved");
    Ok((
        StatusCode::CREATED,
        Json(RouteView {
            id,
            tenant_id: r.tenant_id,
            workflow_type: r.workflow_type,
            default: r.default,
            agent_url: r.agent_url,
        }),
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    key: ApiKey,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    key.require("admin")?;
    let done = sqlx::query!(
        "DELETE FROM agent_routes WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        id,
        key.tenant_id
    )
    .execute(&state.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("no such route"));
    }
    Ok(StatusCode::NO_CONTENT)
}
