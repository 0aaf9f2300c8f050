//! The opt-out ledger: `GET /opt-outs` lists every opt-out and opt-in received (from messages in
//! any of our languages, from Twilio's 21610 refusals, or recorded here), newest first, with the
//! rule that recognised each, as JSON pages or as CSV for an audit; `POST /opt-outs` records one
//! that reached the operator another way (a phone call, a letter), after which sends to the
//! number are refused (409) like any other opt-out.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{optout, phone};
use uuid::Uuid;

use crate::{
    AppState,
    auth::ApiKey,
    conversations::{decode_cursor, encode_cursor, parse_limit},
    error::ApiError,
    extract::Query,
    policy::{self, Action, Owner},
    usage::parse_time,
};

/// Most rows in one CSV export.
const MAX_EXPORT: i64 = 100_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// Only this number, in any written form.
    pub phone_number: Option<String>,
    /// Only this tenant's (a tenant-scoped key always sees only its own).
    #[param(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
    /// From, inclusive: RFC 3339 or YYYY-MM-DD.
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline)]
    pub from: Option<String>,
    /// To, exclusive: RFC 3339 or YYYY-MM-DD.
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline)]
    pub to: Option<String>,
    /// Entries per page, 1 to 200 (default 50); ignored for CSV.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`: where the page starts, after that entry.
    #[param(max_length = 40, pattern = r"^-?[0-9]{1,16}\.[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// `json` (default) or `csv`: every matching entry (up to 100,000) as an attachment.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OptOutEvent {
    pub id: i64,
    pub our_number: String,
    pub their_number: String,
    /// `opt_out` or `opt_in`.
    pub change: String,
    /// `sms`, `twilio` (a 21610 refusal) or `api`.
    pub source: String,
    /// For `api`: `phone_call`, `letter`, `email`, `in_person`, `web_form`, `other`.
    pub method: Option<String>,
    pub keyword: Option<String>,
    /// The rule that recognised it: `keyword:<lang>`, `phrase:<lang>`, `twilio:OptOutType`,
    /// `twilio:21610`, `api`.
    pub rule: Option<String>,
    pub message_id: Option<Uuid>,
    pub tenant_id: Option<String>,
    pub note: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ledger {
    /// Newest first.
    pub events: Vec<OptOutEvent>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOptOut {
    /// The number, in any written form: digits and `+ ( ) . - /` and spaces; it must be a valid
    /// number (libphonenumber's metadata).
    #[schema(
        example = "(415) 555-0101",
        min_length = 1,
        max_length = 64,
        pattern = r"^[0-9+() ./-]*[0-9][0-9+() ./-]*$"
    )]
    pub phone_number: String,
    /// `opt_out` (default) or `opt_in`.
    #[schema(pattern = "^(opt_out|opt_in)$")]
    pub change: Option<String>,
    /// How the recipient told you: `phone_call`, `letter`, `email`, `in_person`, `web_form`,
    /// `other`.
    #[schema(
        example = "phone_call",
        pattern = "^(phone_call|letter|email|in_person|web_form|other)$"
    )]
    pub method: String,
    /// At most 500 characters.
    #[schema(max_length = 500)]
    pub note: Option<String>,
    /// When the recipient said it (RFC 3339; default now).
    pub occurred_at: Option<DateTime<Utc>>,
}

const METHODS: &[&str] = &[
    "phone_call",
    "letter",
    "email",
    "in_person",
    "web_form",
    "other",
];

