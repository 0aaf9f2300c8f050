//! The periodic reconciler: outbound messages stuck in a non-final status are fetched from Twilio
//! and brought up to date (through the same ledger and monotonic rule as callbacks), and
//! conversations still without a tenant are tried against the directory again. Several replicas
//! may run it; a lease row (`reconciler_lease`) lets one pass run at a time, through any pooler.
//! Each pass also prunes finished jobs; between passes, the usage ledger is folded and the
//! per-minute counts compacted every 5 s.

use std::sync::Arc;

use shared::{
    delivery::{self, ReconcileStopped},
    jobs::{self, ApplyStatus, ApplyStatuses, When},
    phone,
    tenants::Resolution,
};
use tokio_util::sync::CancellationToken;

use crate::Deps;

const BATCH: i64 = 200;

/// Most inbound messages one backfill pass stores.
const BACKFILL_PER_PASS: usize = 1_000;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub stuck_checked: usize,
    pub stuck_updated: usize,
    pub tenants_attached: usize,
    pub jobs_deleted: u64,
    /// Inbound messages Twilio had that we did not, stored by the backfill.
    pub backfilled: usize,
}

pub async fn run(deps: Arc<Deps>, shutdown: CancellationToken) {
    let interval = deps
        .outbound
        .as_ref()
        .map_or(std::time::Duration::from_secs(60), |(c, _)| {
            c.reconcile_interval
        });
    let mut every = tokio::time::interval(interval);
    let mut fold_every = tokio::time::interval(FOLD_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = fold_every.tick() => {
                fold_usage(&deps).await;
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        match once(&deps).await {
            Ok(r) if r != Report::default() => tracing::info!(?r, "reconciler pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
        }
    }
}

/// How often the usage ledger's pending changes are folded (the passes do not fold): a read sums the
/// pending changes of the keys it covers, and a busy minute (every inbound message linked to its
/// conversation is one) leaves tens of thousands.
const FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the usage ledger (no lease needed: the fold's own advisory lock lets one run at a time).
async fn fold_usage(deps: &Deps) {
    match shared::usage::fold(&deps.pool).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deltas = n, "usage ledger folded"),
        Err(e) => tracing::warn!(error = %e, "usage ledger fold failed; next time"),
    }
    // The per-minute counts of the health chart, on the same timer: a statement appends a row,
    // so between two compactions they grow with the statements, not the messages.
    if let Err(e) = shared::traffic::compact(&deps.pool).await {
        tracing::warn!(error = %e, "per-minute counts compaction failed; next time");
    }
}

/// How long the lease holds between renewals: a replica killed mid-pass blocks the others at most
/// this long. Each step of a pass renews it.
const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// This process's name on the lease.
static HOLDER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("reconciler-{}", ulid::Ulid::generate()));

/// One pass; returns what it did (nothing when another replica holds the lease).
pub async fn once(deps: &Deps) -> anyhow::Result<Report> {
    let leased = sqlx::query_scalar!(
        r#"INSERT INTO reconciler_lease (id, holder, expires_at) VALUES (true, $1, now() + make_interval(secs => $2::float8))
           ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
           WHERE reconciler_lease.expires_at < now() OR reconciler_lease.holder = EXCLUDED.holder
           RETURNING holder"#,
        HOLDER.as_str(),
        LEASE.as_secs_f64()
    )
    .fetch_optional(&deps.pool)
    .await?;
    if leased.is_none() {
        return Ok(Report::default());
    }
    let result = pass(deps).await;
    sqlx::query!(
        "UPDATE reconciler_lease SET expires_at = now() WHERE holder = $1",
        HOLDER.as_str()
    )
    .execute(&deps.pool)
    .await?;
    result
}

/// Extends this process's lease for another LEASE.
async fn renew(deps: &Deps) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE reconciler_lease SET expires_at = now() + make_interval(secs => $2::float8) WHERE holder = $1",
        HOLDER.as_str(),
        LEASE.as_secs_f64()
    )
    .execute(&deps.pool)
    .await?;
    Ok(())
}

