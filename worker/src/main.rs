// A faster allocator: the webhook path allocates per request (form fields, JSON payload).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use shared::{config, jobs, telemetry};
use tokio_util::sync::CancellationToken;
use worker::{Deps, queues};

#[derive(Parser)]
#[command(name = "sms-worker", version, about = "Processes the SMS job queues")]
struct Cli {
    /// Comma-separated queues to run (default: all of them).
    #[arg(long, env = "WORKER_QUEUES")]
    queues: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = config::Worker::load(&config::Env).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let explicit = cli.queues.is_some();
    let mut queues =
        queues::parse_queues(cli.queues.as_deref().unwrap_or(&jobs::ALL_QUEUES.join(",")))
            .unwrap_or_else(|e| {
                eprintln!("configuration error: --queues: {e}");
                std::process::exit(2);
            });
    if cfg.outbound.is_none() && queues.contains(&jobs::OUTBOUND_SEND) {
        if explicit {
            eprintln!(
                "configuration error: TWILIO_AUTH_TOKEN: is required to run the outbound-send queue"
            );
            std::process::exit(2);
        }
        // Started without naming queues and without Twilio settings: run everything else.
        queues.retain(|q| *q != jobs::OUTBOUND_SEND);
    }
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = telemetry::init_with_traces(cfg.common.log_format, &config::Env, "sms-worker")
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2);
        });
    let pool = shared::db::lazy_pool(&cfg.common)?;
    let deps = Deps::new(&cfg, pool);
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
    tracing::info!(?queues, "sms-worker starting");
    tokio::spawn(report_cache(deps.clone(), shutdown.clone()));
    let metrics_server = match cfg.metrics_addr {
        Some(addr) => match worker::metrics::serve(addr, deps.clone(), shutdown.clone()).await {
            Ok((bound, task)) => {
                tracing::info!(addr = %bound, "worker metrics at http://{bound}/metrics");
                Some(task)
            }
            Err(e) => {
                eprintln!("configuration error: WORKER_METRICS_ADDR: cannot listen on {addr}: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    queues::run(
        deps,
        queues,
        queues::QueueSettings::from(&cfg),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(task) = metrics_server {
        let _ = task.await;
    }
    tracing::info!("sms-worker stopped");
    Ok(())
}

/// Logs the tenant cache's hit rate once a minute.
async fn report_cache(deps: std::sync::Arc<Deps>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let s = deps.tenants.stats();
        tracing::info!(
            hits = s.hits,
            misses = s.misses,
            hit_rate = s.hit_rate,
            monitor_found = s.monitor_found,
            monitor_unavailable = s.monitor_unavailable,
            "tenant cache"
        );
    }
}
