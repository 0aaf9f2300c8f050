//! `POST /webhook/twilio/sms`: verify, store with its job in one (group) commit, then answer.

use axum::{
    extract::{OriginalUri, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::{Map, Value};
use shared::{phone, twilio::signature};

use crate::{
    AppState,
    error::ApiError,
    group_commit::{NewInbound, StoreError, Stored},
    rate_limit::WebhookSource,
};

const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// The webhook's fields, in the order received, repeated names kept.
pub type Params = Vec<(String, String)>;

/// Parses a form body strictly: every name and value must decode to UTF-8, so a corrupt body is
/// refused instead of being stored with replacement characters (while a real U+FFFD in a message
/// is kept).
pub fn parse_form(body: &[u8]) -> Result<Params, ApiError> {
    let malformed =
        || ApiError::bad_request("malformed_body", "form body does not decode to UTF-8 text");
    let decode = |part: &[u8]| -> Result<String, ApiError> {
        let plus_as_space: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
        String::from_utf8(bytes).map_err(|_| malformed())
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[..0]),
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Flattens a JSON webhook body into name/value pairs (strings as they are, other values as JSON).
fn parse_json(body: &[u8]) -> Result<Params, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_body", format!("invalid JSON body: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            "malformed_body",
            "JSON body must be an object",
        ));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

/// Every field Twilio sent as a JSON object; a repeated name becomes an array of its values.
pub fn raw_payload(params: &Params) -> Value {
    let mut map = Map::with_capacity(params.len());
    for (k, v) in params {
        match map.get_mut(k) {
            None => {
                map.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(values)) => values.push(Value::String(v.clone())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(map)
}

pub fn field<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The URL Twilio signed: PUBLIC_URL + path and query, or, when forwarded headers are trusted, the
/// scheme and host the proxy reports.
fn signed_url(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if state.cfg.trust_forwarded_headers {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_owned())
        };
        if let Some(host) = get("x-forwarded-host").or_else(|| get("host")) {
            let proto = get("x-forwarded-proto").unwrap_or_else(|| "https".into());
            return format!("{proto}://{host}{path_and_query}");
        }
    }
    format!("{}{}", state.cfg.public_url, path_and_query)
}

/// Verifies the request and returns its fields; 400 for a body that cannot be read, 403 for a
/// missing or wrong signature.
pub fn verified_params(
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<Params, ApiError> {
    // An unsigned request is refused before its body is parsed.
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Forbidden("missing X-Twilio-Signature"))?;
    let url = signed_url(state, headers, uri);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let params = if is_json {
        parse_json(body)?
    } else {
        parse_form(body)?
    };
    let tokens = state.cfg.twilio.tokens();
    let valid = if is_json {
        signature::verify_json(&tokens, &url, body, signature)
    } else {
        signature::verify_form(&tokens, &url, &params, signature)
    };
    if !valid {
        tracing::warn!(path = uri.path(), "webhook rejected: invalid signature");
        return Err(ApiError::Forbidden("invalid X-Twilio-Signature"));
    }
    Ok(params)
}

/// Reads and verifies a Twilio webhook (inbound or status): its fields and its MessageSid (or the
/// older `alt_sid` name). Bad signatures are counted, in the metrics and against their source.
pub fn verified_webhook(
    state: &AppState,
    source: WebhookSource,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    alt_sid: &str,
) -> Result<(Params, String), ApiError> {
    let body = body.map_err(|e| crate::extract::body_rejection(e, state.cfg.max_body_bytes))?;
    let mut params = verified_params(state, headers, uri, &body).inspect_err(|e| {
        if matches!(e, ApiError::Forbidden(_)) {
            state.metrics.webhook_rejected();
            source.strike(state);
        }
    })?;
    storable(&mut params);
    let sid = field(&params, "MessageSid")
        .or_else(|| field(&params, alt_sid))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_field", "MessageSid is required"))?
        .to_owned();
    Ok((params, sid))
}

/// PostgreSQL's text and jsonb cannot hold U+0000, and one such field would fail its whole group
/// commit: it is stored as U+FFFD instead. Everything else is kept as sent.
fn storable(params: &mut Params) {
    for (k, v) in params.iter_mut() {
        for s in [k, v] {
            if s.contains('\0') {
                *s = s.replace('\0', "\u{FFFD}");
            }
        }
    }
}

pub fn twiml_ok() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        EMPTY_TWIML,
    )
        .into_response()
}