async fn pass(deps: &Deps) -> anyhow::Result<Report> {
    // apalis keeps finished jobs forever; without this the queue table only grows. Batches until
    // the backlog is gone (a pass keeps up with any job rate: 10,000 a minute would not), the
    // lease renewed between them.
    let mut jobs_deleted = 0;
    loop {
        let n = jobs::delete_finished(&deps.pool, deps.job_retention).await?;
        jobs_deleted += n;
        if n < jobs::DELETE_BATCH as u64 {
            break;
        }
        renew(deps).await?;
    }
    sqlx::query!("DELETE FROM directory_changes WHERE changed_at < now() - interval '1 day'")
        .execute(&deps.pool)
        .await?;
    let mut report = Report {
        jobs_deleted,
        ..Report::default()
    };
    if let Some((cfg, twilio)) = &deps.outbound {
        (report.stuck_checked, report.stuck_updated) = check_stuck(deps, cfg, twilio).await?;
        renew(deps).await?;
        if let Some(every) = cfg.inbound_backfill_interval {
            // Twilio's list unreadable: the next pass tries again; the rest of this one goes on.
            match backfill_inbound(deps, cfg, twilio, every).await {
                Ok(n) => report.backfilled = n,
                Err(e) => tracing::warn!(error = %e, "inbound backfill failed; next pass"),
            }
        }
    }
    if deps.tenants.monitor().is_some() {
        renew(deps).await?;
        report.tenants_attached = attach_tenants(deps).await?;
    }
    Ok(report)
}

