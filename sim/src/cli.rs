//! Command line of the `sms-sim` binary.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shared::config::LogFormat;

use crate::{agent, load, server, twilio, webhook};

#[derive(Debug, Parser)]
#[command(
    name = "sms-sim",
    version,
    about = "Plays the Collections Monitor, Twilio's REST API and tenant agents, sends signed Twilio webhooks, \
             generates load"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    #[value(alias = "text")]
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Collections Monitor, Twilio REST and agent simulators on one port (with their
    /// /_sim control APIs) until Ctrl-C.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8089")]
        bind: SocketAddr,
        /// Require `Authorization: Bearer KEY` on Monitor requests.
        #[arg(long, env = "MONITOR_API_KEY", hide_env_values = true)]
        monitor_api_key: Option<String>,
        /// Start with the demo tenants.
        #[arg(long)]
        seed_demo: bool,
        /// Account the Twilio simulator serves (the service's TWILIO_ACCOUNT_SID).
        #[arg(long, env = "TWILIO_ACCOUNT_SID", default_value = twilio::DEFAULT_ACCOUNT_SID)]
        account_sid: String,
        /// Token REST requests authenticate with and status callbacks are signed with (its value
        /// is never shown in --help).
        #[arg(
            long,
            env = "TWILIO_AUTH_TOKEN",
            hide_env_values = true,
            default_value = twilio::DEFAULT_AUTH_TOKEN
        )]
        auth_token: String,
        /// Secret the agent simulator (POST /agent/{echo,silent,slow,fail,reject}) verifies
        /// X-SMS-Signature with: the agent routes' secret (its value is never shown in --help).
        #[arg(
            long,
            env = "AGENT_SECRET",
            hide_env_values = true,
            default_value = agent::DEFAULT_SECRET
        )]
        agent_secret: String,
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
        log_format: LogFormatArg,
    },
    /// Send one signed inbound SMS webhook; print its MessageSid, the HTTP status and the body.
    SendOne {
        /// Where to post, e.g. http://127.0.0.1:8080/webhook/twilio/sms.
        #[arg(long)]
        url: String,
        /// The public URL the service signs for, when it differs from --url (behind a proxy).
        #[arg(long)]
        signed_url: Option<String>,
        /// Token to sign with (its value is never shown in --help).
        #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
        auth_token: String,
        #[arg(long)]
        from: String,
        /// Our number, the SMS's To.
        #[arg(long, env = "TWILIO_PHONE_NUMBER", default_value = webhook::DEFAULT_TO)]
        to: String,
        #[arg(long)]
        body: String,
        /// Reuse this MessageSid (to send a duplicate).
        #[arg(long)]
        message_sid: Option<String>,
        #[arg(long, env = "TWILIO_ACCOUNT_SID", default_value = webhook::DEFAULT_ACCOUNT_SID)]
        account_sid: String,
        /// Extra form field NAME=VALUE (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Per-request timeout.
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
    },
    /// Send many signed webhooks and print a JSON report (throughput, statuses, latency).
    Webhooks {
        /// Where to post, e.g. http://127.0.0.1:8080/webhook/twilio/sms.
        #[arg(long)]
        url: String,
        /// The public URL the service signs for, when it differs from --url (behind a proxy).
        #[arg(long)]
        signed_url: Option<String>,
        /// Token to sign with (its value is never shown in --help).
        #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
        auth_token: String,
        /// Requests in total, duplicates included.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Requests per second overall; 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Share of requests that resend an earlier message unchanged (0.0..1.0).
        #[arg(long, default_value_t = 0.0)]
        duplicate_ratio: f64,
        /// Distinct From numbers (+15552000001, +15552000002, ...).
        #[arg(long, default_value_t = 1000)]
        numbers: usize,
        /// Our number, the SMS's To.
        #[arg(long, env = "TWILIO_PHONE_NUMBER", default_value = webhook::DEFAULT_TO)]
        to: String,
        #[arg(long, env = "TWILIO_ACCOUNT_SID", default_value = webhook::DEFAULT_ACCOUNT_SID)]
        account_sid: String,
        /// Stop after this long even if not all requests were sent.
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
        /// Per-request timeout.
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
        /// Seed for MessageSids and duplicate choice (reproducible runs).
        #[arg(long)]
        seed: Option<u64>,
        /// Runtime threads of the generator; 1 keeps it to one core, leaving the rest to the
        /// service it measures.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Parses the command line and runs it on a runtime sized for the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Webhooks { threads, .. } => *threads,
        _ => 2,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            bind,
            monitor_api_key,
            seed_demo,
            account_sid,
            auth_token,
            agent_secret,
            log_format,
        } => {
            shared::telemetry::init(match log_format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Pretty => LogFormat::Pretty,
            });
            server::serve(server::ServeOptions {
                bind,
                monitor_api_key,
                seed_demo,
                twilio_account_sid: account_sid,
                twilio_auth_token: auth_token,
                agent_secret,
            })
            .await
        }
        Command::SendOne {
            url,
            signed_url,
            auth_token,
            from,
            to,
            body,
            message_sid,
            account_sid,
            params,
            timeout_seconds,
        } => {
            let mut sms = webhook::InboundSms::new(from, to, body);
            if let Some(sid) = message_sid {
                sms.message_sid = sid;
            }
            sms.extra = params;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(timeout_seconds))
                .build()?;
            let signed = signed_url.as_deref().unwrap_or(&url);
            let resp = webhook::send_to(
                &client,
                &url,
                signed,
                &auth_token,
                &sms.params(&account_sid),
            )
            .await
            .with_context(|| format!("posting to {url}"))?;
            println!("MessageSid: {}", sms.message_sid);
            println!("HTTP {}", resp.status());
            println!("{}", resp.text().await?);
            Ok(())
        }
        Command::Webhooks {
            url,
            signed_url,
            auth_token,
            count,
            concurrency,
            rate,
            duplicate_ratio,
            numbers,
            to,
            account_sid,
            max_seconds,
            timeout_seconds,
            seed,
            threads: _,
        } => {
            let report = load::run(load::LoadOptions {
                url,
                signed_url,
                auth_token,
                account_sid,
                to,
                count,
                concurrency,
                rate,
                duplicate_ratio,
                numbers,
                max_duration: Duration::from_secs(max_seconds),
                request_timeout: Duration::from_secs(timeout_seconds),
                seed,
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
