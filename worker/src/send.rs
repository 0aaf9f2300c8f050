//! Handing an outbound message to Twilio without ever sending it twice.
//!
//! Every attempt is recorded (`sms_send_attempts`, outcome `in_flight`) and committed BEFORE the
//! call. An attempt whose outcome is not known (a crash mid-call, a timeout) is resolved before any
//! new one: a status callback carrying our message id proves Twilio has the message; without one
//! for `UNKNOWN_OUTCOME_GRACE_SECS` the message is taken as never created. Retries are durable: the
//! next attempt is a job with `run_after`, pushed in the same transaction that records the failure.

use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use shared::{
    config::Outbound,
    jobs::{self, ApplyStatus, SendMessage},
    phone,
    twilio::{
        client::{CreateOutcome, NewMessage},
        status,
    },
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Deps;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Accepted { sid: String },
    AlreadySent,
    Paced { until: chrono::DateTime<Utc> },
    Retrying { after: Duration },
    Failed { code: Option<String> },
    WaitingForUnknownOutcome,
    Missing,
}

/// Backoff before attempt `n + 1` after `n` failed: base x 2^(n-1), capped, with full jitter in
/// its upper half; Twilio's Retry-After wins when longer.
pub fn backoff(cfg: &Outbound, failed_attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = cfg
        .backoff_base
        .saturating_mul(1u32 << failed_attempts.saturating_sub(1).min(16))
        .min(cfg.backoff_max);
    let jittered = exp / 2 + exp.mul_f64(rand::rng().random_range(0.0..0.5));
    retry_after.map_or(jittered, |ra| ra.max(jittered))
}

/// Pacing waits up to this long inside the handler; longer waits become a scheduled job.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

fn callback_url(cfg: &Outbound, message_id: Uuid) -> String {
    format!(
        "{}/webhook/twilio/status?message_id={message_id}",
        cfg.public_url
    )
}

async fn reschedule(
    conn: &mut PgConnection,
    job: &SendMessage,
    after: Duration,
    priority: i16,
) -> anyhow::Result<()> {
    jobs::push_with_priority(
        conn,
        jobs::OUTBOUND_SEND,
        std::slice::from_ref(job),
        Some(after),
        priority.max(0) as usize,
    )
    .await?;
    Ok(())
}

