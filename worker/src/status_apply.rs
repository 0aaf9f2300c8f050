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
    delivery,
    jobs::{ApplyStatus, ApplyStatuses},
    twilio::status::DeliveryStatus,
};
use std::collections::HashMap;
use tracing::Instrument;
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

/// A message a callback names, as locked for the batch.
struct Target {
    id: Uuid,
    status: DeliveryStatus,
    sid: Option<String>,
    conversation_id: Option<Uuid>,
}

/// Callbacks of one job applied per transaction.
const CHUNK: usize = 256;

/// Applies a job's callbacks, a chunk of them per transaction, set-based: the messages are
/// locked in id order, each message's pending callbacks decided at once, and the changes
/// written with one statement per table. A re-run finds the applied callbacks settled.
pub async fn process_all(deps: &Deps, job: ApplyStatuses) -> anyhow::Result<()> {
    for chunk in job.callbacks.chunks(CHUNK) {
        let span = tracing::info_span!("apply_status", callbacks = chunk.len());
        if let Some(first) = chunk.first() {
            shared::telemetry::continue_trace_in(&span, first.trace.as_ref());
        }
        crate::retrying_deadlocks("status", || {
            apply_chunk(deps, chunk).instrument(span.clone())
        })
        .await?;
    }
    Ok(())
}

/// One callback's job, as a test does it: a chunk of one. Reports what became of its message.
pub async fn process(deps: &Deps, job: ApplyStatus) -> anyhow::Result<Outcome> {
    Ok(apply_chunk(deps, std::slice::from_ref(&job))
        .await?
        .pop()
        .unwrap_or(Outcome::MessageNotKnownYet))
}

/// One transaction: lock, decide, write. Returns an outcome per callback of the chunk.
async fn apply_chunk(deps: &Deps, chunk: &[ApplyStatus]) -> anyhow::Result<Vec<Outcome>> {
    let mut tx = deps.pool.begin().await?;
    let targets = lock_messages(&mut tx, chunk).await?;
    let target_of = match_targets(chunk, &targets);
    let pending = pending_callbacks(&mut tx, chunk, &target_of, targets.len()).await?;
    let decisions: Vec<Decision> = targets
        .iter()
        .zip(&pending)
        .map(|(t, cbs)| decide(t.status, cbs))
        .collect();
    // A SID our id proved is stored on a message that had none.
    let (sid_ids, sid_values): (Vec<Uuid>, Vec<String>) = chunk
        .iter()
        .zip(&target_of)
        .filter_map(|(c, t)| {
            let t = &targets[(*t)?];
            t.sid.is_none().then(|| (t.id, c.message_sid.clone()))
        })
        .unzip();
    write(&mut tx, &targets, &decisions, &sid_ids, &sid_values).await?;
    tx.commit().await?;
    for (t, d) in targets.iter().zip(&decisions) {
        if d.status != t.status {
            tracing::info!(message_id = %t.id, from = %t.status, to = %d.status, error_code = d.error_code, "delivery status updated");
            deps.metrics.delivery_status(d.status.as_str());
        }
    }
    let unknown = target_of.iter().filter(|t| t.is_none()).count();
    if unknown > 0 {
        tracing::info!(
            callbacks = unknown,
            "status callbacks kept until their message is known"
        );
    }
    Ok(target_of
        .iter()
        .map(|t| match t {
            None => Outcome::MessageNotKnownYet,
            Some(t) if decisions[*t].status != targets[*t].status => Outcome::Applied {
                status: decisions[*t].status.as_str().to_owned(),
            },
            Some(_) => Outcome::Unchanged,
        })
        .collect())
}

/// Each callback's message (an index into `targets`): by our id when it carried one of our
/// outbound messages, else by SID.
fn match_targets(chunk: &[ApplyStatus], targets: &[Target]) -> Vec<Option<usize>> {
    chunk
        .iter()
        .map(|c| {
            c.our_message_id
                .and_then(|id| targets.iter().position(|t| t.id == id))
                .or_else(|| {
                    targets
                        .iter()
                        .position(|t| t.sid.as_deref() == Some(c.message_sid.as_str()))
                })
        })
        .collect()
}

