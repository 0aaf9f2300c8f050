//! Load generator: signed inbound webhooks at a given concurrency and rate.
//!
//! It shares a small machine with the service it measures, so it takes as little of it as it can:
//! every body is built and signed before the clock starts (duplicates share their original's
//! bytes), one HTTP client with a keep-alive pool of `concurrency` connections carries all
//! requests, each of the `concurrency` tasks sends sequentially, nothing is logged per request,
//! and latencies go into per-task vectors that are merged and sorted at the end.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use crate::webhook::{self, InboundSms, signed_request};

/// What to send, how fast and for how long. Build with [`LoadOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where requests are posted.
    pub url: String,
    /// The public URL the service verifies signatures against, when it differs from `url`
    /// (service behind a proxy).
    pub signed_url: Option<String>,
    pub auth_token: String,
    pub account_sid: String,
    /// Our number (`To`).
    pub to: String,
    /// Requests in total, duplicates included.
    pub count: usize,
    /// Requests in flight at most; each of this many tasks sends one after the other.
    pub concurrency: usize,
    /// Requests per second overall, on a fixed schedule shared by all tasks; 0 = unlimited.
    pub rate: f64,
    /// Share (0.0..=1.0) of requests that resend an earlier message with identical params, as
    /// Twilio does when it retries.
    pub duplicate_ratio: f64,
    /// Distinct senders, see [`sender`].
    pub numbers: usize,
    /// Stop starting requests after this long; requests still in flight are cut then.
    pub max_duration: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Seed for MessageSids and the choice of duplicates; `None` = random.
    pub seed: Option<u64>,
}

impl LoadOptions {
    /// 1000 requests, 32 at a time, no rate limit, no duplicates, 1000 senders, 300 s at most.
    pub fn new(url: impl Into<String>, auth_token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            signed_url: None,
            auth_token: auth_token.into(),
            account_sid: webhook::DEFAULT_ACCOUNT_SID.into(),
            to: webhook::DEFAULT_TO.into(),
            count: 1000,
            concurrency: 32,
            rate: 0.0,
            duplicate_ratio: 0.0,
            numbers: 1000,
            max_duration: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            seed: None,
        }
    }
}

/// Latency percentiles in milliseconds, over requests that got an HTTP answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// `count` as asked.
    pub requested: usize,
    /// Requests started: answered plus `errors`.
    pub sent: usize,
    /// Requests never started because `max_duration` ran out.
    pub unsent: usize,
    /// Requests that were resends of an earlier message.
    pub duplicates: usize,
    /// HTTP status -> number of answers.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests without an HTTP answer (connection failures, timeouts, cut at the deadline).
    pub errors: usize,
    /// Of `errors`, those that timed out or were cut at the deadline.
    pub timeouts: usize,
    /// One error message, so a failed run says why without per-request logs.
    pub error_sample: Option<String>,
    pub elapsed_s: f64,
    /// Answers per second, rounded.
    pub throughput_rps: f64,
    pub latency_ms: Latency,
}

/// Short replies tenants really send, in the three languages.
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

/// Sender number `i` (1-based) of the benchmark's directory: `+15552000001`, `+15552000002`, ...
pub fn sender(i: usize) -> String {
    format!("+1555{:07}", 2_000_000 + i % 8_000_000)
}

/// One ready-to-send request.
struct Prepared {
    body: Bytes,
    signature: HeaderValue,
}

/// Builds and signs every request. A duplicate copies a message at least `concurrency` positions
/// earlier when there is one, so it is usually resent after the original was answered; the first
/// few may race their original, as Twilio's retries of a slow answer can.
fn prepare(opts: &LoadOptions) -> anyhow::Result<(Vec<Prepared>, usize)> {
    let signed_url = opts.signed_url.as_deref().unwrap_or(&opts.url);
    let mut rng = match opts.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    };
    let mut out: Vec<Prepared> = Vec::with_capacity(opts.count);
    let (mut fresh, mut duplicates) = (0usize, 0usize);
    for i in 0..opts.count {
        if i > 0 && rng.random_bool(opts.duplicate_ratio) {
            let hi = if i > opts.concurrency {
                i - opts.concurrency
            } else {
                i
            };
            let j = rng.random_range(0..hi);
            let dup = Prepared {
                body: out[j].body.clone(),
                signature: out[j].signature.clone(),
            };
            out.push(dup);
            duplicates += 1;
            continue;
        }
        let mut sms = InboundSms::new(
            sender(1 + fresh % opts.numbers),
            opts.to.as_str(),
            BODIES[fresh % BODIES.len()],
        );
        sms.message_sid = webhook::new_message_sid_with(&mut rng);
        fresh += 1;
        let (body, signature) =
            signed_request(&opts.auth_token, signed_url, &sms.params(&opts.account_sid));
        out.push(Prepared {
            body: Bytes::from(body),
            signature: HeaderValue::from_str(&signature).context("signature header")?,
        });
    }
    Ok((out, duplicates))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one sending task saw.
#[derive(Default)]
struct TaskResult {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, usize>,
    errors: usize,
    timeouts: usize,
    error_sample: Option<String>,
}

