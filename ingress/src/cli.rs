//! `sms-ingress`'s command line: serve, migrate, and the administration commands (API keys, agent
//! routes), which use the same functions as the HTTP API.

use clap::{Parser, Subcommand};
use shared::{config, telemetry};
use tokio_util::sync::CancellationToken;

use crate::{AppState, agent_routes, api_keys, auth};

#[derive(Parser)]
#[command(
    name = "sms-ingress",
    version,
    about = "Twilio webhooks and the SMS HTTP API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum RouteCommand {
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
pub enum ApiKeyCommand {
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
        /// Refuse the key after this many days (default: never expires).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys: id, prefix, name, scopes, tenant, state, created, last used, expiry.
    List,
    /// Revoke a key by id: refused from the next request on, on every replica.
    Revoke { id: uuid::Uuid },
}

/// The runtime's size is a setting: the ingress is thin, and on a machine it shares with Postgres
/// one thread measured fastest (fewer cross-thread wake-ups).
pub fn runtime_threads(command: &Command) -> usize {
    match command {
        Command::Serve => load_ingress().worker_threads,
        _ => 1,
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve().await,
        Command::Migrate => {
            let mut common = load_common();
            telemetry::init(common.log_format);
            shared::db::settle_pool_mode(&mut common).await;
            shared::db::migrate(&shared::db::lazy_pool(&common)?).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Route { command } => route(command).await,
        Command::ApiKey { command } => api_key(command).await,
    }
}

async fn api_key(command: ApiKeyCommand) -> anyhow::Result<()> {
    let mut common = load_common();
    shared::db::settle_pool_mode(&mut common).await;
    let pool = shared::db::lazy_pool(&common)?;
    match command {
        ApiKeyCommand::Create {
            name,
            scopes,
            tenant,
            expires_in_days,
        } => {
            let expires_at =
                expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
            let issued = auth::issue(&pool, &name, &scopes, tenant.as_deref(), expires_at).await?;
            println!("{}", issued.key);
        }
        ApiKeyCommand::List => {
            println!("id\tprefix\tname\tscopes\ttenant\tstate\tcreated\tlast_used\texpires");
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_owned(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
            };
            for k in api_keys::all(&pool, None).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.prefix,
                    k.name,
                    k.scopes.join(","),
                    k.tenant_id.as_deref().unwrap_or("-"),
                    k.state,
                    time(Some(k.created_at)),
                    time(k.last_used_at),
                    time(k.expires_at),
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let k = api_keys::revoke(&pool, id, None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no key {id}"))?;
            println!("revoked {} ({})", k.id, k.prefix);
        }
    }
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let mut cfg = load_ingress();
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry =
        telemetry::init_with_traces(cfg.common.log_format, &config::Env, "sms-ingress")
            .unwrap_or_else(|e| exit_config(e));
    shared::db::settle_pool_mode(&mut cfg.common).await;
    let pool = shared::db::lazy_pool(&cfg.common)?;
    let listener = tokio::net::TcpListener::bind(cfg.bind_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "sms-ingress listening");
    let (signal, shutdown) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(telemetry::cancel_on_signal(signal.clone()));
    let state = AppState::new(cfg, pool);
    tokio::spawn(crate::server::drain_on(
        signal,
        state.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = state.cfg.metrics_addr {
        let ops = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| exit_config(format!("METRICS_ADDR: cannot listen on {addr}: {e}")));
        tracing::info!(addr = %addr, "operations listener (metrics, readiness) listening");
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::server::serve_operations(ops, state, shutdown).await {
                tracing::error!(error = %e, "operations listener failed");
            }
        });
    }
    crate::serve(listener, state, shutdown).await?;
    tracing::info!("sms-ingress stopped");
    Ok(())
}

async fn route(command: RouteCommand) -> anyhow::Result<()> {
    let mut common = load_common();
    shared::db::settle_pool_mode(&mut common).await;
    let pool = shared::db::lazy_pool(&common)?;
    match command {
        RouteCommand::Add {
            tenant,
            workflow_type,
            default,
            url,
            secret,
        } => {
            let id = agent_routes::save(
                &pool,
                &common.agent_fence,
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
            for r in agent_routes::all(&pool, None).await? {
                let target = match (&r.tenant_id, &r.workflow_type) {
                    (Some(t), _) => format!("tenant={t}"),
                    (_, Some(w)) => format!("workflow_type={w}"),
                    _ => "default".to_owned(),
                };
                println!("{}\t{target}\t{}", r.id, r.agent_url);
            }
        }
        RouteCommand::Remove { id } => {
            anyhow::ensure!(agent_routes::remove(&pool, id).await?, "no route {id}");
        }
    }
    Ok(())
}

fn load_ingress() -> config::Ingress {
    config::Ingress::load(&config::Env).unwrap_or_else(|e| exit_config(e))
}

fn load_common() -> config::Common {
    config::Common::load(&config::Env, 2, std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| exit_config(e))
}

fn exit_config(err: impl std::fmt::Display) -> ! {
    eprintln!("{err}");
    std::process::exit(2);
}
