//! The outbound send lifecycle: handing a message to Twilio without ever sending it twice.
//!
//! ```text
//!            ┌─────────── plan (before any call) ───────────┐
//! pending ──▶│ at Twilio already (SID or status)  → AlreadySent (open attempt closed `resolved`)
//!            │ open attempt + callback proof      → AlreadySent (`resolved`, callbacks applied)
//!            │ open attempt, within the grace     → wait (job rescheduled)
//!            │ open attempt, grace over           → `abandoned`, then a new attempt
//!            └ nothing open                       → pace, then attempt
//! attempt: submitting (`in_flight` recorded and committed BEFORE the call) ─call─▶ decide:
//!   Accepted  → accepted/queued (SID stored)          `accepted`
//!   Retryable → pending + job after the backoff       `retryable`   (attempts left)
//!   Refused   → failed (21610 also records an opt-out) `permanent` / `retryable` (exhausted)
//!   Unknown   → submitting + job in 2 s                `unknown` (resolved by plan next run)
//! ```
//! Every transition and the job it schedules commit in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::{
    config::Outbound,
    delivery::{self, AttemptOutcome, Evidence},
    jobs::{self, ApplyStatus, ApplyStatuses, SendMessage, When},
    phone,
    retry::RetryPolicy,
    twilio::{
        client::{CreateOutcome, NewMessage},
        status::DeliveryStatus,
    },
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Deps, gate};

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Accepted {
        sid: String,
    },
    AlreadySent,
    Paced {
        until: DateTime<Utc>,
    },
    Retrying {
        after: Duration,
    },
    Failed {
        code: Option<String>,
    },
    WaitingForUnknownOutcome,
    /// Twilio is refusing sends for now (see gate.rs): the job runs again when the gate opens;
    /// no attempt was made.
    Gated {
        after: Duration,
    },
    Missing,
}

/// Pacing waits up to this long inside the handler; longer waits become a scheduled job.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);
/// After an unknown outcome the job looks again this soon (for a callback that proves it).
const UNKNOWN_RECHECK: Duration = Duration::from_secs(2);

/// The message as loaded: its status, attempts, and the last attempt whose outcome is open.
struct Loaded {
    to: String,
    body: String,
    media: Vec<String>,
    status: DeliveryStatus,
    has_sid: bool,
    attempts: i32,
    priority: i16,
    open: Option<OpenAttempt>,
    /// It waited for a later hand-over (requested time or quiet hours).
    scheduled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpenAttempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// A status callback carrying our id: Twilio has the message.
    pub proof: Option<String>,
}

/// Before any call: what the loaded state asks for.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Twilio has it; an attempt left open is closed as `resolved`.
    AlreadySent { close: Option<i32> },
    /// A callback proved the open attempt: close it and apply the callbacks.
    Resolve { attempt: i32, sid: String },
    /// No proof yet: look again after this long.
    Wait(Duration),
    /// Go ahead, closing an open attempt as `abandoned` first.
    Attempt { abandon: Option<i32> },
    /// Every attempt allowed was made and the last one's outcome stayed unknown: fail the
    /// message as `unknown_outcome` (visible, counted, never resent automatically). Without this
    /// bound, a Twilio that answers too late and posts no callbacks got a message once per grace
    /// period, forever.
    GiveUp { abandon: i32 },
}

pub fn plan(
    at_twilio: bool,
    open: Option<&OpenAttempt>,
    now: DateTime<Utc>,
    grace: Duration,
    policy: &RetryPolicy,
) -> Plan {
    match open {
        _ if at_twilio => Plan::AlreadySent {
            close: open.map(|o| o.attempt),
        },
        None => Plan::Attempt { abandon: None },
        Some(OpenAttempt {
            attempt,
            proof: Some(sid),
            ..
        }) => Plan::Resolve {
            attempt: *attempt,
            sid: sid.clone(),
        },
        Some(o) => {
            let waited = (now - o.started_at).to_std().unwrap_or_default();
            if waited < grace {
                Plan::Wait(grace - waited + Duration::from_millis(200))
            } else if !policy.allows_another(o.attempt as u32) {
                // Attempts of every kind count toward SEND_MAX_ATTEMPTS.
                Plan::GiveUp { abandon: o.attempt }
            } else {
                Plan::Attempt {
                    abandon: Some(o.attempt),
                }
            }
        }
    }
}

