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
//!
//! A job's messages are applied together, a chunk per transaction with set-based statements
//! (one conversation upsert, one message update, one tenant update, one push of the route jobs):
//! a job holds one connection and costs a few round trips whatever its size (budget.rs counts
//! on the first; the worker's throughput on the second). Rows are locked in one order (messages,
//! then numbers, then tenants by id) and a deadlock still detected is retried.
//!
//! Under a backlog (messages stored more than [`BEHIND`] ago and still waiting), a job takes the
//! newest of them along (their own jobs are furthest back), up to a chunk: the rows every batch
//! writes (a number's conversation, a tenant) are then written once per chunk rather than once
//! per webhook commit, so the backlog drains in a few large transactions. Jobs running at once
//! take along different stretches of the backlog (see [`SPREAD`]); taken-along messages are
//! locked with SKIP LOCKED (another run has them); each still has its own job, which then finds
//! it processed.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use shared::{
    jobs::{self, NotifyLanguage, ProcessInbound, RouteMessage, RouteMessages, When},
    language::{self, Detection, Language},
    optout::{self, OptChange},
    phone,
    routing::RouteStatus,
    telemetry::TraceContext,
    tenants::Resolution,
};
use sqlx::PgConnection;
use tracing::Instrument;
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

#[derive(Debug, Clone)]
pub struct Stored {
    pub state: InboundState,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub body: String,
    /// Twilio's `OptOutType` from the stored webhook: the one field of it processing reads
    /// (the whole payload, read for it before, was most of the bytes a chunk's load moved).
    pub opt_out_type: Option<String>,
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

/// Messages of one job applied per transaction.
const CHUNK: usize = 128;

/// How long a stored message waits before another job may take it along: past this, its own
/// job is behind.
const BEHIND: std::time::Duration = std::time::Duration::from_secs(2);

/// Stretches of the backlog that jobs running at once take along: the n-th job of this process
/// skips (n mod SPREAD) chunks' worth of the newest waiting messages. When all took the same
/// newest ones, the first to lock them had them and the rest took almost none along (SKIP
/// LOCKED): chunks of about 25 messages instead of 128 in `scripts/bench-worker.sh`, each
/// costing the same round trips.
const SPREAD: usize = 8;

/// The next job's stretch (see [`SPREAD`]).
static NEXT_STRETCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Processes every message of a job, a chunk per transaction, the last chunk filled with waiting
/// messages; a re-run skips what an earlier run linked.
pub async fn process_batch(deps: &Deps, job: &ProcessInbound) -> anyhow::Result<()> {
    let chunks: Vec<&[Uuid]> = job.message_ids.chunks(CHUNK).collect();
    for (i, ids) in chunks.iter().enumerate() {
        let room = if i + 1 == chunks.len() {
            CHUNK - ids.len()
        } else {
            0
        };
        process_chunk(deps, ids, room, &job.traces).await?;
    }
    Ok(())
}

/// One message, as a re-run or a test does it: a chunk of one.
pub async fn process(deps: &Deps, message_id: Uuid) -> anyhow::Result<Outcome> {
    let mut outcomes = process_chunk(deps, &[message_id], 0, &HashMap::new()).await?;
    Ok(outcomes.remove(&message_id).unwrap_or(Outcome::Missing))
}

/// One stored message on its way: what it is, what was decided, and its own span (continuing
/// the trace of the webhook that stored it; its route job continues that span).
struct Item {
    id: Uuid,
    msg: Stored,
    d: Decision,
    resolution: Resolution,
    span: tracing::Span,
}

/// Processes `ids` and up to `room` waiting messages taken along (see [`load`]).
async fn process_chunk(
    deps: &Deps,
    ids: &[Uuid],
    room: usize,
    traces: &HashMap<Uuid, TraceContext>,
) -> anyhow::Result<HashMap<Uuid, Outcome>> {
    let (stored, along) = load(deps, ids, room).await?;
    let all: Vec<Uuid> = ids.iter().chain(&along).copied().collect();
    let mut outcomes: HashMap<Uuid, Outcome> =
        all.iter().map(|id| (*id, Outcome::Missing)).collect();
    let mut pending = Vec::with_capacity(stored.len());
    for (id, msg) in stored {
        if msg.state == InboundState::Processed {
            outcomes.insert(id, Outcome::AlreadyProcessed);
            continue;
        }
        let span = tracing::info_span!("process_inbound", message_id = %id);
        shared::telemetry::continue_trace_in(&span, traces.get(&id));
        let d = decide(&msg, deps.region);
        pending.push((id, msg, d, span));
    }
    // Directory lookups happen before the transaction so no row is locked while waiting on HTTP;
    // the chunk's senders in one lookup (one round trip for all those not cached).
    let senders: Vec<(&str, Option<&phone::E164>)> = pending
        .iter()
        .map(|(_, _, d, _)| (d.original.as_str(), d.e164.as_ref()))
        .collect();
    let resolutions = deps.tenants.resolve_many(&senders).await?;
    let items: Vec<Item> = pending
        .into_iter()
        .zip(resolutions)
        .map(|((id, msg, d, span), resolution)| Item {
            id,
            msg,
            d,
            resolution,
            span,
        })
        .collect();
    if items.is_empty() {
        return Ok(outcomes);
    }
    let applied = crate::retrying_deadlocks("inbound", || apply(deps, &items, &along)).await?;
    for item in &items {
        let outcome = match applied.get(&item.id) {
            Some(conv) => {
                let _entered = item.span.enter();
                report(deps, &item.resolution, &conv.tenant_id, &item.d);
                Outcome::Processed {
                    conversation_id: conv.id,
                    tenant_id: conv.tenant_id.clone(),
                    language: item.d.detection,
                }
            }
            None => Outcome::AlreadyProcessed,
        };
        outcomes.insert(item.id, outcome);
    }
    Ok(outcomes)
}

/// The job's stored messages and up to `room` others taken along, by arrival (the order their
/// effects apply in), with the ids of those taken along. Taken along: messages stored more than
/// [`BEHIND`] ago and not yet processed, the newest of them (after this job's stretch, see
/// [`SPREAD`]), whose own jobs are furthest back in the queue. (Oldest first took the messages
/// of the jobs about to run, which then waited on each other's locks: half the throughput of
/// `scripts/bench-worker.sh`.) One statement for both: behind a pooler each round trip is a hop
/// more.
async fn load(
    deps: &Deps,
    ids: &[Uuid],
    room: usize,
) -> anyhow::Result<(Vec<(Uuid, Stored)>, Vec<Uuid>)> {
    let stretch = NEXT_STRETCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SPREAD;
    let skip = if room == 0 { 0 } else { stretch * CHUNK };
    let rows = sqlx::query!(
        r#"SELECT id AS "id!", from_number, to_number, message_content AS "message_content!",
                  opt_out_type, created_at AS "created_at!", processed_at, along AS "along!"
           FROM (
               SELECT id, from_number, to_number, message_content,
                      raw_webhook_data ->> 'OptOutType' AS opt_out_type, created_at, processed_at,
                      false AS along
               FROM sms_messages WHERE id = ANY($1) AND direction = 'inbound'
               UNION ALL
               (SELECT id, from_number, to_number, message_content,
                       raw_webhook_data ->> 'OptOutType', created_at, processed_at, true
                FROM sms_messages
                WHERE direction = 'inbound' AND processed_at IS NULL
                  AND created_at < now() - make_interval(secs => $2) AND id <> ALL($1)
                ORDER BY created_at DESC OFFSET $4 LIMIT $3)
           ) m
           ORDER BY created_at, id"#,
        ids,
        BEHIND.as_secs_f64(),
        room as i64,
        skip as i64
    )
    .fetch_all(&deps.pool)
    .await?;
    let along = rows.iter().filter(|r| r.along).map(|r| r.id).collect();
    let stored = rows
        .into_iter()
        .map(|row| {
            let msg = Stored {
                state: if row.processed_at.is_some() {
                    InboundState::Processed
                } else {
                    InboundState::Stored
                },
                from_number: row.from_number,
                to_number: row.to_number,
                body: row.message_content,
                opt_out_type: row.opt_out_type,
                created_at: row.created_at,
            };
            (row.id, msg)
        })
        .collect();
    Ok((stored, along))
}

/// A conversation as the batch found it after its upsert.
#[derive(Debug, Clone)]
struct Linked {
    id: Uuid,
    tenant_id: Option<String>,
}

/// A conversation row to upsert: the number's first message in the batch gives its written
/// form, the latest its time.
struct ConversationInput<'a> {
    original: &'a str,
    tenant_id: Option<&'a str>,
    last_message_at: DateTime<Utc>,
    owner_known: bool,
    kind: &'static str,
}