/// Twilio's inbound SMS webhook
///
/// Verifies the signature, then stores the complete payload (every field) and enqueues its
/// processing in one transaction; only after that commit the answer is 200 with empty TwiML. A
/// replay of a stored `MessageSid` is answered 200 and changes nothing.
#[utoipa::path(
    post,
    path = "/webhook/twilio/sms",
    tag = "webhooks",
    operation_id = "inboundSms",
    security(("twilio_signature" = [])),
    params(
        ("bodySHA256" = Option<String>, Query,
         description = "JSON bodies only: hex SHA-256 of the body, covered by the signature."),
    ),
    request_body(
        description = "Twilio's fields, form-encoded (or a JSON object with `?bodySHA256=`).",
        content(
            (crate::openapi::TwilioInboundSms = "application/x-www-form-urlencoded"),
            (crate::openapi::TwilioInboundSms = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "Stored (or already stored): empty TwiML.",
         content_type = "text/xml", body = String,
         example = json!(r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#)),
        (status = 400, description = "`malformed_body`: not UTF-8, a bad escape, bad JSON; \
            `missing_field`: no `MessageSid`.", body = crate::error::ErrorBody),
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
#[tracing::instrument(skip_all, fields(message_sid))]
pub async fn inbound_sms(
    State(state): State<AppState>,
    source: WebhookSource,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (params, message_sid) =
        verified_webhook(&state, source, &headers, &uri, body, "SmsMessageSid")?;
    tracing::Span::current().record("message_sid", message_sid.as_str());
    let from = field(&params, "From").unwrap_or_default().to_owned();
    let item = NewInbound {
        body: field(&params, "Body").unwrap_or_default().to_owned(),
        to: field(&params, "To").unwrap_or_default().to_owned(),
        num_segments: field(&params, "NumSegments").and_then(|v| v.parse().ok()),
        num_media: field(&params, "NumMedia").and_then(|v| v.parse().ok()),
        raw: raw_payload(&params),
        from,
        message_sid,
        trace: shared::telemetry::TraceContext::current(),
    };
    let from_masked = phone::mask(&item.from);
    match state.inbound.store(item).await {
        Ok(Stored::New(id)) => {
            state.metrics.webhook_stored();
            tracing::info!(message_id = %id, from = %from_masked, "inbound webhook stored");
            Ok(twiml_ok())
        }
        Ok(Stored::Duplicate) => {
            state.metrics.webhook_duplicate();
            tracing::info!(from = %from_masked, "duplicate inbound webhook skipped");
            Ok(twiml_ok())
        }
        Err(StoreError::Unavailable) => Err(ApiError::Unavailable),
        Err(StoreError::Failed(e)) => Err(ApiError::Internal(anyhow::anyhow!(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payload_keeps_every_field_and_repeats() {
        let params = vec![
            ("Body".to_string(), "hi".to_string()),
            ("MediaUrl".to_string(), "a".to_string()),
            ("MediaUrl".to_string(), "b".to_string()),
            ("Brand_New_Field".to_string(), "x".to_string()),
        ];
        let raw = raw_payload(&params);
        assert_eq!(raw["Body"], "hi");
        assert_eq!(raw["MediaUrl"], serde_json::json!(["a", "b"]));
        assert_eq!(raw["Brand_New_Field"], "x");
    }

    #[test]
    fn strict_form_parsing() {
        assert!(parse_form(b"a=1&b=%E2%9C%93").is_ok());
        assert!(parse_form(b"a=%FF").is_err());
        assert!(parse_form(&[0x61, 0x3d, 0xff]).is_err());
        // A replacement character in the message is data, not corruption.
        assert_eq!(
            parse_form(b"Body=%EF%BF%BD+ok&x").unwrap(),
            vec![
                ("Body".into(), "\u{FFFD} ok".into()),
                ("x".into(), String::new())
            ]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary bytes as a form body: parsed or refused with a 400, never a panic; what parses
        /// round-trips through the stored JSON byte for byte.
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            match parse_form(&body) {
                Ok(params) => {
                    let raw = raw_payload(&params);
                    for (k, v) in &params {
                        let stored = &raw[k];
                        let value = serde_json::Value::String(v.clone());
                        let kept = stored == &value || stored.as_array().is_some_and(|a| a.contains(&value));
                        prop_assert!(kept, "field {:?} lost", k);
                    }
                }
                Err(e) => {
                    let is_bad_request = matches!(e, ApiError::BadRequest { .. });
                    prop_assert!(is_bad_request, "unexpected error {:?}", e);
                }
            }
        }

        /// Any unicode (emoji, SQL-looking text, control characters) survives encoding and parsing.
        #[test]
        fn any_text_round_trips(key in "\\PC{1,12}", value in "\\PC{0,80}") {
            let body = url::form_urlencoded::Serializer::new(String::new()).append_pair(&key, &value).finish();
            let params = parse_form(body.as_bytes()).unwrap();
            prop_assert_eq!(params, vec![(key, value)]);
        }
    }
}
