//! The inbound processing lifecycle: a stored webhook becomes a message of a conversation.
//!
//! ```text
//! stored (processed_at NULL) ─decide─▶ sender normalised, language detected, opt-out keyword read
//!        ─call: resolve the tenant (cache, directory, Monitor)─▶
//!        ─apply (ONE transaction)─▶ processed: conversation linked, languages merged, tenant's
//!          last number (and a language job), opt change recorded, route_status pending + route
//!          job, or skipped (opt-out keywords are the carrier's business, not an agent's)
//! ```
//! Idempotent: a message is linked exactly once (guarded by `processed_at`), so a job re-run
//! after a crash changes nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::{
    jobs::{self, NotifyLanguage, ProcessInbound, RouteMessage, When},
    language::{self, Detection, Language},
    optout::{self, OptChange},
    phone,
    routing::RouteStatus,
    tenants::Resolution,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Deps;

/// Where a stored message is in its processing (`sms_messages.processed_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundState {
    Stored,
    Processed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Processed {
        conversation_id: Uuid,
        tenant_id: Option<String>,
        language: Option<Detection>,
    },
    /// Already linked by an earlier run.
    AlreadyProcessed,
    /// No such message (deleted, or a job from another database).
    Missing,
}

pub struct Stored {
    pub state: InboundState,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub body: String,
    pub raw: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// An opt-out or opt-in: the change, the keyword, the rule that found it, and Twilio's
/// `OptOutType` when it sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct OptChangeSeen {
    pub change: OptChange,
    pub keyword: Option<String>,
    pub rule: String,
    pub kind: Option<String>,
}

/// What processing a stored message does, before the directory is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The sender as written.
    pub original: String,
    /// E.164 when it is a phone number.
    pub e164: Option<phone::E164>,
    /// The conversation's key: E.164, or the written form of a short code or alphanumeric ID.
    pub number: String,
    pub kind: phone::NumberKind,
    pub detection: Option<Detection>,
    pub opt_change: Option<OptChangeSeen>,
    pub route: RouteStatus,
}

/// Pure: everything about a message that needs no lookup.
pub fn decide(msg: &Stored, region: phonenumber::country::Id) -> Decision {
    let original = msg.from_number.clone().unwrap_or_default();
    // Senders that are not phone numbers (short codes, alphanumeric IDs) keep their written form.
    let (number, e164, kind) = phone::sender(&original, region);
    let opt_change = opt_change(msg);
    Decision {
        original,
        e164,
        number,
        kind,
        detection: language::detect(&msg.body),
        route: if opt_change.is_some() {
            RouteStatus::Skipped
        } else {
            RouteStatus::Pending
        },
        opt_change,
    }
}

/// Messages of one job processed at once.
const MESSAGES_IN_FLIGHT: usize = 16;

/// Processes every message of a job, each in the trace of the webhook that stored it. All are
/// attempted even when some fail; the job then fails and its re-run skips the messages already
/// linked.
pub async fn process_batch(deps: &Deps, job: &ProcessInbound) -> anyhow::Result<()> {
    use futures::StreamExt;
    let failures: Vec<anyhow::Error> = futures::stream::iter(job.message_ids.iter().copied())
        .map(|id| process_traced(deps, id, job.traces.get(&id)))
        .buffer_unordered(MESSAGES_IN_FLIGHT)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first.context("processing an inbound batch")),
    }
}

pub async fn process(deps: &Deps, message_id: Uuid) -> anyhow::Result<Outcome> {
    process_traced(deps, message_id, None).await
}

#[tracing::instrument(name = "process_inbound", skip_all, fields(message_id = %message_id), err)]
async fn process_traced(
    deps: &Deps,
    message_id: Uuid,
    trace: Option<&shared::telemetry::TraceContext>,
) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(trace);
    let Some(msg) = load(deps, message_id).await? else {
        tracing::warn!("inbound job for a message that does not exist");
        return Ok(Outcome::Missing);
    };
    if msg.state == InboundState::Processed {
        return Ok(Outcome::AlreadyProcessed);
    }
    let d = decide(&msg, deps.region);
    // Directory lookups happen before the transaction so no row is locked while waiting on HTTP.
    let resolution = deps.tenants.resolve(&d.original, d.e164.as_ref()).await?;
    let tenant_id = match &resolution {
        Resolution::Found(t) => Some(t.tenant_id.clone()),
        Resolution::Unknown | Resolution::Unavailable => None,
    };
    let mut tx = deps.pool.begin().await?;
    let owner_known = !matches!(resolution, Resolution::Unavailable);
    let linked = link(
        &mut tx,
        message_id,
        &msg,
        &d,
        tenant_id.as_deref(),
        owner_known,
    )
    .await?;
    let Some(conv) = linked else {
        // A concurrent run linked it first; leave everything as that run wrote it.
        return Ok(Outcome::AlreadyProcessed);
    };
    if let Some(tenant_id) = &conv.tenant_id {
        update_tenant(deps, &mut tx, tenant_id, &d.number, d.detection).await?;
    }
    if let Some(seen) = &d.opt_change {
        let recorded = record_opt_change(
            &mut tx,
            &msg,
            &d.number,
            message_id,
            conv.tenant_id.as_deref(),
            seen,
        )
        .await?;
        if recorded.newly_opted_out && deps.opt_out_confirmation {
            confirm_opt_out(deps, &mut tx, &conv, &d).await?;
        }
    }
    set_route_status(&mut tx, message_id, d.route).await?;
    tx.commit().await?;
    report(deps, &resolution, &conv.tenant_id, &d);
    Ok(Outcome::Processed {
        conversation_id: conv.id,
        tenant_id: conv.tenant_id,
        language: d.detection,
    })
}