/// The opt-out ledger
///
/// Every opt-out and opt-in received, newest first, with how it came and the rule that
/// recognised it; `format=csv` exports every matching entry for an audit.
#[utoipa::path(
    get,
    path = "/opt-outs",
    tag = "opt-outs",
    operation_id = "listOptOuts",
    security(("api_key" = ["read"])),
    params(LedgerParams),
    responses(
        (status = 200, description = "A page of the ledger (JSON), or every matching entry \
            (`text/csv`).", body = Ledger),
        (status = 400, description = "`invalid_request` (`from`, `to`, `format`), \
            `invalid_limit`, `invalid_cursor`, `invalid_query`.", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: a tenant-scoped key asking for another tenant.",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    key: ApiKey,
    Query(p): Query<LedgerParams>,
) -> Result<Response, ApiError> {
    let tenant = policy::confine(&key, Action::Read, p.tenant_id)?;
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::Validation(vec![("format", "json or csv".into())])),
    };
    let from = p
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?;
    let to = p.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    let number = p
        .phone_number
        .as_deref()
        .map(|n| phone::sender(n, state.cfg.common.default_region).0);
    let limit = if csv {
        MAX_EXPORT
    } else {
        parse_limit(p.limit.as_deref())?
    };
    let cursor = p.cursor.as_deref().map(decode_cursor::<i64>).transpose()?;
    let (events, next_cursor) = ledger(
        &state.pool,
        &LedgerFilter {
            number,
            tenant,
            from,
            to,
            cursor,
        },
        limit,
    )
    .await?;
    if csv {
        return Ok(csv_response(&events));
    }
    Ok(Json(Ledger {
        events,
        next_cursor,
    })
    .into_response())
}

/// Which ledger events: of a number, of a tenant, in a time range, after a cursor.
#[derive(Debug, Default)]
pub struct LedgerFilter {
    pub number: Option<String>,
    pub tenant: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub cursor: Option<(DateTime<Utc>, i64)>,
}

/// One page of the ledger, newest first, and the cursor of the next.
pub async fn ledger(
    pool: &sqlx::PgPool,
    f: &LedgerFilter,
    limit: i64,
) -> Result<(Vec<OptOutEvent>, Option<String>), sqlx::Error> {
    let (after_at, after_id) = f.cursor.unzip();
    let mut events = sqlx::query_as!(
        OptOutEvent,
        r#"SELECT id, our_number, their_number, change, source, method, keyword, rule, message_id,
                  tenant_id, note, occurred_at, recorded_at
           FROM sms_opt_out_events
           WHERE ($1::text IS NULL OR their_number = $1)
             AND ($2::text IS NULL OR tenant_id = $2)
             AND ($3::timestamptz IS NULL OR occurred_at >= $3)
             AND ($4::timestamptz IS NULL OR occurred_at < $4)
             AND ($5::timestamptz IS NULL OR (occurred_at, id) < ($5, $6::bigint))
           ORDER BY occurred_at DESC, id DESC
           LIMIT $7"#,
        f.number,
        f.tenant,
        f.from,
        f.to,
        after_at,
        after_id,
        limit + 1
    )
    .fetch_all(pool)
    .await?;
    let next_cursor = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events.last().map(|e| encode_cursor(e.occurred_at, e.id))
    } else {
        None
    };
    Ok((events, next_cursor))
}