/// After the call: Twilio's answer, the attempt number (1-based) and the policy decide.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Accepted {
        sid: String,
        status: String,
    },
    Retry {
        retry_after: Option<Duration>,
    },
    Fail {
        recorded_as: AttemptOutcome,
        opt_out: bool,
    },
    Unknown,
}

pub fn decide(outcome: &CreateOutcome, attempt: u32, policy: &RetryPolicy) -> Decision {
    match outcome {
        CreateOutcome::Accepted(m) => Decision::Accepted {
            sid: m.sid.clone(),
            status: m.status.clone(),
        },
        CreateOutcome::Retryable { retry_after, .. } if policy.allows_another(attempt) => {
            Decision::Retry {
                retry_after: *retry_after,
            }
        }
        CreateOutcome::Retryable { http_status, .. }
        | CreateOutcome::Permanent { http_status, .. } => Decision::Fail {
            // What was refused, as Twilio said it: a retryable refusal stays `retryable` even
            // when no attempt is left.
            recorded_as: if http_status.is_none_or(|s| s == 429 || s >= 500) {
                AttemptOutcome::Retryable
            } else {
                AttemptOutcome::Permanent
            },
            // Twilio knows the recipient replied STOP: later sends are refused too.
            opt_out: matches!(outcome, CreateOutcome::Permanent { code: Some(c), .. } if c == "21610"),
        },
        CreateOutcome::Unknown { .. } => Decision::Unknown,
    }
}

/// What Twilio is asked to send; our id rides in the status callback URL.
fn new_message<'a>(cfg: &'a Outbound, job: &SendMessage, msg: &'a Loaded) -> NewMessage<'a> {
    NewMessage {
        to: &msg.to,
        from: cfg.sender.phone_number.as_deref(),
        messaging_service_sid: cfg.sender.messaging_service_sid.as_deref(),
        body: &msg.body,
        media_urls: &msg.media,
        status_callback: callback_url(cfg, job.message_id),
    }
}

/// A search of Twilio's list that could not be made is tried again this soon.
const SEARCH_RETRY: Duration = Duration::from_secs(5);

/// What Twilio's message list says of an attempt whose answer was lost.
enum Found {
    Message(Box<shared::twilio::client::MessageResource>),
    Nothing,
    /// The list could not be read (Twilio down): wait and look again, never guess.
    CannotTell,
}

/// Searches Twilio's list for the message the open attempt may have created: same recipient,
/// sender and body, created since just before the attempt.
async fn search(
    twilio: &shared::twilio::client::TwilioClient,
    cfg: &Outbound,
    msg: &Loaded,
) -> Found {
    let Some(open) = &msg.open else {
        return Found::Nothing;
    };
    let want = shared::twilio::client::SentMessage {
        to: &msg.to,
        from: cfg.sender.phone_number.as_deref(),
        messaging_service_sid: cfg.sender.messaging_service_sid.as_deref(),
        body: &msg.body,
        num_media: msg.media.len(),
        since: open.started_at - chrono::Duration::seconds(60),
    };
    match twilio.find_sent(&want).await {
        Ok(Some(m)) => Found::Message(Box::new(m)),
        Ok(None) => Found::Nothing,
        Err(e) => {
            tracing::warn!(error = %e, "Twilio's message list could not be searched; waiting");
            Found::CannotTell
        }
    }
}

