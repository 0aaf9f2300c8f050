//! `POST /sms/send`: validate, refuse opted-out recipients, link the conversation, and store the
//! outbound message with its send job in one transaction; 202 with the carrier's segment count.
//! An `Idempotency-Key` makes a retried request return the first answer and send once.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::{
    delivery::{self, CancelRefused},
    outbound::{self, NewOutbound, Refused, Schedule, ScheduleReason},
    phone,
    twilio::status::UnknownStatus,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    AppState,
    auth::ApiKey,
    error::ApiError,
    policy::{self, Action, Owner},
};

pub const MAX_MEDIA: usize = 10;

/// An http(s) URL of a media file (the schema of `media_urls`' items).
struct MediaUrl;

impl utoipa::PartialSchema for MediaUrl {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$",
            ))
            .max_length(Some(2048))
            .into()
    }
}

impl utoipa::ToSchema for MediaUrl {}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The recipient in any written form, read as libphonenumber reads it for DEFAULT_REGION
    /// (`+`, `011` and a national `1` as it would); it must be a valid number that takes texts.
    /// Refused with a reason: `not a valid number` (letters included: never keypad digits),
    /// `not a mobile/fixed-line number we can text`, `short codes cannot be texted`.
    #[schema(example = "(415) 555-2671", required = true, value_type = String, min_length = 1, max_length = 64, pattern = r"^[0-9+() ./-]*[0-9][0-9+() ./-]*$")]
    pub to: Option<String>,
    /// At most 1600 characters; required unless `media_urls` is given.
    #[schema(example = "Hola Maria, su recibo está listo.", max_length = 1600)]
    pub body: Option<String>,
    /// Send on this conversation (it must be the recipient's).
    pub conversation_id: Option<Uuid>,
    /// Stored on the conversation; at most 200 characters.
    #[schema(example = "collections", max_length = 200)]
    pub workflow_type: Option<String>,
    /// Stored on the conversation; at most 200 characters.
    #[schema(max_length = 200)]
    pub workflow_id: Option<String>,
    /// At most 10 http(s) URLs (MMS).
    #[schema(max_items = 10, value_type = Option<Vec<MediaUrl>>)]
    pub media_urls: Option<Vec<String>>,
    /// Hand it to Twilio at this time (RFC 3339, at most 35 days ahead); stored `scheduled`
    /// until then and cancelable with `DELETE /sms/{message_id}`. A time already past sends now.
    #[schema(example = "2026-12-02T15:00:00Z")]
    pub send_at: Option<String>,
    /// Send even inside quiet hours (QUIET_HOURS_WORKFLOWS); recorded on the message.
    pub quiet_hours_override: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SendResponse {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// `pending`: stored with its send job; `scheduled`: stored, handed over at `scheduled_for`.
    #[schema(example = "pending")]
    pub status: String,
    /// Segments carriers will bill: 160/153 GSM-7 septets or 70/67 UTF-16 units each.
    #[schema(example = 1)]
    pub segments: u32,
    /// `GSM-7` or `UCS-2`.
    #[schema(example = "UCS-2")]
    pub encoding: String,
    /// When a `scheduled` message will be handed to Twilio: the requested `send_at`, or the
    /// next moment inside quiet hours at the recipient's location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    /// `requested` or `quiet_hours`: why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_reason: Option<String>,
}

