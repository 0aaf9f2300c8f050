//! The route delivery lifecycle: a processed inbound message goes to the agent that serves its
//! tenant (states in `shared::routing`).
//!
//! ```text
//! pending ─plan─▶ AlreadyDone (routed/unroutable/skipped)         nothing
//!         ├─────▶ Quarantine (unknown number, no route)           ─▶ unroutable
//!         └─────▶ Call agent ─decide─▶ Delivered (2xx)            ─▶ routed (+ reply send)
//!                                     ├▶ Retry (5xx/timeout, attempts left) ─▶ pending + job
//!                                     └▶ Unroutable (4xx, attempts exhausted) ─▶ unroutable
//! ```
//! The tenant is the message's own (the one it belonged to when received), else, for a message
//! stored without one, the conversation's current owner, to which it is then attached.
//! Route choice: the tenant's own route, else its conversation's workflow type, else the default.
//! The payload `{message, conversation, tenant, language}` is signed (`shared::agent_signature`).
//! The agent may answer `{"reply": "..."}`, which becomes an outbound message through
//! `shared::outbound::create`. Every decision and what it schedules commit in ONE transaction.
//! Delivery is at least once (a crash after the POST re-sends it): agents dedupe on `message.id`.

use std::time::Instant;

use serde_json::{Value, json};
use shared::{
    agent_signature,
    jobs::{self, RouteMessage, RouteMessages, When},
    outbound::{self, NewOutbound},
    retry::RetryPolicy,
    routing::{RouteReason, RouteStatus},
};
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

use crate::Deps;

/// `sms_routing_decisions.outcome` (CHECK in the lifecycle migration); also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingOutcome {
    Delivered,
    Replied,
    Retry,
    Unroutable,
}

impl RoutingOutcome {
    pub const ALL: [RoutingOutcome; 4] = [
        Self::Delivered,
        Self::Replied,
        Self::Retry,
        Self::Unroutable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Replied => "replied",
            Self::Retry => "retry",
            Self::Unroutable => "unroutable",
        }
    }
}

/// Why a message is in the quarantine (`sms_unroutable.reason`, CHECK in the migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    UnknownNumber,
    NoRoute,
    AgentRejected,
    AgentUnavailable,
}

impl Quarantine {
    pub const ALL: [Quarantine; 4] = [
        Self::UnknownNumber,
        Self::NoRoute,
        Self::AgentRejected,
        Self::AgentUnavailable,
    ];

    /// The decision's reason when the message is quarantined before any agent call; after a
    /// call, the reason is the route's own (the agent refused or never took it).
    pub fn reason_without_call(self) -> Option<RouteReason> {
        match self {
            Self::UnknownNumber => Some(RouteReason::UnknownNumber),
            Self::NoRoute => Some(RouteReason::NoRoute),
            Self::AgentRejected | Self::AgentUnavailable => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownNumber => "unknown_number",
            Self::NoRoute => "no_route",
            Self::AgentRejected => "agent_rejected",
            Self::AgentUnavailable => "agent_unavailable",
        }
    }
}

/// What a route job did; `label` is the metric's.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    Replied {
        reply_id: Uuid,
    },
    Retrying,
    Unroutable {
        reason: String,
    },
    AlreadyDone,
    /// Another run holds the message's claim: this job runs again when the claim expires.
    Deferred,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => RoutingOutcome::Delivered.as_str(),
            Outcome::Replied { .. } => RoutingOutcome::Replied.as_str(),
            Outcome::Retrying => RoutingOutcome::Retry.as_str(),
            Outcome::Unroutable { .. } => RoutingOutcome::Unroutable.as_str(),
            Outcome::AlreadyDone => "already_done",
            Outcome::Deferred => "deferred",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub id: Uuid,
    /// Which rule chose it.
    pub reason: RouteReason,
    pub url: String,
    secret: shared::secret::Secret,
}

/// The message as loaded, with the route that serves it.
struct Loaded {
    status: Option<RouteStatus>,
    tenant_id: Option<String>,
    route: Option<Route>,
    conversation_id: Uuid,
    phone_number: String,
    payload: Value,
}