/// Adopts the message Twilio's list shows for the lost attempt, in one transaction.
async fn adopt(
    deps: &Deps,
    job: &SendMessage,
    attempt: i32,
    m: &shared::twilio::client::MessageResource,
) -> anyhow::Result<Outcome> {
    let mut tx = deps.pool.begin().await?;
    accept(&mut tx, job.message_id, attempt, &m.sid, &m.status).await?;
    delivery::close_attempt(
        &mut *tx,
        job.message_id,
        attempt,
        AttemptOutcome::Resolved,
        None,
        Some(Evidence::TwilioList),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(sid = %m.sid, attempt, "lost send answer settled: Twilio's list has the message; adopted");
    Ok(Outcome::Accepted { sid: m.sid.clone() })
}

/// The error code of a message whose last allowed attempt's outcome stayed unknown.
const UNKNOWN_OUTCOME: &str = "unknown_outcome";

/// Fails a message whose last allowed attempt's outcome stayed unknown, in one transaction.
async fn give_up(deps: &Deps, job: &SendMessage, attempt: i32) -> anyhow::Result<Outcome> {
    let mut tx = deps.pool.begin().await?;
    let why = "no callback within the grace period, and no such message in Twilio's list";
    delivery::close_attempt(
        &mut *tx,
        job.message_id,
        attempt,
        AttemptOutcome::Abandoned,
        Some(why),
        Some(Evidence::TwilioListNone),
    )
    .await?;
    let detail =
        format!("{attempt} attempts, the last with an unknown outcome; not resent automatically");
    delivery::fail(
        &mut tx,
        job.message_id,
        Some(UNKNOWN_OUTCOME),
        Some(&detail),
    )
    .await?;
    tx.commit().await?;
    deps.metrics
        .delivery_status(DeliveryStatus::Failed.as_str());
    deps.metrics.twilio_send("gave_up", Some(UNKNOWN_OUTCOME));
    tracing::error!(
        attempt,
        "send outcome stayed unknown after the last allowed attempt; failed as unknown_outcome"
    );
    Ok(Outcome::Failed {
        code: Some(UNKNOWN_OUTCOME.into()),
    })
}

/// The error code of a scheduled message whose recipient opted out before its hand-over.
const OPTED_OUT: &str = "opted_out";

/// A scheduled message meets the opt-out check again when it is due (the recipient may have
/// opted out meanwhile): refused then, as `POST /sms/send` would refuse it now.
async fn refused_at_hand_over(
    deps: &Deps,
    cfg: &Outbound,
    job: &SendMessage,
    msg: &Loaded,
) -> anyhow::Result<bool> {
    let mut tx = deps.pool.begin().await?;
    let our = cfg.sender.phone_number.as_deref();
    let Some(o) = shared::optout::opted_out(&mut tx, our, &msg.to).await? else {
        return Ok(false);
    };
    let why = format!(
        "the recipient opted out at {} before the scheduled hand-over",
        o.changed_at.to_rfc3339()
    );
    delivery::fail(&mut tx, job.message_id, Some(OPTED_OUT), Some(&why)).await?;
    tx.commit().await?;
    deps.metrics
        .delivery_status(DeliveryStatus::Failed.as_str());
    tracing::warn!("scheduled message refused at hand-over: the recipient opted out");
    Ok(true)
}

/// No proof yet that the open attempt reached Twilio: look again later.
async fn wait(
    deps: &Deps,
    job: SendMessage,
    after: Duration,
    priority: i16,
) -> anyhow::Result<Outcome> {
    let mut conn = deps.pool.acquire().await?;
    schedule_again(&mut conn, job, after, priority).await?;
    tracing::warn!("send outcome unknown; waiting for a status callback before any new attempt");
    Ok(Outcome::WaitingForUnknownOutcome)
}

async fn abandon_attempt(deps: &Deps, message_id: Uuid, attempt: i32) -> anyhow::Result<()> {
    let why = "no callback within the grace period, and no such message in Twilio's list";
    delivery::close_attempt(
        &deps.pool,
        message_id,
        attempt,
        AttemptOutcome::Abandoned,
        Some(why),
        Some(Evidence::TwilioListNone),
    )
    .await?;
    tracing::warn!(
        attempt,
        "unknown send outcome: no callback within the grace period; taken as not created"
    );
    Ok(())
}

fn callback_url(cfg: &Outbound, message_id: Uuid) -> String {
    format!(
        "{}/webhook/twilio/status?message_id={message_id}",
        cfg.public_url
    )
}

#[tracing::instrument(name = "send_message", skip_all, fields(message_id = %job.message_id), err)]
pub async fn process(deps: &Deps, job: SendMessage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some((cfg, twilio)) = deps.outbound.as_ref() else {
        anyhow::bail!("outbound sending is not configured (TWILIO_AUTH_TOKEN)");
    };
    let Some(msg) = load(deps, job.message_id).await? else {
        return Ok(Outcome::Missing);
    };
    let at_twilio = msg.has_sid || msg.status.at_twilio();
    let abandon = match plan(
        at_twilio,
        msg.open.as_ref(),
        Utc::now(),
        cfg.unknown_outcome_grace,
        &cfg.retry(),
    ) {
        Plan::AlreadySent { close } => return already_sent(deps, &job, close).await,
        Plan::Resolve { attempt, sid } => return resolve(deps, &job, attempt, sid).await,
        Plan::GiveUp { abandon } => {
            return match search(twilio, cfg, &msg).await {
                Found::Message(m) => adopt(deps, &job, abandon, &m).await,
                Found::Nothing => give_up(deps, &job, abandon).await,
                Found::CannotTell => wait(deps, job, SEARCH_RETRY, msg.priority).await,
            };
        }
        Plan::Wait(after) => return wait(deps, job, after, msg.priority).await,
        Plan::Attempt { abandon } => abandon,
    };
    if let Some(attempt) = abandon {
        // Evidence first: Twilio's list shows whether the lost attempt created the message.
        match search(twilio, cfg, &msg).await {
            Found::Message(m) => return adopt(deps, &job, attempt, &m).await,
            Found::Nothing => abandon_attempt(deps, job.message_id, attempt).await?,
            Found::CannotTell => return wait(deps, job, SEARCH_RETRY, msg.priority).await,
        }
    }
    if msg.scheduled && msg.attempts == 0 && refused_at_hand_over(deps, cfg, &job, &msg).await? {
        return Ok(Outcome::Failed {
            code: Some(OPTED_OUT.into()),
        });
    }
    if let Some(until) = pace(deps, cfg, &job, msg.priority).await? {
        return Ok(Outcome::Paced { until });
    }
    let ticket = match deps.twilio_gate.pass().await {
        Ok(ticket) => ticket,
        Err(after) => return gated(deps, job, after, msg.priority).await,
    };
    let attempt = msg.attempts + 1;
    let mut conn = deps.pool.acquire().await?;
    let claimed = delivery::claim(&mut conn, job.message_id, attempt, msg.attempts).await?;
    drop(conn);
    if !claimed {
        return Ok(Outcome::AlreadySent); // another run of this job got here first
    }
    let answer = twilio.create(&new_message(cfg, &job, &msg)).await;
    ticket.settle(gate::verdict(&answer));
    count_outcome(deps, &answer);
    let decision = decide(&answer, attempt as u32, &cfg.retry());
    record_until_stored(deps, cfg, &job, attempt, &msg, answer, decision).await
}

async fn load(deps: &Deps, message_id: Uuid) -> anyhow::Result<Option<Loaded>> {
    let Some(m) = sqlx::query!(
        r#"SELECT m.to_number AS "to_number!", m.message_content, m.delivery_status, m.twilio_sid,
                  m.send_attempts, m.media_urls, m.priority, m.scheduled_for IS NOT NULL AS "scheduled!",
                  a.attempt AS "open_attempt?", a.started_at AS "open_started_at?",
                  CASE WHEN a.attempt IS NOT NULL THEN
                      (SELECT message_sid FROM sms_status_callbacks WHERE our_message_id = m.id LIMIT 1)
                  END AS proof
           FROM sms_messages m
           LEFT JOIN LATERAL (
               SELECT attempt, started_at FROM sms_send_attempts
               WHERE message_id = m.id AND outcome IN ('in_flight', 'unknown')
               ORDER BY attempt DESC LIMIT 1
           ) a ON true
           WHERE m.id = $1 AND m.direction = 'outbound'"#,
        message_id
    )
    .fetch_optional(&deps.pool)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        to: m.to_number,
        body: m.message_content,
        media: m
            .media_urls
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        status: m.delivery_status.parse()?,
        has_sid: m.twilio_sid.is_some(),
        attempts: m.send_attempts,
        priority: m.priority,
        scheduled: m.scheduled,
        open: m
            .open_attempt
            .zip(m.open_started_at)
            .map(|(attempt, started_at)| OpenAttempt {
                attempt,
                started_at,
                proof: m.proof,
            }),
    }))
}

