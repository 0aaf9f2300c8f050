//! A number, written any way: its timeline, newest first, in cursor pages. Each message with its
//! direction, text, language and tenant, every delivery callback in the order received, every send
//! attempt with Twilio's codes, every routing decision (the agent's answers among the messages
//! themselves), and the number's opt-out events. One message in full at `/console/messages/{id}`.

use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    response::Response,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use shared::phone;
use uuid::Uuid;

use super::{ConsoleError, Operator, html};
use crate::{
    AppState,
    conversations::{self, MessageView, RoutingDecision},
    error::ApiError,
    extract::Path,
    opt_outs::{self, LedgerFilter},
    policy::{self, Action, Owner},
};

const PAGE: i64 = 25;

#[derive(Deserialize)]
pub struct Search {
    number: Option<String>,
    cursor: Option<String>,
}

/// A delivery callback as received.
pub struct Callback {
    pub status: String,
    pub error_code: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A send attempt.
pub struct Attempt {
    pub attempt: i32,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// Every callback of these messages, in the order received.
async fn callbacks(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Callback>>, sqlx::Error> {
    let mut by: HashMap<Uuid, Vec<Callback>> = HashMap::new();
    for r in sqlx::query!(
        r#"SELECT our_message_id AS "id!", message_status, error_code, received_at
           FROM sms_status_callbacks WHERE our_message_id = ANY($1) ORDER BY id"#,
        ids
    )
    .fetch_all(pool)
    .await?
    {
        by.entry(r.id).or_default().push(Callback {
            status: r.message_status,
            error_code: r.error_code,
            received_at: r.received_at,
        });
    }
    Ok(by)
}

/// Every send attempt of these messages, in order.
async fn attempts(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Attempt>>, sqlx::Error> {
    let mut by: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
    for r in sqlx::query!(
        r#"SELECT message_id, attempt, outcome, http_status, error_code, error_message, started_at
           FROM sms_send_attempts WHERE message_id = ANY($1) ORDER BY message_id, attempt"#,
        ids
    )
    .fetch_all(pool)
    .await?
    {
        by.entry(r.message_id).or_default().push(Attempt {
            attempt: r.attempt,
            outcome: r.outcome,
            http_status: r.http_status,
            error_code: r.error_code,
            error_message: r.error_message,
            started_at: r.started_at,
        });
    }
    Ok(by)
}

fn callbacks_html(list: &[Callback]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                html::time(c.received_at),
                html::badge(&c.status),
                html::opt(c.error_code.as_deref()),
            ]
        })
        .collect();
    html::table(
        "mini",
        "Delivery callbacks, in the order received",
        &["Received", "Status", "Error code"],
        &rows,
    )
}

fn attempts_html(list: &[Attempt]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                html::time(a.started_at),
                html::badge(&a.outcome),
                a.http_status.map_or("–".into(), |s| s.to_string()),
                html::opt(a.error_code.as_deref()),
                html::opt(a.error_message.as_deref()),
            ]
        })
        .collect();
    html::table(
        "mini",
        "Send attempts",
        &["#", "Started", "Outcome", "HTTP", "Twilio code", "Message"],
        &rows,
    )
}

fn decisions_html(list: &[RoutingDecision]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                d.attempt.to_string(),
                html::time(d.decided_at),
                html::esc(&d.reason),
                html::opt(d.agent_url.as_deref()),
                d.agent_status.map_or("–".into(), |s| s.to_string()),
                html::badge(&d.outcome),
                html::opt(d.detail.as_deref()),
            ]
        })
        .collect();
    html::table(
        "mini",
        "Routing decisions",
        &[
            "#",
            "Decided",
            "Route",
            "Agent",
            "Agent status",
            "Outcome",
            "Detail",
        ],
        &rows,
    )
}

/// One message of a timeline, its history folded under it.
fn message_html(m: &MessageView, callbacks: &[Callback], attempts: &[Attempt]) -> String {
    let arrow = if m.direction == "inbound" {
        "← in"
    } else {
        "→ out"
    };
    let status = if m.direction == "inbound" {
        m.route_status
            .as_deref()
            .map(html::badge)
            .unwrap_or_default()
    } else {
        html::badge(&m.delivery_status)
    };
    let history = format!(
        "{}{}{}",
        callbacks_html(callbacks),
        attempts_html(attempts),
        decisions_html(&m.routing)
    );
    let details = if history.is_empty() {
        String::new()
    } else {
        format!("<details><summary>History</summary>{history}</details>")
    };
    format!(
        r#"<article class="msg {dir}" data-message-id="{id}">
<div class="meta"><span class="dir">{arrow}</span> {time} · tenant {tenant} · language {lang} {status}
<a class="open" href="/console/messages/{id}">Open</a></div>
<p class="text">{text}</p>{details}</article>"#,
        dir = html::esc(&m.direction),
        id = m.id,
        time = html::time(m.created_at),
        tenant = html::opt(m.tenant_id.as_deref()),
        lang = html::opt(m.language_detected.as_deref()),
        text = html::esc(&m.content),
    )
}

fn search_form(number: &str) -> String {
    format!(
        r#"<form method="get" action="/console/numbers" class="search">
<label for="number">Phone number, written any way</label>
<input id="number" name="number" value="{}" placeholder="(415) 555-0101, +1 415 555 0101, ..." required>
<button type="submit">Show timeline</button></form>"#,
        html::esc(number)
    )
}

