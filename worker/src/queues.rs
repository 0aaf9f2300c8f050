//! Running and supervising one apalis worker per queue.
//!
//! apalis-postgres ends a worker's stream on the first fetch or heartbeat error (e.g. Postgres
//! restarting), so each worker runs in a loop that starts a fresh one after a short pause. Every
//! start gets a unique name: a restarted worker that reused its predecessor's name would keep the
//! dead one's locked jobs looking alive.

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use serde::de::DeserializeOwned;
use shared::{
    config,
    jobs::{self, ApplyStatuses, Job, NotifyLanguage, ProcessInbound, RouteMessages, SendMessage},
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Deps,
    budget::{Budget, QueueBudget},
    inbound, language_notify,
    metrics::{JobResult, Retried},
    reconcile, route, send, status_apply,
    wakeups::{self, Wakeups},
};

/// How the queues run; how many jobs each runs at once comes from the budget (budget.rs).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The handlers' pool size (`DATABASE_MAX_CONNECTIONS`), which the budget divides.
    pub handler_connections: u32,
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: usize,
    /// `WORKER_POLL_INTERVAL_MS` when set (see `wakeups::safety_interval`).
    pub poll_interval: Option<Duration>,
}

impl From<&config::Worker> for QueueSettings {
    fn from(cfg: &config::Worker) -> Self {
        Self {
            handler_connections: cfg.common.database_max_connections,
            heartbeat_interval: cfg.heartbeat_interval,
            missed_heartbeats: cfg.missed_heartbeats,
            poll_interval: cfg.poll_interval,
        }
    }
}

/// Validates `--queues` names.
pub fn parse_queues(list: &str) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let q = jobs::ALL_QUEUES
            .iter()
            .find(|q| **q == name)
            .ok_or_else(|| {
                format!(
                    "unknown queue {name:?}; queues are {}",
                    jobs::ALL_QUEUES.join(", ")
                )
            })?;
        if !out.contains(q) {
            out.push(*q);
        }
    }
    if out.is_empty() {
        return Err("no queue named".into());
    }
    Ok(out)
}

/// Runs a handler as a task of its own, turns a panic in it into a job error instead of taking
/// the worker down with it, and counts the job in the metrics.
///
/// A task of its own because apalis drops its in-flight handler futures when its backend fails
/// (one failed fetch or heartbeat, e.g. Postgres restarting): a send cut between Twilio's answer
/// and its recording would become an unknown outcome, and if its status callbacks were lost to
/// the same outage, a second send after the grace period. A spawned handler runs to its end;
/// its job, re-queued later, finds the work done.
async fn guarded<T: Retried + Send + 'static>(
    deps: &Deps,
    queue: &'static str,
    fut: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    let (result, answer) = match tokio::spawn(fut.in_current_span()).await {
        Ok(Ok(outcome)) if outcome.retried() => (JobResult::Retried, Ok(())),
        Ok(Ok(_)) => (JobResult::Done, Ok(())),
        Ok(Err(e)) => {
            if let Some(db) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) {
                shared::pool_mode::observe(db);
            }
            (JobResult::Failed, Err(e.into()))
        }
        Err(e) if e.is_panic() => (JobResult::Failed, Err("handler panicked".into())),
        Err(e) => (
            JobResult::Failed,
            Err(format!("handler cancelled: {e}").into()),
        ),
    };
    deps.metrics.job(queue, result, started.elapsed());
    answer
}

async fn handle_inbound(job: ProcessInbound, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let d = Arc::clone(&deps);
    guarded(&deps, jobs::INBOUND, async move {
        inbound::process_batch(&d, &job).await
    })
    .await
}

async fn handle_language(job: NotifyLanguage, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let d = Arc::clone(&deps);
    guarded(&deps, jobs::MONITOR_LANGUAGE, async move {
        language_notify::process(&d, job).await
    })
    .await
}

async fn handle_send(job: SendMessage, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let d = Arc::clone(&deps);
    guarded(&deps, jobs::OUTBOUND_SEND, async move {
        send::process(&d, job).await
    })
    .await
}

/// `slots`: the route queue's messages in flight in this process (its budget's jobs).
async fn handle_route(
    job: RouteMessages,
    deps: Data<Arc<Deps>>,
    slots: Arc<Semaphore>,
) -> Result<(), BoxDynError> {
    let d = Arc::clone(&deps);
    guarded(&deps, jobs::ROUTE, async move {
        route::process_all(&d, job, &slots).await
    })
    .await
}

async fn handle_status(job: ApplyStatuses, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let d = Arc::clone(&deps);
    guarded(&deps, jobs::OUTBOUND_STATUS, async move {
        status_apply::process_all(&d, job).await
    })
    .await
}