/// The gate stays closed longer than a send waits inline: run again when it opens.
async fn gated(
    deps: &Deps,
    job: SendMessage,
    after: Duration,
    priority: i16,
) -> anyhow::Result<Outcome> {
    let mut conn = deps.pool.acquire().await?;
    let again = SendMessage { slot: None, ..job };
    schedule_again(&mut conn, again, after, priority).await?;
    tracing::info!(
        retry_in_ms = after.as_millis() as u64,
        "Twilio is refusing sends for now; this one waits for the gate"
    );
    Ok(Outcome::Gated { after })
}

/// A status callback already proved an attempt whose answer was lost (a worker killed mid-call):
/// close it in the ledger too, or it stays `in_flight` forever.
async fn already_sent(
    deps: &Deps,
    job: &SendMessage,
    close: Option<i32>,
) -> anyhow::Result<Outcome> {
    if let Some(attempt) = close {
        delivery::close_attempt(
            &deps.pool,
            job.message_id,
            attempt,
            AttemptOutcome::Resolved,
            None,
            Some(Evidence::Status),
        )
        .await?;
    }
    Ok(Outcome::AlreadySent)
}

async fn resolve(
    deps: &Deps,
    job: &SendMessage,
    attempt: i32,
    sid: String,
) -> anyhow::Result<Outcome> {
    let mut tx = deps.pool.begin().await?;
    delivery::close_attempt(
        &mut *tx,
        job.message_id,
        attempt,
        AttemptOutcome::Resolved,
        None,
        Some(Evidence::StatusCallback),
    )
    .await?;
    let apply = ApplyStatus {
        message_sid: sid.clone(),
        our_message_id: Some(job.message_id),
        trace: shared::telemetry::TraceContext::current(),
    };
    jobs::schedule(&mut tx, &[ApplyStatuses::one(apply)], When::NOW).await?;
    tx.commit().await?;
    tracing::info!(sid = %sid, "unknown send outcome resolved: Twilio has the message");
    Ok(Outcome::AlreadySent)
}

