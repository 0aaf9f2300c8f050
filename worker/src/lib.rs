//! `sms-worker`: apalis workers over the Postgres job queue. `--queues` picks which queues a
//! replica runs, so operations scale each independently.

pub mod budget;
pub mod cli;
pub mod gate;
pub mod inbound;
pub mod language_notify;
pub mod metrics;
pub mod queues;
pub mod reconcile;
pub mod route;
pub mod send;
pub mod status_apply;
pub mod wakeups;

use std::sync::Arc;

use phonenumber::country::Id;
use shared::{
    config::{self, Outbound},
    jobs,
    monitor::MonitorClient,
    outbound::Sender,
    retry::RetryPolicy,
    tenants::TenantResolver,
    twilio::client::TwilioClient,
};
use sqlx::PgPool;

/// What every handler needs, shared by all of a process's workers.
pub struct Deps {
    /// The handlers' connections.
    pub pool: PgPool,
    /// The job queue's own connections (apalis: fetch, acknowledge, heartbeat), so that handlers
    /// holding every connection of `pool` never make a fetch time out.
    pub queue_pool: PgPool,
    /// Connections that keep their session, for LISTEN; None behind a transaction pooler without
    /// `DATABASE_SESSION_URL` (the queues then poll).
    pub listen_pool: Option<PgPool>,
    pub tenants: TenantResolver,
    /// The fence around agents' URLs (checked again for addresses written in a URL).
    pub agent_fence: std::sync::Arc<shared::fence::Fence>,
    pub region: Id,
    pub language_notify_retry: RetryPolicy,
    /// Sending settings and client; None for a worker that does not send.
    pub outbound: Option<(Outbound, TwilioClient)>,
    /// Who agents' replies are sent as.
    pub sender: Sender,
    /// Agents' replies are exempt unless QUIET_HOURS_REPLIES=enforce.
    pub quiet_hours: shared::config::QuietHours,
    /// OPT_OUT_CONFIRMATION.
    pub opt_out_confirmation: bool,
    /// Client for agents (routing).
    pub http: reqwest::Client,
    pub route_timeout: std::time::Duration,
    pub route_retry: RetryPolicy,
    /// Finished jobs older than this are deleted by the reconciler.
    pub job_retention: std::time::Duration,
    pub metrics: metrics::WorkerMetrics,
    /// Sends wait here while Twilio refuses for now (gate.rs).
    pub twilio_gate: gate::Gate,
}

impl Deps {
    pub fn new(cfg: &config::Worker, pool: PgPool) -> Arc<Self> {
        let monitor = MonitorClient::from_config(&cfg.monitor);
        let per_queue = budget::Budget::plan(cfg.common.database_max_connections, jobs::ALL_QUEUES)
            .queue_connections;
        Arc::new(Self {
            tenants: TenantResolver::new(
                pool.clone(),
                monitor,
                &cfg.tenant_cache,
                cfg.common.default_region,
            ),
            // One listening connection per queue the process can run.
            listen_pool: shared::db::session_pool(&cfg.common, per_queue)
                .expect("DATABASE_SESSION_URL validated with the configuration"),
            // One connection per queue the process can run (budget.rs).
            queue_pool: shared::db::lazy_pool_of(&cfg.common, per_queue)
                .expect("DATABASE_URL validated with the configuration"),
            pool,
            region: cfg.common.default_region,
            language_notify_retry: cfg.language_notify_retry,
            sender: cfg.sender.clone(),
            quiet_hours: cfg.quiet_hours.clone(),
            opt_out_confirmation: cfg.opt_out_confirmation,
            // Agents' URLs are tenants': fenced at connection time, no redirects.
            http: shared::fence::client(cfg.common.agent_fence.clone()),
            agent_fence: cfg.common.agent_fence.clone(),
            route_timeout: cfg.route_timeout,
            route_retry: cfg.route_retry,
            job_retention: cfg.job_retention,
            metrics: metrics::WorkerMetrics::new(),
            twilio_gate: gate::Gate::default(),
            outbound: cfg.outbound.clone().map(|o| {
                let client =
                    TwilioClient::new(&o.api_base, &o.account_sid, &o.auth_token, o.timeout);
                (o, client)
            }),
        })
    }
}

/// Whether `e` is Postgres breaking a deadlock (40P01): the transaction may simply be tried again.
pub fn is_deadlock(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>().is_some_and(
            |e| matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01")),
        )
    })
}

/// Times a batch's transaction is tried again after Postgres broke a deadlock with it.
const DEADLOCK_RETRIES: u32 = 3;

/// Runs a batch's transaction, again (up to [`DEADLOCK_RETRIES`] times) when Postgres breaks a
/// deadlock with it: the batches that lock rows in one order can still meet another writer.
pub async fn retrying_deadlocks<T, F, Fut>(batch: &'static str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e) if is_deadlock(&e) && tries < DEADLOCK_RETRIES => {
                tries += 1;
                tracing::warn!(tries, batch, "batch deadlocked with another; trying again");
            }
            other => return other,
        }
    }
}