/// Runs the named queues until `shutdown`, restarting any worker whose backend fails.
pub async fn run(
    deps: Arc<Deps>,
    queues: Vec<&'static str>,
    settings: QueueSettings,
    shutdown: CancellationToken,
) {
    // Directory changes reach this process's tenant cache within a second.
    let directory = deps
        .tenants
        .clone()
        .follow_changes(Duration::from_secs(1), shutdown.clone());
    tokio::spawn(directory);
    let boot = ulid::Ulid::generate().to_string().to_lowercase();
    let host = hostname();
    let budget = Budget::plan(settings.handler_connections, &queues);
    tracing::info!(?budget, "connection budget");
    let mut tasks = tokio::task::JoinSet::new();
    for queue in queues {
        let (deps, shutdown) = (deps.clone(), shutdown.clone());
        let run = Run {
            prefix: format!("{host}-{queue}-{boot}"),
            settings: settings.clone(),
            budget: budget.of(queue),
        };
        tasks.spawn(async move {
            match queue {
                jobs::INBOUND => supervise(run, deps, shutdown, handle_inbound).await,
                jobs::MONITOR_LANGUAGE => supervise(run, deps, shutdown, handle_language).await,
                jobs::OUTBOUND_SEND => supervise(run, deps, shutdown, handle_send).await,
                jobs::OUTBOUND_STATUS => supervise(run, deps, shutdown, handle_status).await,
                jobs::ROUTE => {
                    let slots = Arc::new(Semaphore::new(run.budget.map_or(1, |b| b.jobs)));
                    let handler = move |job, deps| handle_route(job, deps, Arc::clone(&slots));
                    supervise(run, deps, shutdown, handler).await
                }
                jobs::RECONCILER => reconcile::run(deps, shutdown).await,
                other => unreachable!("queue {other} validated by parse_queues"),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What one queue's supervisor needs: its workers' name prefix, the settings and its budget.
struct Run {
    prefix: String,
    settings: QueueSettings,
    budget: Option<QueueBudget>,
}

/// Runs the worker of `J`'s own queue (`Job::QUEUE`), so a handler reads only its payload type.
async fn supervise<J, F, Fut>(run: Run, deps: Arc<Deps>, shutdown: CancellationToken, handler: F)
where
    J: Job + DeserializeOwned + Send + Sync + Unpin + 'static,
    F: Fn(J, Data<Arc<Deps>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxDynError>> + Send + 'static,
{
    let queue = J::QUEUE;
    let Run {
        prefix,
        settings,
        budget,
    } = run;
    let budget = budget.expect("every apalis queue run has a budget");
    let mut generation = 0u32;
    while !shutdown.is_cancelled() {
        generation += 1;
        let name = format!("{prefix}-{generation}");
        let config = Config::default()
            .queue(queue)
            .batch_size(budget.fetch)
            .heartbeat_interval(settings.heartbeat_interval)
            .missed_heartbeats(settings.missed_heartbeats);
        // NOTIFY wakes the worker at once; the interval is the safety net (see wakeups.rs), and
        // the only wake-up behind a transaction pooler with no session connection.
        let pubsub = deps
            .listen_pool
            .as_ref()
            .filter(|_| !shared::pool_mode::listening_stopped())
            .map(|pool| apalis_postgres::Pubsub::new(pool.clone(), queue.to_owned()));
        let interval = wakeups::safety_interval(settings.poll_interval, pubsub.is_some());
        let strategy = Wakeups::new(pubsub, interval);
        let backend = PostgresStorage::<J>::new(&deps.queue_pool)
            .with_config(config)
            .poll_with_strategy(strategy);
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .data(deps.clone())
            .concurrency(budget.jobs)
            .build(handler.clone());
        tracing::info!(queue, worker = %name, "worker starting");
        let stop = shutdown.clone();
        let result = worker
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if result.is_ok() {
            release_unstarted(&deps, queue, &name).await;
        }
        if shutdown.is_cancelled() {
            break;
        }
        match result {
            Ok(()) => {
                shared::pool_mode::suspect();
                tracing::warn!(queue, worker = %name, "worker stopped; restarting")
            }
            Err(e) => {
                // Its error is apalis's: whether a pooler caused it, a probe tells.
                shared::pool_mode::suspect();
                tracing::error!(queue, worker = %name, error = %e, "worker failed; restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!(queue, "worker stopped");
}

/// After a clean stop (its events flushed, its running jobs finished), whatever is still
/// `Queued` to the worker was never started: back to the queue at once, for any worker.
async fn release_unstarted(deps: &Deps, queue: &str, worker: &str) {
    match jobs::release_unstarted(&deps.queue_pool, worker).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            queue,
            worker,
            jobs = n,
            "handed back jobs fetched but not started"
        ),
        // Orphan recovery hands them back once the worker's heartbeat is missed.
        Err(e) => tracing::warn!(queue, worker, error = %e, "could not hand back unstarted jobs"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_checked() {
        assert_eq!(parse_queues("inbound").unwrap(), vec!["inbound"]);
        assert_eq!(
            parse_queues("inbound, monitor-language,inbound").unwrap(),
            vec!["inbound", "monitor-language"]
        );
        assert!(parse_queues("nope").is_err());
        assert!(parse_queues("").is_err());
    }
}