/// Pacing: reserve this sender's next slot once, then wait for it: inline when it is near
/// (apalis schedules in whole seconds, too coarse to space sends), else in a job of its own
/// (Some: the job was rescheduled for that slot).
async fn pace(
    deps: &Deps,
    cfg: &Outbound,
    job: &SendMessage,
    priority: i16,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let interval = if cfg.rate_per_sender > 0.0 {
        1.0 / cfg.rate_per_sender
    } else {
        return Ok(None);
    };
    let slot = match job.slot {
        Some(slot) => slot,
        // A reply in a live conversation goes ahead of bulk sends that already hold slots: it is
        // sent now and pushes the sender's later slots back by one interval, keeping the rate.
        None if priority > 0 => {
            sqlx::query!(
                r#"INSERT INTO sender_pacing AS p (sender, next_slot) VALUES ($1, now() + make_interval(secs => $2::float8))
                   ON CONFLICT (sender) DO UPDATE SET next_slot = GREATEST(p.next_slot, now()) + make_interval(secs => $2::float8)"#,
                cfg.pacing_key(),
                interval
            )
            .execute(&deps.pool)
            .await?;
            return Ok(None);
        }
        None => {
            let interval_us = (interval * 1_000_000.0) as i64;
            sqlx::query_scalar!(
                r#"INSERT INTO sender_pacing AS p (sender, next_slot) VALUES ($1, now() + make_interval(secs => $2::float8 / 1e6))
                   ON CONFLICT (sender) DO UPDATE SET next_slot = GREATEST(p.next_slot, now()) + make_interval(secs => $2::float8 / 1e6)
                   RETURNING next_slot - make_interval(secs => $2::float8 / 1e6) AS "slot!""#,
                cfg.pacing_key(),
                interval_us as f64
            )
            .fetch_one(&deps.pool)
            .await?
        }
    };
    let wait = (slot - Utc::now()).to_std().unwrap_or_default();
    if wait <= MAX_INLINE_WAIT {
        tokio::time::sleep(wait).await;
        return Ok(None);
    }
    let paced = SendMessage {
        message_id: job.message_id,
        slot: Some(slot),
        trace: shared::telemetry::TraceContext::current(),
    };
    let mut conn = deps.pool.acquire().await?;
    let when = When::after(wait - Duration::from_secs(1)).with_priority(priority);
    jobs::schedule(&mut conn, &[paced], when).await?;
    Ok(Some(slot))
}