/// Before the call: what the loaded state asks for.
#[derive(Debug, PartialEq)]
pub enum Plan<'a> {
    AlreadyDone,
    Quarantine(Quarantine, &'static str),
    Call(&'a Route),
}

pub fn plan(status: Option<RouteStatus>, has_tenant: bool, route: Option<&Route>) -> Plan<'_> {
    match (status, has_tenant, route) {
        (Some(s), _, _) if s.is_final() => Plan::AlreadyDone,
        (_, false, _) => Plan::Quarantine(Quarantine::UnknownNumber, "no tenant for this number"),
        (_, true, None) => Plan::Quarantine(
            Quarantine::NoRoute,
            "no route for this tenant, its workflow or a default",
        ),
        (_, true, Some(route)) => Plan::Call(route),
    }
}

/// After the call: the agent's HTTP status (None: timeout or connection error), the attempt just
/// made (0-based) and the policy decide the transition.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Delivered,
    Retry { failed: u32, detail: String },
    Unroutable(Quarantine, String),
}

pub fn decide(status: Option<u16>, attempt: u32, policy: &RetryPolicy) -> Decision {
    let detail = status.map_or("timeout or connection error".to_owned(), |s| {
        format!("agent answered {s}")
    });
    match status {
        Some(s) if (200..300).contains(&s) => Decision::Delivered,
        Some(s) if (400..500).contains(&s) => {
            Decision::Unroutable(Quarantine::AgentRejected, detail)
        }
        _ if policy.allows_another(attempt + 1) => Decision::Retry {
            failed: attempt + 1,
            detail,
        },
        _ => Decision::Unroutable(
            Quarantine::AgentUnavailable,
            format!("{detail} after {} attempts", attempt + 1),
        ),
    }
}

/// Routes a job's messages, each on its own and at once, as many at a time as `slots` allows:
/// the queue's share of the connection budget counts messages in flight, not jobs, so a batch
/// never outgrows what one job may use. Every message is tried before an error is returned (a
/// re-run of the job finds the others done); each outcome is counted.
pub async fn process_all(
    deps: &Deps,
    job: RouteMessages,
    slots: &tokio::sync::Semaphore,
) -> anyhow::Result<Vec<Outcome>> {
    let runs = job.messages.into_iter().map(|message| async move {
        let _slot = slots.acquire().await?;
        let outcome = process(deps, message).await?;
        deps.metrics.route(outcome.label());
        anyhow::Ok(outcome)
    });
    futures::future::join_all(runs).await.into_iter().collect()
}

#[tracing::instrument(name = "route_message", skip_all, fields(message_id = %job.message_id, attempt = job.attempt), err)]
pub async fn process(deps: &Deps, job: RouteMessage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some(m) = load(deps, job.message_id).await? else {
        return Ok(Outcome::AlreadyDone);
    };
    let route = match plan(m.status, m.tenant_id.is_some(), m.route.as_ref()) {
        Plan::AlreadyDone => return Ok(Outcome::AlreadyDone),
        Plan::Quarantine(reason, detail) => {
            let mut tx = deps.pool.begin().await?;
            let entry = Entry {
                // `plan` quarantines only for want of a tenant or a route.
                reason: reason.reason_without_call().unwrap_or(RouteReason::NoRoute),
                route: None,
                call: None,
            };
            record(
                &mut tx,
                &job,
                &entry,
                RoutingOutcome::Unroutable,
                Some(detail),
            )
            .await?;
            let outcome = quarantine(&mut tx, &job, m.tenant_id.as_deref(), reason, detail).await?;
            tx.commit().await?;
            return Ok(outcome);
        }
        Plan::Call(route) => route,
    };
    let run = Uuid::new_v4();
    let claim_for = deps.route_timeout + CLAIM_MARGIN;
    match claim(deps, job.message_id, run, claim_for).await? {
        Claim::Taken { rerun } => {
            if rerun {
                deps.metrics.route_rerun();
                tracing::warn!("agent call made again: the run that claimed this message died");
            }
        }
        Claim::Held { until } => return defer(deps, &job, until).await,
        Claim::Done => return Ok(Outcome::AlreadyDone),
    }
    let call = call_agent(deps, route, &m.payload).await?;
    let decision = decide(call.status, job.attempt, &deps.route_retry);
    let mut tx = deps.pool.begin().await?;
    let entry = Entry {
        reason: route.reason,
        route: Some(route),
        call: Some(&call),
    };
    let outcome = apply(deps, &mut tx, &job, run, &m, &entry, decision).await?;
    if outcome == Outcome::AlreadyDone {
        return Ok(outcome); // another run routed it: roll back
    }
    tx.commit().await?;
    tracing::info!(
        route = route.reason.as_str(),
        ?outcome,
        latency_ms = call.latency_ms,
        "routing decision"
    );
    Ok(outcome)
}

