//! `/tenants/{id}/phones`: the numbers a tenant may text from (kept in E.164 in
//! `tenant_profiles.phone_numbers`) and the one they used last. `admin` scope to change; a
//! tenant-scoped key sees only its own tenant (404 for others). Workers cache lookups for
//! `TENANT_CACHE_TTL_SECS`, so a change reaches routing within that time.

use crate::extract::Path;
use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use shared::phone;

use crate::{
    AppState,
    auth::ApiKey,
    error::ApiError,
    policy::{self, Action, Owner},
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Phones {
    pub tenant_id: String,
    /// E.164.
    #[schema(example = json!(["+15551230001"]))]
    pub phone_numbers: Vec<String>,
    /// The number the tenant texted from last: the default destination of sends to them.
    pub last_used_phone_number: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPhone {
    /// Any written form (digits and `+ ( ) . - /` and spaces); stored in E.164. It must be a
    /// valid number (libphonenumber's metadata).
    #[schema(
        example = "(415) 555-0199",
        min_length = 1,
        max_length = 64,
        pattern = r"^[0-9+() ./-]*[0-9][0-9+() ./-]*$"
    )]
    pub phone_number: String,
    /// The tenant's IANA time zone (`America/Chicago`), for quiet hours; kept when omitted.
    #[schema(example = "America/Chicago")]
    pub timezone: Option<String>,
}

async fn load(state: &AppState, tenant_id: &str) -> Result<Phones, ApiError> {
    let row = sqlx::query!(
        "SELECT phone_numbers, last_used_phone_number FROM tenant_profiles WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("no such tenant"))?;
    Ok(Phones {
        tenant_id: tenant_id.to_owned(),
        phone_numbers: serde_json::from_value(row.phone_numbers).unwrap_or_default(),
        last_used_phone_number: row.last_used_phone_number,
    })
}

/// The tenant the directory gives `number`, by its rule (shared::tenants::owners_of_each): the
/// first-listed one. The policy then decides what a key may do with the number.
pub(crate) async fn owner_of(
    conn: &mut sqlx::PgConnection,
    number: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT tenant_id FROM tenant_profiles WHERE phone_numbers ? $1 ORDER BY created_at, tenant_id LIMIT 1",
        number
    )
    .fetch_optional(conn)
    .await
}

/// A tenant's phone numbers
#[utoipa::path(
    get,
    path = "/tenants/{tenant_id}/phones",
    tag = "tenants",
    operation_id = "listTenantPhones",
    security(("api_key" = ["read"])),
    params(("tenant_id" = String, Path, example = "t-1001")),
    responses(
        (status = 200, description = "The tenant's numbers.", body = Phones),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no such tenant (or another tenant, for a \
            tenant-scoped key).", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
    Path(tenant_id): Path<String>,
) -> Result<Json<Phones>, ApiError> {
    policy::authorize(
        &key,
        Action::Read,
        Owner::Tenant(&tenant_id),
        "no such tenant",
    )?;
    Ok(Json(load(&state, &tenant_id).await?))
}

/// Add a phone number to a tenant
///
/// Creates the tenant's profile if needed; a number already listed is not added twice. A number
/// has one owner: one another tenant lists is refused to tenant-scoped keys (409) and moved by an
/// unscoped admin key. Workers see the change within a second.
#[utoipa::path(
    post,
    path = "/tenants/{tenant_id}/phones",
    tag = "tenants",
    operation_id = "addTenantPhone",
    security(("api_key" = ["admin"])),
    params(("tenant_id" = String, Path, example = "t-1001")),
    request_body = AddPhone,
    responses(
        (status = 201, description = "The tenant's numbers now.", body = Phones),
        (status = 400, description = "`malformed_body`: not JSON or an unknown field; \
            `invalid_request` with `errors.phone_number`.", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: another tenant, for a tenant-scoped key.",
         body = crate::error::ErrorBody),
        (status = 409, description = "`number_claimed`: another tenant lists this number (only \
            an admin key without a tenant can move it).", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn add(
    State(state): State<AppState>,
    key: ApiKey,
    Path(tenant_id): Path<String>,
    body: Result<Json<AddPhone>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Phones>), ApiError> {
    policy::authorize(
        &key,
        Action::Administer,
        Owner::Tenant(&tenant_id),
        "no such tenant",
    )?;
    let Json(body) =
        body.map_err(|e| crate::extract::json_rejection(e, state.cfg.max_body_bytes))?;
    let e164 =
        phone::normalize(&body.phone_number, state.cfg.common.default_region).map_err(|e| {
            ApiError::Validation(vec![(
                "phone_number",
                format!("is not a valid phone number ({e})"),
            )])
        })?;
    let timezone = match body.timezone.as_deref() {
        None => None,
        Some(name) => Some(
            shared::quiet_hours::parse_zone(name)
                .ok_or_else(|| {
                    ApiError::Validation(vec![("timezone", "not an IANA time zone".into())])
                })?
                .name(),
        ),
    };
    let mut tx = state.pool.begin().await?;
    claim(&mut tx, &key, &tenant_id, e164.as_str()).await?;
    // Created if new; a number already listed is not added twice.
    sqlx::query!(
        r#"INSERT INTO tenant_profiles (tenant_id, phone_numbers, timezone) VALUES ($1, jsonb_build_array($2::text), $3)
           ON CONFLICT (tenant_id) DO UPDATE SET
               phone_numbers = CASE WHEN tenant_profiles.phone_numbers ? $2 THEN tenant_profiles.phone_numbers
                                    ELSE tenant_profiles.phone_numbers || jsonb_build_array($2::text) END,
               timezone = COALESCE($3, tenant_profiles.timezone),
               updated_at = now()"#,
        tenant_id,
        e164.as_str(),
        timezone
    )
    .execute(&mut *tx)
    .await?;
    crate::error::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(load(&state, &tenant_id).await?)))
}

