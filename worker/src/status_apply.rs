//! Applying stored status callbacks to their message, monotonically: a status replaces the stored
//! one only when it moves forward (a late "sent" never overwrites "delivered"; "read" only after
//! "delivered"). A callback whose message is not known yet (the send's answer not stored, no id
//! of ours in it) stays in the ledger and is applied when the send worker stores the SID.

use shared::{jobs::ApplyStatus, twilio::status};

use crate::Deps;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Applied { status: String },
    Unchanged,
    MessageNotKnownYet,
}

#[tracing::instrument(name = "apply_status", skip_all, fields(message_sid = %job.message_sid), err)]
pub async fn process(deps: &Deps, job: ApplyStatus) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let mut tx = deps.pool.begin().await?;
    let msg = match job.our_message_id {
        Some(id) => sqlx::query!(
            "SELECT id, delivery_status, twilio_sid, conversation_id FROM sms_messages WHERE id = $1 AND direction = 'outbound' FOR UPDATE",
            id
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| (r.id, r.delivery_status, r.twilio_sid, r.conversation_id)),
        None => None,
    };
    let msg = match msg {
        Some(m) => Some(m),
        None => sqlx::query!(
            "SELECT id, delivery_status, twilio_sid, conversation_id FROM sms_messages WHERE twilio_sid = $1 FOR UPDATE",
            job.message_sid
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| (r.id, r.delivery_status, r.twilio_sid, r.conversation_id)),
    };
    let Some((id, current, sid, conversation_id)) = msg else {
        tracing::info!("status callback kept until its message is known");
        return Ok(Outcome::MessageNotKnownYet);
    };
    if sid.is_none() {
        // Our id in the callback proves Twilio has this message, even if the send's own answer
        // never arrived.
        sqlx::query!(
            "UPDATE sms_messages SET twilio_sid = $2 WHERE id = $1",
            id,
            job.message_sid
        )
        .execute(&mut *tx)
        .await?;
    }
    let mut rows = sqlx::query!(
        "SELECT id, message_status, error_code FROM sms_status_callbacks WHERE message_sid = $1 AND applied_at IS NULL FOR UPDATE",
        job.message_sid
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Outcome::Unchanged);
    }
    rows.sort_by_key(|r| status::rank(&r.message_status));
    let mut new_status = current.clone();
    let mut error_code = None;
    for r in &rows {
        if status::advances(&new_status, &r.message_status) {
            new_status = r.message_status.clone();
            if r.error_code.is_some() {
                error_code = r.error_code.clone();
            }
        }
    }
    // Settled rows: applied, or never applicable now. A "read" that came before "delivered" stays
    // pending, to apply once delivered is known.
    let ids: Vec<i64> = rows
        .iter()
        .filter(|r| {
            r.message_status != "read"
                || new_status == "read"
                || (status::is_final(&new_status) && new_status != "delivered")
        })
        .map(|r| r.id)
        .collect();
    sqlx::query!(
        "UPDATE sms_status_callbacks SET applied_at = now() WHERE id = ANY($1)",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    let changed = new_status != current;
    if changed {
        sqlx::query!(
            "UPDATE sms_messages SET delivery_status = $2, error_code = COALESCE($3, error_code), status_updated_at = now(), updated_at = now() WHERE id = $1",
            id,
            new_status,
            error_code
        )
        .execute(&mut *tx)
        .await?;
        if let Some(conv) = conversation_id {
            sqlx::query!(
                "UPDATE sms_conversations SET last_message_at = GREATEST(last_message_at, now()), updated_at = now() WHERE id = $1",
                conv
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    if changed {
        tracing::info!(message_id = %id, from = %current, to = %new_status, error_code, "delivery status updated");
        deps.metrics.delivery_status(&new_status);
        Ok(Outcome::Applied { status: new_status })
    } else {
        Ok(Outcome::Unchanged)
    }
}