/// The transaction: conversations, messages, languages, tenants, opt changes and route jobs.
/// Returns the conversation of each message it linked (the others were linked by another run, or
/// are taken-along messages another run holds).
async fn apply(
    deps: &Deps,
    items: &[Item],
    along: &[Uuid],
) -> anyhow::Result<HashMap<Uuid, Linked>> {
    let mut tx = deps.pool.begin().await?;
    let held = lock_messages(&mut tx, items, along).await?;
    let items: Vec<&Item> = items.iter().filter(|i| held.contains(&i.id)).collect();
    if items.is_empty() {
        return Ok(HashMap::new());
    }
    let conversations = upsert_conversations(&mut tx, &items).await?;
    let linked = link_messages(&mut tx, &items, &conversations).await?;
    if linked.is_empty() {
        return Ok(linked); // another run linked them all first: roll back
    }
    let mine: Vec<&Item> = items
        .iter()
        .copied()
        .filter(|i| linked.contains_key(&i.id))
        .collect();
    merge_conversation_languages(&mut tx, &mine, &conversations).await?;
    // Opt changes in one order (per number, by arrival) so concurrent batches lock alike.
    let mut opt: Vec<&&Item> = mine.iter().filter(|i| i.d.opt_change.is_some()).collect();
    opt.sort_by(|a, b| (&a.d.number, a.msg.created_at).cmp(&(&b.d.number, b.msg.created_at)));
    for item in opt {
        let (Some(seen), Some(conv)) = (&item.d.opt_change, linked.get(&item.id)) else {
            continue;
        };
        let recorded = record_opt_change(
            &mut tx,
            &item.msg,
            &item.d.number,
            item.id,
            conv.tenant_id.as_deref(),
            seen,
        )
        .instrument(item.span.clone())
        .await?;
        if recorded.newly_opted_out && deps.opt_out_confirmation {
            confirm_opt_out(deps, &mut tx, conv, &item.d, recorded.event_id)
                .instrument(item.span.clone())
                .await?;
        }
    }
    // One route job for the chunk's routable messages (see `RouteMessages`).
    let messages: Vec<RouteMessage> = mine
        .iter()
        .filter(|i| i.d.route == RouteStatus::Pending)
        .map(|i| RouteMessage {
            message_id: i.id,
            attempt: 0,
            trace: TraceContext::of(&i.span),
        })
        .collect();
    if !messages.is_empty() {
        jobs::schedule(&mut tx, &[RouteMessages { messages }], When::NOW).await?;
    }
    // Last: a tenant's row is shared by all its residents' batches, so its lock is held for
    // the commit alone.
    update_tenants(deps, &mut tx, &mine, &linked).await?;
    tx.commit().await?;
    Ok(linked)
}