/// A claim outlives the agent's time-out by this much: the run still has to record the answer.
const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether this run may call the agent.
#[derive(Debug, PartialEq)]
enum Claim {
    /// Ours; `rerun` when it took over an expired claim (the run before died after claiming).
    Taken { rerun: bool },
    /// Another run's, live until then.
    Held {
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The message is no longer waiting for its route.
    Done,
}

/// Claims a pending message for one agent call (owner `run`, for `claim_for`), counting the call.
/// One statement: of two concurrent runs, the second sees the first's claim.
async fn claim(
    deps: &Deps,
    message_id: Uuid,
    run: Uuid,
    claim_for: std::time::Duration,
) -> anyhow::Result<Claim> {
    let taken = sqlx::query_scalar!(
        r#"UPDATE sms_messages m
           SET route_claimed_by = $2, route_claimed_until = now() + make_interval(secs => $3),
               route_calls = m.route_calls + 1
           FROM (SELECT route_claimed_until FROM sms_messages WHERE id = $1) AS before
           WHERE m.id = $1 AND (m.route_status IS NULL OR m.route_status = $4)
             AND (m.route_claimed_until IS NULL OR m.route_claimed_until < now())
           RETURNING before.route_claimed_until IS NOT NULL AS "rerun!""#,
        message_id,
        run,
        claim_for.as_secs_f64(),
        RouteStatus::Pending.as_str()
    )
    .fetch_optional(&deps.pool)
    .await?;
    if let Some(rerun) = taken {
        return Ok(Claim::Taken { rerun });
    }
    let until = sqlx::query_scalar!(
        r#"SELECT route_claimed_until AS "until!" FROM sms_messages
           WHERE id = $1 AND route_claimed_until > now()"#,
        message_id
    )
    .fetch_optional(&deps.pool)
    .await?;
    Ok(match until {
        Some(until) => Claim::Held { until },
        // No live claim: another run finished the message meanwhile.
        None => Claim::Done,
    })
}

/// Gives the claim back with a retry's decision (in its transaction), so the retry may claim at
/// once; a final decision clears the claim in the same statement that settles the message.
async fn release(tx: &mut PgConnection, message_id: Uuid, run: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE sms_messages SET route_claimed_by = NULL, route_claimed_until = NULL
         WHERE id = $1 AND route_claimed_by = $2",
        message_id,
        run
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Another run holds the claim: run this job again once it expires (a live run finishes first;
/// a dead one's claim is then taken over).
async fn defer(
    deps: &Deps,
    job: &RouteMessage,
    until: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Outcome> {
    let after = (until - chrono::Utc::now()).to_std().unwrap_or_default()
        + std::time::Duration::from_secs(1);
    let again = RouteMessage {
        message_id: job.message_id,
        attempt: job.attempt,
        trace: shared::telemetry::TraceContext::current(),
    };
    let mut conn = deps.pool.acquire().await?;
    jobs::schedule(&mut conn, &[RouteMessages::one(again)], When::after(after)).await?;
    Ok(Outcome::Deferred)
}

/// What a decision row records besides its outcome: which rule chose the route (or why there was
/// none), the route, and the agent's answer.
struct Entry<'a> {
    reason: RouteReason,
    route: Option<&'a Route>,
    call: Option<&'a AgentCall>,
}

/// The transition after the call, with the job it schedules, in the caller's transaction.
async fn apply(
    deps: &Deps,
    tx: &mut PgConnection,
    job: &RouteMessage,
    run: Uuid,
    m: &Loaded,
    entry: &Entry<'_>,
    decision: Decision,
) -> anyhow::Result<Outcome> {
    match decision {
        Decision::Delivered => delivered(deps, tx, job, m, entry).await,
        Decision::Retry { failed, detail } => {
            release(tx, job.message_id, run).await?;
            let after = deps.route_retry.delay(failed, None);
            let detail = format!("{detail}; retry in {} ms", after.as_millis());
            record(tx, job, entry, RoutingOutcome::Retry, Some(&detail)).await?;
            let next = RouteMessage {
                message_id: job.message_id,
                attempt: failed,
                trace: shared::telemetry::TraceContext::current(),
            };
            jobs::schedule(tx, &[RouteMessages::one(next)], When::after(after)).await?;
            Ok(Outcome::Retrying)
        }
        Decision::Unroutable(reason, detail) => {
            record(tx, job, entry, RoutingOutcome::Unroutable, Some(&detail)).await?;
            quarantine(tx, job, m.tenant_id.as_deref(), reason, &detail).await
        }
    }
}

/// The message, its conversation and tenant, and the route that serves it, in one statement:
/// the tenant's own route, else its conversation's workflow type's, else the default (none
/// without a tenant).
async fn load(deps: &Deps, message_id: Uuid) -> anyhow::Result<Option<Loaded>> {
    let Some(m) = sqlx::query!(
        r#"SELECT m.id, m.message_content, m.twilio_sid, m.created_at, m.route_status,
                  m.language_detected, m.language_confidence,
                  c.id AS "conversation_id!", c.phone_number, c.workflow_type, c.workflow_id,
                  COALESCE(m.tenant_id, c.tenant_id) AS tenant_id,
                  c.language_detected AS conv_language,
                  t.name AS "tenant_name?", t.language_preference AS "tenant_language?",
                  r.id AS "route_id?", r.tenant_id AS "route_tenant_id?",
                  r.workflow_type AS "route_workflow_type?", r.agent_url AS "agent_url?",
                  r.signing_secret AS "signing_secret?"
           FROM sms_messages m
           JOIN sms_conversations c ON c.id = m.conversation_id
           LEFT JOIN tenant_profiles t ON t.tenant_id = COALESCE(m.tenant_id, c.tenant_id)
           LEFT JOIN LATERAL (
               SELECT id, tenant_id, workflow_type, agent_url, signing_secret FROM agent_routes
               WHERE COALESCE(m.tenant_id, c.tenant_id) IS NOT NULL
                 AND (tenant_id = COALESCE(m.tenant_id, c.tenant_id) OR workflow_type = c.workflow_type OR is_default)
               ORDER BY (tenant_id IS NOT NULL) DESC, (workflow_type IS NOT NULL) DESC
               LIMIT 1
           ) r ON true
           WHERE m.id = $1 AND m.direction = 'inbound'"#,
        message_id
    )
    .fetch_optional(&deps.pool)
    .await?
    else {
        return Ok(None);
    };
    let route = match (m.route_id, &m.agent_url, &m.signing_secret) {
        (Some(id), Some(url), Some(secret)) => Some(Route {
            id,
            reason: RouteReason::of_route(
                m.route_tenant_id.is_some(),
                m.route_workflow_type.is_some(),
            ),
            url: url.clone(),
            secret: secret.clone().into(),
        }),
        _ => None,
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
        "tenant": {"tenant_id": m.tenant_id, "name": m.tenant_name, "language_preference": m.tenant_language},
        "language": {"detected": m.language_detected, "confidence": m.language_confidence, "conversation": m.conv_language},
    });
    Ok(Some(Loaded {
        status: m.route_status.as_deref().and_then(RouteStatus::parse),
        tenant_id: m.tenant_id,
        route,
        conversation_id: m.conversation_id,
        phone_number: m.phone_number,
        payload,
    }))
}

/// The agent's answer: its status (None: timeout or connection error), its reply text, and its
/// time including its body (a slow body is the agent's, not ours).
struct AgentCall {
    status: Option<u16>,
    reply: Option<String>,
    latency_ms: i32,
}

async fn call_agent(deps: &Deps, route: &Route, payload: &Value) -> anyhow::Result<AgentCall> {
    let body = serde_json::to_vec(payload)?;
    let ts = chrono::Utc::now().timestamp();
    let started = Instant::now();
    // The agent's request is a client span of its own, and the agent gets its `traceparent`.
    let span = tracing::info_span!("agent_request", otel.kind = "client", route_id = %route.id,
        http.response.status_code = tracing::field::Empty);
    // An address written in the URL never reaches the resolver's fence: checked here.
    if let Err(why) = reqwest::Url::parse(&route.url)
        .map_err(|e| e.to_string())
        .and_then(|u| deps.agent_fence.check_literal(&u))
    {
        tracing::warn!(route_id = %route.id, problem = %why, "agent URL refused by the fence");
        return Ok(AgentCall {
            status: None,
            reply: None,
            latency_ms: 0,
        });
    }
    let request = deps
        .http
        .post(&route.url)
        .timeout(deps.route_timeout)
        .header("content-type", "application/json")
        .header(agent_signature::TIMESTAMP_HEADER, ts.to_string())
        .header(
            agent_signature::SIGNATURE_HEADER,
            agent_signature::sign(route.secret.expose(), ts, &body),
        )
        .body(body);
    let sent = shared::telemetry::inject(request, &span)
        .send()
        .instrument(span.clone())
        .await;
    let (status, answer) = match sent {
        Ok(resp) => {
            span.record("http.response.status_code", resp.status().as_u16());
            let status = resp.status().as_u16();
            (
                Some(status),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "agent unreachable");
            (None, Value::Null)
        }
    };
    let reply = answer.get("reply").and_then(Value::as_str).map(str::trim);
    Ok(AgentCall {
        status,
        reply: reply.filter(|r| !r.is_empty()).map(str::to_owned),
        latency_ms: started.elapsed().as_millis() as i32,
    })
}

/// 2xx: the message is routed and the agent's reply, if any, becomes an outbound message, in
/// one transaction. A reply that cannot be sent (the tenant opted out, over the body limit) is
/// recorded in the decision's detail instead.
async fn delivered(
    deps: &Deps,
    tx: &mut PgConnection,
    job: &RouteMessage,
    m: &Loaded,
    entry: &Entry<'_>,
) -> anyhow::Result<Outcome> {
    let claimed = sqlx::query!(
        // A message stored without a tenant is attached to the one it is routed for.
        "UPDATE sms_messages SET route_status = $2, tenant_id = COALESCE(tenant_id, $3), updated_at = now(),
                route_claimed_by = NULL, route_claimed_until = NULL
         WHERE id = $1 AND route_status IS DISTINCT FROM $2",
        job.message_id,
        RouteStatus::Routed.as_str(),
        m.tenant_id
    )
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(Outcome::AlreadyDone);
    }
    let Some(text) = entry.call.and_then(|c| c.reply.as_deref()) else {
        record(tx, job, entry, RoutingOutcome::Delivered, None).await?;
        return Ok(Outcome::Delivered);
    };
    // A conversation's number may be one that takes no texts (a short code, an alphanumeric
    // sender): the reply is not sent, and the decision says why.
    let to = match shared::phone::recipient(&m.phone_number, deps.region) {
        Ok(to) => to,
        Err(why) => {
            tracing::warn!(%why, "agent reply not sent: the number takes no texts");
            let detail = format!("reply not sent: {why}");
            record(tx, job, entry, RoutingOutcome::Delivered, Some(&detail)).await?;
            return Ok(Outcome::Delivered);
        }
    };
    let reply = NewOutbound {
        conversation_id: m.conversation_id,
        to: &to,
        body: text,
        media_urls: &[],
        schedule: None,
        quiet_hours: Some(&deps.quiet_hours),
        quiet_hours_override: false,
        opt_out_confirmation: false,
    };
    match outbound::create(tx, &deps.sender, &reply).await? {
        Ok(created) => {
            let detail = format!("reply {}", created.message_id);
            record(tx, job, entry, RoutingOutcome::Replied, Some(&detail)).await?;
            Ok(Outcome::Replied {
                reply_id: created.message_id,
            })
        }
        Err(refused) => {
            tracing::warn!(%refused, "agent reply not sent");
            let detail = format!("reply not sent: {refused}");
            record(tx, job, entry, RoutingOutcome::Delivered, Some(&detail)).await?;
            Ok(Outcome::Delivered)
        }
    }
}

async fn record(
    tx: &mut PgConnection,
    job: &RouteMessage,
    entry: &Entry<'_>,
    outcome: RoutingOutcome,
    detail: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query!(
        r#"INSERT INTO sms_routing_decisions (message_id, attempt, route_id, reason, agent_url, agent_status, outcome, detail, latency_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        job.message_id,
        job.attempt as i32,
        entry.route.map(|r| r.id),
        entry.reason.as_str(),
        entry.route.map(|r| r.url.as_str()),
        entry.call.and_then(|c| c.status).map(i32::from),
        outcome.as_str(),
        detail,
        entry.call.map(|c| c.latency_ms)
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks the message unroutable and puts it in the quarantine (in the caller's transaction).
async fn quarantine(
    tx: &mut PgConnection,
    job: &RouteMessage,
    tenant_id: Option<&str>,
    reason: Quarantine,
    detail: &str,
) -> anyhow::Result<Outcome> {
    sqlx::query!(
        "UPDATE sms_messages SET route_status = $2, tenant_id = COALESCE(tenant_id, $3), updated_at = now(),
                route_claimed_by = NULL, route_claimed_until = NULL
         WHERE id = $1",
        job.message_id,
        RouteStatus::Unroutable.as_str(),
        tenant_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO sms_unroutable (message_id, tenant_id, reason, detail) VALUES ($1, $2, $3, $4)
           ON CONFLICT (message_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, reason = EXCLUDED.reason,
               detail = EXCLUDED.detail, created_at = now(), replayed_at = NULL"#,
        job.message_id,
        tenant_id,
        reason.as_str(),
        detail
    )
    .execute(&mut *tx)
    .await?;
    tracing::warn!(
        reason = reason.as_str(),
        "message quarantined as unroutable"
    );
    Ok(Outcome::Unroutable {
        reason: reason.as_str().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn plan_over_every_state() {
        use RouteStatus::*;
        let r = Route {
            id: Uuid::nil(),
            reason: RouteReason::Default,
            url: "http://agent".into(),
            secret: "s".to_owned().into(),
        };
        let table = [
            (Some(Routed), true, true, "done"),
            (Some(Unroutable), true, true, "done"),
            (Some(Skipped), true, true, "done"),
            (Some(Pending), false, false, "unknown_number"),
            (Some(Pending), false, true, "unknown_number"),
            (None, false, true, "unknown_number"),
            (Some(Pending), true, false, "no_route"),
            (Some(Pending), true, true, "call"),
            (None, true, true, "call"),
        ];
        for (status, tenant, route, want) in table {
            let got = match plan(status, tenant, route.then_some(&r)) {
                Plan::AlreadyDone => "done",
                Plan::Quarantine(q, _) => q.as_str(),
                Plan::Call(_) => "call",
            };
            assert_eq!(got, want, "{status:?} tenant={tenant} route={route}");
        }
    }

    #[test]
    fn decide_over_every_answer_and_attempt() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let table: &[(Option<u16>, u32, &str)] = &[
            (Some(200), 0, "delivered"),
            (Some(204), 2, "delivered"),
            (Some(400), 0, "agent_rejected"),
            (Some(404), 1, "agent_rejected"),
            (Some(500), 0, "retry"),
            (Some(503), 1, "retry"),
            (None, 1, "retry"),
            (Some(500), 2, "agent_unavailable"),
            (None, 2, "agent_unavailable"),
            (Some(302), 0, "retry"),
        ];
        for (status, attempt, want) in table {
            let got = match decide(*status, *attempt, &policy) {
                Decision::Delivered => "delivered",
                Decision::Retry { failed, .. } => {
                    assert_eq!(failed, attempt + 1);
                    "retry"
                }
                Decision::Unroutable(q, _) => q.as_str(),
            };
            assert_eq!(got, *want, "{status:?} attempt {attempt}");
        }
        assert_eq!(
            decide(None, 2, &policy),
            Decision::Unroutable(
                Quarantine::AgentUnavailable,
                "timeout or connection error after 3 attempts".into()
            )
        );
    }
}