/// Twilio's answer must not be lost to a database blip: the attempt would stay unknown and, were
/// its status callbacks lost to the same outage, the message would be sent again after the grace
/// period. So recording is retried while the database is unreachable (the handler runs to its end
/// even when its apalis worker restarts meanwhile, see queues.rs).
async fn record_until_stored(
    deps: &Deps,
    cfg: &Outbound,
    job: &SendMessage,
    attempt: i32,
    msg: &Loaded,
    answer: CreateOutcome,
    decision: Decision,
) -> anyhow::Result<Outcome> {
    let deadline = std::time::Instant::now() + cfg.unknown_outcome_grace;
    let mut failed = 0;
    loop {
        match apply(deps, cfg, job, attempt, msg, &answer, &decision).await {
            Err(e) if db_unreachable(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, attempt, "database unreachable while recording Twilio's answer; retrying");
                failed += 1;
                tokio::time::sleep(RECORD_RETRY.delay(failed, None)).await;
            }
            other => return other,
        }
    }
}

/// Recording Twilio's answer while the database is unreachable: 0.2 s doubling to 5 s, until
/// the grace period ends (the attempt count is not what bounds it).
const RECORD_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5), u32::MAX);

fn db_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .is_some_and(shared::db::is_unavailable)
            || c.downcast_ref::<apalis_postgres::Error>()
                .is_some_and(jobs::is_unavailable)
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

/// What an attempt's row records of Twilio's answer.
fn answer_fields(answer: &CreateOutcome) -> (Option<u16>, Option<String>, Option<String>) {
    match answer {
        CreateOutcome::Accepted(_) => (Some(201), None, None),
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
        } => (*http_status, code.clone(), Some(message.clone())),
        CreateOutcome::Unknown { message } => (None, None, Some(message.clone())),
    }
}

/// Applies the decision: the attempt, the message and the follow-up job, in one transaction.
async fn apply(
    deps: &Deps,
    cfg: &Outbound,
    job: &SendMessage,
    attempt: i32,
    msg: &Loaded,
    answer: &CreateOutcome,
    decision: &Decision,
) -> anyhow::Result<Outcome> {
    let id = job.message_id;
    let (http_status, code, message) = answer_fields(answer);
    let again = SendMessage {
        message_id: id,
        slot: None,
        trace: shared::telemetry::TraceContext::current(),
    };
    let mut tx = deps.pool.begin().await?;
    let mut next_attempt_at = None;
    let (recorded, result) = match decision {
        Decision::Accepted { sid, status } => {
            // One statement records the attempt and the message together (the hot path).
            accept(&mut tx, id, attempt, sid, status).await?;
            tracing::info!(sid = %sid, attempt, to = %phone::mask(&msg.to), "message handed to Twilio");
            tx.commit().await?;
            return Ok(Outcome::Accepted { sid: sid.clone() });
        }
        Decision::Retry { retry_after } => {
            let after = cfg.retry().delay(attempt as u32, *retry_after);
            delivery::retry_later(&mut tx, id).await?;
            schedule_again(&mut tx, again, after, msg.priority).await?;
            next_attempt_at =
                Some(Utc::now() + chrono::Duration::from_std(after).unwrap_or_default());
            tracing::warn!(
                attempt,
                http_status,
                code,
                retry_in_ms = after.as_millis() as u64,
                "Twilio refused for now; retry scheduled"
            );
            (AttemptOutcome::Retryable, Outcome::Retrying { after })
        }
        Decision::Fail {
            recorded_as,
            opt_out,
        } => {
            let why = (code.as_deref(), message.as_deref());
            fail(deps, &mut tx, cfg, id, &msg.to, *opt_out, why).await?;
            tracing::error!(attempt, http_status, code, "send failed permanently");
            (*recorded_as, Outcome::Failed { code: code.clone() })
        }
        Decision::Unknown => {
            // The next run of this job resolves the outcome before any new attempt.
            schedule_again(&mut tx, again, UNKNOWN_RECHECK, msg.priority).await?;
            tracing::warn!(
                attempt,
                reason = message.as_deref().unwrap_or_default(),
                "send outcome unknown; resolving before any new attempt"
            );
            (AttemptOutcome::Unknown, Outcome::WaitingForUnknownOutcome)
        }
    };
    let row = AttemptRow {
        outcome: recorded,
        http_status,
        code: code.as_deref(),
        message: message.as_deref(),
        next_attempt_at,
    };
    finish_attempt(&mut tx, id, attempt, &row).await?;
    tx.commit().await?;
    Ok(result)
}