/// Locks the chunk's messages still waiting, in id order: the job's own (waiting for another
/// run that holds one) and those taken along that no other run holds (SKIP LOCKED). Returns
/// the ids locked.
async fn lock_messages(
    tx: &mut PgConnection,
    items: &[Item],
    along: &[Uuid],
) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    let (extra, own): (Vec<Uuid>, Vec<Uuid>) = items
        .iter()
        .map(|i| i.id)
        .partition(|id| along.contains(id));
    // One statement, one round trip: the job's own first (waiting for a run that holds one),
    // then those taken along that no run holds.
    let held = sqlx::query_scalar!(
        r#"WITH own AS (
               SELECT id FROM sms_messages WHERE id = ANY($1) AND processed_at IS NULL
               ORDER BY id FOR UPDATE
           ), along AS (
               SELECT id FROM sms_messages WHERE id = ANY($2) AND processed_at IS NULL
               ORDER BY id FOR UPDATE SKIP LOCKED
           )
           SELECT id AS "id!" FROM own UNION ALL SELECT id FROM along"#,
        &own,
        &extra
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(held)
}

/// Upserts every number's conversation in one statement, in number order (the lock order).
///
/// The conversation follows the number's current owner: the tenant found, or none when the
/// directory definitively knows none (a number removed or recycled); a directory outage
/// (`owner_known` false) leaves it as it was.
async fn upsert_conversations(
    tx: &mut PgConnection,
    items: &[&Item],
) -> anyhow::Result<HashMap<String, (Linked, Option<Detection>)>> {
    let mut by_number: BTreeMap<&str, ConversationInput<'_>> = BTreeMap::new();
    for item in items {
        let tenant_id = match &item.resolution {
            Resolution::Found(t) => Some(t.tenant_id.as_str()),
            Resolution::Unknown | Resolution::Unavailable => None,
        };
        let input = by_number
            .entry(item.d.number.as_str())
            .or_insert(ConversationInput {
                original: &item.d.original,
                tenant_id,
                last_message_at: item.msg.created_at,
                owner_known: !matches!(item.resolution, Resolution::Unavailable),
                kind: item.d.kind.as_str(),
            });
        input.last_message_at = input.last_message_at.max(item.msg.created_at);
    }
    let numbers: Vec<&str> = by_number.keys().copied().collect();
    let originals: Vec<&str> = by_number.values().map(|c| c.original).collect();
    let tenants: Vec<Option<&str>> = by_number.values().map(|c| c.tenant_id).collect();
    let ats: Vec<DateTime<Utc>> = by_number.values().map(|c| c.last_message_at).collect();
    let known: Vec<bool> = by_number.values().map(|c| c.owner_known).collect();
    let kinds: Vec<&str> = by_number.values().map(|c| c.kind).collect();
    let rows = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[], $6::text[])
                   WITH ORDINALITY AS u(number, original, tenant_id, at, known, kind, n)
           )
           INSERT INTO sms_conversations AS c (phone_number, phone_number_original, tenant_id, last_message_at, number_kind)
           SELECT number, original, tenant_id, at, kind FROM input ORDER BY n
           ON CONFLICT (phone_number) DO UPDATE SET
               tenant_id = CASE WHEN (SELECT known FROM input WHERE input.number = EXCLUDED.phone_number)
                                THEN EXCLUDED.tenant_id ELSE c.tenant_id END,
               last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at),
               updated_at = now()
           RETURNING id, phone_number, tenant_id, language_detected, language_confidence"#,
        &numbers as &[&str],
        &originals as &[&str],
        &tenants as &[Option<&str>],
        &ats,
        &known,
        &kinds as &[&str]
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let current = stored_detection(r.language_detected.as_deref(), r.language_confidence);
            let linked = Linked {
                id: r.id,
                tenant_id: r.tenant_id,
            };
            (r.phone_number, (linked, current))
        })
        .collect())
}

