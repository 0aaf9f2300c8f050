//! Processing a stored inbound webhook: normalise the sender, resolve the tenant, link the
//! conversation, detect the language, record opt-outs. Idempotent: a message is linked exactly
//! once (guarded by `processed_at`), so a job re-run after a crash changes nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::{
    jobs::{self, NotifyLanguage, ProcessInbound, RouteMessage},
    language::{self, Detection, Language},
    optout::{self, OptChange},
    phone,
    tenants::Resolution,
};
use uuid::Uuid;

use crate::Deps;

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

struct Stored {
    from_number: Option<String>,
    to_number: Option<String>,
    body: String,
    raw: Option<Value>,
    created_at: DateTime<Utc>,
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
    let Some(row) = sqlx::query!(
        r#"SELECT from_number, to_number, message_content, raw_webhook_data, created_at,
                  processed_at
           FROM sms_messages WHERE id = $1 AND direction = 'inbound'"#,
        message_id
    )
    .fetch_optional(&deps.pool)
    .await?
    else {
        tracing::warn!("inbound job for a message that does not exist");
        return Ok(Outcome::Missing);
    };
    if row.processed_at.is_some() {
        return Ok(Outcome::AlreadyProcessed);
    }
    let msg = Stored {
        from_number: row.from_number,
        to_number: row.to_number,
        body: row.message_content,
        raw: row.raw_webhook_data,
        created_at: row.created_at,
    };
    let original = msg.from_number.clone().unwrap_or_default();
    let e164 = phone::normalize(&original, deps.region).ok();
    // Senders that are not phone numbers (short codes, alphanumeric IDs) keep their written form.
    let number = e164
        .as_ref()
        .map_or_else(|| original.trim().to_owned(), |e| e.as_str().to_owned());

    // Directory lookups happen before the transaction so no row is locked while waiting on HTTP.
    let resolution = deps.tenants.resolve(&original, e164.as_ref()).await?;
    let tenant_id = match &resolution {
        Resolution::Found(t) => Some(t.tenant_id.clone()),
        Resolution::Unknown | Resolution::Unavailable => None,
    };
    let detection = language::detect(&msg.body);
    let opt_change = opt_change(&msg);

    let mut tx = deps.pool.begin().await?;
    let conv = sqlx::query!(
        r#"INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id, last_message_at)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (phone_number) DO UPDATE SET
               tenant_id = COALESCE(EXCLUDED.tenant_id, sms_conversations.tenant_id),
               last_message_at = GREATEST(sms_conversations.last_message_at, EXCLUDED.last_message_at),
               updated_at = now()
           RETURNING id, tenant_id, language_detected, language_confidence"#,
        number,
        original,
        tenant_id,
        msg.created_at
    )
    .fetch_one(&mut *tx)
    .await?;

    let linked = sqlx::query!(
        r#"UPDATE sms_messages
           SET conversation_id = $2, language_detected = $3, language_confidence = $4,
               processed_at = now(), updated_at = now()
           WHERE id = $1 AND processed_at IS NULL"#,
        message_id,
        conv.id,
        detection.map(|d| d.language.code()),
        detection.map(|d| d.confidence)
    )
    .execute(&mut *tx)
    .await?;
    if linked.rows_affected() == 0 {
        // A concurrent run linked it first; leave everything as that run wrote it.
        tx.rollback().await?;
        return Ok(Outcome::AlreadyProcessed);
    }