/// Sends the requests and reports. Fails only on bad options or if the client cannot be built;
/// request failures are counted in the report.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(opts.concurrency > 0, "concurrency must be at least 1");
    anyhow::ensure!(
        opts.rate.is_finite() && opts.rate >= 0.0,
        "rate must be 0 (unlimited) or a positive number"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&opts.duplicate_ratio),
        "duplicate ratio must be between 0 and 1"
    );
    anyhow::ensure!(
        (1..=8_000_000).contains(&opts.numbers),
        "numbers must be between 1 and 8000000"
    );
    let url = reqwest::Url::parse(&opts.url).with_context(|| format!("bad url {:?}", opts.url))?;
    if let Some(signed) = &opts.signed_url {
        reqwest::Url::parse(signed).with_context(|| format!("bad signed url {signed:?}"))?;
    }

    let prep_opts = opts.clone();
    let (requests, duplicates) = tokio::task::spawn_blocking(move || prepare(&prep_opts))
        .await
        .context("preparing requests")??;
    let requests = Arc::new(requests);
    let workers = opts.concurrency.min(requests.len()).max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .timeout(opts.request_timeout)
        .tcp_nodelay(true)
        .build()?;
    let content_type = HeaderValue::from_static("application/x-www-form-urlencoded");
    let next = Arc::new(AtomicUsize::new(0));

    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + opts.max_duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (requests, next, client, url, content_type) = (
            requests.clone(),
            next.clone(),
            client.clone(),
            url.clone(),
            content_type.clone(),
        );
        let rate = opts.rate;
        tasks.spawn(async move {
            let mut r = TaskResult {
                latencies: Vec::with_capacity(requests.len() / workers + 1),
                ..TaskResult::default()
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() {
                    break;
                }
                if rate > 0.0 {
                    // Request i is due at i/rate, whichever task takes it: one shared schedule.
                    let due = tokio::time::Instant::from_std(
                        start + Duration::from_secs_f64(i as f64 / rate),
                    );
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let req = &requests[i];
                let t0 = Instant::now();
                let exchange = async {
                    let resp = client
                        .post(url.clone())
                        .header(CONTENT_TYPE, content_type.clone())
                        .header("x-twilio-signature", req.signature.clone())
                        .body(req.body.clone())
                        .send()
                        .await?;
                    let status = resp.status().as_u16();
                    // Read the body so the connection goes back to the pool.
                    resp.bytes().await?;
                    Ok::<u16, reqwest::Error>(status)
                };
                match tokio::time::timeout_at(deadline, exchange).await {
                    Ok(Ok(status)) => {
                        r.latencies.push(t0.elapsed());
                        *r.statuses.entry(status).or_default() += 1;
                    }
                    Ok(Err(e)) => {
                        r.errors += 1;
                        if e.is_timeout() {
                            r.timeouts += 1;
                        }
                        r.error_sample.get_or_insert_with(|| error_chain(&e));
                    }
                    Err(_) => {
                        r.errors += 1;
                        r.timeouts += 1;
                        r.error_sample
                            .get_or_insert_with(|| "cut at --max-seconds".into());
                    }
                }
            }
            r
        });
    }

    let mut all = TaskResult {
        latencies: Vec::with_capacity(requests.len()),
        ..TaskResult::default()
    };
    while let Some(done) = tasks.join_next().await {
        let r = done.context("sending task failed")?;
        all.latencies.extend(r.latencies);
        for (k, v) in r.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.errors += r.errors;
        all.timeouts += r.timeouts;
        if all.error_sample.is_none() {
            all.error_sample = r.error_sample;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();

    let mut ms: Vec<f64> = all
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_unstable_by(f64::total_cmp);
    let answered = ms.len();
    let sent = answered + all.errors;
    Ok(LoadReport {
        requested: opts.count,
        sent,
        unsent: requests.len() - sent,
        duplicates,
        statuses: all.statuses,
        errors: all.errors,
        timeouts: all.timeouts,
        error_sample: all.error_sample,
        elapsed_s: round3(elapsed),
        throughput_rps: if elapsed > 0.0 {
            (answered as f64 / elapsed).round()
        } else {
            0.0
        },
        latency_ms: Latency {
            p50: round3(percentile(&ms, 0.50)),
            p90: round3(percentile(&ms, 0.90)),
            p99: round3(percentile(&ms, 0.99)),
            max: round3(ms.last().copied().unwrap_or(0.0)),
        },
    })
}

/// Microsecond precision is all a report needs; more digits only clutter it.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The error and its sources on one line (reqwest's own message omits the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.90), 90.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn duplicates_reuse_earlier_requests_and_seed_reproduces() {
        let mut o = LoadOptions::new("http://127.0.0.1:1/sms", "tok");
        o.count = 500;
        o.concurrency = 4;
        o.duplicate_ratio = 0.3;
        o.seed = Some(7);
        let (a, dups) = prepare(&o).unwrap();
        let (b, dups_b) = prepare(&o).unwrap();
        assert_eq!(dups, dups_b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body));
        assert!((100..200).contains(&dups), "{dups}");
        let distinct: std::collections::HashSet<&Bytes> = a.iter().map(|p| &p.body).collect();
        assert_eq!(distinct.len(), 500 - dups);
    }

    #[test]
    fn senders() {
        assert_eq!(sender(1), "+15552000001");
        assert_eq!(sender(1234), "+15552001234");
    }
}