/// Links every message not yet linked to its conversation, in one statement: the message
/// belongs to the conversation's tenant of this moment, for good, and waits for its route (or
/// is skipped: opt-out keywords are the carrier's business, not an agent's).
async fn link_messages(
    tx: &mut PgConnection,
    items: &[&Item],
    conversations: &HashMap<String, (Linked, Option<Detection>)>,
) -> anyhow::Result<HashMap<Uuid, Linked>> {
    let conv = |item: &Item| &conversations[&item.d.number].0;
    let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
    let conv_ids: Vec<Uuid> = items.iter().map(|i| conv(i).id).collect();
    let languages: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.d.detection.map(|d| d.language.code()))
        .collect();
    let confidences: Vec<Option<f32>> = items
        .iter()
        .map(|i| i.d.detection.map(|d| d.confidence))
        .collect();
    let tenants: Vec<Option<&str>> = items.iter().map(|i| conv(i).tenant_id.as_deref()).collect();
    let routes: Vec<&str> = items.iter().map(|i| i.d.route.as_str()).collect();
    let linked = sqlx::query_scalar!(
        r#"UPDATE sms_messages m
           SET conversation_id = u.conversation_id, language_detected = u.language,
               language_confidence = u.confidence, tenant_id = u.tenant_id, route_status = u.route,
               processed_at = now(), updated_at = now()
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::real[], $5::text[], $6::text[])
                AS u(id, conversation_id, language, confidence, tenant_id, route)
           WHERE m.id = u.id AND m.processed_at IS NULL
           RETURNING m.id"#,
        &ids,
        &conv_ids,
        &languages as &[Option<&str>],
        &confidences as &[Option<f32>],
        &tenants as &[Option<&str>],
        &routes as &[&str]
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(linked
        .into_iter()
        .filter_map(|id| {
            let item = items.iter().find(|i| i.id == id)?;
            Some((id, conv(item).clone()))
        })
        .collect())
}

