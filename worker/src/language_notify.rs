//! Telling the Collections Monitor that a tenant's language preference changed. Retries are
//! durable: a failed attempt schedules the next one as a new job with `run_after`, so a restart
//! neither loses nor hurries it.

use std::time::Duration;

use shared::jobs::{self, NotifyLanguage};

use crate::Deps;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Rescheduled { after: Duration },
    GaveUp,
    NoMonitor,
}

/// Delay before attempt `n` (1-based): 2 s, 4 s, 8 s ... capped at 10 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.min(20))).min(Duration::from_secs(600))
}

#[tracing::instrument(name = "notify_language", skip_all, fields(tenant_id = %job.tenant_id, attempt = job.attempt))]
pub async fn process(deps: &Deps, job: NotifyLanguage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some(monitor) = deps.tenants.monitor() else {
        return Ok(Outcome::NoMonitor);
    };
    match monitor
        .update_language(&job.tenant_id, &job.language, job.confidence)
        .await
    {
        Ok(()) => {
            tracing::info!(tenant_id = %job.tenant_id, language = %job.language, "monitor told of language preference");
            Ok(Outcome::Delivered)
        }
        Err(err) if err.is_retryable() && job.attempt + 1 < deps.language_notify_max_attempts => {
            let next = NotifyLanguage {
                attempt: job.attempt + 1,
                trace: shared::telemetry::TraceContext::current(),
                ..job
            };
            let after = retry_delay(next.attempt);
            let mut conn = deps.pool.acquire().await?;
            jobs::push(&mut conn, jobs::MONITOR_LANGUAGE, &[next], Some(after)).await?;
            tracing::warn!(error = %err, retry_in_s = after.as_secs(), "monitor language update failed; rescheduled");
            Ok(Outcome::Rescheduled { after })
        }
        Err(err) => {
            tracing::error!(error = %err, tenant_id = %job.tenant_id, attempts = job.attempt + 1, "monitor language update abandoned");
            Ok(Outcome::GaveUp)
        }
    }
}
