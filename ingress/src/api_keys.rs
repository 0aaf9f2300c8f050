//! `/api-keys`: the key lifecycle (admin scope). List (name, prefix, scopes, tenant, created, last
//! used, expiry), create with an optional expiry (the key is shown once), revoke. A tenant-scoped
//! admin key manages only its tenant's keys; others do not exist for it (404). Revocation and
//! expiry take effect on the next request on every replica: each request reads its key's row.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{self, ApiKey},
    error::ApiError,
    extract::Path,
    policy::{self, Action, Owner},
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    /// The key's first 10 characters (`sk_` and 7 hex digits), to recognise it.
    #[schema(example = "sk_3f9a0c1")]
    pub prefix: String,
    pub scopes: Vec<String>,
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired` or `revoked`.
    #[schema(example = "active")]
    pub state: &'static str,
}

/// What a key is now.
pub fn state_of(
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> &'static str {
    match (revoked_at, expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= now => "expired",
        _ => "active",
    }
}

/// Every key, or only a tenant's, newest first.
pub async fn all(pool: &sqlx::PgPool, tenant: Option<&str>) -> Result<Vec<KeyView>, sqlx::Error> {
    views(pool, tenant, None).await
}

/// One key (of `tenant` only, when given).
async fn one(
    pool: &sqlx::PgPool,
    tenant: Option<&str>,
    id: Uuid,
) -> Result<Option<KeyView>, sqlx::Error> {
    Ok(views(pool, tenant, Some(id)).await?.pop())
}

async fn views(
    pool: &sqlx::PgPool,
    tenant: Option<&str>,
    id: Option<Uuid>,
) -> Result<Vec<KeyView>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id, name, prefix, scopes, tenant_id, created_at, last_used_at, expires_at, revoked_at, now() AS "now!"
           FROM api_keys WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR id = $2)
           ORDER BY created_at DESC, id"#,
        tenant,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyView {
            state: state_of(r.revoked_at, r.expires_at, r.now),
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            scopes: r.scopes,
            tenant_id: r.tenant_id,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        })
        .collect())
}

/// Revokes a key (only of `tenant` when given); revoking again keeps the first time. None: no
/// such key.
pub async fn revoke(
    pool: &sqlx::PgPool,
    id: Uuid,
    tenant: Option<&str>,
) -> Result<Option<KeyView>, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) RETURNING id",
        id,
        tenant
    )
    .fetch_optional(pool)
    .await?;
    if done.is_none() {
        return Ok(None);
    }
    one(pool, tenant, id).await
}

/// List API keys
///
/// Keys themselves are never shown (only their prefix). A tenant-scoped key sees only its
/// tenant's keys.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "keys",
    operation_id = "listApiKeys",
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The keys, newest first.", body = Vec<KeyView>),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let tenant = policy::confine(&key, Action::Administer, None)?;
    Ok(Json(all(&state.pool, tenant.as_deref()).await?))
}

/// A key's scope.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used: the body keeps the strings it is given
enum ScopeName {
    Read,
    Send,
    Admin,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Who uses it, e.g. `collections-service`; 1 to 100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// `read`, `send`, `admin` (which implies the others); at most 3, a repeated one counted
    /// once. Default `["read"]`.
    #[serde(default = "read_only")]
    #[schema(min_items = 1, max_items = 3, inline, value_type = Vec<ScopeName>)]
    pub scopes: Vec<String>,
    /// Confines the key to one tenant's data. A tenant-scoped admin key may create keys only for
    /// its own tenant (the default for it).
    #[schema(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
    /// RFC 3339; after it the key is refused. Absent: never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

fn read_only() -> Vec<String> {
    vec!["read".to_owned()]
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key: shown this once, only its SHA-256 is stored.
    #[schema(example = "sk_3f9a0c1e...")]
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// Create an API key
///
/// The answer carries the key once; store it. `expires_at` makes it expire.
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "keys",
    operation_id = "createApiKey",
    security(("api_key" = ["admin"])),
    request_body = NewKey,
    responses(
        (status = 201, description = "Created; `key` is shown only here.", body = CreatedKey),
        (status = 400, description = "`malformed_body`, or `invalid_request` with `errors` per \
            field (`name`, `scopes`, `expires_at`).", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: a tenant-scoped key naming another tenant.",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    key: ApiKey,
    body: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    policy::require(&key, Action::Administer)?;
    let Json(new) =
        body.map_err(|e| crate::extract::json_rejection(e, state.cfg.max_body_bytes))?;
    // A tenant-scoped admin makes keys of its own tenant (the default for it); a key without a
    // tenant is global, for unscoped admins only.
    let tenant = match (&key.tenant_id, new.tenant_id.clone()) {
        (Some(own), None) => Some(own.clone()),
        (_, asked) => asked,
    };
    policy::authorize(
        &key,
        Action::Administer,
        Owner::config(tenant.as_deref()),
        "no such tenant",
    )?;
    let mut errors = Vec::new();
    if new.name.trim().is_empty() || new.name.chars().count() > 100 {
        errors.push(("name", "must be 1 to 100 characters".to_owned()));
    }
    if tenant
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.chars().count() > 100)
    {
        errors.push(("tenant_id", "must be 1 to 100 characters".to_owned()));
    }
    if let Some(problem) = auth::scope_problem(&new.scopes) {
        errors.push(("scopes", problem));
    }
    if new.expires_at.is_some_and(|e| e <= Utc::now()) {
        errors.push(("expires_at", "must be in the future".to_owned()));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let issued = auth::issue(
        &state.pool,
        new.name.trim(),
        &auth::distinct_scopes(&new.scopes),
        tenant.as_deref(),
        new.expires_at,
    )
    .await
    .map_err(|e| match e.downcast::<sqlx::Error>() {
        // NUL in a text (400 invalid_text), an outage (503): as for every statement.
        Ok(db) => ApiError::from(db),
        Err(e) => ApiError::Internal(e),
    })?;
    tracing::info!(key_id = %issued.id, prefix = %issued.prefix, by = %key.name, "API key created");
    let view = one(&state.pool, tenant.as_deref(), issued.id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("created key not found")))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: issued.key,
            view,
        }),
    ))
}

/// Revoke an API key
///
/// Refused from the next request on, on every replica. Revoking again answers the same.
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "keys",
    operation_id = "revokeApiKey",
    security(("api_key" = ["admin"])),
    params(("id" = Uuid, Path, description = "The key's id.")),
    responses(
        (status = 200, description = "Revoked.", body = KeyView),
        (status = 400, description = "`invalid_path`: `id` is not a UUID.", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no such key (or another tenant's).", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    key: ApiKey,
    Path(id): Path<Uuid>,
) -> Result<Json<KeyView>, ApiError> {
    policy::require(&key, Action::Administer)?;
    let owner = sqlx::query!("SELECT tenant_id FROM api_keys WHERE id = $1", id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound("no such key"))?
        .tenant_id;
    policy::authorize(
        &key,
        Action::Administer,
        Owner::config(owner.as_deref()),
        "no such key",
    )?;
    let revoked = revoke(&state.pool, id, None)
        .await?
        .ok_or(ApiError::NotFound("no such key"))?;
    tracing::info!(key_id = %id, by = %key.name, "API key revoked");
    Ok(Json(revoked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_revoked_expired_or_active() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let table = [
            (None, None, "active"),
            (None, Some(now + hour), "active"),
            (None, Some(now), "expired"),
            (None, Some(now - hour), "expired"),
            (Some(now), None, "revoked"),
            (Some(now - hour), Some(now - hour), "revoked"),
        ];
        for (revoked, expires, want) in table {
            assert_eq!(
                state_of(revoked, expires, now),
                want,
                "{revoked:?} {expires:?}"
            );
        }
    }
}
