//! `/routes` (agent routes, not the HTTP router): which agent serves a tenant, a workflow type, or everyone else. Creating and
//! deleting need the `admin` scope; a tenant-scoped key sees only its tenant's route, and other
//! routes do not exist for it (404). Signing secrets are write-only.

use crate::extract::Path;
use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    AppState,
    auth::ApiKey,
    error::ApiError,
    policy::{self, Action, Owner},
};

/// Exactly one of `tenant_id`, `workflow_type` and `default: true`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    #[schema(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub workflow_type: Option<String>,
    #[serde(default)]
    pub default: bool,
    /// An http(s) URL the messages are POSTed to. It must not reach internal addresses
    /// (loopback, private, link-local, shared, multicast, metadata) unless the operator allows
    /// the network (`AGENT_ALLOWED_NETWORKS`); redirects are not followed.
    ///
    /// The pattern states the syntax: a name whose last label starts with a letter (a numeric
    /// last label would be read as an IPv4 address), or a dotted IPv4 address; a port up to 65535.
    #[schema(
        example = "https://agents.example.com/collections",
        min_length = 1,
        max_length = 2048,
        pattern = r"^https?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[!-~]*)?$"
    )]
    pub agent_url: String,
    /// 16 to 256 characters; signs each request to the agent (`X-SMS-Signature`). Write-only.
    #[schema(min_length = 16, max_length = 256, write_only)]
    pub signing_secret: String,
}

/// Everything but the secret.
impl std::fmt::Debug for NewRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRoute")
            .field("tenant_id", &self.tenant_id)
            .field("workflow_type", &self.workflow_type)
            .field("default", &self.default)
            .field("agent_url", &self.agent_url)
            .field("signing_secret", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub workflow_type: Option<String>,
    pub default: bool,
    pub agent_url: String,
}

/// Every route, or only a tenant's.
pub async fn all(pool: &sqlx::PgPool, tenant: Option<&str>) -> Result<Vec<RouteView>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id, tenant_id, workflow_type, is_default, agent_url FROM agent_routes
           WHERE $1::text IS NULL OR tenant_id = $1
           ORDER BY tenant_id NULLS LAST, workflow_type NULLS LAST"#,
        tenant
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RouteView {
            id: r.id,
            tenant_id: r.tenant_id,
            workflow_type: r.workflow_type,
            default: r.is_default,
            agent_url: r.agent_url,
        })
        .collect())
}

/// List routes
///
/// Signing secrets are never shown. A tenant-scoped key sees only its tenant's route.
#[utoipa::path(
    get,
    path = "/routes",
    tag = "routing",
    operation_id = "listRoutes",
    security(("api_key" = ["read"])),
    responses(
        (status = 200, description = "The routes.", body = Vec<RouteView>),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
) -> Result<Json<Vec<RouteView>>, ApiError> {
    let tenant = policy::confine(&key, Action::Read, None)?;
    Ok(Json(all(&state.pool, tenant.as_deref()).await?))
}

/// Field errors of a route, if any.
pub fn validate(
    tenant_id: Option<&str>,
    workflow_type: Option<&str>,
    default: bool,
    agent_url: &str,
    signing_secret: &str,
) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    let targets = tenant_id.is_some() as u8 + workflow_type.is_some() as u8 + default as u8;
    if targets != 1 {
        errors.push((
            "tenant_id",
            "give exactly one of tenant_id, workflow_type, default".to_owned(),
        ));
    }
    for (field, value) in [("tenant_id", tenant_id), ("workflow_type", workflow_type)] {
        if value.is_some_and(|v| v.is_empty() || v.chars().count() > MAX_NAME) {
            errors.push((field, format!("must be 1 to {MAX_NAME} characters")));
        }
    }
    match url::Url::parse(agent_url) {
        _ if agent_url.len() > MAX_URL => {
            errors.push(("agent_url", format!("must be at most {MAX_URL} characters")))
        }
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => errors.push(("agent_url", "must be an http(s) URL".to_owned())),
    }
    if signing_secret.len() < 16 || signing_secret.len() > MAX_SECRET {
        errors.push((
            "signing_secret",
            format!("must be 16 to {MAX_SECRET} characters"),
        ));
    }
    errors
}

/// Longest tenant id or workflow type.
pub const MAX_NAME: usize = 100;
/// Longest agent URL.
pub const MAX_URL: usize = 2048;
/// Longest signing secret.
pub const MAX_SECRET: usize = 256;

/// The fence's verdict on an agent URL (it must not reach internal addresses): a field error.
pub async fn fenced(
    fence: &shared::fence::Fence,
    agent_url: &str,
) -> Option<(&'static str, String)> {
    let url = url::Url::parse(agent_url).ok()?;
    fence.check_url(&url).await.err().map(|p| ("agent_url", p))
}