/// The callbacks not yet applied of each matched message (by the SIDs the chunk's callbacks
/// carry), locked. Statuses we do not know are kept in the ledger but never applied.
async fn pending_callbacks(
    tx: &mut sqlx::PgConnection,
    chunk: &[ApplyStatus],
    target_of: &[Option<usize>],
    targets: usize,
) -> anyhow::Result<Vec<Vec<Callback>>> {
    let mut sid_target: HashMap<&str, usize> = HashMap::new();
    for (c, t) in chunk.iter().zip(target_of) {
        if let Some(t) = t {
            sid_target.entry(c.message_sid.as_str()).or_insert(*t);
        }
    }
    let sids: Vec<String> = sid_target.keys().map(|s| (*s).to_owned()).collect();
    let rows = sqlx::query!(
        "SELECT id, message_sid, message_status, error_code FROM sms_status_callbacks
         WHERE message_sid = ANY($1) AND applied_at IS NULL ORDER BY id FOR UPDATE",
        &sids
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut pending: Vec<Vec<Callback>> = vec![Vec::new(); targets];
    for r in rows {
        if let (Some(t), Ok(status)) = (
            sid_target.get(r.message_sid.as_str()),
            r.message_status.parse(),
        ) {
            pending[*t].push(Callback {
                id: r.id,
                status,
                error_code: r.error_code,
            });
        }
    }
    Ok(pending)
}

/// The messages the callbacks name (our ids of outbound messages, and SIDs), locked in id order.
async fn lock_messages(
    tx: &mut sqlx::PgConnection,
    chunk: &[ApplyStatus],
) -> anyhow::Result<Vec<Target>> {
    let ids: Vec<Uuid> = chunk.iter().filter_map(|c| c.our_message_id).collect();
    let sids: Vec<String> = chunk.iter().map(|c| c.message_sid.clone()).collect();
    let rows = sqlx::query!(
        "SELECT id, delivery_status, twilio_sid, conversation_id FROM sms_messages
         WHERE (id = ANY($1) AND direction = 'outbound') OR twilio_sid = ANY($2)
         ORDER BY id FOR UPDATE",
        &ids,
        &sids
    )
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Target {
                id: r.id,
                status: r.delivery_status.parse()?,
                sid: r.twilio_sid,
                conversation_id: r.conversation_id,
            })
        })
        .collect()
}

/// Stores proven SIDs, settles the callbacks, moves the statuses and touches the conversations,
/// one statement each, in the caller's transaction.
async fn write(
    tx: &mut sqlx::PgConnection,
    targets: &[Target],
    decisions: &[Decision],
    sid_ids: &[Uuid],
    sid_values: &[String],
) -> anyhow::Result<()> {
    if !sid_ids.is_empty() {
        sqlx::query!(
            "UPDATE sms_messages m SET twilio_sid = u.sid
             FROM UNNEST($1::uuid[], $2::text[]) AS u(id, sid)
             WHERE m.id = u.id AND m.twilio_sid IS NULL",
            sid_ids,
            sid_values
        )
        .execute(&mut *tx)
        .await?;
    }
    let settled: Vec<i64> = decisions
        .iter()
        .flat_map(|d| d.settled.iter().copied())
        .collect();
    if !settled.is_empty() {
        sqlx::query!(
            "UPDATE sms_status_callbacks SET applied_at = now() WHERE id = ANY($1)",
            &settled
        )
        .execute(&mut *tx)
        .await?;
    }
    let moved: Vec<(&Target, &Decision)> = targets
        .iter()
        .zip(decisions)
        .filter(|(t, d)| d.status != t.status)
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let moves: Vec<delivery::CallbackMove> = moved
        .iter()
        .map(|(t, d)| delivery::CallbackMove {
            message_id: t.id,
            from: t.status,
            to: d.status,
            error_code: d.error_code.as_deref(),
        })
        .collect();
    delivery::apply_callbacks(&mut *tx, &moves).await?;
    let mut conversations: Vec<Uuid> = moved
        .iter()
        .filter_map(|(t, _)| t.conversation_id)
        .collect();
    conversations.sort();
    conversations.dedup();
    if !conversations.is_empty() {
        // A conversation another transaction holds is being written for newer activity (an
        // inbound batch): skipping it keeps this batch from waiting on, or deadlocking with, it.
        sqlx::query!(
            "UPDATE sms_conversations SET last_message_at = GREATEST(last_message_at, now()), updated_at = now()
             WHERE id IN (SELECT id FROM sms_conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED)",
            &conversations
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
