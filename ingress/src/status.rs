//! `POST /webhook/twilio/status`: Twilio's delivery-status callbacks. Verified like inbound
//! webhooks; each is stored in a ledger unique on (MessageSid, MessageStatus), so repeats change
//! nothing, and its application is enqueued in the same transaction.

use axum::{
    extract::{OriginalUri, State},
    http::HeaderMap,
    response::Response,
};
use bytes::Bytes;
use shared::{
    jobs::{self, ApplyStatus},
    twilio::status,
};
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    webhook::{field, raw_payload, twiml_ok, verified_webhook},
};

/// Our message id, which the send worker puts in the StatusCallback URL (signed with it).
fn our_message_id(uri: &axum::http::Uri) -> Option<Uuid> {
    uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "message_id")
            .and_then(|(_, v)| v.parse().ok())
    })
}

#[tracing::instrument(skip_all, fields(message_sid, message_status))]
pub async fn status_callback(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (params, sid) = verified_webhook(&state, &headers, &uri, body, "SmsSid")?;
    let message_status = field(&params, "MessageStatus")
        .or_else(|| field(&params, "SmsStatus"))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_field", "MessageStatus is required"))?;
    if !status::is_known(&message_status) {
        return Err(ApiError::bad_request(
            "unknown_status",
            format!("unknown MessageStatus {message_status:?}"),
        ));
    }
    let span = tracing::Span::current();
    span.record("message_sid", sid.as_str());
    span.record("message_status", message_status.as_str());
    let our_id = our_message_id(&uri);
    let error_code = field(&params, "ErrorCode")
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "0")
        .map(str::to_owned);

    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO sms_status_callbacks (message_sid, message_status, our_message_id, error_code, raw)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (message_sid, message_status) DO NOTHING
           RETURNING id"#,
        sid,
        message_status,
        our_id,
        error_code,
        raw_payload(&params)
    )
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_some() {
        jobs::push(
            &mut tx,
            jobs::OUTBOUND_STATUS,
            &[ApplyStatus {
                message_sid: sid.clone(),
                our_message_id: our_id,
            }],
            None,
        )
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    }
    tx.commit().await?;
    state.metrics.status_callback(inserted.is_none());
    if inserted.is_some() {
        tracing::info!("status callback stored");
    } else {
        tracing::info!("duplicate status callback skipped");
    }
    Ok(twiml_ok())
}
