//! Routing a processed inbound message to the agent that serves its tenant.
//!
//! Route choice: the tenant's own route, else its conversation's workflow type, else the default.
//! The payload `{message, conversation, tenant, language}` is signed (see
//! `shared::agent_signature`). The agent may answer `{"reply": "..."}`, which becomes an outbound
//! send on the same conversation (a reply: ahead of bulk sends). 5xx and timeouts are retried
//! durably with backoff, then the message is unroutable; 4xx is unroutable at once. Unknown
//! numbers and messages without a route go to the quarantine (`sms_unroutable`). Delivery to the
//! agent is at least once (a crash after the POST re-sends it): agents dedupe on `message.id`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::{
    agent_signature,
    jobs::{self, RouteMessage, SendMessage},
    segments,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::Deps;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    Replied { reply_id: Uuid },
    Retrying,
    Unroutable { reason: String },
    AlreadyDone,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Replied { .. } => "replied",
            Outcome::Retrying => "retrying",
            Outcome::Unroutable { .. } => "unroutable",
            Outcome::AlreadyDone => "already_done",
        }
    }
}

struct Route {
    id: Uuid,
    reason: &'static str,
    url: String,
    secret: String,
}

#[tracing::instrument(name = "route_message", skip_all, fields(message_id = %job.message_id, attempt = job.attempt), err)]
pub async fn process(deps: &Deps, job: RouteMessage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some(m) = sqlx::query!(
        r#"SELECT m.id, m.message_content, m.twilio_sid, m.created_at, m.route_status,
                  m.language_detected, m.language_confidence, m.from_number,
                  c.id AS "conversation_id!", c.phone_number, c.tenant_id, c.workflow_type, c.workflow_id,
                  c.language_detected AS conv_language,
                  t.name AS "tenant_name?", t.language_preference AS "tenant_language?"
           FROM sms_messages m
           JOIN sms_conversations c ON c.id = m.conversation_id
           LEFT JOIN tenant_profiles t ON t.tenant_id = c.tenant_id
           WHERE m.id = $1 AND m.direction = 'inbound'"#,
        job.message_id
    )
    .fetch_optional(&deps.pool)
    .await?
    else {
        return Ok(Outcome::AlreadyDone);
    };
    if matches!(
        m.route_status.as_deref(),
        Some("routed") | Some("unroutable") | Some("skipped")
    ) {
        return Ok(Outcome::AlreadyDone);
    }
    let Some(tenant_id) = m.tenant_id.clone() else {
        return quarantine(
            deps,
            &job,
            None,
            "unknown_number",
            "no tenant for this number",
        )
        .await;
    };
    let route = sqlx::query!(
        r#"SELECT id, tenant_id, workflow_type, agent_url, signing_secret FROM agent_routes
           WHERE tenant_id = $1 OR workflow_type = $2 OR is_default
           ORDER BY (tenant_id IS NOT NULL) DESC, (workflow_type IS NOT NULL) DESC
           LIMIT 1"#,
        tenant_id,
        m.workflow_type
    )
    .fetch_optional(&deps.pool)
    .await?
    .map(|r| Route {
        id: r.id,
        reason: if r.tenant_id.is_some() {
            "tenant"
        } else if r.workflow_type.is_some() {
            "workflow_type"
        } else {
            "default"
        },
        url: r.agent_url,
        secret: r.signing_secret,
    });
    let Some(route) = route else {
        return quarantine(
            deps,
            &job,
            Some(&tenant_id),
            "no_route",
            "no route for this tenant, its workflow or a default",
        )
        .await;
    };

    let payload = json!({
        "message": {
            "id": m.id,
            "content": m.message_content,
            "twilio_sid": m.twilio_sid,
            "received_at": m.created_at,
            "language": m.language_detected,
        },
        "conversation": {
            "id": m.conversation_id,
            "phone_number": m.phone_number,
            "workflow_type": m.workflow_type,
            "workflow_id": m.workflow_id,
        },
        "tenant": {"tenant_id": tenant_id, "name": m.tenant_name, "language_preference": m.tenant_language},
        "language": {"detected": m.language_detected, "confidence": m.language_confidence, "conversation": m.conv_language},
    });
    let body = serde_json::to_vec(&payload)?;
    let ts = chrono::Utc::now().timestamp();
    let started = Instant::now();
    // The agent's request is a client span of its own, and the agent gets its `traceparent`.
    let call = tracing::info_span!(
        "agent_request",
        otel.kind = "client",
        route_id = %route.id,
        http.response.status_code = tracing::field::Empty,
    );
    let request = deps
        .http
        .post(&route.url)
        .timeout(deps.route_timeout)
        .header("content-type", "application/json")
        .header(agent_signature::TIMESTAMP_HEADER, ts.to_string())
        .header(
            agent_signature::SIGNATURE_HEADER,
            agent_signature::sign(&route.secret, ts, &body),
        )
        .body(body);
    let sent = shared::telemetry::inject(request, &call)
        .send()
        .instrument(call.clone())
        .await;
    if let Ok(resp) = &sent {
        call.record("http.response.status_code", resp.status().as_u16());
    }
    let (status, answer) = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            (Some(status), answer)
        }
        Err(e) => {
            tracing::warn!(error = %e, "agent unreachable");
            (None, Value::Null)
        }
    };
    // The agent's time includes sending its body (a slow body is the agent's, not ours).
    let latency_ms = started.elapsed().as_millis() as i32;
    let attempt = job.attempt as i32;
    let mut tx = deps.pool.begin().await?;
    let outcome = match status {
        Some(s) if (200..300).contains(&s) => {
            let claimed = sqlx::query!(
                "UPDATE sms_messages SET route_status = 'routed', updated_at = now() WHERE id = $1 AND route_status IS DISTINCT FROM 'routed'",
                m.id
            )
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                return Ok(Outcome::AlreadyDone);
            }
            let reply = answer
                .get("reply")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|r| !r.is_empty());
            match reply {
                Some(text) => {
                    let reply_id =
                        queue_reply(deps, &mut tx, m.conversation_id, &m.phone_number, text)
                            .await?;
                    record(
                        &mut tx,
                        m.id,
                        attempt,
                        &route,
                        s,
                        "replied",
                        reply_id.map(|id| format!("reply {id}")),
                        latency_ms,
                    )
                    .await?;
                    match reply_id {
                        Some(reply_id) => Outcome::Replied { reply_id },
                        None => Outcome::Delivered,
                    }
                }
                None => {
                    record(
                        &mut tx,
                        m.id,
                        attempt,
                        &route,
                        s,
                        "delivered",
                        None,
                        latency_ms,
                    )
                    .await?;
                    Outcome::Delivered
                }
            }
        }
        Some(s) if (400..500).contains(&s) => {
            record(
                &mut tx,
                m.id,
                attempt,
                &route,
                s,
                "unroutable",
                Some(format!("agent answered {s}")),
                latency_ms,
            )
            .await?;
            tx.commit().await?;
            return quarantine(
                deps,
                &job,
                Some(&tenant_id),
                "agent_rejected",
                &format!("agent answered {s}"),
            )
            .await;
        }
        _ if job.attempt + 1 < deps.route_max_attempts => {
            let after = deps
                .route_backoff_base
                .saturating_mul(1 << job.attempt.min(10))
                .min(Duration::from_secs(600));
            let detail = status.map_or("timeout or connection error".to_owned(), |s| {
                format!("agent answered {s}")
            });
            record(
                &mut tx,
                m.id,
                attempt,
                &route,
                status.unwrap_or(0),
                "retry",
                Some(format!("{detail}; retry in {} ms", after.as_millis())),
                latency_ms,
            )
            .await?;
            jobs::push(
                &mut tx,
                jobs::ROUTE,
                &[RouteMessage {
                    message_id: m.id,
                    attempt: job.attempt + 1,
                    trace: shared::telemetry::TraceContext::current(),
                }],
                Some(after),
            )
            .await?;
            Outcome::Retrying
        }
        _ => {
            let detail = status.map_or("timeout or connection error".to_owned(), |s| {
                format!("agent answered {s}")
            });
            record(
                &mut tx,
                m.id,
                attempt,
                &route,
                status.unwrap_or(0),
                "unroutable",
                Some(detail.clone()),
                latency_ms,
            )
            .await?;
            tx.commit().await?;
            return quarantine(
                deps,
                &job,
                Some(&tenant_id),
                "agent_unavailable",
                &format!("{detail} after {} attempts", job.attempt + 1),
            )
            .await;
        }
    };
    tx.commit().await?;
    tracing::info!(
        route = route.reason,
        ?outcome,
        latency_ms,
        "routing decision"
    );
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn record(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    attempt: i32,
    route: &Route,
    status: u16,
    outcome: &str,
    detail: Option<String>,
    latency_ms: i32,
) -> anyhow::Result<()> {
    sqlx::query!(
        r#"INSERT INTO sms_routing_decisions (message_id, attempt, route_id, reason, agent_url, agent_status, outcome, detail, latency_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        message_id,
        attempt,
        route.id,
        route.reason,
        route.url,
        (status > 0).then_some(status as i32),
        outcome,
        detail,
        latency_ms
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Queues the agent's reply as an outbound send on the conversation, unless the tenant opted out.
async fn queue_reply(
    deps: &Deps,
    tx: &mut sqlx::PgConnection,
    conversation_id: Uuid,
    to: &str,
    text: &str,
) -> anyhow::Result<Option<Uuid>> {
    let from = deps
        .outbound
        .as_ref()
        .and_then(|(o, _)| o.phone_number.clone());
    let opted_out = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM sms_opt_outs WHERE their_number = $1 AND opted_out) AS "o!""#,
        to
    )
    .fetch_one(&mut *tx)
    .await?;
    if opted_out {
        tracing::warn!("agent reply not sent: the tenant opted out");
        return Ok(None);
    }
    let text: String = text.chars().take(1600).collect();
    let (segments, encoding) = segments::count(&text);
    let id = sqlx::query_scalar!(
        r#"INSERT INTO sms_messages (conversation_id, direction, message_content, delivery_status, to_number,
               from_number, num_segments, encoding, priority, status_updated_at)
           VALUES ($1, 'outbound', $2, 'pending', $3, $4, $5, $6, 10, now()) RETURNING id"#,
        conversation_id,
        text,
        to,
        from,
        segments as i32,
        encoding.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    jobs::push_with_priority(
        tx,
        jobs::OUTBOUND_SEND,
        &[SendMessage {
            message_id: id,
            slot: None,
            trace: shared::telemetry::TraceContext::current(),
        }],
        None,
        10,
    )
    .await?;
    Ok(Some(id))
}

async fn quarantine(
    deps: &Deps,
    job: &RouteMessage,
    tenant_id: Option<&str>,
    reason: &str,
    detail: &str,
) -> anyhow::Result<Outcome> {
    let mut tx = deps.pool.begin().await?;
    sqlx::query!(
        "UPDATE sms_messages SET route_status = 'unroutable', updated_at = now() WHERE id = $1",
        job.message_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO sms_unroutable (message_id, tenant_id, reason, detail) VALUES ($1, $2, $3, $4)
           ON CONFLICT (message_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, reason = EXCLUDED.reason,
               detail = EXCLUDED.detail, created_at = now(), replayed_at = NULL"#,
        job.message_id,
        tenant_id,
        reason,
        detail
    )
    .execute(&mut *tx)
    .await?;
    if reason == "unknown_number" || reason == "no_route" {
        sqlx::query!(
            "INSERT INTO sms_routing_decisions (message_id, attempt, reason, outcome, detail) VALUES ($1, $2, $3, 'unroutable', $4)",
            job.message_id,
            job.attempt as i32,
            reason,
            detail
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::warn!(reason, "message quarantined as unroutable");
    Ok(Outcome::Unroutable {
        reason: reason.to_owned(),
    })
}