struct Valid {
    to: phone::Recipient,
    body: String,
    media_urls: Vec<String>,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How far ahead a send may be scheduled.
pub const MAX_SCHEDULE_DAYS: i64 = 35;

fn validate(req: &SendRequest, region: phonenumber::country::Id) -> Result<Valid, ApiError> {
    let mut errors: Vec<(&'static str, String)> = Vec::new();
    let to = match req.to.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push(("to", "is required".into()));
            None
        }
        Some(raw) => match phone::recipient(raw, region) {
            Ok(to) => Some(to),
            Err(why) => {
                errors.push(("to", why.to_string()));
                None
            }
        },
    };
    let media_urls = req.media_urls.clone().unwrap_or_default();
    if media_urls.len() > MAX_MEDIA {
        errors.push(("media_urls", format!("at most {MAX_MEDIA} URLs")));
    }
    if let Some(bad) = media_urls
        .iter()
        .find(|u| url::Url::parse(u).map_or(true, |p| !matches!(p.scheme(), "http" | "https")))
    {
        errors.push(("media_urls", format!("not an http(s) URL: {bad:?}")));
    }
    let body = req.body.clone().unwrap_or_default();
    if body.trim().is_empty() && media_urls.is_empty() {
        errors.push(("body", "must not be empty".into()));
    }
    if let Err(too_long) = outbound::check_body(&body) {
        errors.push(("body", too_long.to_string()));
    }
    for (field, value) in [
        ("workflow_type", &req.workflow_type),
        ("workflow_id", &req.workflow_id),
    ] {
        if value.as_ref().is_some_and(|v| v.chars().count() > 200) {
            errors.push((field, "at most 200 characters".into()));
        }
    }
    let send_at = match req
        .send_at
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Err(_)) => {
            errors.push(("send_at", "must be an RFC 3339 time with its offset".into()));
            None
        }
        Some(Ok(at)) if at > chrono::Utc::now() + chrono::Duration::days(MAX_SCHEDULE_DAYS) => {
            errors.push(("send_at", format!("at most {MAX_SCHEDULE_DAYS} days ahead")));
            None
        }
        Some(Ok(at)) => Some(at.with_timezone(&chrono::Utc)),
    };
    match (to, errors.is_empty()) {
        (Some(to), true) => Ok(Valid {
            to,
            body,
            media_urls,
            send_at,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().map(str::trim).map_err(|_| {
        ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
    })?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Send an SMS
///
/// Validates, refuses opted-out recipients, links the conversation, and stores the outbound
/// message with its send job in one transaction. A send to a conversation with an inbound message
/// in the last 30 minutes is a reply and goes ahead of bulk sends. With `Idempotency-Key`, a
/// retried identical request gets the first answer again and is sent once.
#[utoipa::path(
    post,
    path = "/sms/send",
    tag = "messages",
    operation_id = "sendSms",
    security(("api_key" = ["send"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
         pattern = "^[\\x20-\\x7E]+$",
         description = "1 to 255 ASCII characters, per API key. The same key with the same \
             request answers the first answer again; with a different request, 422."),
    ),
    request_body = SendRequest,
    responses(
        (status = 202, description = "Accepted: stored and queued for sending.", body = SendResponse),
        (status = 400, description = "`malformed_body`: not JSON or an unknown field; \
            `invalid_request` with `errors` per field (`to`, `body`, `media_urls`, \
            `workflow_type`, `workflow_id`); `invalid_idempotency_key`.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: `conversation_id` unknown (or another \
            tenant's), or, for a tenant-scoped key, a recipient that is not its tenant's.",
         body = crate::error::ErrorBody),
        (status = 409, description = "`recipient_opted_out`: the recipient sent STOP (or Twilio \
            refused an earlier send with 21610); `idempotency_key_in_use`: the first request with \
            this key is still being processed.", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES.",
         body = crate::error::ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the key was used with a different \
            request; `conversation_mismatch`: the conversation belongs to another number; \
            `no_allowed_time`: quiet hours apply and no moment is inside them in every time \
            zone the recipient may be in.",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn send(
    State(state): State<AppState>,
    key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    policy::require(&key, Action::Send)?;
    let body = body.map_err(|e| crate::extract::body_rejection(e, state.cfg.max_body_bytes))?;
    let req: SendRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("malformed_body", format!("invalid JSON body: {e}")))?;
    let idem = idempotency_key(&headers)?;
    let valid = validate(&req, state.cfg.common.default_region)?;
    let request_hash = hex::encode(Sha256::digest(serde_json::to_vec(&req).unwrap_or_default()));

    let mut tx = state.pool.begin().await?;
    if let Some(idem) = &idem
        && let Some(first) = first_answer(&mut tx, &key, idem, &request_hash).await?
    {
        return Ok(first);
    }
    let owner = crate::tenants::owner_of(&mut tx, valid.to.as_str()).await?;
    policy::authorize(
        &key,
        Action::Send,
        Owner::record(owner.as_deref()),
        "no such recipient",
    )?;
    let conversation_id = conversation(&mut tx, &key, &req, valid.to.as_str()).await?;
    let msg = NewOutbound {
        conversation_id,
        to: &valid.to,
        body: &valid.body,
        media_urls: &valid.media_urls,
        schedule: valid.send_at.map(|at| Schedule {
            at,
            reason: ScheduleReason::Requested,
        }),
        quiet_hours: Some(&state.cfg.quiet_hours),
        quiet_hours_override: req.quiet_hours_override.unwrap_or(false),
        opt_out_confirmation: false,
    };
    let created = match outbound::create(&mut tx, &state.cfg.twilio.sender(), &msg).await? {
        Ok(created) => created,
        Err(refused @ Refused::OptedOut(_)) => {
            return Err(ApiError::Conflict {
                code: "recipient_opted_out",
                detail: refused.to_string(),
            });
        }
        Err(refused @ Refused::NoAllowedTime) => {
            return Err(ApiError::Unprocessable {
                code: "no_allowed_time",
                detail: refused.to_string(),
            });
        }
        Err(refused @ Refused::BodyTooLong { .. }) => {
            return Err(ApiError::Validation(vec![("body", refused.to_string())]));
        }
    };
    let response = serde_json::to_value(SendResponse {
        message_id: created.message_id,
        conversation_id,
        status: created.status.as_str().into(),
        segments: created.segments,
        encoding: created.encoding.as_str().into(),
        scheduled_for: created.scheduled_for,
        schedule_reason: created.schedule_reason.map(|r| r.as_str().to_owned()),
    })
    .expect("plain data serialises");
    if let Some(idem) = &idem {
        sqlx::query!(
            "UPDATE idempotency_keys SET status_code = 202, response = $3 WHERE api_key_id = $1 AND key = $2",
            key.id,
            idem,
            response
        )
        .execute(&mut *tx)
        .await?;
    }
    crate::error::commit(tx).await?;
    tracing::info!(message_id = %created.message_id, %conversation_id, to = %valid.to.masked(),
        segments = created.segments, reply = created.is_reply, key = %key.name, "outbound message accepted");
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// Claims the Idempotency-Key for this request; Some: the answer to give instead (the first
/// request's, or why it cannot be given).
async fn first_answer(
    tx: &mut PgConnection,
    key: &ApiKey,
    idem: &str,
    request_hash: &str,
) -> Result<Option<(StatusCode, Json<Value>)>, ApiError> {
    let fresh = sqlx::query_scalar!(
        r#"INSERT INTO idempotency_keys (api_key_id, key, request_hash) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING RETURNING 1 AS "one!""#,
        key.id,
        idem,
        request_hash
    )
    .fetch_optional(&mut *tx)
    .await?;
    if fresh.is_some() {
        return Ok(None);
    }
    // The first request with this key committed (the insert above waited for it).
    let first = sqlx::query!(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE api_key_id = $1 AND key = $2",
        key.id,
        idem
    )
    .fetch_one(&mut *tx)
    .await?;
    if first.request_hash != request_hash {
        return Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used with a different request".into(),
        });
    }
    let (Some(code), Some(response)) = (first.status_code, first.response) else {
        return Err(ApiError::Conflict {
            code: "idempotency_key_in_use",
            detail: "a request with this Idempotency-Key is still being processed".into(),
        });
    };
    let status = StatusCode::from_u16(code as u16).unwrap_or(StatusCode::ACCEPTED);
    Ok(Some((status, Json(response))))
}

/// The conversation to send on: the one named (it must be the recipient's and visible to the
/// key), else the recipient's, created when new; the workflow fields given are stored on it.
async fn conversation(
    tx: &mut PgConnection,
    key: &ApiKey,
    req: &SendRequest,
    to: &str,
) -> Result<Uuid, ApiError> {
    let Some(id) = req.conversation_id else {
        return Ok(sqlx::query_scalar!(
            // The number's owner is the directory's (its first-listed tenant, shared::tenants::
            // owners' rule), never the sending key's: attribution changes only through the
            // directory. A tenant-scoped key sends only to its own numbers (own_recipient).
            r#"INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id, workflow_type, workflow_id)
               VALUES ($1, $2, (SELECT tenant_id FROM tenant_profiles WHERE phone_numbers ? $1
                                ORDER BY created_at, tenant_id LIMIT 1), $3, $4)
               ON CONFLICT (phone_number) DO UPDATE SET
                   tenant_id = COALESCE(EXCLUDED.tenant_id, sms_conversations.tenant_id),
                   workflow_type = COALESCE(EXCLUDED.workflow_type, sms_conversations.workflow_type),
                   workflow_id = COALESCE(EXCLUDED.workflow_id, sms_conversations.workflow_id),
                   updated_at = now()
               RETURNING id"#,
            to,
            req.to.as_deref().unwrap_or_default().trim(),
            req.workflow_type,
            req.workflow_id
        )
        .fetch_one(&mut *tx)
        .await?);
    };
    let conv = sqlx::query!(
        "SELECT phone_number, tenant_id FROM sms_conversations WHERE id = $1",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("no such conversation"))?;
    policy::authorize(
        key,
        Action::Send,
        Owner::record(conv.tenant_id.as_deref()),
        "no such conversation",
    )?;
    if conv.phone_number != to {
        return Err(ApiError::Unprocessable {
            code: "conversation_mismatch",
            detail: "the conversation belongs to another phone number".into(),
        });
    }
    if req.workflow_type.is_some() || req.workflow_id.is_some() {
        sqlx::query!(
            r#"UPDATE sms_conversations SET workflow_type = COALESCE($2, workflow_type),
                   workflow_id = COALESCE($3, workflow_id), updated_at = now() WHERE id = $1"#,
            id,
            req.workflow_type,
            req.workflow_id
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(id)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Canceled {
    pub message_id: Uuid,
    /// `canceled`.
    #[schema(example = "canceled")]
    pub status: String,
}

/// Cancel a message not yet handed to Twilio
///
/// A scheduled (or still pending) message is `canceled` and never sent; once the send worker
/// has begun handing it to Twilio, 409.
#[utoipa::path(
    delete,
    path = "/sms/{message_id}",
    tag = "messages",
    operation_id = "cancelSms",
    security(("api_key" = ["send"])),
    params(("message_id" = Uuid, Path, description = "The id `POST /sms/send` answered.")),
    responses(
        (status = 200, description = "Canceled.", body = Canceled),
        (status = 400, description = "`invalid_path`: not a UUID.", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no such outbound message (or another \
            tenant's).", body = crate::error::ErrorBody),
        (status = 409, description = "`already_handed_over`: Twilio has it, or the hand-over \
            began; `already_canceled`.", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    key: ApiKey,
    crate::extract::Path(message_id): crate::extract::Path<Uuid>,
) -> Result<(StatusCode, Json<Canceled>), ApiError> {
    policy::require(&key, Action::Send)?;
    let mut tx = state.pool.begin().await?;
    let msg = sqlx::query!(
        r#"SELECT delivery_status, twilio_sid, send_attempts, tenant_id FROM sms_messages
           WHERE id = $1 AND direction = 'outbound' FOR UPDATE"#,
        message_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("no such message"))?;
    policy::authorize(
        &key,
        Action::Send,
        Owner::record(msg.tenant_id.as_deref()),
        "no such message",
    )?;
    let conflict = |code, detail: &str| ApiError::Conflict {
        code,
        detail: detail.into(),
    };
    let status = msg
        .delivery_status
        .parse()
        .map_err(|e: UnknownStatus| ApiError::Internal(e.into()))?;
    let handed_over = || {
        conflict(
            "already_handed_over",
            "the message was handed to Twilio already",
        )
    };
    match delivery::may_cancel(status, msg.send_attempts, msg.twilio_sid.is_some()) {
        Err(CancelRefused::AlreadyCanceled) => {
            return Err(conflict(
                "already_canceled",
                "the message was canceled already",
            ));
        }
        Err(CancelRefused::AlreadyHandedOver) => return Err(handed_over()),
        Ok(()) => {}
    }
    // The row is locked, so the write's own guard agrees; were it not to, nothing is claimed.
    if !delivery::cancel(&mut tx, message_id).await? {
        return Err(handed_over());
    }
    crate::error::commit(tx).await?;
    tracing::info!(%message_id, key = %key.name, "outbound message canceled before hand-over");
    Ok((
        StatusCode::OK,
        Json(Canceled {
            message_id,
            status: "canceled".into(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(to: Option<&str>, body: Option<&str>) -> SendRequest {
        SendRequest {
            to: to.map(str::to_owned),
            body: body.map(str::to_owned),
            conversation_id: None,
            workflow_type: None,
            workflow_id: None,
            media_urls: None,
            send_at: None,
            quiet_hours_override: None,
        }
    }

    fn fields(r: Result<Valid, ApiError>) -> Vec<&'static str> {
        match r {
            Err(ApiError::Validation(f)) => f.into_iter().map(|(k, _)| k).collect(),
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => vec![],
        }
    }

    #[test]
    fn validation() {
        use phonenumber::country::Id::US;
        assert_eq!(
            fields(validate(&req(Some("(415) 555-2671"), Some("hi")), US)),
            Vec::<&str>::new()
        );
        assert_eq!(fields(validate(&req(None, Some("hi")), US)), vec!["to"]);
        assert_eq!(
            fields(validate(&req(Some("hello"), Some("hi")), US)),
            vec!["to"]
        );
        assert_eq!(
            fields(validate(&req(Some("+14155552671"), Some("  ")), US)),
            vec!["body"]
        );
        let long = "x".repeat(1601);
        assert_eq!(
            fields(validate(&req(Some("+14155552671"), Some(&long)), US)),
            vec!["body"]
        );
        assert_eq!(
            fields(validate(&req(Some("12"), None), US)),
            vec!["to", "body"]
        );
        let mut media_only = req(Some("+14155552671"), None);
        media_only.media_urls = Some(vec!["https://a.example/x.jpg".into()]);
        assert!(validate(&media_only, US).is_ok());
        media_only.media_urls = Some(vec!["ftp://a.example/x.jpg".into()]);
        assert_eq!(fields(validate(&media_only, US)), vec!["media_urls"]);
    }
}
