//! The status callback lifecycle: stored callbacks (`sms_status_callbacks`, `applied_at` NULL) are
//! applied to their message monotonically.
//!
//! ```text
//! callback stored ─(message known?)─ no ─▶ kept until the send worker stores the SID
//!                                    yes ─decide─▶ status moves forward only (DeliveryStatus::advances_to)
//!                                                  settled callbacks applied_at = now
//!                                                  a `read` before `delivered` stays pending
//! ```
//! A late "sent" never overwrites "delivered"; "read" applies only after "delivered". A callback
//! with our id proves Twilio has the message even when the send's own answer never arrived.

use shared::{
    jobs::{ApplyStatus, ApplyStatuses},
    twilio::status::DeliveryStatus,
};
use uuid::Uuid;

use crate::Deps;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Applied { status: String },
    Unchanged,
    MessageNotKnownYet,
}

/// One stored callback not yet applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub id: i64,
    pub status: DeliveryStatus,
    pub error_code: Option<String>,
}

/// What applying a message's pending callbacks does.
#[derive(Debug, PartialEq)]
pub struct Decision {
    /// The status after them (the current one when none moves it).
    pub status: DeliveryStatus,
    pub error_code: Option<String>,
    /// Callbacks applied, or never applicable now; the rest stay pending.
    pub settled: Vec<i64>,
}

/// Pure: applies callbacks in status order, each only when it moves the message forward.
pub fn decide(current: DeliveryStatus, callbacks: &[Callback]) -> Decision {
    let mut sorted: Vec<&Callback> = callbacks.iter().collect();
    sorted.sort_by_key(|c| c.status.rank());
    let mut status = current;
    let mut error_code = None;
    for c in &sorted {
        if status.advances_to(c.status) {
            status = c.status;
            if c.error_code.is_some() {
                error_code = c.error_code.clone();
            }
        }
    }
    // A "read" that came before "delivered" stays pending, to apply once delivered is known.
    let settled = sorted
        .iter()
        .filter(|c| {
            c.status != DeliveryStatus::Read
                || status == DeliveryStatus::Read
                || (status.is_final() && status != DeliveryStatus::Delivered)
        })
        .map(|c| c.id)
        .collect();
    Decision {
        status,
        error_code,
        settled,
    }
}

struct Target {
    id: Uuid,
    status: DeliveryStatus,
    has_sid: bool,
    conversation_id: Option<Uuid>,
}

