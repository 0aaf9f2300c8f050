use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use sim::{load, monitor, webhook};

#[derive(Parser)]
#[command(name = "sms-sim", version, about = "Simulates Twilio and the Collections Monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Collections Monitor simulator.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8089")]
        bind: SocketAddr,
        /// Require `Authorization: Bearer KEY` on Monitor requests.
        #[arg(long, env = "MONITOR_API_KEY")]
        monitor_api_key: Option<String>,
        /// Seed a few demo tenants.
        #[arg(long)]
        seed_demo: bool,
    },
    /// Send one signed inbound SMS webhook and print the answer.
    SendOne {
        #[arg(long)]
        url: String,
        /// URL to sign for, when it differs from --url (behind a proxy).
        #[arg(long)]
        signed_url: Option<String>,
        #[arg(long, env = "TWILIO_AUTH_TOKEN")]
        auth_token: String,
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "+15550001000")]
        to: String,
        #[arg(long)]
        body: String,
        /// Reuse this MessageSid (to send a duplicate).
        #[arg(long)]
        message_sid: Option<String>,
        #[arg(long, default_value = "AC00000000000000000000000000000000")]
        account_sid: String,
    },
    /// Send many signed webhooks and report throughput and latency as JSON.
    Webhooks {
        #[arg(long)]
        url: String,
        #[arg(long)]
        signed_url: Option<String>,
        #[arg(long, env = "TWILIO_AUTH_TOKEN")]
        auth_token: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Requests per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 0.0)]
        duplicate_ratio: f64,
        /// Distinct senders (+1555200NNNN).
        #[arg(long, default_value_t = 1000)]
        numbers: usize,
        #[arg(long, default_value = "+15550001000")]
        to: String,
        #[arg(long, default_value = "AC00000000000000000000000000000000")]
        account_sid: String,
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            bind,
            monitor_api_key,
            seed_demo,
        } => {
            let handle = monitor::MonitorSim::start_with_key(bind, monitor_api_key).await?;
            if seed_demo {
                handle.seed(monitor::demo_tenants());
            }
            eprintln!("sms-sim: Collections Monitor at {}", handle.base_url());
            tokio::signal::ctrl_c().await?;
            handle.shutdown();
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
        } => {
            let mut sms = webhook::InboundSms::new(&from, &to, &body);
            if let Some(sid) = message_sid {
                sms.message_sid = sid;
            }
            let client = reqwest::Client::new();
            let signed = signed_url.as_deref().unwrap_or(&url);
            let resp =
                webhook::send_to(&client, &url, signed, &auth_token, &sms.params(&account_sid))
                    .await?;
            println!("MessageSid: {}", sms.message_sid);
            println!("HTTP {}", resp.status());
            println!("{}", resp.text().await?);
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
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

