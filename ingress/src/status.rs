//! `POST /webhook/twilio/status`: Twilio's delivery-status callbacks. Verified like inbound
//! webhooks; each is stored in a ledger unique on (MessageSid, MessageStatus), so repeats change
//! nothing, and its application is enqueued in the same transaction, by the group commit that
//! stores inbound webhooks: Twilio never retries a callback, so a burst must wait for its turn,
//! never be refused for want of a connection.

use axum::{
    extract::{OriginalUri, State},
    http::HeaderMap,
    response::Response,
};
use bytes::Bytes;
use shared::twilio::status;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    group_commit::{NewCallback, StoreError, Stored},
    rate_limit::WebhookSource,
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

/// Twilio's delivery-status callback
///
/// Verified like the inbound webhook. Each callback is stored once per (MessageSid,
/// MessageStatus) and applied by the `outbound-status` queue, monotonically (a late `sent` never
/// overwrites `delivered`); a repeat is answered 200 and changes nothing.
#[utoipa::path(
    post,
    path = "/webhook/twilio/status",
    tag = "webhooks",
    operation_id = "statusCallback",
    security(("twilio_signature" = [])),
    params(
        ("message_id" = Option<uuid::Uuid>, Query,
         description = "Our message id, which the send worker puts in the StatusCallback URL."),
        ("bodySHA256" = Option<String>, Query,
         description = "JSON bodies only: hex SHA-256 of the body, covered by the signature."),
    ),
    request_body(
        description = "Twilio's fields, form-encoded (or a JSON object with `?bodySHA256=`).",
        content(
            (crate::openapi::TwilioStatusCallback = "application/x-www-form-urlencoded"),
            (crate::openapi::TwilioStatusCallback = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "Stored (or already stored): empty TwiML.",
         content_type = "text/xml", body = String),
        (status = 400, description = "`malformed_body`: not UTF-8, a bad escape, bad JSON; \
            `missing_field`: no `MessageSid` or `MessageStatus`; `unknown_status`.",
         body = crate::error::ErrorBody),
        (status = 403, description = "`forbidden`: missing or invalid `X-Twilio-Signature`; \
            nothing stored.", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: body over MAX_BODY_BYTES.",
         body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limited`: this source sent INVALID_SIGNATURE_LIMIT \
            bad signatures within the window; refused unread until it ends (`Retry-After`).",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
#[tracing::instrument(skip_all, fields(message_sid, message_status))]
pub async fn status_callback(
    State(state): State<AppState>,
    source: WebhookSource,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (params, sid) = verified_webhook(&state, source, &headers, &uri, body, "SmsSid")?;
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

    let stored = state
        .callbacks
        .store(NewCallback {
            key: NewCallback::key_of(&sid, &message_status),
            message_sid: sid,
            message_status,
            our_message_id: our_id,
            error_code,
            raw: raw_payload(&params),
            trace: shared::telemetry::TraceContext::current(),
        })
        .await;
    let new = match stored {
        Ok(Stored::New(_)) => true,
        Ok(Stored::Duplicate) => false,
        Err(StoreError::Unavailable) => return Err(ApiError::Unavailable),
        Err(StoreError::Failed(e)) => return Err(ApiError::Internal(anyhow::anyhow!(e))),
    };
    state.metrics.status_callback(!new);
    if new {
        tracing::info!("status callback stored");
    } else {
        tracing::info!("duplicate status callback skipped");
    }
    Ok(twiml_ok())
}