/// Merges each message's detected language into its conversation's, in arrival order; one
/// statement for the conversations whose language changed.
async fn merge_conversation_languages(
    tx: &mut PgConnection,
    items: &[&Item],
    conversations: &HashMap<String, (Linked, Option<Detection>)>,
) -> anyhow::Result<()> {
    let mut merged: BTreeMap<&str, Option<Detection>> = BTreeMap::new();
    for item in items {
        let Some(new) = item.d.detection else {
            continue;
        };
        let current = merged
            .entry(item.d.number.as_str())
            .or_insert_with(|| conversations[&item.d.number].1);
        *current = Some(language::merge(*current, new));
    }
    let changed: Vec<(Uuid, Detection, Option<Detection>)> = merged
        .into_iter()
        .filter_map(|(number, now)| {
            let (conv, before) = &conversations[number];
            let now = now?;
            (Some(now) != *before).then_some((conv.id, now, *before))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    for (id, now, before) in &changed {
        tracing::info!(conversation_id = %id, from = ?before.map(|c| c.language.code()),
            to = now.language.code(), confidence = now.confidence, "conversation language updated");
    }
    let ids: Vec<Uuid> = changed.iter().map(|c| c.0).collect();
    let (codes, confidences) = language_columns(changed.iter().map(|c| c.1));
    sqlx::query!(
        r#"UPDATE sms_conversations c SET language_detected = u.language, language_confidence = u.confidence
           FROM UNNEST($1::uuid[], $2::text[], $3::real[]) AS u(id, language, confidence)
           WHERE c.id = u.id"#,
        &ids,
        &codes as &[&str],
        &confidences
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Tracks each tenant's most recently used number and, when its language preference changes,
/// stores it and (with a Monitor configured) enqueues telling the Monitor, in the same commit.
/// Tenants in id order (the lock order).
async fn update_tenants(
    deps: &Deps,
    tx: &mut PgConnection,
    items: &[&Item],
    linked: &HashMap<Uuid, Linked>,
) -> anyhow::Result<()> {
    // Per tenant: its latest number and its messages' detections in arrival order.
    let mut tenants: BTreeMap<&str, (&str, Vec<Detection>)> = BTreeMap::new();
    for item in items {
        let Some(tenant_id) = linked[&item.id].tenant_id.as_deref() else {
            continue;
        };
        let entry = tenants
            .entry(tenant_id)
            .or_insert((item.d.number.as_str(), Vec::new()));
        entry.0 = item.d.number.as_str();
        entry.1.extend(item.d.detection);
    }
    settle_numbers_only(tx, &mut tenants).await?;
    if tenants.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = tenants.keys().copied().collect();
    let numbers: Vec<&str> = tenants.values().map(|t| t.0).collect();
    let rows = sqlx::query!(
        r#"UPDATE tenant_profiles t SET last_used_phone_number = u.number, updated_at = now()
           FROM (SELECT * FROM UNNEST($1::text[], $2::text[]) AS u(tenant_id, number) ORDER BY tenant_id) u
           WHERE t.tenant_id = u.tenant_id
           RETURNING t.tenant_id, t.language_preference, t.language_confidence"#,
        &ids as &[&str],
        &numbers as &[&str]
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = Vec::new();
    let mut notify = Vec::new();
    for row in rows {
        let Some((_, detections)) = tenants.get(row.tenant_id.as_str()) else {
            continue;
        };
        let current = stored_detection(row.language_preference.as_deref(), row.language_confidence);
        let Some(merged) = merged_detection(current, detections) else {
            continue;
        };
        if Some(merged) == current {
            continue;
        }
        if current.map(|c| c.language) != Some(merged.language) {
            tracing::info!(
                tenant_id = %row.tenant_id,
                from = ?current.map(|c| c.language.code()),
                to = merged.language.code(),
                "tenant language preference changed"
            );
            if deps.tenants.monitor().is_some() {
                notify.push(NotifyLanguage {
                    tenant_id: row.tenant_id.clone(),
                    language: merged.language.code().to_owned(),
                    confidence: merged.confidence,
                    attempt: 0,
                    trace: TraceContext::current(),
                });
            }
        }
        changed.push((row.tenant_id, merged));
    }
    set_tenant_languages(tx, &changed).await?;
    jobs::schedule(tx, &notify, When::NOW).await?;
    Ok(())
}

/// Reads the batch's tenants without locking them; of those whose language this batch leaves as
/// it is, writes the number that changed (SKIP LOCKED) and drops them from `tenants`. What is
/// left changes language and is written under the row's lock.
async fn settle_numbers_only(
    tx: &mut PgConnection,
    tenants: &mut BTreeMap<&str, (&str, Vec<Detection>)>,
) -> anyhow::Result<()> {
    let stored = sqlx::query!(
        "SELECT tenant_id, last_used_phone_number, language_preference, language_confidence
         FROM tenant_profiles WHERE tenant_id = ANY($1)",
        &tenants.keys().copied().collect::<Vec<&str>>() as &[&str]
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut numbers_only: BTreeMap<&str, &str> = BTreeMap::new();
    for row in &stored {
        let Some((&tenant_id, (number, detections))) =
            tenants.get_key_value(row.tenant_id.as_str())
        else {
            continue;
        };
        let current = stored_detection(row.language_preference.as_deref(), row.language_confidence);
        if merged_detection(current, detections) == current {
            if row.last_used_phone_number.as_deref() != Some(*number) {
                numbers_only.insert(tenant_id, number);
            }
            tenants.remove(tenant_id);
        }
    }
    set_last_numbers(tx, &numbers_only).await?;
    Ok(())
}

/// Records each tenant's most recently used number, skipping a tenant another batch is writing
/// at this moment (it keeps that batch's number, as recent as ours): every resident's batch
/// writes its tenant's row, and waiting for each other's commits serialised them.
async fn set_last_numbers(
    tx: &mut PgConnection,
    numbers: &BTreeMap<&str, &str>,
) -> anyhow::Result<()> {
    if numbers.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = numbers.keys().copied().collect();
    let values: Vec<&str> = numbers.values().copied().collect();
    sqlx::query!(
        r#"UPDATE tenant_profiles t SET last_used_phone_number = u.number, updated_at = now()
           FROM UNNEST($1::text[], $2::text[]) AS u(tenant_id, number)
           WHERE t.tenant_id = u.tenant_id
             AND t.tenant_id IN (SELECT tenant_id FROM tenant_profiles WHERE tenant_id = ANY($1)
                                 ORDER BY tenant_id FOR UPDATE SKIP LOCKED)"#,
        &ids as &[&str],
        &values as &[&str]
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A stored preference with a batch's detections merged in, in arrival order.
fn merged_detection(current: Option<Detection>, detections: &[Detection]) -> Option<Detection> {
    detections
        .iter()
        .fold(current, |acc, new| Some(language::merge(acc, *new)))
}

/// Stores the tenants' merged language preferences, one statement.
async fn set_tenant_languages(
    tx: &mut PgConnection,
    changed: &[(String, Detection)],
) -> anyhow::Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let (codes, confidences) = language_columns(changed.iter().map(|c| c.1));
    sqlx::query!(
        r#"UPDATE tenant_profiles t SET language_preference = u.language, language_confidence = u.confidence
           FROM UNNEST($1::text[], $2::text[], $3::real[]) AS u(tenant_id, language, confidence)
           WHERE t.tenant_id = u.tenant_id"#,
        &ids as &[&str],
        &codes as &[&str],
        &confidences
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Detections as the two parallel columns (language code, confidence) an UNNEST update reads.
fn language_columns(detections: impl Iterator<Item = Detection>) -> (Vec<&'static str>, Vec<f32>) {
    detections
        .map(|d| (d.language.code(), d.confidence))
        .unzip()
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

/// A keyword or revocation phrase in the body, or Twilio's own `OptOutType` field (which wins
/// when present).
fn opt_change(msg: &Stored) -> Option<OptChangeSeen> {
    let kind = msg.opt_out_type.clone();
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
    event_id: Option<i64>,
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
    // A number that takes no texts (a short code) gets no confirmation; the ledger says why.
    let to = match phone::recipient(&d.number, deps.region) {
        Ok(to) => to,
        Err(why) => {
            tracing::warn!(%why, "opt-out confirmation not sent: the number takes no texts");
            if let Some(event) = event_id {
                sqlx::query!(
                    "UPDATE sms_opt_out_events SET note = $2 WHERE id = $1",
                    event,
                    format!("confirmation not sent: {why}")
                )
                .execute(&mut *tx)
                .await?;
            }
            return Ok(());
        }
    };
    let confirmation = shared::outbound::NewOutbound {
        conversation_id: conv.id,
        to: &to,
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
