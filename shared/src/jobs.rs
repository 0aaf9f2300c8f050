//! Queue names and job payloads. Jobs are pushed with apalis-postgres's `push_tasks` inside the
//! caller's transaction, so a job exists exactly when the rows it refers to were committed.

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

/// Pushes jobs to `queue` on the caller's connection (normally inside its transaction).
pub async fn push<J: Serialize>(
    conn: &mut PgConnection,
    queue: &str,
    jobs: &[J],
    run_after: Option<Duration>,
) -> Result<(), apalis_postgres::Error> {
    push_with_priority(conn, queue, jobs, run_after, 0).await
}

/// As [`push`], with a priority: higher runs first among jobs that are due.
pub async fn push_with_priority<J: Serialize>(
    conn: &mut PgConnection,
    queue: &str,
    jobs: &[J],
    run_after: Option<Duration>,
    priority: usize,
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
                .priority(priority);
            if let Some(delay) = run_after {
                builder = builder.run_at_timestamp(due_second(delay));
            }
            builder.build()
        })
        .collect();
    apalis_postgres::queries::push_tasks(conn, queue, tasks).await
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