/// Saves a route, replacing the one for the same target; validates first (for the CLI).
pub async fn save(
    pool: &sqlx::PgPool,
    fence: &shared::fence::Fence,
    tenant_id: Option<&str>,
    workflow_type: Option<&str>,
    default: bool,
    agent_url: &str,
    signing_secret: &str,
) -> anyhow::Result<Uuid> {
    let mut errors = validate(tenant_id, workflow_type, default, agent_url, signing_secret);
    if errors.is_empty() {
        errors.extend(fenced(fence, agent_url).await);
    }
    if let Some((field, problem)) = errors.first() {
        anyhow::bail!("{field}: {problem}");
    }
    Ok(insert(
        pool,
        tenant_id,
        workflow_type,
        default,
        agent_url,
        signing_secret,
    )
    .await?)
}

async fn insert(
    pool: &sqlx::PgPool,
    tenant_id: Option<&str>,
    workflow_type: Option<&str>,
    default: bool,
    agent_url: &str,
    signing_secret: &str,
) -> Result<Uuid, sqlx::Error> {
    // One route per target: creating again replaces the agent, atomically (a data-modifying CTE
    // the INSERT does not read would run after it, so the two are statements of one transaction).
    let mut tx = pool.begin().await?;
    sqlx::query!(
        r#"DELETE FROM agent_routes
           WHERE ($1::text IS NOT NULL AND tenant_id = $1) OR ($2::text IS NOT NULL AND workflow_type = $2)
              OR ($3 AND is_default)"#,
        tenant_id,
        workflow_type,
        default
    )
    .execute(&mut *tx)
    .await?;
    let id = sqlx::query_scalar!(
        r#"INSERT INTO agent_routes (tenant_id, workflow_type, is_default, agent_url, signing_secret)
           VALUES ($1, $2, $3, $4, $5) RETURNING id"#,
        tenant_id,
        workflow_type,
        default,
        agent_url,
        signing_secret
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Create or replace a route
///
/// The route of a tenant, of a workflow type, or the default; creating one for a target that
/// has a route replaces it.
#[utoipa::path(
    post,
    path = "/routes",
    tag = "routing",
    operation_id = "createRoute",
    security(("api_key" = ["admin"])),
    request_body = NewRoute,
    responses(
        (status = 201, description = "Saved.", body = RouteView),
        (status = 400, description = "`malformed_body`: not JSON or an unknown field; \
            `invalid_request` with `errors` per field (`tenant_id`, `agent_url`, \
            `signing_secret`).", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: a tenant-scoped key naming another tenant.",
         body = crate::error::ErrorBody),
        (status = 409, description = "`route_exists`: a route for the same target was created \
            at the same time; retry.", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    key: ApiKey,
    body: Result<Json<NewRoute>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    policy::require(&key, Action::Administer)?;
    let Json(r) = body.map_err(|e| crate::extract::json_rejection(e, state.cfg.max_body_bytes))?;
    // A tenant's route is that tenant's; a default or workflow route is global.
    policy::authorize(
        &key,
        Action::Administer,
        Owner::config(r.tenant_id.as_deref()),
        "no such tenant",
    )?;
    let mut errors = validate(
        r.tenant_id.as_deref(),
        r.workflow_type.as_deref(),
        r.default,
        &r.agent_url,
        &r.signing_secret,
    );
    if errors.is_empty() {
        errors.extend(fenced(&state.cfg.common.agent_fence, &r.agent_url).await);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let id = insert(
        &state.pool,
        r.tenant_id.as_deref(),
        r.workflow_type.as_deref(),
        r.default,
        &r.agent_url,
        &r.signing_secret,
    )
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

/// Delete a route
#[utoipa::path(
    delete,
    path = "/routes/{id}",
    tag = "routing",
    operation_id = "deleteRoute",
    security(("api_key" = ["admin"])),
    params(("id" = Uuid, Path, description = "The route's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`invalid_path`: `id` is not a UUID.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no such route (or another tenant's).",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    key: ApiKey,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    policy::require(&key, Action::Administer)?;
    let owner = sqlx::query_scalar!("SELECT tenant_id FROM agent_routes WHERE id = $1", id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound("no such route"))?;
    policy::authorize(
        &key,
        Action::Administer,
        Owner::config(owner.as_deref()),
        "no such route",
    )?;
    if !remove(&state.pool, id).await? {
        return Err(ApiError::NotFound("no such route"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a route; false when there was none.
pub async fn remove(pool: &sqlx::PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM agent_routes WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_signing_secret() {
        let r: NewRoute = serde_json::from_value(serde_json::json!({
            "default": true, "agent_url": "http://a", "signing_secret": "sup3r-s3cret-value"
        }))
        .unwrap();
        assert!(!format!("{r:?}").contains("sup3r-s3cret-value"));
    }
}
