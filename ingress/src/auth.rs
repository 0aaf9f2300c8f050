//! API keys: `Authorization: Bearer <key>`. Only a SHA-256 of each key is stored; a key may carry
//! scopes and be confined to one tenant.

use axum::{extract::FromRequestParts, http::request::Parts};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{AppState, error::ApiError};

pub const SCOPES: &[&str] = &["read", "send", "admin"];

/// The caller behind a valid key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: uuid::Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    /// Some: the key sees only this tenant's data.
    pub tenant_id: Option<String>,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A problem with these scopes, if any.
pub fn scope_problem(scopes: &[String]) -> Option<String> {
    if scopes.is_empty() {
        return Some(format!("give at least one of {}", SCOPES.join(", ")));
    }
    if let Some(s) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Some(format!(
            "unknown scope {s:?}; scopes are {}",
            SCOPES.join(", ")
        ));
    }
    (scopes.len() > SCOPES.len()).then(|| format!("at most {} scopes", SCOPES.len()))
}

/// The scopes as stored: each once, in the order given.
pub fn distinct_scopes(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// A key just made: the key itself exists only here (only its hash is stored).
pub struct Issued {
    pub id: uuid::Uuid,
    pub key: String,
    pub prefix: String,
}

/// Creates a key that never expires; the key itself is returned once and never kept.
pub async fn create_key(
    pool: &PgPool,
    name: &str,
    scopes: &[String],
    tenant_id: Option<&str>,
) -> anyhow::Result<String> {
    Ok(issue(pool, name, scopes, tenant_id, None).await?.key)
}

/// Creates a key, optionally expiring at `expires_at`, and stores its hash.
pub async fn issue(
    pool: &PgPool,
    name: &str,
    scopes: &[String],
    tenant_id: Option<&str>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Issued> {
    if let Some(problem) = scope_problem(scopes) {
        anyhow::bail!("{problem}");
    }
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("sk_{}", hex::encode(secret));
    let prefix = key[..10].to_owned();
    let id = sqlx::query_scalar!(
        "INSERT INTO api_keys (name, key_hash, prefix, scopes, tenant_id, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        name,
        hash_key(&key),
        prefix,
        scopes,
        tenant_id,
        expires_at
    )
    .fetch_one(pool)
    .await?;
    Ok(Issued { id, key, prefix })
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let key = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        // Looking up by hash needs no secret comparison of our own: the index does an exact match
        // on a digest the caller cannot steer.
        lookup(&state.pool, key)
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}

/// The caller behind `key`, if it is a live key: not revoked, not expired. Revocation and expiry
/// are read on every call, so they take effect at once on every replica. Records the use (at most
/// once a minute per key, off the caller's path).
pub async fn lookup(pool: &PgPool, key: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    let Some(row) = sqlx::query!(
        r#"SELECT id, name, scopes, tenant_id,
                  last_used_at IS NULL OR last_used_at < now() - interval '1 minute' AS "stale!"
           FROM api_keys
           WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"#,
        hash_key(key)
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    if row.stale {
        touch(pool.clone(), row.id);
    }
    Ok(Some(ApiKey {
        id: row.id,
        name: row.name,
        scopes: row.scopes,
        tenant_id: row.tenant_id,
    }))
}

/// Records that key `id` was used now, in the background.
pub fn touch(pool: PgPool, id: uuid::Uuid) {
    tokio::spawn(async move {
        let touched = sqlx::query!("UPDATE api_keys SET last_used_at = now() WHERE id = $1", id)
            .execute(&pool)
            .await;
        if let Err(e) = touched {
            tracing::debug!(error = %e, "last_used_at not recorded");
        }
    });
}