/// A CSV cell, quoted when needed. A cell a spreadsheet would read as a formula (starting with
/// `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'` so it stays text (OWASP's CSV injection
/// advice); a plain signed number such as an E.164 phone number is no formula and is kept.
fn csv_field(v: &str) -> String {
    let formula = v.starts_with(['=', '+', '-', '@', '\t', '\r'])
        && !(v.len() > 1 && v[1..].bytes().all(|b| b.is_ascii_digit()));
    let v = if formula {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

fn csv_response(events: &[OptOutEvent]) -> Response {
    let mut out = String::from(
        "id,occurred_at,recorded_at,our_number,their_number,change,source,method,keyword,rule,message_id,tenant_id,note\r\n",
    );
    for e in events {
        let cols = [
            e.id.to_string(),
            e.occurred_at.to_rfc3339(),
            e.recorded_at.to_rfc3339(),
            e.our_number.clone(),
            e.their_number.clone(),
            e.change.clone(),
            e.source.clone(),
            e.method.clone().unwrap_or_default(),
            e.keyword.clone().unwrap_or_default(),
            e.rule.clone().unwrap_or_default(),
            e.message_id.map(|m| m.to_string()).unwrap_or_default(),
            e.tenant_id.clone().unwrap_or_default(),
            e.note.clone().unwrap_or_default(),
        ];
        out.push_str(
            &cols
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"opt-outs.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}

/// The number in E.164 and the change, or every invalid field.
fn validate(
    req: &NewOptOut,
    region: phonenumber::country::Id,
) -> Result<(phone::E164, optout::OptChange), ApiError> {
    let mut errors = Vec::new();
    let number = phone::normalize(&req.phone_number, region).ok();
    if number.is_none() {
        errors.push(("phone_number", "not a phone number".to_owned()));
    }
    let change = match req.change.as_deref() {
        None | Some("opt_out") => optout::OptChange::OptOut,
        Some("opt_in") => optout::OptChange::OptIn,
        Some(_) => {
            errors.push(("change", "opt_out or opt_in".to_owned()));
            optout::OptChange::OptOut
        }
    };
    if !METHODS.contains(&req.method.as_str()) {
        errors.push(("method", format!("one of {}", METHODS.join(", "))));
    }
    if req.note.as_ref().is_some_and(|n| n.chars().count() > 500) {
        errors.push(("note", "at most 500 characters".to_owned()));
    }
    match (number, errors.is_empty()) {
        (Some(number), true) => Ok((number, change)),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// An opt change that changed nothing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotRecorded {
    /// Always false.
    pub recorded: bool,
    pub detail: &'static str,
}

/// Record an opt-out received another way
///
/// An opt-out (or opt-in) the recipient gave by phone, letter or otherwise, with how; recorded in
/// the ledger and in force at once (sends to the number answer 409).
#[utoipa::path(
    post,
    path = "/opt-outs",
    tag = "opt-outs",
    operation_id = "recordOptOut",
    security(("api_key" = ["send"])),
    request_body = NewOptOut,
    responses(
        (status = 201, description = "Recorded: the ledger event written.", body = OptOutEvent),
        (status = 200, description = "Nothing to record: an opt-in for a number that is not \
            opted out (or one older than the change in force). The ledger is unchanged.",
         body = NotRecorded),
        (status = 400, description = "`malformed_body`; `invalid_request` with `errors` \
            (`phone_number`, `change`, `method`, `note`).", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: for a tenant-scoped key, a number that is not \
            its tenant's.", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn record(
    State(state): State<AppState>,
    key: ApiKey,
    body: Result<Json<NewOptOut>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    policy::require(&key, Action::Send)?;
    let Json(req) =
        body.map_err(|e| crate::extract::json_rejection(e, state.cfg.max_body_bytes))?;
    let (number, change) = validate(&req, state.cfg.common.default_region)?;
    let mut tx = state.pool.begin().await?;
    let owner = crate::tenants::owner_of(&mut tx, number.as_str()).await?;
    policy::authorize(
        &key,
        Action::Send,
        Owner::record(owner.as_deref()),
        "no such number for this tenant",
    )?;
    let sender = state.cfg.twilio.sender();
    let our = sender
        .phone_number
        .or(sender.messaging_service_sid)
        .unwrap_or_default();
    let record = optout::Change {
        our_number: &our,
        their_number: number.as_str(),
        change,
        source: optout::Source::Api,
        method: Some(&req.method),
        keyword: None,
        rule: Some("api"),
        opt_out_type: Some("api"),
        message_id: None,
        tenant_id: owner.as_deref(),
        note: req.note.as_deref(),
        occurred_at: req.occurred_at.unwrap_or_else(Utc::now),
    };
    let recorded = optout::record(&mut tx, &record).await?;
    let Some(event_id) = recorded.event_id else {
        crate::error::commit(tx).await?;
        return Ok(Json(NotRecorded {
            recorded: false,
            detail: "nothing to record: the number is not opted out, or a newer change is in force",
        })
        .into_response());
    };
    // The event just written, and only it (never another tenant's entry for the number).
    let event = sqlx::query_as!(
        OptOutEvent,
        r#"SELECT id, our_number, their_number, change, source, method, keyword, rule, message_id,
                  tenant_id, note, occurred_at, recorded_at
           FROM sms_opt_out_events WHERE id = $1"#,
        event_id
    )
    .fetch_one(&mut *tx)
    .await?;
    crate::error::commit(tx).await?;
    tracing::info!(their = %number.masked(), change = change.as_str(), key = %key.name, "opt change recorded through the API");
    Ok((StatusCode::CREATED, Json(event)).into_response())
}
