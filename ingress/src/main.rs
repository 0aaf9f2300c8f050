// A faster allocator: the webhook path allocates per request (form fields, JSON payload).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use ingress::{AppState, auth};
use shared::{config, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sms-ingress",
    version,
    about = "Twilio webhooks and the SMS HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply database migrations (ours and the job queue's); safe to run repeatedly.
    Migrate,
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it once; only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        /// read, send or admin; repeat for several. Default: read.
        #[arg(long = "scope", default_values_t = vec!["read".to_string()])]
        scopes: Vec<String>,
        /// Confine the key to one tenant's data.
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // The runtime's size is a setting: the ingress is thin, and on a machine it shares with
    // Postgres one thread measured fastest (fewer cross-thread wake-ups).
    let threads = match &command {
        Command::Serve => {
            let cfg = config::Ingress::load(&config::Env).unwrap_or_else(|e| exit_config(e));
            cfg.worker_threads
        }
        _ => 1,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let cfg = config::Ingress::load(&config::Env).unwrap_or_else(|e| exit_config(e));
            telemetry::init(cfg.common.log_format);
            let pool = shared::db::lazy_pool(&cfg.common)?;
            let listener = tokio::net::TcpListener::bind(cfg.bind_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "sms-ingress listening");
            let shutdown = CancellationToken::new();
            tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
            ingress::serve(listener, AppState::new(cfg, pool), shutdown).await?;
            tracing::info!("sms-ingress stopped");
        }
        Command::Migrate => {
            let common = config::Common::load(&config::Env, 2).unwrap_or_else(|e| exit_config(e));
            telemetry::init(common.log_format);
            let pool = shared::db::lazy_pool(&common)?;
            shared::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::ApiKey {
            command:
                ApiKeyCommand::Create {
                    name,
                    scopes,
                    tenant,
                },
        } => {
            let common = config::Common::load(&config::Env, 2).unwrap_or_else(|e| exit_config(e));
            let pool = shared::db::lazy_pool(&common)?;
            let key = auth::create_key(&pool, &name, &scopes, tenant.as_deref()).await?;
            println!("{key}");
        }
    }
    Ok(())
}

fn exit_config(err: config::ConfigError) -> ! {
    eprintln!("{err}");
    std::process::exit(2);
}