async fn schedule_again(
    tx: &mut PgConnection,
    job: SendMessage,
    after: Duration,
    priority: i16,
) -> anyhow::Result<()> {
    jobs::schedule(tx, &[job], When::after(after).with_priority(priority)).await?;
    Ok(())
}

/// What an attempt's row keeps of its outcome.
struct AttemptRow<'a> {
    outcome: AttemptOutcome,
    http_status: Option<u16>,
    code: Option<&'a str>,
    message: Option<&'a str>,
    next_attempt_at: Option<DateTime<Utc>>,
}

async fn finish_attempt(
    tx: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    row: &AttemptRow<'_>,
) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE sms_send_attempts SET outcome = $3, finished_at = now(), http_status = $4, error_code = $5, error_message = $6, next_attempt_at = $7 WHERE message_id = $1 AND attempt = $2",
        id, attempt, row.outcome.as_str(), row.http_status.map(i32::from), row.code, row.message, row.next_attempt_at
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Twilio answers a create with queued/accepted (its list, with whatever status the message
/// reached); callbacks that came before this answer are applied now, in the same transaction.
async fn accept(
    tx: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    sid: &str,
    status: &str,
) -> anyhow::Result<()> {
    // A status we do not know (Twilio adds some) is taken as queued: callbacks tell the rest.
    let status = status
        .parse()
        .ok()
        .filter(|s| delivery::Transition::Accept.leads_to(*s))
        .unwrap_or(DeliveryStatus::Queued);
    if delivery::accept(tx, id, attempt, sid, status).await? {
        let apply = ApplyStatus {
            message_sid: sid.to_owned(),
            our_message_id: Some(id),
            trace: shared::telemetry::TraceContext::current(),
        };
        jobs::schedule(tx, &[ApplyStatuses::one(apply)], When::NOW).await?;
    }
    Ok(())
}

/// The message failed for good; a 21610 (the recipient replied STOP) also records the opt-out, so
/// later sends are refused too.
async fn fail(
    deps: &Deps,
    tx: &mut PgConnection,
    cfg: &Outbound,
    id: Uuid,
    to: &str,
    opt_out: bool,
    (code, message): (Option<&str>, Option<&str>),
) -> anyhow::Result<()> {
    delivery::fail(tx, id, code, message).await?;
    if opt_out {
        record_opt_out(tx, cfg, to).await?;
    }
    deps.metrics
        .delivery_status(DeliveryStatus::Failed.as_str());
    Ok(())
}

async fn record_opt_out(tx: &mut PgConnection, cfg: &Outbound, to: &str) -> anyhow::Result<()> {
    let our = cfg
        .sender
        .phone_number
        .clone()
        .unwrap_or_else(|| cfg.pacing_key().to_owned());
    let change = shared::optout::Change {
        our_number: &our,
        their_number: to,
        change: shared::optout::OptChange::OptOut,
        source: shared::optout::Source::Twilio,
        method: None,
        keyword: None,
        rule: Some("twilio:21610"),
        opt_out_type: Some("twilio-21610"),
        message_id: None,
        tenant_id: None,
        note: None,
        occurred_at: Utc::now(),
    };
    shared::optout::record(tx, &change).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::twilio::client::MessageResource;

    fn open(secs_ago: i64, proof: Option<&str>) -> OpenAttempt {
        OpenAttempt {
            attempt: 3,
            started_at: Utc::now() - chrono::Duration::seconds(secs_ago),
            proof: proof.map(str::to_owned),
        }
    }

    #[test]
    fn plan_over_every_state() {
        let grace = Duration::from_secs(60);
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(300), 10);
        let now = Utc::now();
        let table: &[(bool, Option<OpenAttempt>, &str)] = &[
            (true, None, "already_sent"),
            (true, Some(open(1, None)), "already_sent+close"),
            (false, None, "attempt"),
            (false, Some(open(1, Some("SM1"))), "resolve"),
            (false, Some(open(120, Some("SM1"))), "resolve"),
            (false, Some(open(1, None)), "wait"),
            (false, Some(open(120, None)), "abandon+attempt"),
        ];
        for (at_twilio, o, want) in table {
            let got = match plan(*at_twilio, o.as_ref(), now, grace, &policy) {
                Plan::AlreadySent { close: None } => "already_sent",
                Plan::AlreadySent { close: Some(3) } => "already_sent+close",
                Plan::Resolve { attempt: 3, sid } if sid == "SM1" => "resolve",
                Plan::Wait(d)
                    if d > Duration::from_secs(58) && d <= grace + Duration::from_millis(200) =>
                {
                    "wait"
                }
                Plan::Attempt { abandon: None } => "attempt",
                Plan::Attempt { abandon: Some(3) } => "abandon+attempt",
                Plan::GiveUp { abandon: 3 } => "give_up",
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, *want, "at_twilio={at_twilio} open={o:?}");
        }
        // The last allowed attempt: an unknown outcome past the grace is a give-up, not an 11th.
        let last = |proof: Option<&str>| OpenAttempt {
            attempt: 10,
            started_at: now - chrono::Duration::seconds(120),
            proof: proof.map(str::to_owned),
        };
        assert_eq!(
            plan(false, Some(&last(None)), now, grace, &policy),
            Plan::GiveUp { abandon: 10 }
        );
        assert_eq!(
            plan(false, Some(&last(Some("SM9"))), now, grace, &policy),
            Plan::Resolve {
                attempt: 10,
                sid: "SM9".into()
            }
        );
    }

    #[test]
    fn decide_over_every_answer() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(300), 3);
        let retryable = |http: Option<u16>| CreateOutcome::Retryable {
            http_status: http,
            code: None,
            message: "x".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        let permanent = |code: &str| CreateOutcome::Permanent {
            http_status: Some(400),
            code: Some(code.into()),
            message: "x".into(),
        };
        let accepted = CreateOutcome::Accepted(MessageResource {
            sid: "SM1".into(),
            status: "queued".into(),
            error_code: None,
            error_message: None,
            to: None,
            from: None,
            body: None,
            messaging_service_sid: None,
            date_created: None,
            date_sent: None,
            direction: None,
            num_segments: None,
            num_media: None,
        });
        let table: Vec<(CreateOutcome, u32, Decision)> = vec![
            (
                accepted,
                1,
                Decision::Accepted {
                    sid: "SM1".into(),
                    status: "queued".into(),
                },
            ),
            (
                retryable(Some(429)),
                1,
                Decision::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (
                retryable(Some(503)),
                2,
                Decision::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (
                retryable(None),
                2,
                Decision::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (
                retryable(Some(503)),
                3,
                Decision::Fail {
                    recorded_as: AttemptOutcome::Retryable,
                    opt_out: false,
                },
            ),
            (
                retryable(None),
                3,
                Decision::Fail {
                    recorded_as: AttemptOutcome::Retryable,
                    opt_out: false,
                },
            ),
            (
                permanent("21211"),
                1,
                Decision::Fail {
                    recorded_as: AttemptOutcome::Permanent,
                    opt_out: false,
                },
            ),
            (
                permanent("21610"),
                1,
                Decision::Fail {
                    recorded_as: AttemptOutcome::Permanent,
                    opt_out: true,
                },
            ),
            (
                CreateOutcome::Unknown {
                    message: "timeout".into(),
                },
                1,
                Decision::Unknown,
            ),
            (
                CreateOutcome::Unknown {
                    message: "timeout".into(),
                },
                3,
                Decision::Unknown,
            ),
        ];
        for (answer, attempt, want) in table {
            assert_eq!(
                decide(&answer, attempt, &policy),
                want,
                "{answer:?} attempt {attempt}"
            );
        }
    }
}
