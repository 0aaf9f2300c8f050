//! Queue names, job payloads, and every statement that touches apalis's own tables (`apalis.jobs`).
//! Each payload type knows its queue ([`Job::QUEUE`]), and [`schedule`] is the one way to push a
//! job: inside the caller's transaction, so a job exists exactly when the rows it refers to were
//! committed, and never on another type's queue.

use std::{collections::HashMap, time::Duration};

use apalis_core::task::builder::TaskBuilder;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::telemetry::TraceContext;

/// Processing of a stored inbound webhook.
pub const INBOUND: &str = "inbound";
/// Telling the Collections Monitor about a tenant's language preference.
pub const MONITOR_LANGUAGE: &str = "monitor-language";

/// Handing outbound messages to Twilio.
pub const OUTBOUND_SEND: &str = "outbound-send";
/// Applying stored delivery-status callbacks.
pub const OUTBOUND_STATUS: &str = "outbound-status";
/// Routing a processed inbound message to its tenant's agent.
pub const ROUTE: &str = "route";
/// Not a job queue: the periodic reconciler (stuck sends, conversations still without tenant).
pub const RECONCILER: &str = "reconciler";

/// Every queue a worker can run, for `--queues`.
pub const ALL_QUEUES: &[&str] = &[
    INBOUND,
    MONITOR_LANGUAGE,
    OUTBOUND_SEND,
    OUTBOUND_STATUS,
    ROUTE,
    RECONCILER,
];

/// A job payload and the queue it runs on.
pub trait Job: Serialize {
    const QUEUE: &'static str;
}

impl Job for RouteMessages {
    const QUEUE: &'static str = ROUTE;
}
impl Job for SendMessage {
    const QUEUE: &'static str = OUTBOUND_SEND;
}
impl Job for ApplyStatuses {
    const QUEUE: &'static str = OUTBOUND_STATUS;
}
impl Job for ProcessInbound {
    const QUEUE: &'static str = INBOUND;
}
impl Job for NotifyLanguage {
    const QUEUE: &'static str = MONITOR_LANGUAGE;
}

/// When a job runs: now or after a delay, and ahead of others (higher priority first among due
/// jobs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct When {
    pub after: Option<Duration>,
    pub priority: i16,
}

impl When {
    pub const NOW: When = When {
        after: None,
        priority: 0,
    };

    pub fn after(delay: Duration) -> Self {
        Self {
            after: Some(delay),
            priority: 0,
        }
    }

    pub fn with_priority(self, priority: i16) -> Self {
        Self { priority, ..self }
    }
}

/// Route one inbound message; `attempt` counts our own durable retries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteMessage {
    pub message_id: Uuid,
    #[serde(default)]
    pub attempt: u32,
    /// The trace this job continues (see `telemetry`); absent in jobs written without tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Inbound messages to route: the routable messages of one inbound batch (or one message's retry
/// or deferral). One queue job per batch rather than per message: each job is four row versions
/// of `apalis.jobs` (push, fetch, lock, acknowledgement), which under load cost Postgres more than
/// routing itself. Each message is still routed on its own (claim, call, record).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteMessages {
    pub messages: Vec<RouteMessage>,
}

impl RouteMessages {
    pub fn one(message: RouteMessage) -> Self {
        Self {
            messages: vec![message],
        }
    }
}

impl<'de> Deserialize<'de> for RouteMessages {
    /// Also reads a job of one message, as written before messages were routed in batches (a
    /// queue may hold some during a rolling upgrade).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Batch { messages: Vec<RouteMessage> },
            One(RouteMessage),
        }
        Ok(match Shape::deserialize(d)? {
            Shape::Batch { messages } => Self { messages },
            Shape::One(one) => Self::one(one),
        })
    }
}

/// Send one outbound message. `slot` is the pacing slot already reserved for it, if any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendMessage {
    pub message_id: Uuid,
    #[serde(default)]
    pub slot: Option<chrono::DateTime<chrono::Utc>>,
    /// The trace this job continues (see `telemetry`); absent in jobs written without tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Apply the stored status callbacks of one Twilio message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyStatus {
    pub message_sid: String,
    #[serde(default)]
    pub our_message_id: Option<Uuid>,
    /// The trace this job continues (see `telemetry`); absent in jobs written without tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// The status callbacks one group commit stored (or one the send worker or reconciler found),
