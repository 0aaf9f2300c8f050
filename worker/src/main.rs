// A faster allocator: the webhook path allocates per request (form fields, JSON payload).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use shared::{config, telemetry};
use tokio_util::sync::CancellationToken;
use worker::{Deps, cli, queues};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (queues, mut cfg) =
        cli::resolve(&cli::Cli::parse(), &config::Env).unwrap_or_else(|e| exit(&e));
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = telemetry::init_with_traces(cfg.common.log_format, &config::Env, "sms-worker")
        .unwrap_or_else(|e| exit(&e.to_string()));
    shared::db::settle_pool_mode(&mut cfg.common).await;
    let deps = Deps::new(&cfg, shared::db::lazy_pool(&cfg.common)?);
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
    tracing::info!(?queues, "sms-worker starting");
    for setting in &cfg.retired {
        tracing::warn!(
            setting,
            "setting no longer read: jobs in flight, fetch size and the queue's pool follow DATABASE_MAX_CONNECTIONS"
        );
    }
    tokio::spawn(worker::metrics::report_cache(
        deps.clone(),
        shutdown.clone(),
    ));
    let metrics_server = match cfg.metrics_addr {
        Some(addr) => match worker::metrics::serve(addr, deps.clone(), shutdown.clone()).await {
            Ok((bound, task)) => {
                tracing::info!(addr = %bound, "worker metrics at http://{bound}/metrics");
                Some(task)
            }
            Err(e) => exit(&format!(
                "configuration error: WORKER_METRICS_ADDR: cannot listen on {addr}: {e}"
            )),
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

fn exit(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}
