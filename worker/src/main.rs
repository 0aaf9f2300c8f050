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
    let queues = queues::parse_queues(cli.queues.as_deref().unwrap_or(&jobs::ALL_QUEUES.join(",")))
        .unwrap_or_else(|e| {
            eprintln!("configuration error: --queues: {e}");
            std::process::exit(2);
        });
    telemetry::init(cfg.common.log_format);
    let pool = shared::db::lazy_pool(&cfg.common)?;
    let deps = Deps::new(&cfg, pool);
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
    tracing::info!(?queues, "sms-worker starting");
    queues::run(deps, queues, queues::QueueSettings::from(&cfg), shutdown).await;
    tracing::info!("sms-worker stopped");
    Ok(())
}