async fn load(deps: &Deps, message_id: Uuid) -> anyhow::Result<Option<Stored>> {
    let row = sqlx::query!(
        r#"SELECT from_number, to_number, message_content, raw_webhook_data, created_at,
                  processed_at
           FROM sms_messages WHERE id = $1 AND direction = 'inbound'"#,
        message_id
    )
    .fetch_optional(&deps.pool)
    .await?;
    Ok(row.map(|row| Stored {
        state: if row.processed_at.is_some() {
            InboundState::Processed
        } else {
            InboundState::Stored
        },
        from_number: row.from_number,
        to_number: row.to_number,
        body: row.message_content,
        raw: row.raw_webhook_data,
        created_at: row.created_at,
    }))
}

struct Linked {
    id: Uuid,
    tenant_id: Option<String>,
}

/// Upserts the conversation, links the message to it (None: another run linked it first), and
/// merges the detected language into the conversation's.
///
/// The conversation follows the number's current owner: the tenant found, or none when the
/// directory definitively knows none (a number removed or recycled); a directory outage
/// (`owner_known` false) leaves it as it was. The message belongs to the conversation's tenant of
/// this moment, for good.
async fn link(
    tx: &mut PgConnection,
    message_id: Uuid,
    msg: &Stored,
    d: &Decision,
    tenant_id: Option<&str>,
    owner_known: bool,
) -> anyhow::Result<Option<Linked>> {
    let conv = sqlx::query!(
        r#"INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id, last_message_at, number_kind)
           VALUES ($1, $2, $3, $4, $6)
           ON CONFLICT (phone_number) DO UPDATE SET
               tenant_id = CASE WHEN $5 THEN EXCLUDED.tenant_id ELSE sms_conversations.tenant_id END,
               last_message_at = GREATEST(sms_conversations.last_message_at, EXCLUDED.last_message_at),
               updated_at = now()
           RETURNING id, tenant_id, language_detected, language_confidence"#,
        d.number,
        d.original,
        tenant_id,
        msg.created_at,
        owner_known,
        d.kind.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    let linked = sqlx::query!(
        r#"UPDATE sms_messages
           SET conversation_id = $2, language_detected = $3, language_confidence = $4,
               tenant_id = $5, processed_at = now(), updated_at = now()
           WHERE id = $1 AND processed_at IS NULL"#,
        message_id,
        conv.id,
        d.detection.map(|d| d.language.code()),
        d.detection.map(|d| d.confidence),
        conv.tenant_id
    )
    .execute(&mut *tx)
    .await?;
    if linked.rows_affected() == 0 {
        return Ok(None);
    }
    if let Some(new) = d.detection {
        let current = stored_detection(conv.language_detected.as_deref(), conv.language_confidence);
        let merged = language::merge(current, new);
        if Some(merged) != current {
            sqlx::query!(
                "UPDATE sms_conversations SET language_detected = $2, language_confidence = $3 WHERE id = $1",
                conv.id,
                merged.language.code(),
                merged.confidence
            )
            .execute(&mut *tx)
            .await?;
            tracing::info!(conversation_id = %conv.id, from = ?current.map(|c| c.language.code()),
                to = merged.language.code(), confidence = merged.confidence, "conversation language updated");
        }
    }
    Ok(Some(Linked {
        id: conv.id,
        tenant_id: conv.tenant_id,
    }))
}

/// `pending` with its route job, or `skipped`.
async fn set_route_status(
    tx: &mut PgConnection,
    message_id: Uuid,
    status: RouteStatus,
) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE sms_messages SET route_status = $2 WHERE id = $1",
        message_id,
        status.as_str()
    )
    .execute(&mut *tx)
    .await?;
    if status == RouteStatus::Pending {
        let job = RouteMessage {
            message_id,
            attempt: 0,
            trace: shared::telemetry::TraceContext::current(),
        };
        jobs::schedule(tx, &[job], When::NOW).await?;
    }
    Ok(())
}

fn report(deps: &Deps, resolution: &Resolution, tenant: &Option<String>, d: &Decision) {
    deps.metrics.number(tenant.is_some());
    deps.metrics
        .language(d.detection.map(|d| d.language.code()));
    let from = phone::mask(&d.number);
    match (resolution, tenant) {
        (_, Some(t)) => tracing::info!(tenant_id = %t, %from, "inbound message linked to tenant"),
        (Resolution::Unavailable, None) => {
            tracing::info!(%from, "inbound message stored without tenant: directory unavailable")
        }
        _ => tracing::info!(%from, "inbound message from unknown number"),
    }
}

