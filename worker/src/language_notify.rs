//! The language notification lifecycle: telling the Collections Monitor that a tenant's language
//! preference changed.
//!
//! ```text
//! job (attempt n) ─call Monitor─▶ decide: ok               ─▶ Delivered
//!                                      retryable, attempts left ─▶ job n+1 after the backoff
//!                                      otherwise          ─▶ GaveUp (logged)
//! ```
//! Retries are durable: a failed attempt schedules the next one as a new job with `run_after`,
//! so a restart neither loses nor hurries it.

use std::time::Duration;

use shared::{
    jobs::{self, NotifyLanguage, When},
    retry::RetryPolicy,
};

use crate::Deps;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Rescheduled { after: Duration },
    GaveUp,
    NoMonitor,
}

/// After the call: what the Monitor's answer (None: ok; Some(retryable)) asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    Retry { failed: u32 },
    GiveUp,
}

pub fn decide(failure: Option<bool>, attempt: u32, policy: &RetryPolicy) -> Decision {
    match failure {
        None => Decision::Delivered,
        Some(true) if policy.allows_another(attempt + 1) => Decision::Retry {
            failed: attempt + 1,
        },
        Some(_) => Decision::GiveUp,
    }
}

#[tracing::instrument(name = "notify_language", skip_all, fields(tenant_id = %job.tenant_id, attempt = job.attempt))]
pub async fn process(deps: &Deps, job: NotifyLanguage) -> anyhow::Result<Outcome> {
    shared::telemetry::continue_trace(job.trace.as_ref());
    let Some(monitor) = deps.tenants.monitor() else {
        return Ok(Outcome::NoMonitor);
    };
    let answer = monitor
        .update_language(&job.tenant_id, &job.language, job.confidence)
        .await;
    let failure = answer.as_ref().err().map(|e| e.is_retryable());
    match (
        decide(failure, job.attempt, &deps.language_notify_retry),
        answer,
    ) {
        (Decision::Delivered, _) => {
            tracing::info!(tenant_id = %job.tenant_id, language = %job.language, "monitor told of language preference");
            Ok(Outcome::Delivered)
        }
        (Decision::Retry { failed }, answer) => {
            let after = deps.language_notify_retry.delay(failed, None);
            let next = NotifyLanguage {
                attempt: failed,
                trace: shared::telemetry::TraceContext::current(),
                ..job
            };
            let mut conn = deps.pool.acquire().await?;
            jobs::schedule(&mut conn, &[next], When::after(after)).await?;
            tracing::warn!(error = ?answer.err(), retry_in_s = after.as_secs(), "monitor language update failed; rescheduled");
            Ok(Outcome::Rescheduled { after })
        }
        (Decision::GiveUp, answer) => {
            tracing::error!(error = ?answer.err(), tenant_id = %job.tenant_id, attempts = job.attempt + 1, "monitor language update abandoned");
            Ok(Outcome::GaveUp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_over_answers_and_attempts() {
        let policy = RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(600), 3);
        let table = [
            (None, 0, Decision::Delivered),
            (None, 2, Decision::Delivered),
            (Some(true), 0, Decision::Retry { failed: 1 }),
            (Some(true), 1, Decision::Retry { failed: 2 }),
            (Some(true), 2, Decision::GiveUp),
            (Some(false), 0, Decision::GiveUp),
        ];
        for (failure, attempt, want) in table {
            assert_eq!(
                decide(failure, attempt, &policy),
                want,
                "{failure:?} {attempt}"
            );
        }
    }
}