/// The timeline of a number.
pub async fn page(
    State(state): State<AppState>,
    operator: Operator,
    Query(search): Query<Search>,
) -> Result<Response, ConsoleError> {
    let Some(written) = search.number.filter(|n| !n.trim().is_empty()) else {
        return Ok(html::page("Numbers", Some(&operator), &search_form("")));
    };
    let cursor = search
        .cursor
        .as_deref()
        .map(conversations::decode_cursor)
        .transpose()?;
    let (number, _, _) = phone::sender(&written, state.cfg.common.default_region);
    let tenant = policy::confine(&operator.key, Action::Read, None)?;
    let conversation = sqlx::query_scalar!(
        "SELECT id FROM sms_conversations WHERE phone_number = $1",
        number
    )
    .fetch_optional(&state.pool)
    .await?;
    let (mut messages, next) = match conversation {
        Some(id) => {
            conversations::messages_page(&state.pool, id, tenant.as_deref(), cursor, PAGE).await?
        }
        None => (Vec::new(), None),
    };
    conversations::hide_global_routes(&operator.key, &mut messages);
    let (events, _) = opt_outs::ledger(
        &state.pool,
        &LedgerFilter {
            number: Some(number.clone()),
            tenant: tenant.clone(),
            ..Default::default()
        },
        50,
    )
    .await?;
    let mut body = search_form(&written);
    if messages.is_empty() && events.is_empty() && cursor.is_none() {
        body.push_str(&format!(
            r#"<p class="empty">No messages with {}.</p>"#,
            html::esc(&number)
        ));
        return Ok(html::page("Numbers", Some(&operator), &body));
    }
    body.push_str(&format!(
        r#"<h2>Timeline of <span class="number">{}</span></h2>"#,
        html::esc(&number)
    ));
    if !events.is_empty() && cursor.is_none() {
        body.push_str(&super::ledger::events_table("Opt-out events", &events));
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let (callbacks, attempts) = (
        callbacks(&state.pool, &ids).await?,
        attempts(&state.pool, &ids).await?,
    );
    for m in &messages {
        body.push_str(&message_html(
            m,
            callbacks.get(&m.id).map_or(&[], Vec::as_slice),
            attempts.get(&m.id).map_or(&[], Vec::as_slice),
        ));
    }
    if let Some(next) = next {
        body.push_str(&format!(
            r#"<p class="pager"><a rel="next" href="/console/numbers?number={}&amp;cursor={}">Older messages →</a></p>"#,
            html::q(&number),
            html::q(&next)
        ));
    }
    Ok(html::page("Numbers", Some(&operator), &body))
}

/// One message in full.
pub async fn message(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let m = sqlx::query!(
        r#"SELECT m.id, m.direction, m.from_number, m.to_number, m.message_content, m.twilio_sid,
                  m.delivery_status, m.route_status, m.language_detected, m.tenant_id, m.created_at,
                  m.error_code, c.phone_number AS "conversation_number?"
           FROM sms_messages m LEFT JOIN sms_conversations c ON c.id = m.conversation_id
           WHERE m.id = $1"#,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("no such message"))?;
    policy::authorize(
        &operator.key,
        Action::Read,
        Owner::record(m.tenant_id.as_deref()),
        "no such message",
    )?;
    let ids = [m.id];
    let callbacks = callbacks(&state.pool, &ids)
        .await?
        .remove(&m.id)
        .unwrap_or_default();
    let attempts = attempts(&state.pool, &ids)
        .await?
        .remove(&m.id)
        .unwrap_or_default();
    let mut decisions = conversations::decisions(&state.pool, &ids)
        .await?
        .remove(&m.id)
        .unwrap_or_default();
    conversations::hide_global_route_urls(&operator.key, m.tenant_id.as_deref(), &mut decisions);
    let number = m.conversation_number.clone().unwrap_or_default();
    let body = format!(
        r#"<dl class="facts">
<dt>Direction</dt><dd>{dir}</dd><dt>From</dt><dd>{from}</dd><dt>To</dt><dd>{to}</dd>
<dt>Received or created</dt><dd>{time}</dd><dt>Tenant</dt><dd>{tenant}</dd><dt>Language</dt><dd>{lang}</dd>
<dt>Twilio SID</dt><dd>{sid}</dd><dt>Status</dt><dd>{status}</dd><dt>Error code</dt><dd>{error}</dd>
</dl>
<p class="text">{text}</p>
{callbacks}{attempts}{decisions}
<p><a href="/console/numbers?number={q}">Timeline of {number}</a></p>"#,
        dir = html::esc(&m.direction),
        from = html::opt(m.from_number.as_deref()),
        to = html::opt(m.to_number.as_deref()),
        time = html::time(m.created_at),
        tenant = html::opt(m.tenant_id.as_deref()),
        lang = html::opt(m.language_detected.as_deref()),
        sid = html::opt(m.twilio_sid.as_deref()),
        status = if m.direction == "inbound" {
            m.route_status
                .as_deref()
                .map(html::badge)
                .unwrap_or_default()
        } else {
            html::badge(&m.delivery_status)
        },
        error = html::opt(m.error_code.as_deref()),
        text = html::esc(&m.message_content),
        callbacks = callbacks_html(&callbacks),
        attempts = attempts_html(&attempts),
        decisions = decisions_html(&decisions),
        q = html::q(&number),
        number = html::esc(&number),
    );
    Ok(html::page("Message", Some(&operator), &body))
}