/// applied by one job: one queue job per commit rather than per callback keeps the queue's own
/// writes (push, fetch, acknowledgement) from outgrowing the work under a burst.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApplyStatuses {
    pub callbacks: Vec<ApplyStatus>,
}

impl ApplyStatuses {
    pub fn one(callback: ApplyStatus) -> Self {
        Self {
            callbacks: vec![callback],
        }
    }
}

impl<'de> Deserialize<'de> for ApplyStatuses {
    /// Also reads a job of one callback, as written before callbacks were applied in batches (a
    /// queue may hold some during a rolling upgrade).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Batch { callbacks: Vec<ApplyStatus> },
            One(ApplyStatus),
        }
        Ok(match Shape::deserialize(d)? {
            Shape::Batch { callbacks } => Self { callbacks },
            Shape::One(one) => Self::one(one),
        })
    }
}

/// Stored inbound webhooks to process: the messages one group commit stored. One job per commit
/// rather than per message keeps the queue's own writes off the webhook hot path; processing is
/// per message and idempotent, so a re-run only does what is left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInbound {
    pub message_ids: Vec<Uuid>,
    /// Each message's own trace (the webhook request that stored it), by message id: one job
    /// carries messages of many requests. The ingress writes this JSON itself (group_commit.rs).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub traces: HashMap<Uuid, TraceContext>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotifyLanguage {
    pub tenant_id: String,
    pub language: String,
    pub confidence: f32,
    /// Attempts made so far; our own durable retry count (apalis retries in memory only).
    #[serde(default)]
    pub attempt: u32,
    /// The trace this job continues (see `telemetry`); absent in jobs written without tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// apalis's own attempt limit. Handlers schedule their own durable retries and return Ok, so this
/// only bounds immediate re-runs after errors that escape a handler (e.g. the database failing).
pub const MAX_ATTEMPTS: usize = 25;

/// apalis stores `run_at` in whole seconds and its own `run_after` truncates, so a job could run up
/// to a second early (a retry before its Retry-After). Round up instead: late by <1 s, never early.
fn due_second(delay: Duration) -> u64 {
    let due = std::time::SystemTime::now() + delay;
    let since = due
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since.as_secs() + u64::from(since.subsec_nanos() > 0)
}

/// Pushes jobs to their queue on the caller's connection (normally inside its transaction).
pub async fn schedule<J: Job>(
    conn: &mut PgConnection,
    jobs: &[J],
    when: When,
) -> Result<(), apalis_postgres::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let tasks = jobs
        .iter()
        .map(|job| {
            let bytes = serde_json::to_vec(job).expect("job payloads are plain data");
            let mut builder = TaskBuilder::new(bytes)
                .max_attempts(MAX_ATTEMPTS)
                .priority(when.priority.max(0) as usize);
            if let Some(delay) = when.after {
                builder = builder.run_at_timestamp(due_second(delay));
            }
            builder.build()
        })
        .collect();
    apalis_postgres::queries::push_tasks(conn, J::QUEUE, tasks).await
}

/// Whether a queue error is the database being unreachable (answer 503, retry later).
pub fn is_unavailable(err: &apalis_postgres::Error) -> bool {
    matches!(err, apalis_postgres::Error::Database(e) if crate::db::is_unavailable(e))
}

/// Jobs per queue by state, and the age of the oldest due job, for the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueDepth {
    pub queue: String,
    pub pending: i64,
    pub scheduled: i64,
    pub running: i64,
    pub oldest_due_secs: f64,
}

/// The queue-depth statement, written once for `depths` and for `depths_sql` (its plan test).
// Two halves, each worded as the predicate of a partial index so that it reads only open
// jobs however many finished ones the table keeps: waiting jobs through apalis's fetch index
// (`status = 'Pending' OR ...`), jobs in flight through `apalis_jobs_in_flight_idx`.
macro_rules! depths_query {
    () => {
        sqlx::query!(
        r#"SELECT queue AS "queue!", sum(pending)::int8 AS "pending!", sum(scheduled)::int8 AS "scheduled!",
                  sum(running)::int8 AS "running!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(oldest))::float8, 0) AS "oldest!"
           FROM (
               SELECT job_type AS queue,
                      count(*) FILTER (WHERE run_at <= now()) AS pending,
                      count(*) FILTER (WHERE run_at > now()) AS scheduled,
                      0::int8 AS running,
                      min(run_at) FILTER (WHERE run_at <= now()) AS oldest
               FROM apalis.jobs WHERE status = 'Pending' GROUP BY job_type
               UNION ALL
               SELECT job_type, 0, 0, count(*), NULL
               FROM apalis.jobs WHERE status = 'Running' OR status = 'Queued' GROUP BY job_type
           ) open
           GROUP BY queue"#)
    };
}

pub async fn depths(pool: &sqlx::PgPool) -> Result<Vec<QueueDepth>, sqlx::Error> {
    let rows = depths_query!().fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|r| QueueDepth {
            queue: r.queue,
            pending: r.pending,
            scheduled: r.scheduled,
            running: r.running,
            oldest_due_secs: r.oldest,
        })
        .collect())
}