    if let Some(new) = detection {
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
            tracing::info!(
                conversation_id = %conv.id,
                from = ?current.map(|c| c.language.code()),
                to = merged.language.code(),
                confidence = merged.confidence,
                "conversation language updated"
            );
        }
    }

    let effective_tenant = conv.tenant_id.clone();
    if let Some(tenant_id) = &effective_tenant {
        update_tenant(deps, &mut tx, tenant_id, &number, detection).await?;
    }

    // Opt-out keywords are the carrier's business, not an agent's: they are not routed.
    let routed = opt_change.is_none();
    if let Some((change, keyword, kind)) = opt_change {
        record_opt_change(&mut tx, &msg, &number, message_id, change, keyword, kind).await?;
    }
    sqlx::query!(
        "UPDATE sms_messages SET route_status = $2 WHERE id = $1",
        message_id,
        if routed { "pending" } else { "skipped" }
    )
    .execute(&mut *tx)
    .await?;
    if routed {
        jobs::push(
            &mut tx,
            jobs::ROUTE,
            &[RouteMessage {
                message_id,
                attempt: 0,
                trace: shared::telemetry::TraceContext::current(),
            }],
            None,
        )
        .await?;
    }
    tx.commit().await?;

    deps.metrics.number(effective_tenant.is_some());
    deps.metrics.language(detection.map(|d| d.language.code()));
    match (&resolution, &effective_tenant) {
        (_, Some(t)) => {
            tracing::info!(tenant_id = %t, from = %phone::mask(&number), "inbound message linked to tenant")
        }
        (Resolution::Unavailable, None) => {
            tracing::info!(from = %phone::mask(&number), "inbound message stored without tenant: directory unavailable")
        }
        _ => tracing::info!(from = %phone::mask(&number), "inbound message from unknown number"),
    }
    Ok(Outcome::Processed {
        conversation_id: conv.id,
        tenant_id: effective_tenant,
        language: detection,
    })
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
            jobs::push(tx, jobs::MONITOR_LANGUAGE, &[job], None).await?;
        }
    }
    Ok(())
}

/// A whole-body keyword, or Twilio's own `OptOutType` field (which wins when present).
fn opt_change(msg: &Stored) -> Option<(OptChange, Option<String>, Option<String>)> {
    let kind = msg
        .raw
        .as_ref()
        .and_then(|r| r.get("OptOutType"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(change) = kind.as_deref().and_then(optout::from_opt_out_type) {
        let keyword = optout::keyword(&msg.body).map(|(_, k)| k.to_owned());
        return Some((change, keyword, kind));
    }
    optout::keyword(&msg.body).map(|(change, k)| (change, Some(k.to_owned()), kind))
}

async fn record_opt_change(
    tx: &mut sqlx::PgConnection,
    msg: &Stored,
    their_number: &str,
    message_id: Uuid,
    change: OptChange,
    keyword: Option<String>,
    kind: Option<String>,
) -> anyhow::Result<()> {
    let our_number = msg.to_number.clone().unwrap_or_default();
    match change {
        OptChange::OptOut => {
            sqlx::query!(
                r#"INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword, opt_out_type, message_id, changed_at)
                   VALUES ($1, $2, true, $3, $4, $5, $6)
                   ON CONFLICT (our_number, their_number) DO UPDATE SET
                       opted_out = true, keyword = EXCLUDED.keyword, opt_out_type = EXCLUDED.opt_out_type,
                       message_id = EXCLUDED.message_id, changed_at = EXCLUDED.changed_at
                   WHERE sms_opt_outs.changed_at <= EXCLUDED.changed_at"#,
                our_number, their_number, keyword, kind, message_id, msg.created_at
            )
            .execute(&mut *tx)
            .await?;
            tracing::info!(their = %phone::mask(their_number), "opt-out recorded");
        }
        OptChange::OptIn => {
            // "YES" and "START" are everyday words: only a number that opted out is changed.
            let updated = sqlx::query!(
                r#"UPDATE sms_opt_outs SET opted_out = false, keyword = $3, opt_out_type = $4,
                       message_id = $5, changed_at = $6
                   WHERE our_number = $1 AND their_number = $2 AND changed_at <= $6"#,
                our_number,
                their_number,
                keyword,
                kind,
                message_id,
                msg.created_at
            )
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() > 0 {
                tracing::info!(their = %phone::mask(their_number), "opt-in recorded");
            }
        }
    }
    Ok(())
}