/// Applies a job's callbacks one message at a time (each in its own transaction, one connection
/// at a time); all are tried, and the job fails with the first error (its re-run finds the
/// applied ones settled).
pub async fn process_all(deps: &Deps, job: ApplyStatuses) -> anyhow::Result<()> {
    let mut first_error = None;
    for callback in job.callbacks {
        if let Err(e) = process(deps, callback).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[tracing::instrument(name = "apply_status", skip_all, fields(message_sid = %job.message_sid), err)]
pub async fn process(deps: &Deps, job: ApplyStatus) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let mut tx = deps.pool.begin().await?;
    let Some(msg) = lock_message(&mut tx, &job).await? else {
        tracing::info!("status callback kept until its message is known");
        return Ok(Outcome::MessageNotKnownYet);
    };
    let rows = sqlx::query!(
        "SELECT id, message_status, error_code FROM sms_status_callbacks WHERE message_sid = $1 AND applied_at IS NULL FOR UPDATE",
        job.message_sid
    )
    .fetch_all(&mut *tx)
    .await?;
    // Statuses we do not know are kept in the ledger but never applied.
    let callbacks: Vec<Callback> = rows
        .into_iter()
        .filter_map(|r| {
            Some(Callback {
                id: r.id,
                status: r.message_status.parse().ok()?,
                error_code: r.error_code,
            })
        })
        .collect();
    let d = decide(msg.status, &callbacks);
    apply(&mut tx, &job, &msg, &d).await?;
    tx.commit().await?;
    if d.status == msg.status {
        return Ok(Outcome::Unchanged);
    }
    tracing::info!(message_id = %msg.id, from = %msg.status, to = %d.status, error_code = d.error_code, "delivery status updated");
    deps.metrics.delivery_status(d.status.as_str());
    Ok(Outcome::Applied {
        status: d.status.as_str().to_owned(),
    })
}

/// The message, locked: by our id when the callback carried it, else (or when that is not one of
/// our outbound messages) by SID.
async fn lock_message(
    tx: &mut sqlx::PgConnection,
    job: &ApplyStatus,
) -> anyhow::Result<Option<Target>> {
    if let Some(id) = job.our_message_id {
        let row = sqlx::query!(
            "SELECT id, delivery_status, twilio_sid, conversation_id FROM sms_messages WHERE id = $1 AND direction = 'outbound' FOR UPDATE",
            id
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = row {
            return Ok(Some(Target {
                id: r.id,
                status: r.delivery_status.parse()?,
                has_sid: r.twilio_sid.is_some(),
                conversation_id: r.conversation_id,
            }));
        }
    }
    let row = sqlx::query!(
        "SELECT id, delivery_status, twilio_sid, conversation_id FROM sms_messages WHERE twilio_sid = $1 FOR UPDATE",
        job.message_sid
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        Some(r) => Some(Target {
            id: r.id,
            status: r.delivery_status.parse()?,
            has_sid: r.twilio_sid.is_some(),
            conversation_id: r.conversation_id,
        }),
        None => None,
    })
}

/// Stores the SID our id proved, settles the callbacks, and moves the status, in the caller's
/// transaction.
async fn apply(
    tx: &mut sqlx::PgConnection,
    job: &ApplyStatus,
    msg: &Target,
    d: &Decision,
) -> anyhow::Result<()> {
    if !msg.has_sid {
        sqlx::query!(
            "UPDATE sms_messages SET twilio_sid = $2 WHERE id = $1",
            msg.id,
            job.message_sid
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE sms_status_callbacks SET applied_at = now() WHERE id = ANY($1)",
        &d.settled
    )
    .execute(&mut *tx)
    .await?;
    if d.status == msg.status {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE sms_messages SET delivery_status = $2, error_code = COALESCE($3, error_code), status_updated_at = now(), updated_at = now() WHERE id = $1",
        msg.id,
        d.status.as_str(),
        d.error_code
    )
    .execute(&mut *tx)
    .await?;
    if let Some(conv) = msg.conversation_id {
        sqlx::query!(
            "UPDATE sms_conversations SET last_message_at = GREATEST(last_message_at, now()), updated_at = now() WHERE id = $1",
            conv
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    fn cbs(statuses: &[DeliveryStatus]) -> Vec<Callback> {
        statuses
            .iter()
            .enumerate()
            .map(|(i, s)| Callback {
                id: i as i64,
                status: *s,
                error_code: (*s == Failed).then(|| "30003".into()),
            })
            .collect()
    }

    #[test]
    fn decide_over_states_and_callbacks() {
        // (current, callbacks, new status, callbacks left pending)
        let table: &[(DeliveryStatus, &[DeliveryStatus], DeliveryStatus, usize)] = &[
            (Queued, &[Sent, Delivered], Delivered, 0),
            (Queued, &[Delivered, Sent, Sending], Delivered, 0),
            (Delivered, &[Sent], Delivered, 0),
            (Delivered, &[Read], Read, 0),
            (Sent, &[Read], Sent, 1),
            (Sent, &[Read, Delivered], Read, 0),
            (Sent, &[Read, Failed], Failed, 0),
            (Failed, &[Delivered], Failed, 0),
            (Submitting, &[Queued], Queued, 0),
            (Pending, &[], Pending, 0),
            (Sending, &[Undelivered], Undelivered, 0),
        ];
        for (current, callbacks, want, left) in table {
            let all = cbs(callbacks);
            let d = decide(*current, &all);
            assert_eq!(d.status, *want, "{current} + {callbacks:?}");
            assert_eq!(
                all.len() - d.settled.len(),
                *left,
                "{current} + {callbacks:?}"
            );
        }
        let d = decide(Sent, &cbs(&[Failed]));
        assert_eq!(d.error_code.as_deref(), Some("30003"));
    }
}
