//! `GET /conversations/{phone_number}`: a conversation and its messages, newest first, with
//! keyset pagination on (created_at, id).
//!
//! The model: one conversation per number, and a tenant per message. A number changes hands; the
//! conversation follows its current owner (routing), and every message keeps the tenant it
//! belonged to when it was received or sent. A tenant-scoped key sees its tenant's part of the
//! history only (and the conversation only if it has a part in it); an unscoped key sees the
//! whole history, each message with its tenant, and may filter with `tenant_id`.

use std::collections::HashMap;

use crate::extract::{Path, Query};
use axum::{Json, extract::State};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::phone;
use uuid::Uuid;

use crate::{
    AppState,
    auth::ApiKey,
    error::ApiError,
    policy::{self, Action, Owner},
};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Messages per page, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`: where the page starts, after that message.
    #[param(
        max_length = 60,
        pattern = r"^-?[0-9]{1,16}\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub cursor: Option<String>,
    /// Only this tenant's part of the history (a tenant-scoped key always sees only its own).
    #[param(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub id: Uuid,
    /// E.164, or, for a sender that is not a phone number, its written form.
    pub phone_number: String,
    /// `phone`, or a sender kept as written: `short_code`, `alphanumeric`, `other`.
    pub number_kind: String,
    /// The number's current tenant; with a tenant filter (or a tenant-scoped key), that tenant.
    pub tenant_id: Option<String>,
    pub workflow_type: Option<String>,
    pub workflow_id: Option<String>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub language_detected: Option<String>,
    pub language_confidence: Option<f32>,
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// Give as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub content: String,
    pub twilio_sid: Option<String>,
    pub delivery_status: String,
    pub language_detected: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The tenant the message belonged to when it was received or sent (null: unknown then).
    pub tenant_id: Option<String>,
    /// Outbound, scheduled: when it is (or was) to be handed to Twilio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Inbound only: pending, routed, unroutable or skipped (opt-out keywords).
    pub route_status: Option<String>,
    /// Inbound only: every routing decision, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<RoutingDecision>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingDecision {
    pub attempt: i32,
    pub reason: String,
    pub agent_url: Option<String>,
    pub agent_status: Option<i32>,
    pub outcome: String,
    pub detail: Option<String>,
    pub latency_ms: Option<i32>,
    pub decided_at: DateTime<Utc>,
}

/// Cursor: the (time, id) of the last entry returned, as `<unix microseconds>.<id>` (ids are
/// UUIDs for messages, sequence numbers for ledgers). Any cursor of that shape is a position in
/// the keyset order, so the OpenAPI pattern states the whole rule
/// (microseconds: 16 digits reach past the year 2286).
pub(crate) fn encode_cursor<I: std::fmt::Display>(at: DateTime<Utc>, id: I) -> String {
    format!("{}.{}", at.timestamp_micros(), id)
}

pub(crate) fn decode_cursor<I: std::str::FromStr>(
    cursor: &str,
) -> Result<(DateTime<Utc>, I), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
    let parse = |text: &str| {
        let (micros, id) = text.split_once('.')?;
        if micros.len() > 17 {
            return None;
        }
        let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some((at, id.parse().ok()?))
    };
    // Before 2026-12, cursors were base64url of `<micros>|<id>`: a client paging across the
    // upgrade keeps its place.
    let legacy = || {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        parse(&text.replacen('|', ".", 1))
    };
    parse(cursor).or_else(legacy).ok_or_else(bad)
}

pub(crate) fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    parse_limit_within(raw, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A `limit` query parameter: `default` when absent, else an integer from 1 to `max`.
pub(crate) fn parse_limit_within(
    raw: Option<&str>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be an integer from 1 to {max}"),
        )),
    }
}

/// A conversation and its messages
///
/// Any written form of the number finds the conversation (`+15551230001`, `(555) 123-0001`,
/// URL-encoded). Messages are newest first, paged with `limit` and `cursor`; inbound ones carry
/// their routing decisions. Each message carries the tenant it belonged to when received or
/// sent; a tenant-scoped key (or `tenant_id`) sees only that tenant's messages.
#[utoipa::path(
    get,
    path = "/conversations/{phone_number}",
    tag = "messages",
    operation_id = "getConversation",
    security(("api_key" = ["read"])),
    params(
        ("phone_number" = String, Path, description = "The other party's number, in any \
            written form (URL-encode it).", example = "+15551230001"),
        PageParams,
    ),
    responses(
        (status = 200, description = "The conversation.", body = ConversationView),
        (status = 400, description = "`invalid_limit`, `invalid_cursor`, or `invalid_query`: a \
            query that does not parse.", body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: no conversation with this number (or none \
            with a part of the key's tenant, or of `tenant_id`; a tenant-scoped key naming \
            another tenant).", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    key: ApiKey,
    Path(phone_number): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<Json<ConversationView>, ApiError> {
    let tenant = policy::confine(&key, Action::Read, page.tenant_id)?;
    let limit = parse_limit(page.limit.as_deref())?;
    let cursor = page.cursor.as_deref().map(decode_cursor).transpose()?;
    // Any written form finds the conversation; an unparseable sender (short code, alphanumeric)
    // is looked up as written.
    let (number, _, _) = phone::sender(&phone_number, state.cfg.common.default_region);
    let conversation = sqlx::query!(
        r#"SELECT id, phone_number, number_kind, tenant_id, workflow_type, workflow_id,
                  last_message_at, language_detected, language_confidence
           FROM sms_conversations WHERE phone_number = $1"#,
        number
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("no conversation for this phone number"))?;
    // With a tenant filter, the conversation exists only where that tenant has a part in it, and
    // for a tenant that no longer holds the number, the fields of another owner's time (workflow,
    // language, last activity) are not shown.
    let own = tenant.is_none() || tenant == conversation.tenant_id;
    let last_message_at = match &tenant {
        Some(t) if !own => Some(
            sqlx::query_scalar!(
                // ORDER BY ... LIMIT 1 rather than max(): a generic plan of max() aggregated
                // every one of the tenant's rows in the conversation (50,000 on a busy number:
                // 21 ms), where this stops at the first.
                "SELECT created_at FROM sms_messages WHERE conversation_id = $1 AND tenant_id = $2
                 ORDER BY created_at DESC, id DESC LIMIT 1",
                conversation.id,
                t
            )
            .fetch_optional(&state.pool)
            .await?
            .ok_or(ApiError::NotFound("no conversation for this phone number"))?,
        ),
        _ => conversation.last_message_at,
    };
    let (mut messages, next_cursor) = messages_page(
        &state.pool,
        conversation.id,
        tenant.as_deref(),
        cursor,
        limit,
    )
    .await?;
    hide_global_routes(&key, &mut messages);
    Ok(Json(ConversationView {
        id: conversation.id,
        phone_number: conversation.phone_number,
        number_kind: conversation.number_kind,
        tenant_id: tenant.or(conversation.tenant_id),
        workflow_type: conversation.workflow_type.filter(|_| own),
        workflow_id: conversation.workflow_id.filter(|_| own),
        last_message_at,
        language_detected: conversation.language_detected.filter(|_| own),
        language_confidence: conversation.language_confidence.filter(|_| own),
        messages,
        next_cursor,
    }))
}

struct Row {
    id: Uuid,
    direction: String,
    message_content: String,
    twilio_sid: Option<String>,
    delivery_status: String,
    language_detected: Option<String>,
    created_at: DateTime<Utc>,
    route_status: Option<String>,
    tenant_id: Option<String>,
    scheduled_for: Option<DateTime<Utc>>,
}

/// One page of a conversation's messages, newest first, each with its routing decisions, and the
/// cursor of the next page.
pub(crate) async fn messages_page(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    tenant: Option<&str>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<(Vec<MessageView>, Option<String>), ApiError> {
    let mut rows = page_rows(pool, conversation_id, tenant, cursor, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    // Only inbound messages are routed (the route worker records their decisions): looking up
    // the others would read an index page each for nothing, cold on a large database.
    let routed: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.direction == "inbound")
        .map(|r| r.id)
        .collect();
    let mut decisions = page_decisions(pool, conversation_id, &routed).await?;
    let messages = rows
        .into_iter()
        .map(|r| MessageView {
            id: r.id,
            direction: r.direction,
            content: r.message_content,
            twilio_sid: r.twilio_sid,
            delivery_status: r.delivery_status,
            language_detected: r.language_detected,
            created_at: r.created_at,
            tenant_id: r.tenant_id,
            scheduled_for: r.scheduled_for,
            route_status: r.route_status,
            routing: decisions.remove(&r.id).unwrap_or_default(),
        })
        .collect();
    Ok((messages, next_cursor))
}

/// Up to `limit` of a conversation's messages (of `tenant`'s only, when given) before `cursor`,
/// newest first.
async fn page_rows(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    tenant: Option<&str>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    // Two statements rather than one with "$5 IS NULL OR ...": each keeps one cached plan. The
    // cursor is a row comparison with the top of the order standing in for "no cursor" (an "IS
    // NULL OR" would keep the generic plan from using it as the index scan's bound), so any page
    // costs a page, whichever execution of the statement this is (tests/it/plans.rs). Each reads
    // the messages that fit the page index (sms_page_fits: nearly all) by an index-only scan of
    // it, a conversation's rows side by side, and the rest through their own small index.
    match tenant {
        None => all_rows(pool, conversation_id, cursor, limit).await,
        Some(tenant) => tenant_rows(pool, conversation_id, tenant, cursor, limit).await,
    }
}

/// [`page_rows`] of every tenant.
async fn all_rows(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let (after_at, after_id) = cursor.unzip();
    sqlx::query_as!(
        Row,
        r#"SELECT id AS "id!", direction AS "direction!", message_content AS "message_content!",
                  twilio_sid, delivery_status AS "delivery_status!", language_detected,
                  created_at AS "created_at!", route_status, tenant_id, scheduled_for
           FROM ((SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                         created_at, route_status, tenant_id, scheduled_for
                  FROM sms_messages
                  WHERE conversation_id = $1 AND sms_page_fits(message_content, twilio_sid, tenant_id)
                    AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                            COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                  ORDER BY created_at DESC, id DESC
                  LIMIT $4)
                 UNION ALL
                 (SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                         created_at, route_status, tenant_id, scheduled_for
                  FROM sms_messages
                  WHERE conversation_id = $1 AND NOT sms_page_fits(message_content, twilio_sid, tenant_id)
                    AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                            COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                  ORDER BY created_at DESC, id DESC
                  LIMIT $4)) page
           ORDER BY created_at DESC, id DESC
           LIMIT $4"#,
        conversation_id,
        after_at,
        after_id,
        limit
    )
    .fetch_all(pool)
    .await
}

/// [`page_rows`] of one tenant.
async fn tenant_rows(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    tenant: &str,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let (after_at, after_id) = cursor.unzip();
    sqlx::query_as!(
        Row,
        r#"SELECT id AS "id!", direction AS "direction!", message_content AS "message_content!",
                  twilio_sid, delivery_status AS "delivery_status!", language_detected,
                  created_at AS "created_at!", route_status, tenant_id, scheduled_for
           FROM ((SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                         created_at, route_status, tenant_id, scheduled_for
                  FROM sms_messages
                  WHERE conversation_id = $1 AND tenant_id = $5
                    AND sms_page_fits(message_content, twilio_sid, tenant_id)
                    AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                            COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                  ORDER BY created_at DESC, id DESC
                  LIMIT $4)
                 UNION ALL
                 (SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                         created_at, route_status, tenant_id, scheduled_for
                  FROM sms_messages
                  WHERE conversation_id = $1 AND tenant_id = $5
                    AND NOT sms_page_fits(message_content, twilio_sid, tenant_id)
                    AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                            COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                  ORDER BY created_at DESC, id DESC
                  LIMIT $4)) page
           ORDER BY created_at DESC, id DESC
           LIMIT $4"#,
        conversation_id,
        after_at,
        after_id,
        limit,
        tenant
    )
    .fetch_all(pool)
    .await
}

/// Blanks the agent URL of decisions made by a global route (default or workflow type) for a key
/// the policy does not show global routes to: the URL is the operator's configuration.
pub(crate) fn hide_global_routes(key: &ApiKey, messages: &mut [MessageView]) {
    for m in messages {
        hide_global_route_urls(key, m.tenant_id.as_deref(), &mut m.routing);
    }
}

/// The same for one message's decisions (`tenant`: the message's).
pub(crate) fn hide_global_route_urls(
    key: &ApiKey,
    tenant: Option<&str>,
    decisions: &mut [RoutingDecision],
) {
    for d in decisions {
        let route_owner = (d.reason == "tenant").then_some(tenant).flatten();
        if !policy::sees(key, Action::Read, Owner::config(route_owner)) {
            d.agent_url = None;
        }
    }
}

/// The routing decisions of these messages, in the order they were made.
pub(crate) async fn decisions(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<RoutingDecision>>, ApiError> {
    let rows = sqlx::query_as!(
        DecisionRow,
        r#"SELECT message_id, attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at
           FROM sms_routing_decisions WHERE message_id = ANY($1) ORDER BY id"#,
        ids
    )
    .fetch_all(pool)
    .await?;
    Ok(by_message(rows))
}

/// The same for messages of one conversation (a page's): read from the decisions' page index,
/// where a conversation's decisions lie side by side (an index-only scan); the decisions too long
/// for it come from their own small index. One lookup per message id (a join with the ids): with
/// "message_id = ANY($2)" the generic plan filtered every decision of the conversation instead,
/// 100,000 on a busy number (tests/it/plans.rs).
async fn page_decisions(
    pool: &sqlx::PgPool,
    conversation_id: Uuid,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<RoutingDecision>>, ApiError> {
    let rows = sqlx::query_as!(
        DecisionRow,
        r#"SELECT p.message_id AS "message_id!", attempt AS "attempt!", reason AS "reason!", agent_url,
                  agent_status, outcome AS "outcome!", detail, latency_ms, decided_at AS "decided_at!"
           FROM UNNEST($2::uuid[]) AS p(message_id)
           CROSS JOIN LATERAL
                ((SELECT id, attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at
                  FROM sms_routing_decisions
                  WHERE conversation_id = $1 AND message_id = p.message_id
                    AND sms_decision_fits(agent_url, detail))
                 UNION ALL
                 (SELECT id, attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at
                  FROM sms_routing_decisions
                  WHERE conversation_id = $1 AND message_id = p.message_id
                    AND NOT sms_decision_fits(agent_url, detail))) d
           ORDER BY d.id"#,
        conversation_id,
        ids
    )
    .fetch_all(pool)
    .await?;
    Ok(by_message(rows))
}

struct DecisionRow {
    message_id: Uuid,
    attempt: i32,
    reason: String,
    agent_url: Option<String>,
    agent_status: Option<i32>,
    outcome: String,
    detail: Option<String>,
    latency_ms: Option<i32>,
    decided_at: DateTime<Utc>,
}

/// Decisions grouped by message, each message's in the order of `rows`.
fn by_message(rows: Vec<DecisionRow>) -> HashMap<Uuid, Vec<RoutingDecision>> {
    let mut by_message: HashMap<Uuid, Vec<RoutingDecision>> = HashMap::new();
    for d in rows {
        by_message
            .entry(d.message_id)
            .or_default()
            .push(RoutingDecision {
                attempt: d.attempt,
                reason: d.reason,
                agent_url: d.agent_url,
                agent_status: d.agent_status,
                outcome: d.outcome,
                detail: d.detail,
                latency_ms: d.latency_ms,
                decided_at: d.decided_at,
            });
    }
    by_message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        assert_eq!(decode_cursor(&encode_cursor(at, 42_i64)).unwrap(), (at, 42));
        // A cursor from before the plain form still pages on.
        let legacy = URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.timestamp_micros()));
        assert_eq!(decode_cursor(&legacy).unwrap(), (at, id));
        // The extremes the OpenAPI pattern allows are positions too.
        let nil = "00000000-0000-0000-0000-000000000000";
        for micros in ["9999999999999999", "-9999999999999999", "0", "-0"] {
            assert!(
                decode_cursor::<Uuid>(&format!("{micros}.{nil}")).is_ok(),
                "{micros}"
            );
            assert!(decode_cursor::<i64>(&format!("{micros}.999999999999999999")).is_ok());
        }
        for garbage in [
            "nope",
            "",
            ".",
            "1.",
            ".1",
            "1|2",
            "1.x",
            "99999999999999999999.1",
        ] {
            assert!(decode_cursor::<i64>(garbage).is_err(), "{garbage}");
        }
        assert!(decode_cursor::<Uuid>("1.2").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None).unwrap(), 50);
        assert_eq!(parse_limit(Some("200")).unwrap(), 200);
        assert!(parse_limit(Some("201")).is_err());
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("x")).is_err());
    }
}
