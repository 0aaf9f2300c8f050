//! `sms-worker`'s command line and start-up: which queues, which settings they need.

use clap::Parser;
use shared::{config, jobs};

#[derive(Parser)]
#[command(name = "sms-worker", version, about = "Processes the SMS job queues")]
pub struct Cli {
    /// Comma-separated queues to run (default: all of them).
    #[arg(long, env = "WORKER_QUEUES")]
    pub queues: Option<String>,
}

/// The queues to run and the settings they need, or the configuration error to exit with.
pub fn resolve(
    cli: &Cli,
    src: &dyn config::Source,
) -> Result<(Vec<&'static str>, config::Worker), String> {
    let explicit = cli.queues.is_some();
    let all = jobs::ALL_QUEUES.join(",");
    let mut queues = crate::queues::parse_queues(cli.queues.as_deref().unwrap_or(&all))
        .map_err(|e| format!("configuration error: --queues: {e}"))?;
    if !explicit && src.get("TWILIO_AUTH_TOKEN").is_none() {
        // Started without naming queues and without Twilio settings: run everything else.
        queues.retain(|q| *q != jobs::OUTBOUND_SEND);
    }
    let cfg = config::Worker::load_for(src, &queues).map_err(|e| e.to_string())?;
    if cfg.outbound.is_none() && queues.contains(&jobs::OUTBOUND_SEND) {
        return Err(
            "configuration error: TWILIO_AUTH_TOKEN: is required to run the outbound-send queue"
                .into(),
        );
    }
    Ok((queues, cfg))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_queue_set_needs_only_its_settings() {
        let db = ("DATABASE_URL", "postgres://localhost/sms");
        let cli = |q: Option<&str>| Cli {
            queues: q.map(str::to_owned),
        };
        // The ingress's token is set but sending is not configured: an inbound worker runs.
        let token_only = env(&[db, ("TWILIO_AUTH_TOKEN", "t")]);
        assert_eq!(
            resolve(&cli(Some("inbound")), &token_only).unwrap().0,
            vec!["inbound"]
        );
        assert!(
            resolve(&cli(Some("outbound-send")), &token_only)
                .unwrap_err()
                .contains("TWILIO_ACCOUNT_SID")
        );
        // Nothing of Twilio's: every queue but sending.
        let none = env(&[db]);
        let (queues, _) = resolve(&cli(None), &none).unwrap();
        assert!(!queues.contains(&jobs::OUTBOUND_SEND) && queues.contains(&jobs::INBOUND));
        assert!(
            resolve(&cli(Some("outbound-send")), &none)
                .unwrap_err()
                .contains("TWILIO_AUTH_TOKEN")
        );
        assert!(
            resolve(&cli(Some("nope")), &none)
                .unwrap_err()
                .contains("--queues")
        );
    }
}