/// A number has one owner. Listing it for `tenant_id` while other tenants list it is a claim on
/// their number: the policy refuses it to a tenant-scoped key (409 `number_claimed`, naming no
/// tenant) and lets an unscoped admin move it, which takes it off the others' lists (the
/// directory change log notes both sides; workers drop it from their caches within a second).
/// Serialised per number, so two tenants adding it at once cannot both get it.
async fn claim(
    tx: &mut sqlx::PgConnection,
    key: &ApiKey,
    tenant_id: &str,
    e164: &str,
) -> Result<(), ApiError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext('tenant-number:' || $1))",
        e164
    )
    .execute(&mut *tx)
    .await?;
    let others = sqlx::query_scalar!(
        "SELECT tenant_id FROM tenant_profiles WHERE phone_numbers ? $1 AND tenant_id <> $2 ORDER BY tenant_id FOR UPDATE",
        e164,
        tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    for other in &others {
        policy::authorize(
            key,
            Action::ClaimNumber,
            Owner::Tenant(other),
            "no such tenant",
        )?;
    }
    if others.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"UPDATE tenant_profiles SET phone_numbers = phone_numbers - $1::text,
               last_used_phone_number = NULLIF(last_used_phone_number, $1), updated_at = now()
           WHERE tenant_id = ANY($2)"#,
        e164,
        &others
    )
    .execute(&mut *tx)
    .await?;
    tracing::info!(
        number = %phone::mask(e164),
        to = tenant_id,
        from = ?others,
        key = %key.name,
        "number moved between tenants"
    );
    Ok(())
}

/// Remove a phone number from a tenant
#[utoipa::path(
    delete,
    path = "/tenants/{tenant_id}/phones/{phone_number}",
    tag = "tenants",
    operation_id = "removeTenantPhone",
    security(("api_key" = ["admin"])),
    params(
        ("tenant_id" = String, Path, example = "t-1001"),
        ("phone_number" = String, Path, description = "Any written form (URL-encode it).",
         example = "+15551230099"),
    ),
    responses(
        (status = 200, description = "The tenant's numbers now.", body = Phones),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no such tenant, the number is not the \
            tenant's, or another tenant for a tenant-scoped key.", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    key: ApiKey,
    Path((tenant_id, number)): Path<(String, String)>,
) -> Result<Json<Phones>, ApiError> {
    policy::authorize(
        &key,
        Action::Administer,
        Owner::Tenant(&tenant_id),
        "no such tenant",
    )?;
    let e164 = phone::normalize(&number, state.cfg.common.default_region)
        .map(|e| e.as_str().to_owned())
        .unwrap_or(number);
    let done = sqlx::query!(
        r#"UPDATE tenant_profiles SET phone_numbers = phone_numbers - $2::text,
               last_used_phone_number = NULLIF(last_used_phone_number, $2), updated_at = now()
           WHERE tenant_id = $1 AND phone_numbers ? $2"#,
        tenant_id,
        e164
    )
    .execute(&state.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("no such number for this tenant"));
    }
    Ok(Json(load(&state, &tenant_id).await?))
}