/// The statement [`depths`] runs, for tests of its plan.
pub fn depths_sql() -> String {
    use sqlx::Execute;
    depths_query!().sql().as_str().to_owned()
}

/// Jobs that ended failed or killed within the last `window`, per queue.
pub async fn failures_within(
    pool: &sqlx::PgPool,
    window: Duration,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT job_type AS "queue!", count(*) AS "n!" FROM apalis.jobs
           WHERE status IN ('Failed', 'Killed') AND done_at > now() - make_interval(secs => $1)
           GROUP BY job_type"#,
        window.as_secs_f64()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.queue, r.n)).collect())
}

/// Jobs of `queue` not finished yet (pending, queued or running).
pub async fn unfinished(pool: &sqlx::PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM apalis.jobs WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running')"#,
        queue
    )
    .fetch_one(pool)
    .await
}

/// Hands back the jobs a stopped worker fetched but never started (still `Queued` to it).
/// apalis re-enqueues its fetch buffer on a graceful stop, but a fetch still in flight when the
/// stop comes is dropped after its UPDATE has locked the rows, and tasks taken from the buffer
/// but not yet started are not in it: without this they would wait for orphan recovery, which
/// counts them as an attempt. Call it only once the worker has stopped and flushed its events,
/// so that nothing of its own is still about to start them.
pub async fn release_unstarted(pool: &sqlx::PgPool, worker: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL
           WHERE lock_by = $1 AND status = 'Queued'"#,
        worker
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Finished jobs deleted per statement: each is a short transaction, so pruning never holds
/// many row locks or a long snapshot on the hot queue table.
pub const DELETE_BATCH: i64 = 10_000;

/// Deletes up to [`DELETE_BATCH`] finished jobs older than `retention`: apalis keeps them
/// forever.
pub async fn delete_finished(pool: &sqlx::PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"DELETE FROM apalis.jobs WHERE id IN (
               SELECT id FROM apalis.jobs
               WHERE status = 'Done' AND done_at < now() - make_interval(secs => $1::float8)
               LIMIT $2)"#,
        retention.as_secs_f64(),
        DELETE_BATCH
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Inbound webhooks stored by one group commit (or one backfill pass), as parallel columns.
#[derive(Default)]
pub struct InboundRows<'a> {
    pub sids: Vec<&'a str>,
    pub bodies: Vec<&'a str>,
    pub froms: Vec<&'a str>,
    pub tos: Vec<&'a str>,
    pub segments: Vec<Option<i32>>,
    pub media: Vec<Option<i32>>,
    pub raws: Vec<&'a serde_json::Value>,
    pub traceparents: Vec<Option<&'a str>>,
    pub tracestates: Vec<Option<&'a str>>,
}

/// One inbound webhook, for [`InboundRows::push`].
pub struct InboundRow<'a> {
    pub sid: &'a str,
    pub body: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub segments: Option<i32>,
    pub media: Option<i32>,
    pub raw: &'a serde_json::Value,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl<'a> InboundRows<'a> {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            sids: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            froms: Vec::with_capacity(n),
            tos: Vec::with_capacity(n),
            segments: Vec::with_capacity(n),
            media: Vec::with_capacity(n),
            raws: Vec::with_capacity(n),
            traceparents: Vec::with_capacity(n),
            tracestates: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, row: InboundRow<'a>) {
        self.sids.push(row.sid);
        self.bodies.push(row.body);
        self.froms.push(row.from);
        self.tos.push(row.to);
        self.segments.push(row.segments);
        self.media.push(row.media);
        self.raws.push(row.raw);
        self.traceparents.push(row.traceparent);
        self.tracestates.push(row.tracestate);
    }
}

