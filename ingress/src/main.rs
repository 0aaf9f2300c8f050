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
    /// Manage the routes from tenants to their agents.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Add (or replace) the route of a tenant, a workflow type, or the default.
    Add {
        #[arg(long, conflicts_with_all = ["workflow_type", "default"], required_unless_present_any = ["workflow_type", "default"])]
        tenant: Option<String>,
        #[arg(long)]
        workflow_type: Option<String>,
        #[arg(long)]
        default: bool,
        /// The agent's URL.
        #[arg(long)]
        url: String,
        /// The secret requests to the agent are signed with (read from AGENT_SIGNING_SECRET when
        /// not given, so it stays out of shell history).
        #[arg(long, env = "AGENT_SIGNING_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// List routes (secrets are not shown).
    List,
    /// Remove a route by id.
    Remove { id: uuid::Uuid },
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
            // Held to the end: dropping it flushes the spans not yet exported.
            let _telemetry =
                telemetry::init_with_traces(cfg.common.log_format, &config::Env, "sms-ingress")
                    .unwrap_or_else(|e| exit_config(e));
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
        Command::Route { command } => {
            let common = config::Common::load(&config::Env, 2).unwrap_or_else(|e| exit_config(e));
            let pool = shared::db::lazy_pool(&common)?;
            match command {
                RouteCommand::Add {
                    tenant,
                    workflow_type,
                    default,
                    url,
                    secret,
                } => {
                    let id = ingress::routes::save(
                        &pool,
                        tenant.as_deref(),
                        workflow_type.as_deref(),
                        default,
                        &url,
                        &secret,
                    )
                    .await?;
                    println!("{id}");
                }
                RouteCommand::List => {
                    for r in ingress::routes::all(&pool, None).await? {
                        let target = match (&r.tenant_id, &r.workflow_type) {
                            (Some(t), _) => format!("tenant={t}"),
                            (_, Some(w)) => format!("workflow_type={w}"),
                            _ => "default".to_owned(),
                        };
                        println!("{}\t{target}\t{}", r.id, r.agent_url);
                    }
                }
                RouteCommand::Remove { id } => {
                    let n = sqlx::query("DELETE FROM agent_routes WHERE id = $1")
                        .bind(id)
                        .execute(&pool)
                        .await?
                        .rows_affected();
                    anyhow::ensure!(n == 1, "no route {id}");
                }
            }
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
