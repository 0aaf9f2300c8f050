//! Load generator: signed inbound webhooks at a given concurrency and rate. All bodies are signed
//! before the clock starts, and nothing is logged per request, so the generator takes as little as
//! possible of the machine it shares with the service it measures.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde::Serialize;

use crate::webhook::{InboundSms, signed_request};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub url: String,
    /// The URL signatures are made for (defaults to `url`).
    pub signed_url: Option<String>,
    pub auth_token: String,
    pub account_sid: String,
    pub to: String,
    pub count: usize,
    pub concurrency: usize,
    /// Requests per second overall; 0 = as fast as possible.
    pub rate: f64,
    /// Share of requests that resend an earlier message unchanged.
    pub duplicate_ratio: f64,
    /// Distinct senders: `+1555200NNNN` for NNNN in 0001..=numbers.
    pub numbers: usize,
    pub max_duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub sent: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub errors: usize,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub latency_ms: Latency,
}

const BODIES: &[&str] = &[
    "Yes",
    "Sí, gracias",
    "Sim, obrigado",
    "I will pay the rent on Friday",
    "No tengo el dinero esta semana, pago el lunes",
    "Já paguei o aluguel ontem",
    "ok",
    "The kitchen sink is leaking again, can someone come?",
    "Gracias 🙏",
    "Tá bom",
];

/// The sender number `i` (1-based) of the benchmark's directory.
pub fn sender(i: usize) -> String {
    format!("+1555200{:04}", i % 10_000)
}

fn build_requests(opts: &LoadOptions) -> Vec<(String, String)> {
    let signed_url = opts.signed_url.as_deref().unwrap_or(&opts.url);
    let mut rng = rand::rng();
    let mut out: Vec<(String, String)> = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        if !out.is_empty() && rng.random_bool(opts.duplicate_ratio.clamp(0.0, 1.0)) {
            let j = rng.random_range(0..out.len());
            let dup = out[j].clone();
            out.push(dup);
            continue;
        }
        let from = sender(1 + i % opts.numbers.max(1));
        let sms = InboundSms::new(&from, &opts.to, BODIES[i % BODIES.len()]);
        out.push(signed_request(
            &opts.auth_token,
            signed_url,
            &sms.params(&opts.account_sid),
        ));
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(opts.concurrency > 0, "concurrency must be at least 1");
    let requests = Arc::new(build_requests(&opts));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + opts.max_duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (requests, next, client, url) = (
            requests.clone(),
            next.clone(),
            client.clone(),
            opts.url.clone(),
        );
        let rate = opts.rate;
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() || Instant::now() >= deadline {
                    break;
                }
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (body, sig) = &requests[i];
                let t0 = Instant::now();
                let result = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-twilio-signature", sig)
                    .body(body.clone())
                    .send()
                    .await;
                match result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, statuses, errors)
        });
    }
    let mut latencies = Vec::with_capacity(opts.count);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, s, e) = done?;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let sent = latencies.len() + errors;
    Ok(LoadReport {
        sent,
        statuses,
        errors,
        elapsed_s: elapsed,
        throughput_rps: latencies.len() as f64 / elapsed,
        latency_ms: Latency {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(0.0),
        },
    })
}