#[tracing::instrument(name = "send_message", skip_all, fields(message_id = %job.message_id), err)]
pub async fn process(deps: &Deps, job: SendMessage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some((cfg, twilio)) = deps.outbound.as_ref() else {
        anyhow::bail!("outbound sending is not configured (TWILIO_AUTH_TOKEN)");
    };
    let Some(msg) = sqlx::query!(
        r#"SELECT m.to_number AS "to_number!", m.message_content, m.delivery_status, m.twilio_sid,
                  m.send_attempts, m.media_urls, m.priority,
                  a.attempt AS "open_attempt?", a.started_at AS "open_started_at?"
           FROM sms_messages m
           LEFT JOIN LATERAL (
               SELECT attempt, started_at FROM sms_send_attempts
               WHERE message_id = m.id AND outcome IN ('in_flight', 'unknown')
               ORDER BY attempt DESC LIMIT 1
           ) a ON true
           WHERE m.id = $1 AND m.direction = 'outbound'"#,
        job.message_id
    )
    .fetch_optional(&deps.pool)
    .await?
    else {
        return Ok(Outcome::Missing);
    };
    if msg.twilio_sid.is_some() || status::rank(&msg.delivery_status) > 0 {
        // A status callback already proved an attempt whose answer was lost (a worker killed
        // mid-call): close it in the ledger too, or it stays `in_flight` forever.
        if let Some(open_attempt) = msg.open_attempt {
            sqlx::query!(
                "UPDATE sms_send_attempts SET outcome = 'resolved', finished_at = now() WHERE message_id = $1 AND attempt = $2",
                job.message_id,
                open_attempt
            )
            .execute(&deps.pool)
            .await?;
        }
        return Ok(Outcome::AlreadySent);
    }

    // An earlier attempt with an unknown outcome is resolved first.
    let open = msg.open_attempt.zip(msg.open_started_at);
    if let Some((open_attempt, open_started_at)) = open {
        let proof = sqlx::query_scalar!(
            "SELECT message_sid FROM sms_status_callbacks WHERE our_message_id = $1 LIMIT 1",
            job.message_id
        )
        .fetch_optional(&deps.pool)
        .await?;
        let mut tx = deps.pool.begin().await?;
        if let Some(sid) = proof {
            sqlx::query!(
                "UPDATE sms_send_attempts SET outcome = 'resolved', finished_at = now() WHERE message_id = $1 AND attempt = $2",
                job.message_id,
                open_attempt
            )
            .execute(&mut *tx)
            .await?;
            jobs::push(
                &mut tx,
                jobs::OUTBOUND_STATUS,
                &[ApplyStatus {
                    message_sid: sid.clone(),
                    our_message_id: Some(job.message_id),
                    trace: shared::telemetry::TraceContext::current(),
                }],
                None,
            )
            .await?;
            tx.commit().await?;
            tracing::info!(sid = %sid, "unknown send outcome resolved: Twilio has the message");
            return Ok(Outcome::AlreadySent);
        }
        let waited = (Utc::now() - open_started_at).to_std().unwrap_or_default();
        if waited < cfg.unknown_outcome_grace {
            reschedule(
                &mut tx,
                &job,
                cfg.unknown_outcome_grace - waited + Duration::from_millis(200),
                msg.priority,
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(
                attempt = open_attempt,
                "send outcome unknown; waiting for a status callback before any new attempt"
            );
            return Ok(Outcome::WaitingForUnknownOutcome);
        }
        sqlx::query!(
            "UPDATE sms_send_attempts SET outcome = 'abandoned', finished_at = now(), error_message = 'no sign of the message at Twilio within the grace period' WHERE message_id = $1 AND attempt = $2",
            job.message_id,
            open_attempt
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::warn!(
            attempt = open_attempt,
            "unknown send outcome: no callback within the grace period; taken as not created"
        );
    }

    // Pacing: reserve this sender's next slot once, then wait for it: inline when it is near
    // (apalis schedules in whole seconds, too coarse to space sends), else in a job of its own.
    let slot = match job.slot {
        Some(slot) => Some(slot),
        // A reply in a live conversation goes ahead of bulk sends that already hold slots: it is
        // sent now and pushes the sender's later slots back by one interval, keeping the rate.
        None if cfg.rate_per_sender > 0.0 && msg.priority > 0 => {
            sqlx::query!(
                r#"INSERT INTO sender_pacing AS p (sender, next_slot) VALUES ($1, now() + make_interval(secs => $2::float8))
                   ON CONFLICT (sender) DO UPDATE SET next_slot = GREATEST(p.next_slot, now()) + make_interval(secs => $2::float8)"#,
                cfg.sender(),
                1.0 / cfg.rate_per_sender
            )
            .execute(&deps.pool)
            .await?;
            None
        }
        None if cfg.rate_per_sender > 0.0 => {
            let interval_us = (1_000_000.0 / cfg.rate_per_sender) as i64;
            Some(
                sqlx::query_scalar!(
                    r#"INSERT INTO sender_pacing AS p (sender, next_slot) VALUES ($1, now() + make_interval(secs => $2::float8 / 1e6))
                       ON CONFLICT (sender) DO UPDATE SET next_slot = GREATEST(p.next_slot, now()) + make_interval(secs => $2::float8 / 1e6)
                       RETURNING next_slot - make_interval(secs => $2::float8 / 1e6) AS "slot!""#,
                    cfg.sender(),
                    interval_us as f64
                )
                .fetch_one(&deps.pool)
                .await?,
            )
        }
        None => None,
    };
    if let Some(slot) = slot {
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        if wait > MAX_INLINE_WAIT {
            let mut conn = deps.pool.acquire().await?;
            let paced = SendMessage {
                message_id: job.message_id,
                slot: Some(slot),
                trace: shared::telemetry::TraceContext::current(),
            };
            reschedule(
                &mut conn,
                &paced,
                wait - Duration::from_secs(1),
                msg.priority,
            )
            .await?;
            return Ok(Outcome::Paced { until: slot });
        }
        tokio::time::sleep(wait).await;
    }

    // Record the intent, then call.
    let attempt = msg.send_attempts + 1;
    // One statement, so one round trip: claim the message and record the attempt together.
    let claimed = sqlx::query_scalar!(
        r#"WITH claimed AS (
               UPDATE sms_messages SET send_attempts = $2, delivery_status = 'submitting',
                      status_updated_at = now(), updated_at = now()
               WHERE id = $1 AND send_attempts = $3 AND twilio_sid IS NULL
               RETURNING id
           )
           INSERT INTO sms_send_attempts (message_id, attempt, outcome)
           SELECT id, $2, 'in_flight' FROM claimed
           RETURNING attempt"#,
        job.message_id,
        attempt,
        msg.send_attempts
    )
    .fetch_optional(&deps.pool)
    .await?;
    if claimed.is_none() {
        // Another run of this job got here first.
        return Ok(Outcome::AlreadySent);
    }

    let media: Vec<String> = msg
        .media_urls
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default();
    let callback = callback_url(cfg, job.message_id);
    let outcome = twilio
        .create(&NewMessage {
            to: &msg.to_number,
            from: cfg.phone_number.as_deref(),
            messaging_service_sid: cfg.messaging_service_sid.as_deref(),
            body: &msg.message_content,
            media_urls: &media,
            status_callback: &callback,
        })
        .await;
    count_outcome(deps, &outcome);
    // Twilio's answer must not be lost to a database blip: the attempt would stay unknown and,
    // were its status callbacks lost to the same outage, the message would be sent again after
    // the grace period. So recording is retried while the database is unreachable (the handler
    // runs to its end even when its apalis worker restarts meanwhile, see queues.rs).
    let deadline = std::time::Instant::now() + cfg.unknown_outcome_grace;
    let mut pause = Duration::from_millis(200);
    loop {
        let recorded = record(
            deps,
            cfg,
            &job,
            attempt,
            msg.priority,
            &msg.to_number,
            outcome.clone(),
        )
        .await;
        match recorded {
            Err(e) if db_unreachable(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, attempt, "database unreachable while recording Twilio's answer; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

fn db_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .is_some_and(shared::db::is_unavailable)
    })
}

/// Counts the call in `sms_twilio_sends_total`: Twilio's error code, else the HTTP status.
fn count_outcome(deps: &Deps, outcome: &CreateOutcome) {
    let code = |code: &Option<String>, http: &Option<u16>| {
        code.clone().or_else(|| http.map(|s| format!("http_{s}")))
    };
    let (label, code) = match outcome {
        CreateOutcome::Accepted(_) => ("accepted", None),
        CreateOutcome::Retryable {
            code: c,
            http_status,
            ..
        } => ("retryable", code(c, http_status)),
        CreateOutcome::Permanent {
            code: c,
            http_status,
            ..
        } => ("permanent", code(c, http_status)),
        CreateOutcome::Unknown { .. } => ("unknown", None),
    };
    deps.metrics.twilio_send(label, code.as_deref());
}

async fn record(
    deps: &Deps,
    cfg: &Outbound,
    job: &SendMessage,
    attempt: i32,
    priority: i16,
    to: &str,
    outcome: CreateOutcome,
) -> anyhow::Result<Outcome> {
    let id = job.message_id;
    let mut tx = deps.pool.begin().await?;
    let result = match outcome {
        CreateOutcome::Accepted(m) => {
            // Twilio answers a create with queued/accepted; a callback applied meanwhile may
            // already have moved the message further, which this keeps.
            let pending_callbacks = sqlx::query_scalar!(
                r#"WITH a AS (
                       UPDATE sms_send_attempts SET outcome = 'accepted', finished_at = now(), http_status = 201
                       WHERE message_id = $1 AND attempt = $2
                   ), m AS (
                       UPDATE sms_messages SET twilio_sid = $3,
                              delivery_status = CASE WHEN delivery_status IN ('pending', 'submitting') THEN $4 ELSE delivery_status END,
                              status_updated_at = now(), updated_at = now()
                       WHERE id = $1
                   )
                   SELECT EXISTS (SELECT 1 FROM sms_status_callbacks WHERE message_sid = $3 AND applied_at IS NULL) AS "pending!""#,
                id,
                attempt,
                m.sid,
                m.status
            )
            .fetch_one(&mut *tx)
            .await?;
            if pending_callbacks {
                // Callbacks that came before this answer are applied now.
                jobs::push(
                    &mut tx,
                    jobs::OUTBOUND_STATUS,
                    &[ApplyStatus {
                        message_sid: m.sid.clone(),
                        our_message_id: Some(id),
                        trace: shared::telemetry::TraceContext::current(),
                    }],
                    None,
                )
                .await?;
            }
            tracing::info!(sid = %m.sid, attempt, to = %phone::mask(to), "message handed to Twilio");
            Outcome::Accepted { sid: m.sid }
        }
        CreateOutcome::Retryable {
            http_status,
            code,
            message,
            retry_after,
        } if (attempt as u32) < cfg.max_attempts => {
            let after = backoff(cfg, attempt as u32, retry_after);
            let next = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
            sqlx::query!(
                "UPDATE sms_send_attempts SET outcome = 'retryable', finished_at = now(), http_status = $3, error_code = $4, error_message = $5, next_attempt_at = $6 WHERE message_id = $1 AND attempt = $2",
                id, attempt, http_status.map(i32::from), code, message, next
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!("UPDATE sms_messages SET delivery_status = 'pending', status_updated_at = now() WHERE id = $1", id)
                .execute(&mut *tx)
                .await?;
            reschedule(
                &mut tx,
                &SendMessage {
                    message_id: id,
                    slot: None,
                    trace: shared::telemetry::TraceContext::current(),
                },
                after,
                priority,
            )
            .await?;
            tracing::warn!(
                attempt,
                http_status,
                code,
                retry_in_ms = after.as_millis() as u64,
                "Twilio refused for now; retry scheduled"
            );
            Outcome::Retrying { after }
        }
        CreateOutcome::Retryable {
            http_status,
            code,
            message,
            ..
        }
        | CreateOutcome::Permanent {
            http_status,
            code,
            message,
        } => {
            let outcome =
                if http_status.is_some_and(|s| s == 429 || s >= 500) || http_status.is_none() {
                    "retryable"
                } else {
                    "permanent"
                };
            sqlx::query!(
                "UPDATE sms_send_attempts SET outcome = $3, finished_at = now(), http_status = $4, error_code = $5, error_message = $6 WHERE message_id = $1 AND attempt = $2",
                id, attempt, outcome, http_status.map(i32::from), code, message
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE sms_messages SET delivery_status = 'failed', error_code = $2, error_message = $3, status_updated_at = now(), updated_at = now() WHERE id = $1",
                id, code, message
            )
            .execute(&mut *tx)
            .await?;
            if code.as_deref() == Some("21610") {
                // Twilio knows the recipient replied STOP: remember it so later sends are refused.
                let our = cfg
                    .phone_number
                    .clone()
                    .unwrap_or_else(|| cfg.sender().to_owned());
                sqlx::query!(
                    r#"INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword, opt_out_type, changed_at)
                       VALUES ($1, $2, true, NULL, 'twilio-21610', now())
                       ON CONFLICT (our_number, their_number) DO UPDATE SET opted_out = true, opt_out_type = 'twilio-21610', changed_at = now()"#,
                    our, to
                )
                .execute(&mut *tx)
                .await?;
            }
            tracing::error!(attempt, http_status, code, "send failed permanently");
            deps.metrics.delivery_status("failed");
            Outcome::Failed { code }
        }
        CreateOutcome::Unknown { message } => {
            sqlx::query!(
                "UPDATE sms_send_attempts SET outcome = 'unknown', finished_at = now(), error_message = $3 WHERE message_id = $1 AND attempt = $2",
                id, attempt, message
            )
            .execute(&mut *tx)
            .await?;
            // The next run of this job resolves the outcome before any new attempt.
            reschedule(
                &mut tx,
                &SendMessage {
                    message_id: id,
                    slot: None,
                    trace: shared::telemetry::TraceContext::current(),
                },
                Duration::from_secs(2),
                priority,
            )
            .await?;
            tracing::warn!(attempt, reason = %message, "send outcome unknown; resolving before any new attempt");
            Outcome::WaitingForUnknownOutcome
        }
    };
    tx.commit().await?;
    Ok(result)
}