/// Stores a group commit's inbound webhooks and the one job that processes them, in one
/// statement (the webhook hot path's one round trip). The job part is the batch form of
/// [`schedule`]: the row apalis's push writes (queue, `Pending`, no attempts, [`MAX_ATTEMPTS`],
/// due now, priority 0, empty metadata), with the stored messages' ids as the payload;
/// `queue::the_batched_inbound_push_writes_what_schedule_writes_and_apalis_fetches_it` holds the
/// two to the same row and to what apalis's fetch returns.
pub async fn store_inbound(
    conn: &mut PgConnection,
    rows: &InboundRows<'_>,
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH new_rows AS (
               INSERT INTO sms_messages
                   (direction, message_content, twilio_sid, delivery_status, raw_webhook_data,
                    from_number, to_number, num_segments, num_media)
               SELECT 'inbound', u.body, u.sid, $12, u.raw, u.from_number, u.to_number, u.segments, u.media
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::jsonb[])
                    AS u(sid, body, from_number, to_number, segments, media, raw)
               ON CONFLICT (twilio_sid) DO NOTHING
               RETURNING id, twilio_sid
           ), traced AS (
               SELECT * FROM UNNEST($1::text[], $10::text[], $11::text[]) AS t(sid, traceparent, tracestate)
               WHERE traceparent IS NOT NULL
           ), job AS (
               INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
               SELECT apalis.generate_ulid(), $8,
                      convert_to(json_strip_nulls(json_build_object(
                          'message_ids', json_agg(n.id),
                          'traces', json_object_agg(n.id, json_build_object('traceparent', t.traceparent, 'tracestate', t.tracestate))
                                    FILTER (WHERE t.traceparent IS NOT NULL)
                      ))::text, 'UTF8'),
                      'Pending', 0, $9, now(), 0, ''::hstore
               FROM new_rows n LEFT JOIN traced t ON t.sid = n.twilio_sid
               HAVING count(*) > 0
           )
           SELECT id AS "id!", twilio_sid AS "twilio_sid!" FROM new_rows"#,
        &rows.sids[..] as &[&str],
        &rows.bodies[..] as &[&str],
        &rows.froms[..] as &[&str],
        &rows.tos[..] as &[&str],
        &rows.segments[..] as &[Option<i32>],
        &rows.media[..] as &[Option<i32>],
        &rows.raws[..] as &[&serde_json::Value],
        ProcessInbound::QUEUE,
        MAX_ATTEMPTS as i32,
        &rows.traceparents[..] as &[Option<&str>],
        &rows.tracestates[..] as &[Option<&str>],
        crate::twilio::status::DeliveryStatus::Received.as_str(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.twilio_sid, r.id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_without_a_trace_still_read_and_none_is_not_written() {
        let old: SendMessage =
            serde_json::from_str(r#"{"message_id":"0190a0b0-0000-7000-8000-000000000001"}"#)
                .unwrap();
        assert_eq!(old.trace, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("trace"));
        let inbound: ProcessInbound =
            serde_json::from_str(r#"{"message_ids":["0190a0b0-0000-7000-8000-000000000001"]}"#)
                .unwrap();
        assert!(inbound.traces.is_empty());
        assert!(!serde_json::to_string(&inbound).unwrap().contains("traces"));
    }

    #[test]
    fn a_route_job_reads_in_both_shapes() {
        let id: Uuid = "0190a0b0-0000-7000-8000-000000000001".parse().unwrap();
        let one = RouteMessage {
            message_id: id,
            attempt: 2,
            trace: None,
        };
        // Written before batches: one message.
        let old: RouteMessages =
            serde_json::from_str(&serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(old, RouteMessages::one(one.clone()));
        let batch = RouteMessages {
            messages: vec![one.clone(), RouteMessage { attempt: 0, ..one }],
        };
        let read: RouteMessages =
            serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!(read, batch);
    }

    #[test]
    fn inbound_traces_are_keyed_by_message() {
        let id = "0190a0b0-0000-7000-8000-000000000001";
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // The shape group_commit.rs builds in SQL.
        let job: ProcessInbound = serde_json::from_str(&format!(
            r#"{{"message_ids":["{id}"],"traces":{{"{id}":{{"traceparent":"{tp}"}}}}}}"#
        ))
        .unwrap();
        let trace = &job.traces[&id.parse::<Uuid>().unwrap()];
        assert_eq!(trace.traceparent, tp);
        assert_eq!(trace.tracestate, None);
    }
}