fn stored_detection(code: Option<&str>, confidence: Option<f32>) -> Option<Detection> {
    Some(Detection {
        language: Language::from_code(code?)?,
        confidence: confidence.unwrap_or(0.0),
    })
}

/// Tracks the tenant's most recently used number and, when its language preference changes,
/// stores it and (with a Monitor configured) enqueues telling the Monitor, in the same commit.
async fn update_tenant(
    deps: &Deps,
    tx: &mut sqlx::PgConnection,
    tenant_id: &str,
    number: &str,
    detection: Option<Detection>,
) -> anyhow::Result<()> {
    let tenant = sqlx::query!(
        r#"UPDATE tenant_profiles SET last_used_phone_number = $2, updated_at = now()
           WHERE tenant_id = $1
           RETURNING language_preference, language_confidence"#,
        tenant_id,
        number
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (Some(tenant), Some(new)) = (tenant, detection) else {
        return Ok(());
    };
    let current = stored_detection(
        tenant.language_preference.as_deref(),
        tenant.language_confidence,
    );
    let merged = language::merge(current, new);
    if Some(merged) == current {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE tenant_profiles SET language_preference = $2, language_confidence = $3 WHERE tenant_id = $1",
        tenant_id,
        merged.language.code(),
        merged.confidence
    )
    .execute(&mut *tx)
    .await?;
    let language_changed = current.map(|c| c.language) != Some(merged.language);
    if language_changed {
        tracing::info!(
            tenant_id,
            from = ?current.map(|c| c.language.code()),
            to = merged.language.code(),
            "tenant language preference changed"
        );
        if deps.tenants.monitor().is_some() {
            let job = NotifyLanguage {
                tenant_id: tenant_id.to_owned(),
                language: merged.language.code().to_owned(),
                confidence: merged.confidence,
                attempt: 0,
                trace: shared::telemetry::TraceContext::current(),
            };
            jobs::schedule(tx, &[job], When::NOW).await?;
        }
    }
    Ok(())
}

/// A keyword or revocation phrase in the body, or Twilio's own `OptOutType` field (which wins
/// when present).
fn opt_change(msg: &Stored) -> Option<OptChangeSeen> {
    let kind = msg
        .raw
        .as_ref()
        .and_then(|r| r.get("OptOutType"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let detected = optout::detect(&msg.body);
    if let Some(change) = kind.as_deref().and_then(optout::from_opt_out_type) {
        return Some(OptChangeSeen {
            change,
            keyword: detected.as_ref().map(optout::Detected::keyword),
            rule: "twilio:OptOutType".into(),
            kind,
        });
    }
    detected.map(|d| OptChangeSeen {
        change: d.change,
        keyword: Some(d.keyword()),
        rule: d.rule,
        kind,
    })
}

/// Answers a new opt-out with its confirmation, in the tenant's language (else the message's),
/// in the same transaction: sent once, since only a new opt-out asks for it.
async fn confirm_opt_out(
    deps: &Deps,
    tx: &mut PgConnection,
    conv: &Linked,
    d: &Decision,
) -> anyhow::Result<()> {
    let tenant_language = match &conv.tenant_id {
        Some(t) => sqlx::query_scalar!(
            "SELECT language_preference FROM tenant_profiles WHERE tenant_id = $1",
            t
        )
        .fetch_optional(&mut *tx)
        .await?
        .flatten(),
        None => None,
    };
    let language =
        tenant_language.or_else(|| d.detection.map(|det| det.language.code().to_owned()));
    let confirmation = shared::outbound::NewOutbound {
        conversation_id: conv.id,
        to: &d.number,
        body: optout::confirmation(language.as_deref()),
        media_urls: &[],
        schedule: None,
        quiet_hours: None,
        quiet_hours_override: false,
        opt_out_confirmation: true,
    };
    if let Err(refused) = shared::outbound::create(tx, &deps.sender, &confirmation).await? {
        tracing::warn!(%refused, "opt-out confirmation not sent");
    }
    Ok(())
}

/// Records the opt change a message expressed, in its processing transaction.
async fn record_opt_change(
    tx: &mut PgConnection,
    msg: &Stored,
    their_number: &str,
    message_id: Uuid,
    tenant_id: Option<&str>,
    seen: &OptChangeSeen,
) -> anyhow::Result<optout::Recorded> {
    let change = optout::Change {
        our_number: msg.to_number.as_deref().unwrap_or_default(),
        their_number,
        change: seen.change,
        source: optout::Source::Sms,
        method: None,
        keyword: seen.keyword.as_deref(),
        rule: Some(&seen.rule),
        opt_out_type: seen.kind.as_deref(),
        message_id: Some(message_id),
        tenant_id,
        note: None,
        occurred_at: msg.created_at,
    };
    let recorded = optout::record(tx, &change).await?;
    if recorded.changed {
        tracing::info!(their = %phone::mask(their_number), change = seen.change.as_str(), rule = %seen.rule, "opt change recorded");
    }
    Ok(recorded)
}