/// Outbound messages stuck in a non-final status, fetched from Twilio; a status not seen yet is
/// stored like a callback and applied by the status job. Every check is recorded (the message
/// goes to the back of the line), so messages Twilio cannot answer for never starve the others:
/// a 404 is settled (`reconcile_stopped` not_found), an error is noted and the pass goes on, and
/// a message non-final past RECONCILE_GIVE_UP_AFTER_SECS stops being polled. Returns (checked,
/// updated).
async fn check_stuck(
    deps: &Deps,
    cfg: &shared::config::Outbound,
    twilio: &shared::twilio::client::TwilioClient,
) -> anyhow::Result<(usize, usize)> {
    // At Twilio and not final, as the lifecycle's enum says (the partial index that serves these
    // reads covers them: `schema::every_status_list_in_the_schema_is_the_enums`).
    let open = delivery::open_at_twilio();
    let gave_up = sqlx::query!(
        r#"UPDATE sms_messages SET reconcile_stopped = $2, reconciled_at = now(),
               reconcile_note = 'still not final after RECONCILE_GIVE_UP_AFTER_SECS'
           WHERE direction = 'outbound' AND reconcile_stopped IS NULL AND twilio_sid IS NOT NULL
             AND delivery_status = ANY($3::text[])
             AND created_at < now() - make_interval(secs => $1::float8)"#,
        cfg.reconcile_give_up_after.as_secs_f64(),
        ReconcileStopped::GaveUp.as_str(),
        &open as &[&str]
    )
    .execute(&deps.pool)
    .await?
    .rows_affected();
    if gave_up > 0 {
        deps.metrics.reconcile("gave_up", gave_up);
        tracing::warn!(
            messages = gave_up,
            "reconciler gave up on messages still not final"
        );
    }
    let stuck = sqlx::query!(
        r#"SELECT id, twilio_sid AS "sid!" FROM sms_messages
           WHERE direction = 'outbound'
             AND delivery_status = ANY($3::text[])
             AND status_updated_at < now() - make_interval(secs => $1::float8)
             AND twilio_sid IS NOT NULL AND reconcile_stopped IS NULL
           ORDER BY status_updated_at LIMIT $2"#,
        cfg.reconcile_stuck_after.as_secs_f64(),
        BATCH,
        &open as &[&str]
    )
    .fetch_all(&deps.pool)
    .await?;
    let (mut checked, mut updated) = (0, 0);
    for m in stuck {
        checked += 1;
        let result = match twilio.fetch(&m.sid).await {
            Ok(Some(resource)) => apply_fetched(deps, m.id, &m.sid, &resource).await,
            Ok(None) => note_check(
                deps,
                m.id,
                "not found at Twilio (404)",
                Some(ReconcileStopped::NotFound),
            )
            .await
            .map(|()| "not_found"),
            // One message's failure never ends the pass: noted, and it waits its turn again.
            Err(e) => note_check(deps, m.id, &format!("fetch failed: {e}"), None)
                .await
                .map(|()| "error"),
        };
        match result {
            Ok(outcome) => {
                deps.metrics.reconcile(outcome, 1);
                if outcome == "updated" {
                    updated += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconciler could not record a check; next message")
            }
        }
    }
    Ok((checked, updated))
}

/// Inbound backfill: the inbound messages Twilio received since the watermark (the first time,
/// INBOUND_BACKFILL_LOOKBACK_SECS back), every page of them, stored when we do not have them
/// through the webhook's own statement (idempotent by MessageSid, one processing job), marked
/// `"Backfilled": "true"` in the raw payload. A message whose webhook arrives later is not stored
/// twice. The watermark moves to the newest message seen (less a minute, for Twilio's clock), so
/// the cost follows new messages, not history. Runs every INBOUND_BACKFILL_INTERVAL_SECS.
async fn backfill_inbound(
    deps: &Deps,
    cfg: &shared::config::Outbound,
    twilio: &shared::twilio::client::TwilioClient,
    every: std::time::Duration,
) -> anyhow::Result<usize> {
    let state = sqlx::query!("SELECT watermark, ran_at FROM inbound_backfill")
        .fetch_optional(&deps.pool)
        .await?;
    let now = chrono::Utc::now();
    if state
        .as_ref()
        .is_some_and(|s| now - s.ran_at < chrono::Duration::from_std(every).unwrap_or_default())
    {
        return Ok(0);
    }
    let since = state.map_or_else(
        || now - chrono::Duration::from_std(cfg.inbound_backfill_lookback).unwrap_or_default(),
        |s| s.watermark,
    );
    let listed = twilio
        .list_received(cfg.sender.phone_number.as_deref(), since)
        .await?;
    let (received, truncated) = missing(deps, &listed).await?;
    let mut raws: Vec<serde_json::Value> = Vec::with_capacity(received.len());
    for m in &received {
        let mut raw = serde_json::json!({
            "MessageSid": m.sid, "SmsSid": m.sid, "SmsMessageSid": m.sid,
            "AccountSid": cfg.account_sid, "From": m.from, "To": m.to, "Body": m.body,
            "NumMedia": m.num_media.clone().unwrap_or_else(|| "0".into()),
            "NumSegments": m.num_segments.clone().unwrap_or_else(|| "1".into()),
            "SmsStatus": "received", "Backfilled": "true",
        });
        // An MMS's media, as its webhook would have listed them (MediaUrlN, MediaContentTypeN).
        if m.num_media.as_deref().is_some_and(|n| n != "0") {
            for (i, (url, content_type)) in twilio.media(&m.sid).await?.into_iter().enumerate() {
                raw[format!("MediaUrl{i}")] = url.into();
                raw[format!("MediaContentType{i}")] = content_type.into();
            }
        }
        raws.push(raw);
    }
    let number = |v: &Option<String>| v.as_deref().and_then(|n| n.parse::<i32>().ok());
    let mut rows = jobs::InboundRows::with_capacity(received.len());
    for (m, raw) in received.iter().zip(&raws) {
        rows.push(jobs::InboundRow {
            sid: &m.sid,
            body: m.body.as_deref().unwrap_or_default(),
            from: m.from.as_deref().unwrap_or_default(),
            to: m.to.as_deref().unwrap_or_default(),
            segments: number(&m.num_segments),
            media: number(&m.num_media),
            raw,
            traceparent: None,
            tracestate: None,
        });
    }
    let mut tx = deps.pool.begin().await?;
    let stored = jobs::store_inbound(&mut tx, &rows).await?;
    // Cut short: the watermark stays at the last message stored, so the next pass lists the
    // rest again (what it stored is then present and skipped).
    let newest = if truncated {
        received.last().and_then(|m| m.sent())
    } else {
        listed.iter().filter_map(|m| m.sent()).max()
    };
    let watermark = newest.map_or(since, |t| (t - chrono::Duration::minutes(1)).max(since));
    sqlx::query!(
        r#"INSERT INTO inbound_backfill (id, watermark, ran_at) VALUES (true, $1, now())
           ON CONFLICT (id) DO UPDATE SET watermark = EXCLUDED.watermark, ran_at = EXCLUDED.ran_at"#,
        watermark
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if !stored.is_empty() {
        deps.metrics.backfilled(stored.len() as u64);
        tracing::warn!(
            messages = stored.len(),
            "inbound messages backfilled from Twilio's log (their webhooks never reached us)"
        );
    }
    Ok(stored.len())
}

/// What Twilio listed that we lack, oldest first, at most BACKFILL_PER_PASS of it (true: cut
/// short): the pass's work and its transaction stay bounded however long Twilio's log is (one
/// indexed lookup per 1,000 listed, one insert); the rest waits for the next pass.
async fn missing<'a>(
    deps: &Deps,
    listed: &'a [shared::twilio::client::MessageResource],
) -> anyhow::Result<(Vec<&'a shared::twilio::client::MessageResource>, bool)> {
    let sids: Vec<&str> = listed.iter().map(|m| m.sid.as_str()).collect();
    let mut present = std::collections::HashSet::new();
    for chunk in sids.chunks(1_000) {
        present.extend(
            sqlx::query_scalar!(
                r#"SELECT twilio_sid AS "sid!" FROM sms_messages WHERE twilio_sid = ANY($1)"#,
                chunk as &[&str]
            )
            .fetch_all(&deps.pool)
            .await?,
        );
    }
    let mut missing: Vec<_> = listed
        .iter()
        .filter(|m| !present.contains(&m.sid))
        .collect();
    missing.sort_by_key(|m| m.sent());
    let truncated = missing.len() > BACKFILL_PER_PASS;
    missing.truncate(BACKFILL_PER_PASS);
    Ok((missing, truncated))
}

/// Twilio's current status of a stuck message, stored like a callback when new.
async fn apply_fetched(
    deps: &Deps,
    id: uuid::Uuid,
    sid: &str,
    resource: &shared::twilio::client::MessageResource,
) -> anyhow::Result<&'static str> {
    let mut tx = deps.pool.begin().await?;
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO sms_status_callbacks (message_sid, message_status, our_message_id, error_code, raw)
           VALUES ($1, $2, $3, $4, jsonb_build_object('source', 'reconciler'))
           ON CONFLICT (message_sid, message_status) DO NOTHING RETURNING id"#,
        sid,
        resource.status,
        id,
        resource.error_code_string()
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Checked now: not again before another stuck period.
    sqlx::query!(
        "UPDATE sms_messages SET status_updated_at = now(), reconciled_at = now(), reconcile_note = $2 WHERE id = $1",
        id,
        format!("twilio: {}", resource.status)
    )
    .execute(&mut *tx)
    .await?;
    if inserted.is_some() {
        let apply = ApplyStatus {
            message_sid: sid.to_owned(),
            our_message_id: Some(id),
            trace: shared::telemetry::TraceContext::current(),
        };
        jobs::schedule(&mut tx, &[ApplyStatuses::one(apply)], When::NOW).await?;
    }
    tx.commit().await?;
    Ok(if inserted.is_some() {
        "updated"
    } else {
        "unchanged"
    })
}

/// Records a check that brought no status; `stop` settles the message for good.
async fn note_check(
    deps: &Deps,
    id: uuid::Uuid,
    note: &str,
    stop: Option<ReconcileStopped>,
) -> anyhow::Result<()> {
    sqlx::query!(
        r#"UPDATE sms_messages SET status_updated_at = now(), reconciled_at = now(), reconcile_note = $2,
               reconcile_stopped = COALESCE($3, reconcile_stopped)
           WHERE id = $1"#,
        id,
        note,
        stop.map(ReconcileStopped::as_str)
    )
    .execute(&deps.pool)
    .await?;
    Ok(())
}

/// Conversations still without a tenant, tried against the directory again.
async fn attach_tenants(deps: &Deps) -> anyhow::Result<usize> {
    let mut attached = 0;
    {
        let unknown = sqlx::query!(
            r#"SELECT id, phone_number, phone_number_original FROM sms_conversations
               WHERE tenant_id IS NULL AND last_message_at > now() - interval '30 days'
               ORDER BY last_message_at DESC LIMIT $1"#,
            BATCH
        )
        .fetch_all(&deps.pool)
        .await?;
        for c in unknown {
            let e164 = phone::normalize(&c.phone_number, deps.region).ok();
            if let Resolution::Found(t) = deps
                .tenants
                .resolve(&c.phone_number_original, e164.as_ref())
                .await?
            {
                // The conversation and its messages stored without a tenant, together.
                let done = sqlx::query!(
                    r#"WITH c AS (
                           UPDATE sms_conversations SET tenant_id = $2, updated_at = now()
                           WHERE id = $1 AND tenant_id IS NULL RETURNING id
                       ), m AS (
                           UPDATE sms_messages SET tenant_id = $2
                           WHERE conversation_id IN (SELECT id FROM c) AND tenant_id IS NULL
                       )
                       SELECT id FROM c"#,
                    c.id,
                    t.tenant_id
                )
                .fetch_optional(&deps.pool)
                .await?;
                if done.is_some() {
                    attached += 1;
                    tracing::info!(conversation_id = %c.id, tenant_id = %t.tenant_id, "reconciler attached tenant");
                }
            }
        }
    }
    Ok(attached)
}
